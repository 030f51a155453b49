import numpy as np
import pytest
from widget_helpers import dock, paint

pytestmark = pytest.mark.gui


def test_new_training_labels_matches_image(em_viewer):
    image = em_viewer.layers["EM (ISBI 2012)"]
    image.scale = (2.0, 1.5, 1.5)
    w = dock(em_viewer, "Annotate")
    w.image.value = image
    labels = w._on_new_labels()
    assert labels.data.shape == image.data.shape
    assert tuple(labels.scale) == tuple(image.scale)
    assert not labels.data.any()  # 0 = not annotated
    # the brush fits the image (5 px on 256 px EM: a membrane's width), 1 = background in grey, named on hover
    assert labels.mode == "paint" and labels.selected_label in (1, 2) and labels.brush_size == 5
    from napari_unet._colors import BACKGROUND

    np.testing.assert_allclose(labels.colormap.map(1), BACKGROUND)
    assert list(labels.features["meaning"]) == ["not annotated", "background"]
    assert em_viewer.layers.selection.active.name == labels.name
    assert "0 = not annotated" in w.help.value and "1 = background" in w.help.value
    # a second click never overwrites the first layer
    again = w._on_new_labels()
    assert again.name != labels.name and labels.name in em_viewer.layers


def test_4d_is_refused_with_a_message_and_rgb_gets_labels(viewer, monkeypatch):
    from napari_unet._widgets import _annotate

    msgs = []
    monkeypatch.setattr("napari.utils.notifications.show_error", msgs.append)
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="rgb", rgb=True)
    viewer.add_image(np.zeros((2, 2, 32, 32), np.uint8), name="4d")
    w = dock(viewer, "Annotate")
    n = len(viewer.layers)
    w.image.value = viewer.layers["4d"]
    assert w._on_new_labels() is None
    assert len(viewer.layers) == n
    assert "(Z, Y, X)" in msgs[0]
    w.image.value = viewer.layers["rgb"]  # colours are channels for a model: labels cover the pixels
    assert w._on_new_labels().data.shape == (32, 32)
    assert _annotate  # the module stays importable


def test_painting_updates_weight_map(em_viewer, qtbot):
    image = em_viewer.layers["EM (ISBI 2012)"]
    w = dock(em_viewer, "Annotate")
    w.image.value = image
    labels = w._on_new_labels()
    prev = dock(em_viewer, "Weight map preview")
    prev.labels.value = labels
    em_viewer.dims.set_current_step(0, 3)
    em_viewer.layers.selection.active = labels
    # two touching objects with background between them: border weights appear
    paint(labels, 3, 1, (20, 80, 20, 80))
    paint(labels, 3, 2, (30, 70, 30, 48))
    paint(labels, 3, 3, (30, 70, 52, 70))
    qtbot.waitUntil(
        lambda: "weight map" in em_viewer.layers and em_viewer.layers["weight map"].data.max() > 1, timeout=5000
    )
    wm = em_viewer.layers["weight map"]
    assert wm.data.shape == (1, 256, 256)
    assert wm.translate[0] == 3 * image.scale[0]  # shown on the painted slice only
    gap = wm.data[0, 50, 50]  # background pixel between the two objects
    assert gap > wm.data[0, 25, 25]  # ... weighs more than background far from both
    assert wm.data[0, 0, 0] == 0  # not annotated -> weight 0
    assert em_viewer.layers.selection.active.name == labels.name  # painting goes on
    print(f"\nweight map update: {prev.last_ms:.1f} ms for a 256x256 slice")
    # the border term toggle changes the map
    before = prev.n_updates
    prev.border.value = False
    qtbot.waitUntil(lambda: prev.n_updates > before, timeout=5000)
    assert em_viewer.layers["weight map"].data[0, 50, 50] < gap
    # painting more updates it again, and moving to another slice follows
    before = prev.n_updates
    em_viewer.dims.set_current_step(0, 5)
    qtbot.waitUntil(lambda: prev.n_updates > before, timeout=5000)
    assert em_viewer.layers["weight map"].translate[0] == 5 * image.scale[0]
    assert not em_viewer.layers["weight map"].data.any()


def test_weight_map_of_a_fully_painted_sample_slice_lifts_membranes_between_cells(em_viewer, qtbot):
    """Every pixel weighs, cells by their class alone, membranes between cells more (eq. 2's border term).
    Its time is printed, not asserted: numbers live in benchmarks, not in timed tests."""
    prev = dock(em_viewer, "Weight map preview")
    prev.labels.value = em_viewer.layers["EM ground truth (do not paint)"]
    prev._update()
    truth = em_viewer.layers["EM ground truth (do not paint)"]
    labels = truth.data[em_viewer.dims.current_step[0]]  # 1 = membrane, >= 2 = cells
    wm = em_viewer.layers["weight map"].data[0]
    assert wm.shape == labels.shape and (wm > 0).all()  # every pixel is painted: every pixel counts
    cells, membranes = wm[labels >= 2], wm[labels == 1]
    assert cells.min() == cells.max()  # class balance only
    assert membranes.max() > membranes.min() + 1  # the border term, on top of the membranes' class weight
    print(f"\nweight map of a full EM slice (256x256, ~35 cells): {prev.last_ms:.1f} ms")
