"""Bad input: a clear message that says what to do; the widget stays usable and nothing is lost."""

import re

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
    """A damaged start file is refused when Train is pressed (its header is read then); one whose
    header is fine but whose weights are not (NaN) fails in the worker and is reported as a crash."""
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    w = dock(em_viewer, "Train")
    tiny(w)
    w.start.value = "checkpoint file"
    w.checkpoint.value = bad
    assert w._on_train() is None
    assert "broken.safetensors" in messages["error"][-1] and "damaged" in messages["error"][-1]
    assert w.train_button.enabled and w.status.value == "idle"

    from model_files import save_diverged

    from napari_unet.core.network.unet import UNet

    w.checkpoint.value = save_diverged(tmp_path / "diverged", UNet(depth=2, base_channels=4, n_classes=2))
    job = w._on_train()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    assert messages["error"][-1].startswith("training failed:") and "NaN" in messages["error"][-1]
    assert w.train_button.enabled and w.status.value.startswith("crashed")


def test_train_crash_mid_run_keeps_the_weights(em_viewer, qtbot, monkeypatch, messages):
    """A crash at step 2 of 6 (here: the live preview fails) is reported, and the two trained
    steps stay usable: Save model is enabled and Predict lists the model."""
    from napari_unet._widgets import _state

    def broken_preview(*args, **kwargs):
        raise OSError("the image file went away")

    monkeypatch.setattr("napari_unet.core.train.loop._preview", broken_preview)
    w = dock(em_viewer, "Train")
    tiny(w, steps=6)
    w.preview_every.value = 2
    job = w._on_train()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert "went away" in messages["error"][-1] and "2 steps before the crash are kept" in messages["error"][-1]
    assert w.result is not None and w.result.steps_done == 2 and w.save_button.enabled
    assert _state.latest() in _state.TRAINED_MODELS


def test_predict_without_model_file_or_image(viewer, messages):
    p = dock(viewer, "Predict")
    assert p._on_predict() is None
    assert "no image layer chosen" in messages["error"][-1]


# ----------------------------------------------------------------------------- the matrix (issue: nothing lost)
#
# One widget, many bad inputs in a row, as a user would try them: each gives one clear notification,
# leaves every layer as it was, adds none, and the widget then does its job. A case is
# (setup(ctx) -> None, what the user should see): ("error", text) = refused at once; ("failed", text) =
# refused by the worker (shown as an error once it stops); ("warning", text) = runs, with a warning;
# ("ok", None) = runs to the end.


class Ctx:
    def __init__(self, viewer, widget, tmp_path, image, labels):
        self.viewer, self.w, self.tmp = viewer, widget, tmp_path
        self.image, self.labels = image, labels

    def layer(self, kind, data, **kw):
        return getattr(self.viewer, f"add_{kind}")(data, name=f"case {kind}", **kw)

    def model(self, make):
        from napari_unet.core.models.checkpoint import save_model
        from napari_unet.core.network.unet import UNet

        net = UNet(depth=2, base_channels=4, n_classes=2)
        path = self.tmp / "case.safetensors"
        if make == "good":
            save_model(path, net, label_mode="instance")
        elif make == "corrupt":
            path.write_bytes(bytes(range(256)))
        elif make == "pickle":
            import torch

            torch.save(net.state_dict(), path)
        elif make == "nan":
            from model_files import save_diverged

            save_diverged(path, net)
        elif make == "foreign":
            import torch
            from safetensors.torch import save_file

            save_file({"w": torch.zeros(2)}, path)
        elif make == "folder":
            path = self.tmp / "models"
            path.mkdir(exist_ok=True)
        elif make == "missing":
            path = self.tmp / "gone.safetensors"
        return path


def _pair(ctx, image=None, labels=None):
    row = ctx.w.pairs[0]
    row.image.value = ctx.image if image is None else image
    row.labels.value = ctx.labels if labels is None else labels


def _nan_image(ctx, value):
    data = ctx.image.data.astype(np.float32)
    data[1, :8, :8] = value
    _pair(ctx, ctx.layer("image", data))


def _start(ctx, kind, make):
    ctx.w.start.value = kind
    ctx.w.checkpoint.value = ctx.model(make)


def _one_slice(ctx):
    lab = np.zeros(ctx.labels.data.shape, np.uint16)
    lab[0] = ctx.labels.data[0] if ctx.labels.data[0].any() else ctx.labels.data[1]
    _pair(ctx, labels=ctx.layer("labels", lab))
    ctx.w.val_fraction.value = 0.5


