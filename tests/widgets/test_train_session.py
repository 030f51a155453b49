"""Train widget, issue 28 points 5, 8, 9 and 11: runs kept by name and saved, the weight-map preview shares
Train's settings and weights, progress while the auto start scores, a plot that fits the run, a steady ETA,
and an export that asks who made the model."""

import getpass
from types import SimpleNamespace

import numpy as np
import pytest
from widget_helpers import dock

pytestmark = pytest.mark.gui


def tiny(w, steps=3):
    w.start.value = "scratch"
    w.device.value = "cpu"
    w.depth.value = 2
    w.base_channels.value = 4
    w.tile_in.value = 124
    w.steps.value = steps
    w.preview_every.value = 0
    w.optimizer.value = "adam"


def run(w, qtbot, timeout=60_000):
    job = w._on_train()
    assert job is not None
    qtbot.waitUntil(lambda: not job.running and w.train_button.enabled, timeout=timeout)
    return job


# ----------------------------------------------------------------------------- 5: runs kept and saved


def test_two_runs_are_both_kept_selectable_and_saved_for_the_next_session(em_viewer, qtbot):
    from napari_unet._widgets import _state

    w = dock(em_viewer, "Train")
    predict = dock(em_viewer, "Predict")
    tiny(w, steps=3)
    run(w, qtbot)
    tiny(w, steps=2)  # the accidental short run: it must not replace run 1
    run(w, qtbot)
    assert _state.SESSION == ["run 1", "run 2"]
    assert w.saved_model.value == "run 2" and predict.model.value == "run 2"
    assert set(w.saved_model.choices) - {None} == {"run 1", "run 2"}
    labels = {w.saved_model.native.itemText(i) for i in range(w.saved_model.native.count())}
    assert {_state.LABELS["run 1"], _state.LABELS["run 2"]} <= labels
    labels = _state.LABELS
    assert labels["run 1"].startswith("run 1 · 3 steps") and labels["run 2"].startswith("run 2 · 2 steps")
    assert {"run 1", "run 2"} <= set(predict.model.choices)
    # Save acts on the chosen run
    w.saved_model.value = "run 1"
    assert w.save_button.enabled
    # every run is saved as it ends: closing napari loses nothing, and the next session lists them
    folder = _state.models_dir()
    assert {f.name for f in folder.glob("run-*.safetensors")} == {"run-1.safetensors", "run-2.safetensors"}
    em_viewer.close()
    _state.clear()  # a new session
    assert _state.SESSION == [] and set(_state.TRAINED_MODELS) == {"run 1", "run 2"}
    assert _state.LABELS["run 1"].startswith("run 1 · 3 steps") and _state.LABELS["run 1"].endswith("(saved)")
    assert _state.TRAINED_MODELS["run 2"].depth == 2  # loaded when chosen
    # a new run continues the numbering instead of overwriting a saved one
    assert _state.register_run(_state.TRAINED_MODELS["run 1"], "1 steps") == "run 3"


def test_save_writes_the_chosen_run(em_viewer, qtbot, tmp_path):
    from napari_unet._widgets import _state
    from napari_unet.core.models.load import load_model

    w = dock(em_viewer, "Train")
    tiny(w, steps=2)
    run(w, qtbot)
    w.depth.value = 3
    w.tile_in.value = 132
    w.steps.value = 1
    run(w, qtbot)
    w.saved_model.value = "run 1"
    assert load_model(w._on_save(tmp_path / "first")).depth == 2
    w.saved_model.value = "run 2"
    assert load_model(w._on_save(tmp_path / "second")).depth == 3
    assert _state.latest() == "run 2"


# ----------------------------------------------------------------------------- 8: the weight-map preview


