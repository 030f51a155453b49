"""Train widget: a few steps of a tiny net on the shipped EM sample, through the manifest."""

import os
import sys
import threading

import numpy as np
import pytest
from widget_helpers import GapMeter, dock, record_gap

pytestmark = pytest.mark.gui


def tiny(w, steps=12, preview_every=4):
    """Settings for a tiny, fast network (2 shared CPU cores in CI)."""
    w.start.value = "scratch"
    w.device.value = "cpu"
    w.depth.value = 2
    w.base_channels.value = 4
    w.tile_in.value = 124
    w.steps.value = steps
    w.preview_every.value = preview_every
    w.optimizer.value = "adam"
    w.lr.value = 1e-3


def test_train_plots_loss_previews_and_keeps_gui_alive(em_viewer, qtbot, tmp_path):
    from napari_unet._widgets import _state
    from napari_unet._widgets._workers import TORCH_WARM

    with GapMeter() as dock_gap:  # docking starts torch's one-time lazy imports in a thread
        w = dock(em_viewer, "Train")
        qtbot.waitUntil(TORCH_WARM.is_set, timeout=60_000)
    if dock_gap.ticks >= 2:  # 0 when an earlier test already did the one-time imports
        record_gap("docking Train (one-time torch imports)", dock_gap.longest, dock_gap.ticks)
    assert w.pairs[0].image.value.name == "EM (ISBI 2012)"
    assert w.pairs[0].labels.value.name == "EM ground truth (do not paint)"
    tiny(w)
    em_viewer.dims.set_current_step(0, 2)
    with GapMeter() as gap:
        job = w._on_train()
        assert job is not None and w.stop_button.enabled and not w.train_button.enabled
        qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=60_000)
    record_gap("training", gap.longest, gap.ticks)
    # no timed assertion (noisy machines): the loop must have kept ticking while the worker ran;
    # the longest gap is reported in the closing note and docs/user-guide.md
    assert gap.ticks >= 3
    assert len(w.plot.steps) == 12 and np.all(np.isfinite(w.plot.losses))
    # the canvas painted the curve: its pixels hold the loss colour
    from napari_unet._widgets._plot import LOSS_COLOUR

    img = w.plot.native.grab().toImage()
    colours = {img.pixelColor(x, y).getRgb()[:3] for x in range(0, img.width(), 2) for y in range(img.height())}
    assert len(w.plot.last_polyline) > 1
    assert any(sum(abs(a - b) for a, b in zip(c, LOSS_COLOUR)) < 60 for c in colours)
    assert w.result.state.value == "done" and w.result.steps_done == 12
    pv = em_viewer.layers["prediction preview"]
    assert pv.data.shape == (1, 256, 256) and pv.translate[0] == 2
    assert set(np.unique(pv.data)) <= {0, 1}
    assert _state.latest() in _state.TRAINED_MODELS
    assert "train" not in _state.RUNNING
    assert w.train_button.enabled and w.save_button.enabled
    saved = w._on_save(tmp_path / "em-tiny")
    from napari_unet.core.models.load import load_model

    m = load_model(saved)
    assert m.depth == 2 and m.n_classes == 2


def test_stop_ends_the_worker_and_keeps_the_result(em_viewer, qtbot):
    w = dock(em_viewer, "Train")
    tiny(w, steps=5000, preview_every=0)
    job = w._on_train()
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 3, timeout=60_000)
    w._on_stop()
    qtbot.waitUntil(lambda: not job.running and w.result is not None, timeout=30_000)
    assert w.result.state.value == "stopped"
    assert 3 <= w.result.steps_done < 5000
    assert w.result.best_state and w.result.last_state


def test_validation_metric_is_plotted(em_viewer, qtbot):
    w = dock(em_viewer, "Train")
    tiny(w, steps=6, preview_every=0)
    w.val_fraction.value = 0.25
    w.val_every.value = 3
    job = w._on_train()
    qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=60_000)
    assert len(w.plot.vals) == 2 and all(0 <= v <= 1 for v in w.plot.vals)


def test_two_pairs_train(em_viewer, qtbot):
    from napari_unet._sample_layers import make_nuclei_sample

    for data, kw, kind in make_nuclei_sample():
        getattr(em_viewer, f"add_{kind}")(data, **kw)
    w = dock(em_viewer, "Train")
    row = w._on_add_pair()
    row.image.value = em_viewer.layers["Nuclei (DSB 2018)"]
    row.labels.value = em_viewer.layers["Nuclei ground truth (do not paint)"]
    assert len(w.pairs) == 2
    tiny(w, steps=4, preview_every=0)
    job = w._on_train()
    qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=60_000)
    assert w.result.info.training["n_train_slices"] == 8 + 6