TRAIN = {
    "no-image": (
        lambda c: _pair(c, image=None) or setattr(c.w.pairs[0].image, "value", None),
        ("error", "choose an image"),
    ),
    "5d-image": (
        lambda c: _pair(
            c,
            c.layer("image", np.zeros((2, 2, 2, 32, 32), np.uint8)),
            c.layer("labels", np.ones((2, 2, 2, 32, 32), np.uint8)),
        ),
        ("error", r"\(Z, Y, X\)"),
    ),
    "multiscale-image": (
        lambda c: _pair(
            c, c.layer("image", [np.zeros((3, 128, 128), np.uint8), np.zeros((3, 64, 64), np.uint8)], multiscale=True)
        ),
        ("error", "multiscale"),
    ),
    "nan-image": (lambda c: _nan_image(c, np.nan), ("error", "NaN or inf")),
    "inf-image": (lambda c: _nan_image(c, -np.inf), ("error", "NaN or inf")),
    "negative-labels": (
        lambda c: _pair(c, labels=c.layer("labels", c.labels.data.astype(np.int16) - 2)),
        ("error", ">= 0"),
    ),
    "labels-other-shape": (
        lambda c: _pair(c, labels=c.layer("labels", np.ones((3, 64, 64), np.uint8))),
        ("error", "same height, width"),
    ),
    "labels-not-painted": (
        lambda c: _pair(c, labels=c.layer("labels", np.zeros((3, 128, 128), np.uint8))),
        ("error", "nothing is annotated yet"),
    ),
    "invalid-tile-size": (
        lambda c: setattr(c.w.tile_in, "value", 122),
        ("error", "nearest valid sizes are 120 and 124"),
    ),
    "checkpoint-missing": (lambda c: _start(c, "checkpoint file", "missing"), ("error", "choose a model file")),
    "checkpoint-pickle": (lambda c: _start(c, "checkpoint file", "pickle"), ("error", "pickle")),
    "checkpoint-nan-weights": (lambda c: _start(c, "checkpoint file", "nan"), ("failed", "NaN")),
    "checkpoint-foreign": (lambda c: _start(c, "checkpoint file", "foreign"), ("error", "not a napari-unet model")),
    "auto-with-corrupt-checkpoint": (lambda c: _start(c, "auto", "corrupt"), ("error", "damaged")),
    "semantic-object-ids": (
        lambda c: (
            _pair(c, labels=c.layer("labels", c.labels.data.astype(np.uint32) * 1000)),
            setattr(c.w.label_mode, "value", "semantic"),
        ),
        ("failed", "label mode in the Train widget"),
    ),
    "only-background-painted": (
        lambda c: _pair(c, labels=c.layer("labels", (c.labels.data > 0).astype(np.uint8))),
        ("warning", "only background is painted"),
    ),
    "validation-with-one-slice": (_one_slice, ("warning", "annotate a second slice to validate")),
    "constant-image": (lambda c: _pair(c, c.layer("image", np.full((3, 128, 128), 9, np.uint16))), ("ok", None)),
    "bool-image": (lambda c: _pair(c, c.layer("image", c.image.data > 120)), ("ok", None)),
}

PREDICT = {
    "no-image": (lambda c: setattr(c.w.image, "value", None), ("error", "no image layer chosen")),
    "5d-image": (
        lambda c: setattr(c.w.image, "value", c.layer("image", np.zeros((2, 2, 2, 32, 32), np.uint8))),
        ("error", r"\(Z, Y, X\)"),
    ),
    "multiscale-image": (
        lambda c: setattr(
            c.w.image,
            "value",
            c.layer("image", [np.zeros((128, 128), np.uint8), np.zeros((64, 64), np.uint8)], multiscale=True),
        ),
        ("error", "multiscale"),
    ),
    "model-missing": (lambda c: setattr(c.w.model_file, "value", c.model("missing")), ("error", "choose a model file")),
    "model-folder": (lambda c: setattr(c.w.model_file, "value", c.model("folder")), ("error", "choose a model file")),
    "model-corrupt": (lambda c: setattr(c.w.model_file, "value", c.model("corrupt")), ("error", "damaged")),
    "model-pickle": (lambda c: setattr(c.w.model_file, "value", c.model("pickle")), ("error", "pickle")),
    "model-nan-weights": (lambda c: setattr(c.w.model_file, "value", c.model("nan")), ("error", "NaN")),
    "model-foreign": (
        lambda c: setattr(c.w.model_file, "value", c.model("foreign")),
        ("error", "not a napari-unet model"),
    ),
    "nan-image": (
        lambda c: setattr(
            c.w.image, "value", c.layer("image", np.where(c.image.data > 200, np.nan, c.image.data).astype(np.float32))
        ),
        ("failed", "NaN or inf"),
    ),
    "inf-image": (
        lambda c: setattr(
            c.w.image, "value", c.layer("image", np.where(c.image.data > 200, np.inf, c.image.data).astype(np.float32))
        ),
        ("failed", "NaN or inf"),
    ),
    "constant-image": (
        lambda c: setattr(c.w.image, "value", c.layer("image", np.zeros((3, 128, 128), np.float32))),
        ("ok", None),
    ),
    "bool-image": (lambda c: setattr(c.w.image, "value", c.layer("image", c.image.data > 120)), ("ok", None)),
}


