"""PredictConfig: its rules are checked when it is made, it pickles (dask workers get it), and
check_blocks is the one check that block-wise prediction can run; prepare_zarr_prediction uses it."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core.network.unet import UNet
from napari_unet.core.predict.config import PredictConfig
from napari_unet.core.predict.tiles import predict


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(depth=2, base_channels=4)


def test_it_pickles_and_is_frozen():
    config = PredictConfig(output="probabilities", normalize=(0.0, 255.0), zoom=0.5, tile_out=(64, 96), threads=2)
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(AttributeError):
        config.zoom = 1.0  # frozen
    assert PredictConfig(zoom=1).zoom == 1.0 and isinstance(PredictConfig(zoom=1).zoom, float)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"output": "masks"}, "output must be one of"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"tile_out": 0}, "tile_out"),
        ({"tile_out": (64, 0)}, "tile_out"),
        ({"min_size": -1}, "min_size must be >= 0"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"prob_dtype": "int8"}, "prob_dtype must be one of"),
        ({"normalize": (0, np.nan)}, "finite"),
        ({"zoom": 0.05}, "scale must be between"),
        ({"zoom": 0}, "scale must be between"),
    ],
)
def test_bad_settings_are_refused_when_it_is_made(kw, message):
    with pytest.raises(ValueError, match=message):
        PredictConfig(**kw)


def test_check_blocks_refuses_instances_and_a_zoom(net):
    PredictConfig().check_blocks(net)  # labels at the model's own zoom (1)
    PredictConfig(output="probabilities", zoom=1.0).check_blocks(net)
    with pytest.raises(ValueError, match="instances need whole planes"):
        PredictConfig(output="instances").check_blocks(net)
    with pytest.raises(ValueError, match="the zoom is x0.50, and block-wise prediction .* needs zoom 1"):
        PredictConfig(zoom=0.5).check_blocks(net)


def test_predict_takes_the_fields_as_keywords(net):
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    a = predict(net, img, normalize=False, tile_out=32, output="probabilities")
    b = predict(net, img, normalize=False, output="probabilities")
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(TypeError, match="scale"):
        predict(net, img, scale=0.5)  # the zoom is called zoom


def test_prepare_zarr_prediction_checks_first_then_creates_and_resumes(net, tmp_path):
    pytest.importorskip("zarr")
    from napari_unet.core.drain import drain
    from napari_unet.core.predict.zarr import prepare_zarr_prediction

    vol = np.random.default_rng(1).random((2, 80, 72)).astype(np.float32)
    target = tmp_path / "pred.zarr"
    with pytest.raises(ValueError, match="needs zoom 1"):
        prepare_zarr_prediction(net, vol, target, PredictConfig(zoom=0.5))
    assert not target.exists()  # refused before anything is written
    with pytest.raises(ValueError, match="not on a dask cluster"):
        prepare_zarr_prediction(net, vol, target, PredictConfig(output="instances"), workers=2)
    config = PredictConfig(device="cpu")
    out, events = prepare_zarr_prediction(net, vol, target, config)
    assert out.shape == vol.shape and tuple(out.chunks) == (1, 80, 72)  # a numpy image: 1 plane x up to 512 px
    drain(events)
    np.testing.assert_array_equal(out[:], predict(net, vol, device="cpu"))
    again, events = prepare_zarr_prediction(net, vol, target, config)
    assert [ev.kind for ev in events] == ["start"]  # every block on disk: nothing to do
    inst, events = prepare_zarr_prediction(net, vol, tmp_path / "inst.zarr", replace(config, output="instances"))
    drain(events)
    np.testing.assert_array_equal(inst[:], predict(net, vol, device="cpu", output="instances"))
