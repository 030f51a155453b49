"""Deformation preview: seeded, follows the sliders, deforms image, labels and weights together."""

import numpy as np
import pytest
from widget_helpers import close_dock, dock

pytestmark = pytest.mark.gui


def test_slider_moves_update_the_deformation_preview(em_viewer, qtbot):
    w = dock(em_viewer, "Deformation preview")
    w.image.value = em_viewer.layers["EM (ISBI 2012)"]
    w.labels.value = em_viewer.layers["EM ground truth (do not paint)"]
    em_viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: "deformed image" in em_viewer.layers, timeout=5000)
    names = ("deformed image", "deformed labels", "deformed weights", "displacement vectors", "deformation grid")
    assert all(n in em_viewer.layers for n in names)
    img = em_viewer.layers["deformed image"]
    assert img.data.shape == (1, 256, 256) and img.translate[0] == 1
    first = img.data.copy()
    labels0 = em_viewer.layers["EM ground truth (do not paint)"].data[1]
    deformed_labels = em_viewer.layers["deformed labels"].data[0]
    assert set(np.unique(deformed_labels)) <= set(np.unique(labels0))  # nearest neighbour: no new values
    vec = em_viewer.layers["displacement vectors"].data
    assert vec.shape == (9, 2, 3) and np.all(vec[:, 0, 0] == 1)  # 3x3 control points on slice 1

    before, n_layers = w.n_updates, len(em_viewer.layers)
    w.seed.value = 7  # a slider move
    qtbot.waitUntil(lambda: w.n_updates > before, timeout=5000)
    assert em_viewer.layers["deformed image"] is img and len(em_viewer.layers) == n_layers  # updated in place
    assert not np.allclose(em_viewer.layers["deformed image"].data, first)

    before = w.n_updates
    w.grid.value = 5
    qtbot.waitUntil(lambda: w.n_updates > before, timeout=5000)
    assert em_viewer.layers["displacement vectors"].data.shape == (25, 2, 3)

    # the same seed gives the same deformation; sigma 0 gives none
    before = w.n_updates
    w.sigma.value = 0.0
    qtbot.waitUntil(lambda: w.n_updates > before, timeout=5000)
    np.testing.assert_allclose(
        em_viewer.layers["deformed image"].data[0], em_viewer.layers["EM (ISBI 2012)"].data[1], atol=1e-3
    )
    print(f"\ndeformation preview of a 256x256 slice: {w.last_ms:.1f} ms")


def test_preview_sits_beside_the_work_and_leaves_with_its_dock(em_viewer, qtbot):
    from napari_unet._widgets import _state
    from napari_unet._widgets._deform_preview import PREVIEW_LAYERS

    labels = em_viewer.layers["EM ground truth (do not paint)"]
    em_viewer.layers.selection.active = labels  # the user paints on the labels
    w = dock(em_viewer, "Deformation preview")
    w.image.value = em_viewer.layers["EM (ISBI 2012)"]
    w.labels.value = labels
    qtbot.waitUntil(lambda: all(n in em_viewer.layers for n in PREVIEW_LAYERS), timeout=10000)
    assert em_viewer.layers.selection.active is labels  # the brush stays on the user's layer
    width = em_viewer.layers["EM (ISBI 2012)"].data.shape[-1]
    for name in PREVIEW_LAYERS:  # beside the image, never over it
        layer = em_viewer.layers[name]
        left = layer.translate[-1] + (layer.extent.data[0][-1] if name in ("deformed image", "deformed labels") else 0)
        assert left >= width, name
        assert layer.extent.world[0][-1] >= width, name

    close_dock(em_viewer, w)
    del w
    qtbot.waitUntil(lambda: not any(n in em_viewer.layers for n in PREVIEW_LAYERS), timeout=10000)
    # and they stay gone: slice changes, new layers and Train's shared settings bring nothing back
    em_viewer.dims.set_current_step(0, 3)
    em_viewer.add_labels(np.zeros((8, 256, 256), np.uint8), name="more labels")
    _state.events.weights_changed.emit(5.0, 3.0)
    qtbot.wait(500)
    assert not any(n in em_viewer.layers for n in PREVIEW_LAYERS)
    assert em_viewer.layers.selection.active is not None
