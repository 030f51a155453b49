"""The shipped models load by name and segment held-out data sensibly (fast: a few seconds)."""

import numpy as np
import pytest

from napari_unet.core.evaluate import metrics
from napari_unet.core.models.checkpoint import available_models
from napari_unet.core.models.load import load_model, read_info
from napari_unet.core.predict.tiles import predict


@pytest.mark.parametrize("name", ["em-membrane", "nuclei"])
def test_shipped_model_loads_by_name(name):
    assert name in available_models()
    path = available_models()[name]
    assert path.stat().st_size < 5e6  # fp16, a few MB
    info = read_info(path)
    assert info.name == name
    assert info.description
    assert info.model["depth"] == 4 and info.model["base_channels"] == 16 and info.model["padding"] == "valid"
    model = load_model(name)
    assert model.n_classes == len(info.classes) in (2, 3)
    assert path.with_suffix(".md").exists(), "every shipped model has a model card"


def test_em_membrane_heldout_crop(isbi):
    """A held-out slice (27: never trained on) comes out close to the ground truth."""
    img, truth = isbi[0][27, 128:384, 128:384], isbi[1][27, 128:384, 128:384]
    model = load_model("em-membrane")
    labels = predict(model, img, output="labels")  # class 0 = membrane, 1 = cell
    err = metrics.pixel_error(labels != 0, truth != 0)
    assert err < 0.15, err


def test_nuclei_heldout_instances(dsb):
    """Held-out images (90, 95: never trained on) give separate nuclei matching the ground truth."""
    model = load_model("nuclei")
    f1 = [metrics.instance_f1(predict(model, dsb[0][z], output="instances"), dsb[1][z], 0.5)["f1"] for z in (90, 95)]
    assert np.mean(f1) > 0.7, f1
