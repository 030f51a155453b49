"""Bad input: a clear message that says what to do; the widget stays usable and nothing is lost."""

import numpy as np
import pytest
from widget_helpers import dock

pytestmark = pytest.mark.gui


@pytest.fixture
def messages(monkeypatch):
    """Collect napari notifications (error, warning, info) instead of showing them."""
    got = {"error": [], "warning": [], "info": []}
    for kind in got:
        monkeypatch.setattr(f"napari.utils.notifications.show_{kind}", got[kind].append)
    return got


def tiny(w, steps=4):
    w.start.value = "scratch"
    w.device.value = "cpu"
    w.depth.value, w.base_channels.value, w.tile_in.value = 2, 4, 124
    w.steps.value, w.preview_every.value = steps, 0


def test_train_refuses_rgb_4d_wrong_shape_and_empty_labels(viewer, messages):
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    viewer.add_image(np.zeros((2, 2, 64, 64), np.uint8), name="4d")
    viewer.add_image(np.random.default_rng(0).random((3, 64, 64)).astype(np.float32), name="stack")
    viewer.add_labels(np.zeros((3, 64, 64), np.uint16), name="empty")
    viewer.add_labels(np.ones((3, 32, 32), np.uint16), name="small")
    w = dock(viewer, "Train")
    tiny(w)
    row = w.pairs[0]
    n_layers = len(viewer.layers)
    cases = [
        ("rgb", "empty", "same height, width"),  # colours are channels: the (Z, Y, X) labels do not fit
        ("4d", "empty", "(Z, Y, X)"),
        ("stack", "small", "same height, width"),
        ("stack", "empty", "nothing is annotated yet"),
    ]
    for img, lab, expect in cases:
        row.image.value, row.labels.value = viewer.layers[img], viewer.layers[lab]
        assert w._on_train() is None
        assert expect in messages["error"][-1], messages["error"][-1]
    assert "Paint background with 1" in messages["error"][-1]
    assert len(viewer.layers) == n_layers and w.train_button.enabled and w.job is None
    # the same widget then trains once the labels are painted
    viewer.layers["empty"].data[1, 10:30, 10:30] = 1
    viewer.layers["empty"].data[1, 15:25, 15:25] = 2
    row.labels.value = viewer.layers["empty"]
    assert w._on_train() is not None


def test_invalid_tile_size_names_the_nearest_valid_sizes(em_viewer, messages):
    w = dock(em_viewer, "Train")
    tiny(w)
    w.tile_in.value = 122
    assert w._on_train() is None
    assert "nearest valid sizes are 120 and 124" in messages["error"][-1]


def test_training_started_twice_and_prediction_during_training(em_viewer, qtbot, messages):
    w = dock(em_viewer, "Train")
    tiny(w, steps=100_000)
    job = w._on_train()
    assert job is not None
    assert w._on_train() is None
    assert "already running" in messages["warning"][-1] and "Stop" in messages["warning"][-1]
    p = dock(em_viewer, "Predict")
    p.image.value = em_viewer.layers["EM (ISBI 2012)"]
    n_layers = len(em_viewer.layers)
    assert p._on_predict() is None
    assert "training is running" in messages["warning"][-1]
    assert len(em_viewer.layers) == n_layers  # no half-made layer left behind
    w._on_stop()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    assert w.result is not None  # the stopped run's weights are kept


def test_checkpoint_that_fails_to_load(em_viewer, tmp_path, messages):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a model")
    p = dock(em_viewer, "Predict")
    p.model.value = "model file…"
    p.model_file.value = bad
    p.image.value = em_viewer.layers["EM (ISBI 2012)"]
    n_layers = len(em_viewer.layers)
    assert p._on_predict() is None
    assert messages["error"][-1].startswith("cannot predict:") and "broken" in messages["error"][-1]
    assert len(em_viewer.layers) == n_layers and p.predict_button.enabled
    # ... and as a training start
    w = dock(em_viewer, "Train")
    tiny(w)
    w.start.value = "checkpoint file"
    w.checkpoint.value = tmp_path / "missing.safetensors"
    assert w._on_train() is None
    assert "choose a model file" in messages["error"][-1]


def test_train_crash_from_a_bad_checkpoint_is_reported(em_viewer, qtbot, tmp_path, messages):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    w = dock(em_viewer, "Train")
    tiny(w)
    w.start.value = "checkpoint file"
    w.checkpoint.value = bad
    job = w._on_train()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    assert messages["error"] and messages["error"][-1].startswith("training failed:")
    assert w.train_button.enabled and w.status.value.startswith("crashed")


def test_train_crash_mid_run_keeps_the_weights(em_viewer, qtbot, monkeypatch, messages):
    """A crash at step 2 of 6 (here: the live preview fails) is reported, and the two trained
    steps stay usable: Save model is enabled and Predict lists the model."""
    from napari_unet._widgets import _state

    def broken_preview(*args, **kwargs):
        raise OSError("the image file went away")

    monkeypatch.setattr("napari_unet.core.train._preview", broken_preview)
    w = dock(em_viewer, "Train")
    tiny(w, steps=6)
    w.preview_every.value = 2
    job = w._on_train()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert "went away" in messages["error"][-1] and "2 steps before the crash are kept" in messages["error"][-1]
    assert w.result is not None and w.result.steps_done == 2 and w.save_button.enabled
    assert _state.JUST_TRAINED in _state.TRAINED_MODELS


def test_predict_without_model_file_or_image(viewer, messages):
    p = dock(viewer, "Predict")
    assert p._on_predict() is None
    assert "no image layer chosen" in messages["error"][-1]