def test_weight_preview_shows_the_training_weights_and_shares_every_setting(em_viewer, qtbot):
    from napari_unet._widgets import _state
    from napari_unet.core.train.sampling import slice_weights
    from napari_unet.core.train.weights import weight_map

    train = dock(em_viewer, "Train")
    preview = dock(em_viewer, "Weight map preview")
    deform = dock(em_viewer, "Deformation preview")
    # one name per sigma, in every widget
    assert train.sigma.label == preview.sigma.label == "border width σ (px)"
    assert train.elastic_sigma.label == deform.sigma.label == "deformation strength σ (px)"

    # every setting travels both ways
    preview.w0.value, preview.sigma.value = 4.5, 7.0
    preview.class_balance.value, preview.border.value, preview.mode.value = False, False, "semantic"
    assert (train.w0.value, train.sigma.value) == (4.5, 7.0)
    assert (train.class_balance.value, train.border.value, train.label_mode.value) == (False, False, "semantic")
    cfg = train.config()
    assert (cfg.w0, cfg.sigma, cfg.class_balance, cfg.border_weights, cfg.label_mode) == (
        4.5,
        7.0,
        False,
        False,
        "semantic",
    )
    train.w0.value, train.class_balance.value, train.border.value, train.label_mode.value = 8.0, True, True, "instance"
    assert (preview.w0.value, preview.sigma.value, preview.class_balance.value) == (8.0, 7.0, True)
    assert preview.border.value and preview.mode.value == "instance"
    assert _state.weights().w0 == 8.0
    # ticked toggles are the paper's weights unless the start is kept: the config leaves them to the start
    assert train.config().class_balance is None and train.config().border_weights is None

    # strokes: a few % painted, so training does not class-balance this slice; neither does the preview
    strokes = np.zeros(em_viewer.layers["EM ground truth (do not paint)"].data.shape, np.int32)
    strokes[0, 40:43, 20:200] = 1
    strokes[0, 100:103, 20:200] = 2
    strokes[0, 150:153, 20:200] = 3
    layer = em_viewer.add_labels(strokes, name="strokes")
    em_viewer.dims.set_current_step(0, 0)
    preview.labels.value = layer
    out = preview._update()
    assert out is not None and out.colorbar.visible
    shown = np.asarray(out.data).reshape(strokes.shape[1:])
    np.testing.assert_allclose(shown, slice_weights(strokes[0], train.config()))
    balanced = weight_map(strokes[0], w0=8.0, sigma=7.0, mode="instance", class_balance=True)
    assert not np.allclose(shown, balanced)  # the old preview's class-balanced map is not what training uses
    # a densely painted slice is class-balanced, in training and here
    dense = em_viewer.layers["EM ground truth (do not paint)"]
    preview.labels.value = dense
    out = preview._update()
    np.testing.assert_allclose(
        np.asarray(out.data).reshape(dense.data.shape[1:]), slice_weights(np.asarray(dense.data[0]), train.config())
    )


# ----------------------------------------------------------------------------- 9: feedback


def test_step_clock_waits_for_a_few_steps_and_ignores_a_slow_first_one():
    from napari_unet._widgets._train import StepClock

    clock = StepClock()
    t = 0.0
    for step in range(1, 6):
        t += 30.0 if step == 1 else 1.0  # warm-up: the first step takes 30 s, the others 1 s
        clock.tick(step, t)
        assert step > 5 or clock.eta(85 - step) == "…"
    clock.tick(6, t + 1.0)
    assert clock.eta(79) == "1.3 min"  # 79 steps x 1 s, not 79 x 7 s (the mean)


def test_best_is_explained():
    from napari_unet._widgets._train import best_text

    val = SimpleNamespace(val_history=[(10, 0.5)], best_step=10, best_metric=0.81, steps_done=20)
    assert "highest validation IoU" in best_text(val)
    loss = SimpleNamespace(val_history=[], best_step=45, best_metric=-0.2, steps_done=60)
    assert best_text(loss) == "best: step 45 (lowest smoothed training loss; no validation data)"
    last = SimpleNamespace(val_history=[], best_step=60, best_metric=None, steps_done=60)
    assert "last step" in best_text(last)


