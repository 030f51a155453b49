"""Predict widget: the layer fills in tile by tile and equals the core's predict()."""

import time

import numpy as np
import pytest
from widget_helpers import GapMeter, dock, record_gap

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_model():
    """A tiny U-Net trained for a few steps on the shipped EM sample (core only, no GUI)."""
    from napari_unet._sample_data import load_em_sample
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.loop import train

    image, labels = load_em_sample()
    cfg = TrainConfig(
        depth=2,
        base_channels=4,
        tile_in=124,
        steps=5,
        optimizer="adam",
        device="cpu",
        label_mode="instance",
        augment=False,
    )
    return train(cfg, image, labels).best_model()


def test_prediction_fills_labels_layer_equal_to_core(em_viewer, qtbot, tiny_model):
    from napari_unet._widgets import _state
    from napari_unet.core.predict.tiles import predict

    _state.register_model("run 1", tiny_model)
    w = dock(em_viewer, "Predict")
    w.output.value = "semantic labels"  # an instance model predicts instances unless told
    assert w.model.value == "run 1"
    image = em_viewer.layers["EM (ISBI 2012)"]
    w.image.value = image
    w.where.value = "whole stack"
    w.device.value = "cpu"
    with GapMeter() as gap:
        job = w._on_predict()
        assert job is not None
        qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    record_gap("prediction", gap.longest, gap.ticks)
    # no timed assertion (noisy machines): the loop must have kept ticking while the worker ran
    assert gap.ticks >= 3
    layer = em_viewer.layers["EM (ISBI 2012) prediction"]
    expected = predict(tiny_model, image.data, output="labels", device="cpu")
    np.testing.assert_array_equal(layer.data, expected)
    assert w.done == w.total == 8 and "done" in w.status.value


def test_current_slice_probability_map_and_instances(em_viewer, qtbot, tiny_model, tmp_path):
    from napari_unet.core.models.checkpoint import save_model
    from napari_unet.core.predict.tiles import predict

    path = tmp_path / "tiny.safetensors"
    save_model(path, tiny_model)
    w = dock(em_viewer, "Predict")
    w.model.value = "model file…"
    w.model_file.value = path
    image = em_viewer.layers["EM (ISBI 2012)"]
    w.image.value = image
    w.device.value = "cpu"
    em_viewer.dims.set_current_step(0, 4)
    w.output.value = "probability map"
    job = w._on_predict()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    prob = em_viewer.layers["EM (ISBI 2012) probability"]
    assert prob.data.shape == (8, 256, 256)  # the foreground channel of (C, Z, Y, X)
    assert prob.data[4].max() > 0 and not prob.data[3].any()  # only the slice on screen
    full = predict(tiny_model, image.data, output="probabilities", slices=[4], device="cpu")
    np.testing.assert_allclose(prob.data[4], full[1, 4], atol=1e-5)
    assert not w.to_labels_button.enabled  # a probability map is not labels

    w.output.value = "instances"
    job = w._on_predict()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    inst = em_viewer.layers["EM (ISBI 2012) instances"]
    ref = predict(tiny_model, image.data, output="instances", slices=[4], device="cpu")
    np.testing.assert_array_equal(inst.data, ref)
    assert not inst.data[0].any()

    # correct it: the prediction becomes training labels (+1), only on the slice that was predicted
    from napari_unet.core.data.labels import annotated_mask

    assert w.to_labels_button.enabled
    fix = w._on_to_labels()
    assert fix.name == "EM (ISBI 2012) instances to correct", repr(fix.name)
    assert em_viewer.layers.selection.active.name == fix.name  # selected, ready to paint
    np.testing.assert_array_equal(fix.data[4], ref[4].astype(np.uint32) + 1)
    assert not np.delete(fix.data, 4, axis=0).any()  # other slices stay 'not annotated'
    assert annotated_mask(fix.data).sum() == 256 * 256 and fix.mode == "paint"


def test_cancel_keeps_finished_tiles_and_says_so(em_viewer, qtbot, tiny_model, monkeypatch):
    import copy

    from napari_unet._widgets import _state

    slow = copy.deepcopy(tiny_model)
    fast_forward = slow.forward
    slow.forward = lambda x: (time.sleep(0.2), fast_forward(x))[1]  # 8 tiles of 0.2 s: time to cancel
    _state.register_model("run 1", slow)
    msgs = []
    monkeypatch.setattr("napari.utils.notifications.show_info", msgs.append)
    w = dock(em_viewer, "Predict")
    w.output.value = "semantic labels"  # an instance model predicts instances unless told
    w.image.value = em_viewer.layers["EM (ISBI 2012)"]
    w.where.value = "whole stack"
    w.device.value = "cpu"
    job = w._on_predict()
    qtbot.waitUntil(lambda: w.done >= 1, timeout=30_000)
    w._on_cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    kept = [m for m in msgs if m.startswith("prediction cancelled")]
    assert kept and "of 8 tiles kept" in kept[0]
    layer = em_viewer.layers["EM (ISBI 2012) prediction"]
    assert layer.data[0].any() and not layer.data[7].any()  # the first slice stays, the last never ran
    assert w.predict_button.enabled and "predict" not in _state.RUNNING


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_model_file_can_be_a_bioimageio_package(em_viewer, qtbot, tiny_model, tmp_path):
    """'model file…' takes a package napari-unet exported: the same labels as the model itself."""
    pytest.importorskip("bioimageio.core")
    from napari_unet.core.export.bioimageio import export_package
    from napari_unet.core.predict.tiles import predict

    image = em_viewer.layers["EM (ISBI 2012)"]
    pkg = export_package(tiny_model, tmp_path / "tiny.zip", sample=image.data[0])
    w = dock(em_viewer, "Predict")
    w.model.value = "model file…"
    w.model_file.value = pkg
    w.output.value = "semantic labels"  # an instance model predicts instances unless told
    w.image.value = image
    w.device.value = "cpu"
    job = w._on_predict()
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    layer = em_viewer.layers["EM (ISBI 2012) prediction"]
    z = em_viewer.dims.current_step[0]
    np.testing.assert_array_equal(layer.data[z], predict(tiny_model, image.data[z], device="cpu"))


@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_code_carrying_package_asks_before_loading(em_viewer, qtbot, tmp_path, monkeypatch):
    """A package whose weights need its model.py: the dialog shows the package, the code file and its
    sha256; Cancel loads nothing (no code runs), 'Trust and load' loads and predicts."""
    pytest.importorskip("bioimageio.core")
    import hashlib

    from package_files import colleague_package

    from napari_unet._widgets import _trust

    colleague, marker, code = colleague_package(tmp_path)
    asked = []

    def answer(reply):
        def confirm(error, parent=None):
            asked.append((error.package.name, error.code_file, error.sha256))
            return reply

        return confirm

    w = dock(em_viewer, "Predict")
    w.model.value = "model file…"
    w.model_file.value = colleague
    w.image.value = em_viewer.layers["EM (ISBI 2012)"]
    w.device.value = "cpu"
    monkeypatch.setattr(_trust, "confirm_trust", answer(False))
    assert w._on_predict() is None and not marker.exists()
    assert asked == [("colleague.zip", "tiny_unet.py", hashlib.sha256(code).hexdigest())]
    monkeypatch.setattr(_trust, "confirm_trust", answer(True))
    job = w._on_predict()
    assert job is not None and marker.exists() and len(asked) == 2
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