def test_closing_the_viewer_stops_training(make_napari_viewer, qtbot):
    from napari_unet._widgets import _state

    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "em")
    w = dock(viewer, "Train")
    tiny(w, steps=100_000, preview_every=0)
    job = w._on_train()
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 1, timeout=60_000)
    viewer.close()
    assert job.cancel.is_set()
    qtbot.waitUntil(lambda: not job.running, timeout=30_000)
    assert "train" not in _state.RUNNING


def test_settings_come_from_the_config_and_the_weight_map_preview(em_viewer):
    from napari_unet.core.train.config import LIMITS

    w = dock(em_viewer, "Train")
    assert (w.steps.min, w.steps.max) == LIMITS["steps"]
    w.depth.value = 3
    assert w.tile_in.step == 8  # valid input tiles of a depth-3 net are 2**3 apart
    w.depth.value = 4
    assert w.tile_in.step == 16
    preview = dock(em_viewer, "Weight map preview")
    preview.w0.value, preview.sigma.value = 4.5, 7.0
    assert (w.w0.value, w.sigma.value) == (4.5, 7.0)


def test_widget_and_cli_train_the_same_model(em_viewer, qtbot, tmp_path):
    """The defaults are one recipe: the Train widget as it opens (start 'auto') and `napari-unet train`
    with no options give the same model for the same strokes and seed."""
    import tifffile
    import torch

    from napari_unet.cli import main
    from napari_unet.core.models.load import load_model

    w = dock(em_viewer, "Train")
    assert w.start.value == "auto" and w.keep_prior.value
    w.device.value = "cpu"
    w.steps.value = 3
    w.preview_every.value = 0
    job = w._on_train()
    qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=120_000)
    assert "start from em-membrane" in w.result.info.training["start"]
    from_widget = load_model(w._on_save(tmp_path / "widget"))
    # the next run (a correction round) weighs the model just trained against the shipped ones
    assert any(c.endswith("run-1.safetensors") for c in w.config().candidates)

    image, labels = tmp_path / "image.tif", tmp_path / "labels.tif"
    tifffile.imwrite(image, em_viewer.layers["EM (ISBI 2012)"].data)
    tifffile.imwrite(labels, em_viewer.layers["EM ground truth (do not paint)"].data)
    out = tmp_path / "cli.safetensors"
    argv = ["train", "--images", str(image), "--labels", str(labels), "--steps", "3", "--device", "cpu"]
    assert main([*argv, "-o", str(out), "-q"]) == 0
    from_cli = load_model(out)

    a, b = from_widget.info.training, from_cli.info.training
    for key in ("init", "keep_prior", "lr", "optimizer", "tile_in", "w0", "sigma", "seed", "class_balance"):
        assert a["config"][key] == b["config"][key], key
    assert a["start"] == b["start"] and a["start_agreement"] == b["start_agreement"]
    for name, t in from_widget.state_dict().items():
        torch.testing.assert_close(t, from_cli.state_dict()[name], msg=name)


def test_status_lines_wrap_instead_of_cutting_off(em_viewer):
    """A docked widget shows its whole status (a start choice and its reason is a sentence or two)."""
    widgets = [dock(em_viewer, name) for name in ("Train", "Predict", "Weight map preview", "Deformation preview")]
    for w in widgets:
        assert w.status.native.wordWrap(), w
    train = widgets[0]
    train.status.value = "start from em-membrane: it already agrees 0.97 with your strokes, so it is fine-tuned " * 2
    width = train.native.width()
    assert train.status.native.heightForWidth(width) > train.status.native.fontMetrics().height()


