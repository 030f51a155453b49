"""Predict's guidance and rounds: squares sized to the image, Go outlines its square, the uncertainty layer
has a colorbar and leaves the image as it is, disabled buttons say why, a new round never replaces the last
one, and the status counts tiles and objects."""

import numpy as np
import pytest
from widget_helpers import dock

pytestmark = pytest.mark.gui


@pytest.fixture
def em_crop(viewer):
    from napari_unet._sample_data import load_em_sample

    image = load_em_sample()[0][2, :128, :128]
    return viewer.add_image(image, name="em")


def _run(p, qtbot, errors):
    job = p._on_predict()
    assert job is not None, errors
    qtbot.waitUntil(lambda: not job.running and p.complete, timeout=120_000)


def test_paint_next_squares_fit_the_image_and_go_outlines_one(viewer, em_crop, qtbot, errors):
    p = dock(viewer, "Predict")
    assert p.model.value == "em-membrane"
    assert p.to_labels_button.tooltip.startswith("off: predict")  # greyed out, and says why
    p.output.value = "uncertainty (where to paint next)"
    _run(p, qtbot, errors)
    layer = p.layer
    assert layer.blending == "additive" and layer.colormap.name == "hot" and layer.colorbar.visible
    assert p.regions and {r.size for r in p.regions} == {32}  # a quarter of a 128 px image, not 128 px
    assert not p.to_labels_button.enabled and "not labels" in p.to_labels_button.tooltip
    viewer.layers.selection.active = em_crop
    p._on_go()
    outline = viewer.layers["paint next"]
    r = p.regions[0]
    np.testing.assert_allclose(outline.data[0].min(axis=0), [r.y, r.x])
    np.testing.assert_allclose(outline.data[0].max(axis=0), [min(r.y + 32, 128), min(r.x + 32, 128)])
    assert viewer.layers.selection.active is em_crop  # still painting where the user was


def test_a_new_round_keeps_the_last_and_the_status_counts_objects(viewer, em_crop, qtbot, errors):
    p = dock(viewer, "Predict")
    assert p.output.value == "instances"  # em-membrane is an instance model
    _run(p, qtbot, errors)
    first = p.layer
    n = len(np.unique(first.data)) - 1
    assert p.status.value.startswith(f"done: {p.total} tile") and f"{n} objects" in p.status.value
    assert "zoom auto (x1.00)" in p.status.value and "zoom 0.00" not in p.status.value
    assert p.to_labels_button.enabled and not p.to_labels_button.tooltip.startswith("off")
    _run(p, qtbot, errors)
    assert p.layer.name == "em instances 2" and first.name == "em instances" and first in viewer.layers
    assert not first.visible and p.layer.visible


def test_one_colour_per_meaning_across_outputs_and_training_labels(viewer, qtbot, errors):
    """Training labels: 1 = background in grey; predictions: 0 = background, transparent, and value v in the
    colour of training value v + 1, so 'Correct it' keeps every colour; the sample's truth is named apart."""
    from napari_unet._colors import BACKGROUND

    viewer.open_sample("napari-unet", "em")
    truth = viewer.layers["EM ground truth (do not paint)"]
    np.testing.assert_allclose(truth.colormap.map(1), BACKGROUND)
    p = dock(viewer, "Predict")
    _run(p, qtbot, errors)
    pred = p.layer
    values = np.arange(1, 300)
    np.testing.assert_allclose(pred.colormap.map(0)[..., 3], 0.0)
    fix = p._on_to_labels()
    np.testing.assert_allclose(pred.colormap.map(values), fix.colormap.map(values + 1))
    np.testing.assert_allclose(fix.colormap.map(1), BACKGROUND)
    assert fix.metadata["training_labels_for"] == "EM (ISBI 2012)"
    p.output.value = "semantic labels"
    _run(p, qtbot, errors)
    assert list(p.layer.features["class"]) == ["membrane", "cell"]  # the model's class names, on hover