def test_plot_axes_fit_the_run(qtbot):
    from napari_unet._widgets._plot import VAL_COLOUR, LossPlot

    plot = LossPlot(interval=0.0)
    qtbot.addWidget(plot.native)
    plot.native.resize(300, 150)
    plot.set_total(60)
    for s in range(1, 61):
        plot.add_loss(s, 0.001 + 1.0 / s)
    img = plot.native.grab().toImage()
    assert plot.x_max == 60
    # no validation: no orange 0-1 axis
    colours = {img.pixelColor(x, y).getRgb()[:3] for x in range(img.width()) for y in range(img.height())}
    assert not any(sum(abs(a - b) for a, b in zip(c, VAL_COLOUR)) < 60 for c in colours)
    plot.set_total(None)  # live: a nice number past the last step
    plot.native.grab()
    assert plot.x_max == 100


def test_auto_start_shows_its_scoring_and_keeps_its_reason(em_viewer, qtbot):
    w = dock(em_viewer, "Train")
    w.device.value = "cpu"
    w.steps.value = 2
    w.preview_every.value = 0
    assert w.start.value == "auto"
    seen, on_event = [], w._on_event

    def watch(ev):  # the status line as each event leaves it
        on_event(ev)
        seen.append(w.status.value)

    w._on_event = watch
    run(w, qtbot, timeout=180_000)
    assert any(s.startswith("scoring start 1/") for s in seen), seen
    assert w.start_reason.value.startswith("start from"), w.start_reason.value
    assert w.start_reason.value not in w.status.value  # its own line, kept after "done"
    assert w.status.value.startswith("done after 2 steps")
    w.plot.native.grab()  # a paint
    assert w.plot.x_max == 2  # the x axis ends at the run's last step


# ----------------------------------------------------------------------------- 11: export


def test_export_asks_for_the_details_and_never_uses_the_login_name(em_viewer, qtbot, tmp_path, monkeypatch):
    from napari_unet._widgets import _train
    from napari_unet.core.export import bioimageio

    w = dock(em_viewer, "Train")
    tiny(w, steps=1)
    run(w, qtbot)
    defaults = w._export_defaults()
    assert defaults["name"] == "U-Net run 1" and defaults["authors"] == "" and defaults["license"] == "CC-BY-4.0"
    assert "doi:10.3389/fnana.2015.00142" in defaults["cite"]  # the EM sample's data
    assert getpass.getuser() not in defaults.values()
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    monkeypatch.setattr(bioimageio, "available", lambda: True)
    # the dialog's answers reach export_package as the CLI's flags do
    asked = []
    monkeypatch.setattr(_train, "ask_export_details", lambda parent, d: asked.append(d) or {**d, "authors": ""})
    assert w._on_export(tmp_path / "x.zip") is None and "at least one author" in errors[-1]
    calls = []
    monkeypatch.setattr(bioimageio, "export_package", lambda model, out, **kw: calls.append((model, kw)) or out)
    answers = {**defaults, "authors": "Ada Lovelace, Alan Turing", "description": "EM membranes", "license": "MIT"}
    monkeypatch.setattr(_train, "ask_export_details", lambda parent, d: answers)
    worker = w._on_export(tmp_path / "mine.zip")
    qtbot.waitUntil(lambda: w.export_worker is None, timeout=30_000)
    assert worker is not None and calls
    model, kw = calls[-1]
    assert kw["authors"] == ["Ada Lovelace", "Alan Turing"] and kw["license"] == "MIT"
    assert kw["name"] == "U-Net run 1" and kw["cite"][0]["doi"] == "10.3389/fnana.2015.00142"
    assert model.info.description == "EM membranes"
    assert w._export_defaults()["authors"] == "Ada Lovelace, Alan Turing"  # offered again next time
    # a cancelled dialog exports nothing
    monkeypatch.setattr(_train, "ask_export_details", lambda parent, d: None)
    assert w._on_export(tmp_path / "none.zip") is None
