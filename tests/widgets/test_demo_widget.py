import pytest

pytestmark = pytest.mark.gui


def test_demo_launch_docks_everything(qtbot):
    from napari_unet._demo import WIDGETS, launch

    viewer = launch(block=False)
    try:
        assert "EM (ISBI 2012)" in viewer.layers and "EM ground truth (do not paint)" in viewer.layers
        docked = set(viewer.window.dock_widgets)
        assert all(any(name in d for d in docked) for name in WIDGETS)
    finally:
        viewer.close()