def _reset(ctx, name):
    w = ctx.w
    if name == "Train":
        tiny(w, steps=2)
        w.label_mode.value, w.val_fraction.value = "instance", 0.0
        w.checkpoint.value = ctx.tmp / "none.safetensors"
        _pair(ctx)
    else:
        w.model.value = "model file…"
        w.model_file.value = ctx.model("good")
        w.image.value, w.device.value, w.where.value = ctx.image, "cpu", "current slice"


@pytest.mark.parametrize("name", ["Train", "Predict"])
def test_widget_bad_input_matrix(name, viewer, tiny_em, tmp_path, qtbot, messages):
    image, labels = tiny_em
    base_image = viewer.add_image(image, name="em")
    base_labels = viewer.add_labels(labels, name="em labels")
    w = dock(viewer, name)
    ctx = Ctx(viewer, w, tmp_path, base_image, base_labels)
    start = w._on_train if name == "Train" else w._on_predict
    button = w.train_button if name == "Train" else w.predict_button
    kept = {lay.name: np.array(lay.data) for lay in (base_image, base_labels)}
    problems = []
    for case, (setup, (kind, expect)) in (TRAIN if name == "Train" else PREDICT).items():
        _reset(ctx, name)
        setup(ctx)
        before = [lay.name for lay in viewer.layers]
        n_errors, n_warnings = len(messages["error"]), len(messages["warning"])
        job = start()
        if job is not None:
            if kind == "warning":
                qtbot.waitUntil(lambda n=n_warnings: len(messages["warning"]) > n, timeout=30_000)
                w._on_stop() if name == "Train" else w._on_cancel()
            qtbot.waitUntil(lambda j=job: not j.running, timeout=60_000)
        errors, warnings = messages["error"][n_errors:], messages["warning"][n_warnings:]
        after = [lay.name for lay in viewer.layers]
        got = f"{case}: job={job is not None} errors={errors} warnings={warnings} layers {before} -> {after}"
        if kind in ("error", "failed"):
            ok = len(errors) == 1 and re.search(expect, errors[0]) and after == before
            ok = ok and (job is None) == (kind == "error")
        elif kind == "warning":
            ok = job is not None and not errors and any(re.search(expect, m) for m in warnings)
        else:
            ok = job is not None and not errors and len(after) == len(before) + (name == "Predict")
        if not ok:
            problems.append(got)
        if not button.enabled or (w.job is not None and w.job.running):
            problems.append(f"{case}: the widget is left busy")
        for lay in list(viewer.layers):  # the case's own layers (and an OK prediction) go
            if lay not in (base_image, base_labels):
                viewer.layers.remove(lay)
    for lay in (base_image, base_labels):
        np.testing.assert_array_equal(lay.data, kept[lay.name])  # nothing the user painted or opened changed
    assert not problems, "\n".join(problems)
    # ... and the widget still does its job
    _reset(ctx, name)
    job = start()
    assert job is not None
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    if name == "Train":
        assert w.result is not None and w.result.steps_done == 2
        folder = tmp_path / "taken.safetensors"
        folder.mkdir()
        assert w._on_save(folder) is None and "could not save the model" in messages["error"][-1]
        assert w._on_save(tmp_path / "mine").name == "mine.safetensors"
    else:
        assert w.complete and w._on_to_labels() is not None


# the widgets without a job: Annotate, and the two previews (they update on a timer; _update is the timer's call)

