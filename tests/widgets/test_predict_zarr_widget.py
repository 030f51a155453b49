"""Predict into an OME-Zarr from the widget: a zarr-backed Labels layer that fills block by block,
in napari's process and on a LocalCluster ('workers'), and the napari reader opening the result."""

import numpy as np
import pytest
from widget_helpers import dock

pytestmark = pytest.mark.gui
pytest.importorskip("zarr")


@pytest.fixture
def em_zarr(tmp_path):
    from napari_unet._sample_data import load_em_sample
    from napari_unet.core.data import ngff

    image, _ = load_em_sample()
    vol = np.ascontiguousarray(image[:2, :150, :130])
    path = tmp_path / "em.zarr"
    arr = ngff.create_output(
        path, shape=vol.shape, dtype=vol.dtype, chunks=(1, 70, 61), axes="ZYX", scale=(0.05, 0.004, 0.004), labels=False
    )
    arr[:] = vol
    return path, vol


@pytest.fixture
def tiny():
    import torch

    from napari_unet.core.network.unet import UNet

    torch.manual_seed(0)
    return UNet(depth=2, base_channels=4)


def test_predict_widget_fills_a_zarr_backed_layer_and_resumes(viewer, qtbot, em_zarr, tiny, tmp_path):
    from napari_unet._widgets import _state
    from napari_unet.core.data import ngff
    from napari_unet.core.predict.tiles import predict

    path, vol = em_zarr
    [layer] = viewer.open(str(path), plugin="napari-unet")  # drag and drop of the folder
    assert layer.scale[-1] == pytest.approx(0.004) and layer.data.shape == vol.shape
    _state.register_model("run 1", tiny)
    w = dock(viewer, "Predict")
    w.image.value = layer
    w.device.value = "cpu"
    out = tmp_path / "pred.zarr"
    w.zarr_out.value = str(out)
    job = w._on_predict()
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    pred = viewer.layers["em prediction"]
    assert type(pred.data).__module__.startswith("zarr") and pred.metadata["path"] == str(out)
    expected = predict(tiny, vol, device="cpu")
    np.testing.assert_array_equal(np.asarray(pred.data), expected)
    assert w.done == w.total == 2 * 3 * 3 and "done: 18 blocks" in w.status.value
    # again: every block is on disk already
    job = w._on_predict()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    np.testing.assert_array_equal(ngff.open_output(out)[:], expected)


def test_predict_widget_workers_write_into_the_container(viewer, qtbot, em_zarr, tiny):
    from napari_unet._widgets import _state
    from napari_unet.core.data import ngff
    from napari_unet.core.predict.tiles import predict

    path, vol = em_zarr
    [layer] = viewer.open(str(path), plugin="napari-unet")
    _state.register_model("run 1", tiny)
    w = dock(viewer, "Predict")
    w.image.value = layer
    w.device.value = "cpu"
    w.workers.value = 2
    w.processes = False  # threads start in a blink; tests/test_zarr_cli.py runs worker processes
    job = w._on_predict()
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=90_000)
    assert ngff.labels_of(path) == ["unet-labels"]
    np.testing.assert_array_equal(ngff.open_output(path / "labels" / "unet-labels")[:], predict(tiny, vol))
    # reopening the container shows the prediction over the image
    layers = viewer.open(str(path), plugin="napari-unet")
    assert [type(x).__name__ for x in layers] == ["Image", "Labels"] and layers[1].name == "unet-labels"


def test_workers_without_a_zarr_target_say_what_to_do(em_viewer, tiny, monkeypatch):
    from napari_unet._widgets import _predict, _state

    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    _state.register_model("run 1", tiny)
    w = dock(em_viewer, "Predict")
    w.image.value = em_viewer.layers["EM (ISBI 2012)"]
    w.workers.value = 2
    assert w._on_predict() is None
    assert "choose an 'OME-Zarr output' folder" in errors[-1]
    assert _predict.PredictWidget  # the module is the one the manifest docks
