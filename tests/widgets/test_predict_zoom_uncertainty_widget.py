"""Predict's zoom (the model's object size) and uncertainty output ('where to paint next', Go)."""

import numpy as np
import pytest
from widget_helpers import dock

from napari_unet.core.predict.tiles import predict

pytestmark = pytest.mark.gui


def test_predict_zoom_uses_the_given_scale_and_refuses_a_bad_one(viewer, nuclei_sample, qtbot, errors):
    images, _ = nuclei_sample
    viewer.add_image(images[3, :128, :128], name="nuclei")
    p = dock(viewer, "Predict")
    p.model.value, p.image.value = "nuclei", viewer.layers["nuclei"]
    p.output.value = "semantic labels"  # an instance model predicts instances unless told
    p.zoom.value = 0.05
    assert p._on_predict() is None and "scale must be between" in errors[-1]
    p.zoom.value = 0.5
    job = p._on_predict()
    assert job is not None, errors
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    from napari_unet.core.models.load import load_model

    expect = predict(load_model("nuclei"), images[3, :128, :128], zoom=0.5)
    np.testing.assert_array_equal(p.layer.data, expect)


def test_uncertainty_ranks_where_to_paint_and_go_jumps_there(em_viewer, qtbot, errors):
    image = em_viewer.layers["EM (ISBI 2012)"]
    p = dock(em_viewer, "Predict")
    p.model.value, p.image.value = "em-membrane", image
    p.output.value = "uncertainty (where to paint next)"
    p.where.value = "whole stack"
    job = p._on_predict()
    assert job is not None, errors
    qtbot.waitUntil(lambda: not job.running and p.complete, timeout=120_000)
    assert p.layer.name.endswith("uncertainty") and p.layer.data.dtype == np.float32
    assert p.regions and p.paint_next.native.isVisibleTo(p.native) and "paint next" in p.status.value
    # the most uncertain first; every third entry is the square farthest from the strokes instead
    scores = [r.score for r in p.regions if not r.far]
    assert scores == sorted(scores, reverse=True)
    assert [i for i, r in enumerate(p.regions) if r.far] == [2, 5]
    assert p.paint_next.value == p.regions[0]
    p._on_go()
    assert em_viewer.dims.current_step[0] == p.regions[0].z
    assert em_viewer.layers["paint next"].data[0][0, 0] == p.regions[0].z  # the square outlined on its slice


def test_zoom_auto_is_the_models_own_and_editing_the_box_turns_it_off(viewer, dsb, qtbot, errors):
    images, _ = dsb
    viewer.add_image(images[85, :64, :64], name="nuclei")
    p = dock(viewer, "Predict")
    p.model.value, p.image.value = "nuclei", viewer.layers["nuclei"]
    assert p.zoom_auto.value and not p.zoom.enabled  # automatic by default: the box only shows the zoom
    job = p._on_predict()
    assert job is not None, errors
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert "zoom auto (x1.00)" in p.status.value and p.zoom_auto.value and p.zoom.value == 1.0
    p.zoom.value = 0.5  # an edit: the zoom given, no longer automatic
    assert not p.zoom_auto.value and p.zoom.enabled
    job = p._on_predict()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert "zoom x0.50" in p.status.value