def test_a_long_status_never_widens_the_dock(make_napari_viewer, qtbot):
    """The status wraps within the dock's width: a long start message once widened the dock and
    resized (redrew) the canvas the moment training started."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-unet", "em")
    train = dock(viewer, "Train")
    qtbot.wait(200)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    before, dock_width = tuple(canvas.size), train.native.width()
    train.status.value = (
        "start from em-membrane: it already agrees 0.97 with your strokes, so it is fine-tuned and kept where "
        "you did not paint (keep_prior 1.00) [em-membrane (agrees 0.97 with your strokes, image similarity "
        "0.94); nuclei (agrees 0.82 with your strokes, image similarity 0.20)]"
    )
    qtbot.wait(200)
    assert train.native.width() == dock_width
    assert tuple(canvas.size)[0] == before[0]


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_export_for_bioimageio_after_training(em_viewer, qtbot, tmp_path, monkeypatch):
    """The button writes a package that loads back as the trained model; without the extra it says what
    to install."""
    pytest.importorskip("bioimageio.core")
    from napari_unet.core.export import bioimageio
    from napari_unet.core.models.load import load_model
    from napari_unet.core.predict.tiles import predict

    w = dock(em_viewer, "Train")
    assert not w.export_button.enabled  # nothing trained yet
    tiny(w, steps=2, preview_every=0)
    job = w._on_train()
    qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=60_000)
    assert w.export_button.enabled
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    monkeypatch.setattr(bioimageio, "available", lambda: False)
    assert w._on_export(tmp_path / "none.zip") is None
    assert "pip install 'napari-unet[bioimageio]'" in errors[-1]
    monkeypatch.undo()
    worker = w._on_export(tmp_path / "mine.zip", details={**w._export_defaults(), "authors": "A. Biologist"})
    assert w.export_worker is worker
    # the worker's finished signal comes after its returned one: the status is final and the thread done
    qtbot.waitUntil(lambda: w.export_worker is None, timeout=60_000)
    assert "written" in w.status.value, w.status.value
    assert not worker.is_running
    back = load_model(tmp_path / "mine.zip")
    img = em_viewer.layers["EM (ISBI 2012)"].data[0, :96, :96]
    np.testing.assert_array_equal(predict(back, img), predict(w.result.best_model(), img))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are set on Linux only")
def test_jobs_run_below_the_gui_thread():
    """A job's worker thread runs at nice +10 (so the GUI and the canvas take a core first); the
    thread that drains a job synchronously (here the main thread, as a test or script would) is left as is."""
    from napari_unet._widgets._workers import BACKGROUND_NICE, drain

    def nice():
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def job():
        seen.append(nice())
        yield "event"
        return "result"

    def probe():  # a sandbox may forbid renicing: then the job runs as is, and there is nothing to test
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice())
            seen.append(0)
        except OSError:
            pass

    seen: list[int] = []
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    if not seen:
        pytest.skip("this system does not let a thread change its priority")
    seen.clear()
    main_before = nice()
    t = threading.Thread(target=lambda: list(drain(job(), threads=1)))
    t.start()
    t.join()
    list(drain(job()))
    assert seen == [max(BACKGROUND_NICE, main_before), main_before] and nice() == main_before


@pytest.mark.parametrize("device", ("cuda", "cpu", "mps"))
def test_settings_follow_the_device_and_the_start_as_the_table_says(em_viewer, monkeypatch, device):
    """The boxes show tests/settings_table.py's row for the device 'auto' finds and the start chosen, and
    config() passes what is left to decide at the start (the rate and keep_prior under 'auto') as None."""
    from settings_table import SHOWN_AUTO_LR, expected, pretend_device

    from napari_unet.core.models.checkpoint import resolve_model_path

    w = dock(em_viewer, "Train")
    w.checkpoint.value = resolve_model_path("em-membrane")
    pretend_device(monkeypatch, device)
    for start, row in (("scratch", "scratch"), ("auto", "auto"), ("pretrained", "model"), ("checkpoint file", "model")):
        w.start.value = start
        want = expected(device, row)
        shown_lr = SHOWN_AUTO_LR if want["lr"] is None else want["lr"]
        assert w.lr.value == pytest.approx(shown_lr), start  # the start sets the rate
        w._on_device_changed("auto")  # the device sets the rest
        shown = {
            k: getattr(w, k).value for k in ("depth", "base_channels", "tile_in", "optimizer", "steps", "batch_size")
        }
        assert shown == {k: want[k] for k in shown}, start
        assert w.lr.value == pytest.approx(shown_lr), start
        cfg = w.config()
        assert (cfg.lr, cfg.keep_prior) == (want["lr"], want["keep_prior"]), start
        w.keep_prior.value = False  # unchecked: plain fine-tuning
        assert w.config().keep_prior == 0.0
        w.keep_prior.value = True
        w.lr.value = 0.02  # a rate typed in is the rate, under 'auto' too
        assert w.config().lr == pytest.approx(0.02)


@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_code_carrying_package_is_no_start_and_runs_nothing(em_viewer, tmp_path, monkeypatch):
    """Training starts only from napari-unet models, which carry no code: a package whose weights need its
    model.py, as the checkpoint file or an 'auto' candidate, is refused from its header, before anything
    of it loads; no dialog is needed, and its code never runs."""
    pytest.importorskip("bioimageio.core")
    from package_files import colleague_package

    from napari_unet._widgets import _trust

    colleague, marker, _ = colleague_package(tmp_path)
    monkeypatch.setattr(_trust, "confirm_trust", lambda *a: pytest.fail("no dialog: nothing of it may load"))
    w = dock(em_viewer, "Train")
    w.checkpoint.value = colleague
    for start in ("auto", "checkpoint file"):
        w.start.value = start
        with pytest.raises(ValueError, match="did not write"):
            w.config()
    assert not marker.exists()
