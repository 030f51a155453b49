"""Layer pickers: they start on the active or only fitting layer, never offer the plugin's own outputs as
training labels, and a prediction given as training labels is refused with what to do."""

import numpy as np
import pytest
from widget_helpers import dock

pytestmark = pytest.mark.gui


def test_pickers_start_on_the_only_matching_layer(viewer):
    viewer.open_sample("napari-unet", "nuclei")
    image = viewer.layers["Nuclei (DSB 2018)"]
    truth = viewer.layers[1]
    assert dock(viewer, "Predict").image.value is image
    assert dock(viewer, "Weight map preview").labels.value is truth
    deform = dock(viewer, "Deformation preview")
    assert deform.image.value is image and deform.labels.value is truth
    assert dock(viewer, "Annotate").image.value is image


def test_picker_takes_the_active_layer_and_keeps_a_choice(viewer):
    a = viewer.add_image(np.zeros((32, 32), np.uint8), name="a")
    b = viewer.add_image(np.zeros((32, 32), np.uint8), name="b with a long name that would widen the dock")
    viewer.layers.selection.active = a
    w = dock(viewer, "Predict")
    assert w.image.value is a
    w.image.value = b
    assert b.name in w.image.native.toolTip()  # elided in the box, whole in the tooltip
    viewer.add_image(np.zeros((32, 32), np.uint8), name="c")  # a new layer is active: the choice stays
    assert w.image.value is b


def test_train_labels_never_offer_plugin_outputs_and_refuse_a_prediction(viewer):
    image = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="img")
    painted = viewer.add_labels(np.zeros((64, 64), np.uint16), name="img labels")
    pred = viewer.add_labels(
        np.ones((64, 64), np.uint16), name="img instances", metadata={"output": "instances", "image": "img"}
    )
    viewer.add_labels(np.ones((64, 64), np.uint16), name="prediction preview", metadata={"output": "preview"})
    w = dock(viewer, "Train")
    row = w.pairs[0]
    assert [c.name for c in row.labels.choices if c is not None] == [painted.name]
    assert row.image.value.name == image.name
    assert "img labels" in row.labels.native.toolTip()  # the pair boxes elide long names: whole in the tooltip
    # the check behind Train's refusal (a prediction can reach it from code; the picker never offers one)
    from napari_unet._widgets._layers import check_training_labels

    with pytest.raises(ValueError, match="Correct it"):
        check_training_labels(pred)
    check_training_labels(painted)


def test_predict_chooses_the_model_that_suits_the_image_and_its_output(viewer):
    """The nuclei sample gets the nuclei model and instances (an instance model); a model the user chooses
    stays when the image changes; a poor match says so."""
    viewer.open_sample("napari-unet", "nuclei")
    w = dock(viewer, "Predict")
    assert w.model.value == "nuclei" and w.output.value == "instances"
    assert "image similarity" in w.status.value and w.match is not None and not w.match.poor
    w.zarr_out.value = "out.zarr"  # block-wise: semantic labels (instances need whole planes)
    assert w.output.value == "semantic labels"
    w.zarr_out.value = ""
    viewer.open_sample("napari-unet", "em")
    w.image.value = viewer.layers["EM (ISBI 2012)"]
    assert w.model.value == "em-membrane" and w.match.similarity > 0.9
    w.model.value = "nuclei"  # the user's choice: kept, and no claim about the match
    w.image.value = viewer.layers["Nuclei (DSB 2018)"]
    assert w.model.value == "nuclei" and w.match is None
    from napari_unet.core.train.start import rank_models

    em = viewer.layers["EM (ISBI 2012)"].data
    assert rank_models(em, ["nuclei"])[0].poor