LIGHT = {
    "Annotate": {
        "5d-image": (
            lambda c: setattr(c.w.image, "value", c.layer("image", np.zeros((2, 2, 2, 8, 8), np.uint8))),
            ("error", r"\(Z, Y, X\)"),
        ),
        "multiscale-image": (
            lambda c: setattr(
                c.w.image,
                "value",
                c.layer("image", [np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint8)], multiscale=True),
            ),
            ("error", "multiscale"),
        ),
    },
    "Weight map preview": {
        "negative-labels": (
            lambda c: setattr(c.w.labels, "value", c.layer("labels", np.full((3, 128, 128), -2, np.int16))),
            ("warning", ">= 0"),
        ),
        "semantic-values-over-classes": (
            lambda c: (
                setattr(c.w.labels, "value", c.layer("labels", np.full((3, 128, 128), 70_000, np.int32))),
                setattr(c.w.mode, "value", "semantic"),
            ),
            ("ok", None),
        ),
    },
    "Deformation preview": {
        "negative-labels": (
            lambda c: setattr(c.w.labels, "value", c.layer("labels", np.full((3, 128, 128), -2, np.int16))),
            ("warning", ">= 0"),
        ),
        "labels-other-shape": (
            lambda c: setattr(c.w.labels, "value", c.layer("labels", np.ones((3, 64, 64), np.uint8))),
            ("warns", "do not match"),
        ),
        "5d-image": (
            lambda c: setattr(c.w.image, "value", c.layer("image", np.zeros((2, 2, 2, 8, 8), np.uint8))),
            ("status", "grey 2D image"),
        ),
        "nan-image": (
            lambda c: setattr(
                c.w.image,
                "value",
                c.layer("image", np.where(c.image.data > 200, np.nan, c.image.data).astype(np.float32)),
            ),
            ("ok", None),
        ),
    },
}


def _light_reset(ctx, name):
    w = ctx.w
    if name == "Annotate":
        w.image.value = ctx.image
    else:
        w.labels.value = ctx.labels
        if name == "Deformation preview":
            w.image.value = ctx.image
        else:
            w.mode.value = "instance"


def test_light_widgets_bad_input_matrix(viewer, tiny_em, tmp_path, messages):
    """Annotate and the two previews, docked side by side in one viewer: each case gives one message
    (or, for the previews, a status line) and changes no layer; every widget works afterwards."""
    image, labels = tiny_em
    base_image = viewer.add_image(image, name="em")
    base_labels = viewer.add_labels(labels, name="em labels")
    kept = {lay.name: np.array(lay.data) for lay in (base_image, base_labels)}
    problems = []
    for name, cases in LIGHT.items():
        w = dock(viewer, name)
        ctx = Ctx(viewer, w, tmp_path, base_image, base_labels)
        act = w._on_new_labels if name == "Annotate" else w._update
        for case, (setup, (kind, expect)) in cases.items():
            _light_reset(ctx, name)
            setup(ctx)
            before = [lay.name for lay in viewer.layers]
            n_errors, n_warnings = len(messages["error"]), len(messages["warning"])
            out = act()
            errors, warnings = messages["error"][n_errors:], messages["warning"][n_warnings:]
            status = w.status.value if hasattr(w, "status") else ""
            got = f"{name} {case}: result={out is not None} errors={errors} warnings={warnings} status={status!r}"
            if kind == "error":
                ok = out is None and len(errors) == 1 and re.search(expect, errors[0])
                ok = ok and [lay.name for lay in viewer.layers] == before
            elif kind in ("warning", "warns"):  # warns: the preview still shows what it can (the image)
                ok = (out is None) == (kind == "warning") and not errors and len(warnings) == 1
                ok = ok and re.search(expect, warnings[0])
            elif kind == "status":
                ok = out is None and not errors and not warnings and re.search(expect, status)
            else:
                ok = out is not None and not errors and not warnings
            if not ok:
                problems.append(got)
            for lay in list(viewer.layers):
                if lay not in (base_image, base_labels):
                    viewer.layers.remove(lay)
        _light_reset(ctx, name)
        if act() is None:
            problems.append(f"{name}: does not work after the bad inputs")
        for lay in list(viewer.layers):
            if lay not in (base_image, base_labels):
                viewer.layers.remove(lay)
    for lay in (base_image, base_labels):
        np.testing.assert_array_equal(lay.data, kept[lay.name])
    assert not problems, "\n".join(problems)
