"""Train: fit a U-Net to painted Labels layers in a background thread, with a live loss plot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)

from .._colors import output_colormap
from . import _state
from ._layers import (
    channel_select,
    check_image_layer,
    check_training_labels,
    current_index,
    current_plane,
    follow_layers,
    layer_choices,
    layer_picker,
    layer_pixels,
    show_plane,
    status_label,
)
from ._workers import Job, JobWidget, error_text, warm_up_torch

if TYPE_CHECKING:
    import napari

PREVIEW_LAYER = "prediction preview"
LIVE_STEPS = 10_000_000  # live mode trains until Stop
AUTO, SCRATCH, PRETRAINED, CHECKPOINT = "auto", "scratch", "pretrained", "checkpoint file"


def _recommended(device: str | None, start: str | None, given: dict | None = None) -> dict:
    """core's recommended settings (``resolve_settings``, the CLI's too) for the device box's choice
    ('auto' resolved) and a start: a start choice of this widget or a config's ``init``."""
    from napari_unet.core.network.device import resolve_device
    from napari_unet.core.train.config import resolve_settings

    return resolve_settings(resolve_device(device or "auto").type, start, given)


class PairRow(Container):
    """One (image, labels) training pair."""

    def __init__(self, viewer):
        super().__init__(layout="horizontal", labels=False)
        self.image = layer_picker(viewer, "image", tooltip="image")
        self.labels = layer_picker(viewer, "labels", inputs=True, tooltip="painted labels")
        self.channels = channel_select(viewer)
        self.extend([self.image, self.labels, self.channels])
        self.margins = (0, 0, 0, 0)


class TrainWidget(JobWidget, Container):
    """Pick image/labels pairs, a starting model and a few settings; train; watch; stop; save."""

    _unhook_strokes = None  # live mode: disconnects the stroke hooks (set by _watch_strokes)

    def __init__(self, viewer: napari.viewer.Viewer):  # npe2 injects the viewer
        super().__init__()
        from napari_unet.core.models.checkpoint import available_models
        from napari_unet.core.network.device import available_devices
        from napari_unet.core.train.config import LIMITS, TrainConfig

        warm_up_torch()  # torch's lazy imports now, not in the middle of the first training run

        self.viewer = viewer
        self.pairs_box = Container(labels=False)
        self.pairs: list[PairRow] = []
        self.add_pair = PushButton(text="+ pair")
        self.remove_pair = PushButton(text="- pair")
        pair_buttons = Container(widgets=[self.add_pair, self.remove_pair], layout="horizontal", labels=False)
        pair_buttons.margins = (0, 0, 0, 0)
        self.pairs_box.extend([Label(value="image / labels pairs"), pair_buttons])

        shipped = list(available_models())
        starts = [AUTO] + ([PRETRAINED] if shipped else []) + [CHECKPOINT, SCRATCH]
        self.start = ComboBox(
            label="start from",
            choices=starts,
            value=AUTO,
            tooltip="auto: when you press Train, every shipped model (and the checkpoint file, if one is chosen) is "
            "scored on your strokes in a few seconds; the one that already agrees with them, else one trained on "
            "images like yours, else scratch. The status line says which and why.",
        )
        self.pretrained = ComboBox(label="pretrained", choices=shipped or [""], visible=bool(shipped))
        # a napari-unet model file, or a bioimage.io package napari-unet exported
        self.checkpoint = FileEdit(
            label="checkpoint", mode="r", filter="*.safetensors *.zip rdf.yaml *.bioimageio.yaml", visible=False
        )
        self.keep_prior = CheckBox(
            text="keep what the model knows where I did not paint",
            value=True,
            tooltip="fine-tuning: unpainted pixels keep the starting model's prediction (distillation), so a few "
            "strokes correct the model instead of making it forget the rest. Weighed by how well the model "
            "agrees with your strokes: fully when it gets at least half of every painted class right, not at "
            "all when it gets 30% or less of one class right (then it contradicts them). Off: plain "
            "fine-tuning (the paper's)",
        )
        self.label_mode = ComboBox(label="label mode", choices=["instance", "semantic"], value="instance")

        d = {k: setting.shown for k, setting in _recommended("auto", AUTO).items()}

        def limits(name: str) -> dict:  # spin box range from core.train.LIMITS; value: the device's or the config's
            lo, hi = LIMITS[name]
            return dict(min=lo, max=hi, value=d.get(name, TrainConfig.default(name)))

        self.steps = SpinBox(label="steps", **limits("steps"))
        self.lr = FloatSpinBox(label="learning rate", step=1e-4, **limits("lr"))
        self.lr.native.setDecimals(6)
        self.tile_in = SpinBox(
            label="tile size (input)",
            **limits("tile_in"),
            tooltip="input tile side; a valid size for the depth (depth 4: 188 + 16k)",
        )
        self.augment = CheckBox(text="augmentation (elastic, flips, intensity)", value=TrainConfig.default("augment"))
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")

        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.optimizer = ComboBox(label="optimizer", choices=["adam", "sgd"], value=d["optimizer"])
        self.batch_size = SpinBox(label="batch size", **limits("batch_size"))
        self.w0 = FloatSpinBox(
            label="border w0",
            **limits("w0"),
            tooltip="eq. 2: weight of the gaps between touching objects (paper 10); follows the Weight map preview",
        )
        self.sigma = FloatSpinBox(
            label="border sigma (px)",
            **limits("sigma"),
            tooltip="eq. 2: width of the border weight (paper 5 px); follows the Weight map preview",
        )
        self.elastic_grid = SpinBox(
            label="deformation grid",
            **limits("elastic_grid"),
            tooltip="elastic deformation: control points per side (paper 3 x 3)",
        )
        self.elastic_sigma = FloatSpinBox(
            label="deformation sigma (px)",
            **limits("elastic_sigma"),
            tooltip="elastic deformation: std of the control-point displacements "
            "(paper 10 px); lower it if the Deformation preview tears labels",
        )
        self.depth = SpinBox(label="depth", **limits("depth"))
        self.base_channels = SpinBox(label="base channels", **limits("base_channels"))
        self.val_fraction = FloatSpinBox(label="validation fraction", step=0.05, **limits("val_fraction"))
        self.val_every = SpinBox(label="validate every N steps", **limits("val_every"))
        # 25, not the config's 0 (never): in the widget the preview is what the user watches
        self.preview_every = SpinBox(
            label="preview every N steps",
            **{**limits("preview_every"), "value": 25},
            tooltip="predict the slice on screen every N steps (0 = never)",
        )
        self.seed = SpinBox(label="seed", **limits("seed"))
        self._on_depth_changed()
        self.advanced = Container(
            widgets=[
                self.optimizer,
                self.batch_size,
                self.w0,
                self.sigma,
                self.elastic_grid,
                self.elastic_sigma,
                self.depth,
                self.base_channels,
                self.val_fraction,
                self.val_every,
                self.preview_every,
                self.seed,
            ],
            visible=False,
        )

        self.live = CheckBox(
            text="live: keep training while I paint",
            value=False,
            tooltip="training runs until Stop; every stroke you paint on the chosen labels reaches the training "
            "data within a second or two (only the slices you touched are copied), and the preview refreshes as "
            "it trains. Paint where the 'uncertainty' output of Predict says the model is unsure",
        )
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.save_button = PushButton(text="Save model…", enabled=False)
        self.export_button = PushButton(
            text="Export for bioimage.io…",
            enabled=False,
            tooltip="write the trained model as a bioimage.io package (.zip) that Fiji/deepImageJ, ilastik, QuPath "
            "and bioimageio.core run; the slice on screen of the first pair's image goes inside as its test image",
        )
        run_row = Container(
            widgets=[self.train_button, self.stop_button, self.save_button], layout="horizontal", labels=False
        )
        run_row.margins = (0, 0, 0, 0)
        self.status = status_label("idle")
        self.status.native.setWordWrap(True)

        self.extend(
            [
                self.pairs_box,
                self.start,
                self.pretrained,
                self.checkpoint,
                self.keep_prior,
                self.label_mode,
                self.steps,
                self.lr,
                self.tile_in,
                self.augment,
                self.device,
                self.live,
                self.show_advanced,
                self.advanced,
                run_row,
                self.export_button,
                self.status,
            ]
        )
        from ._plot import LossPlot

        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot.native)

        self.job: Job | None = None
        self.export_worker = None  # a bioimage.io export in progress; None again once its worker has finished
        self.result = None
        self.last_event = None
        self.last_live = ""  # live mode: what the last strokes painted during the run did
        self._on_add_pair()

        self.add_pair.changed.connect(self._on_add_pair)
        self.remove_pair.changed.connect(self._on_remove_pair)
        self.start.changed.connect(self._on_start_changed)
        self.show_advanced.changed.connect(lambda v: setattr(self.advanced, "visible", bool(v)))
        self.device.changed.connect(self._on_device_changed)
        self.depth.changed.connect(self._on_depth_changed)
        self.pretrained.changed.connect(self._follow_start_depth)
        self.checkpoint.changed.connect(self._follow_start_depth)
        _state.events.weights_changed.connect(self._on_weights_changed)
        self.train_button.changed.connect(self._on_train)
        self.stop_button.changed.connect(self._on_stop)
        self.save_button.changed.connect(lambda *_: self._on_save())
        self.export_button.changed.connect(lambda *_: self._on_export())
        follow_layers(viewer, self)
        self._stop_on_close()
        self._on_start_changed(self.start.value)

    # ------------------------------------------------------------------ settings

    def _on_add_pair(self, *_):
        row = PairRow(self.viewer)
        self.pairs.append(row)
        self.pairs_box.insert(len(self.pairs_box) - 1, row)
        # a new row proposes the next image and a labels layer not used yet
        imgs = [v for _, v in layer_choices(self.viewer, "image")()]
        labs = [v for _, v in layer_choices(self.viewer, "labels", inputs=True)()]
        k = len(self.pairs) - 1
        if imgs:
            row.image.value = imgs[min(k, len(imgs) - 1)]
        if labs:
            named = [lab for lab in labs if row.image.value is not None and lab.name.startswith(row.image.value.name)]
            row.labels.value = (named or labs)[min(k, len(named or labs) - 1)]
        return row

    def _on_remove_pair(self, *_):
        if len(self.pairs) > 1:
            self.pairs_box.remove(self.pairs.pop())

    def _stop_watching(self):
        """Live mode: no stroke reaches the run (or a closed widget) any more."""
        if self._unhook_strokes is not None:
            self._unhook_strokes()
            self._unhook_strokes = None

    def _on_close(self):
        self._stop_watching()
        _state.events.weights_changed.disconnect(self._on_weights_changed)

    def _on_weights_changed(self, w0: float, sigma: float):
        """The Weight map preview's w0 / sigma: what the user looked at is what training uses."""
        if not self._closed:
            self.w0.value, self.sigma.value = w0, sigma

    def _on_depth_changed(self, *_):
        """Valid input tiles of a depth-d net are ``2**d`` apart: the tile box steps by that."""
        from napari_unet.core.network.unet import min_input_size

        depth = int(self.depth.value)
        self.tile_in.step = 2**depth
        self.tile_in.min = min_input_size(depth)

    def _on_start_changed(self, value=None, *_):
        self.pretrained.visible = value == PRETRAINED
        # under 'auto' a checkpoint file, if chosen, is one more candidate
        self.checkpoint.visible = value in (CHECKPOINT, AUTO)
        self.keep_prior.visible = value != SCRATCH
        # a model fixes the architecture: depth / channels apply from scratch (also when 'auto' picks it)
        self.depth.enabled = self.base_channels.enabled = value in (SCRATCH, AUTO)
        self._follow_start_depth()
        # fine-tuning wants a 10x lower rate than training from scratch (docs/accuracy.md)
        self.lr.value = _recommended(self.device.value, value)["lr"].shown

    def _follow_start_depth(self, *_):
        """A chosen start model shows its own depth, so the tile box steps by its 2**depth."""
        from napari_unet.core.models.checkpoint import resolve_model_path
        from napari_unet.core.models.load import read_info

        name = None
        if self.start.value == PRETRAINED:
            name = self.pretrained.value
        elif self.start.value == CHECKPOINT and Path(str(self.checkpoint.value)).is_file():
            name = str(self.checkpoint.value)
        if not name:
            return
        try:
            depth = int(read_info(resolve_model_path(name)).model["depth"])
        except (OSError, ValueError, KeyError):
            return  # an unreadable file: config() says so when Train is pressed
        if self.depth.min <= depth <= self.depth.max:
            self.depth.value = depth

    def _on_device_changed(self, value=None, *_):
        settings = _recommended(value, self.start.value)
        for k in ("depth", "base_channels", "tile_in", "optimizer", "lr", "steps", "batch_size"):
            getattr(self, k).value = settings[k].shown

    def config(self):
        """The frozen TrainConfig for the current settings (raises ValueError with a user message)."""
        from napari_unet.core.models.load import read_info
        from napari_unet.core.train.config import AUTO as AUTO_START
        from napari_unet.core.train.config import TrainConfig

        init, candidates = None, ()
        if self.start.value == AUTO:
            init = AUTO_START
            # besides the shipped models: the checkpoint file, if chosen, and the models trained in this
            # session (a correction round starts from the model it corrects when that agrees best)
            path = Path(str(self.checkpoint.value))
            if path.is_file():
                read_info(path)  # a damaged file is refused now, not after the shipped models were scored
            candidates = ((str(path),) if path.is_file() else ()) + tuple(
                str(_state.model_file(name)) for name in _state.TRAINED_MODELS
            )
        elif self.start.value == PRETRAINED:
            init = self.pretrained.value or None
        elif self.start.value == CHECKPOINT:
            path = Path(str(self.checkpoint.value))
            if not path.is_file():
                raise ValueError(f"choose a model file to start from (now {str(path)!r}), or start from scratch")
            read_info(path)  # its header, now: a pickle or a damaged file is refused here, not as a 'crash'
            init = str(path)
        # the rate and keep_prior as the boxes say, else as the start needs (None: decided when it starts)
        given = {"lr": self._lr(), "keep_prior": None if self.keep_prior.value else 0.0}
        settings = _recommended(self.device.value, init, given)
        # TrainConfig checks every value (e.g. a tile size that is not valid for the depth)
        return TrainConfig(
            depth=int(self.depth.value),
            base_channels=int(self.base_channels.value),
            label_mode=self.label_mode.value,
            w0=float(self.w0.value),
            sigma=float(self.sigma.value),
            optimizer=self.optimizer.value,
            elastic_grid=int(self.elastic_grid.value),
            elastic_sigma=float(self.elastic_sigma.value),
            lr=settings["lr"].value,
            steps=int(self.steps.value),
            batch_size=int(self.batch_size.value),
            tile_in=int(self.tile_in.value),
            augment=bool(self.augment.value),
            val_fraction=float(self.val_fraction.value),
            val_every=int(self.val_every.value),
            preview_every=int(self.preview_every.value),
            init=init,
            candidates=candidates,
            seed=int(self.seed.value),
            device=self.device.value,
            keep_prior=settings["keep_prior"].value,
        )

    def _lr(self) -> float | None:
        """The rate box; None while it shows the stand-in for a rate chosen with the start (under 'auto')."""
        lr = _recommended(self.device.value, self.start.value)["lr"]
        if lr.value is None and abs(self.lr.value - lr.shown) < 1e-12:
            return None
        return float(self.lr.value)

    def training_data(self):
        """Plain copies of the chosen layers' data: ([images], [labels], channel axis, preview) -- or ValueError.

        Images with channels (RGB layers, or a layer plus its channel layers) come channels last."""
        from napari_unet.core.data.labels import check_pair

        images, labels, names, channels = [], [], [], set()
        for i, row in enumerate(self.pairs):
            img, lab = row.image.value, row.labels.value
            where = f"pair {i + 1}" if len(self.pairs) > 1 else "training pair"
            if img is None or lab is None:
                raise ValueError(f"{where}: choose an image and its painted labels (Annotate > New training labels)")
            check_image_layer(img)
            check_training_labels(lab, where)
            # copies: the user keeps painting while the worker reads them
            image, ch = layer_pixels(img, row.channels.value, copy=True)
            label = np.array(lab.data)
            if image.dtype.kind == "f" and not np.isfinite(image).all():  # else a 'crash' from the worker
                raise ValueError(
                    f"{where}: the image {img.name!r} contains NaN or inf values; replace them (e.g. "
                    "numpy.nan_to_num, or Fiji's Process > Math > Remove NaNs) before training"
                )
            check_pair(image, label, channel_axis=ch, name=f"{where} ({img.name!r} / {lab.name!r})")
            channels.add(1 if ch is None else image.shape[-1])
            images.append(image)
            labels.append(label)
            names.append((img, lab))
        if len(channels) > 1:
            raise ValueError(
                f"the pairs' images have different numbers of channels ({sorted(channels)}); train on images with "
                "the same channels"
            )
        # preview the slice on screen of the first pair
        img0 = names[0][0]
        idx = current_index(self.viewer, img0)
        preview = (0, idx[0] if idx else 0) if self.preview_every.value > 0 else None
        self._preview_like = (names[0][1], idx)
        return images, labels, (None if channels == {1} else -1), preview

    # ------------------------------------------------------------------ run

    def _on_train(self, *_):
        """Check everything on the GUI thread, then start the worker (returns the Job or None)."""
        from napari.utils.notifications import show_error, show_warning

        from napari_unet.core.train.loop import iter_train

        if self.job is not None and self.job.running:
            show_warning("training is already running: press Stop first, or wait for it to finish")
            return None
        if "predict" in _state.RUNNING:
            show_warning("a prediction is running: cancel it (Predict > Cancel) or wait for it, then train")
            return None
        try:
            config = self.config()
            images, labels, channel_axis, preview = self.training_data()
        except (ValueError, FileNotFoundError) as e:
            show_error(str(e))
            return None

        if preview is not None:
            # the preview layer is made now, empty: adding a layer costs napari 0.2-0.4 s of the GUI thread
            # (its visuals), a pause that belongs to the click, not to the running training
            self._show_preview(np.zeros(labels[0].shape[-2:], np.uint8), preview[1])
        job = Job("train")
        self.result = None
        self.plot.clear()
        feed = None
        if self.live.value:
            config = replace(config, steps=LIVE_STEPS)  # until Stop
            feed = self._watch_strokes()
        gen = iter_train(
            config, images, labels, channel_axis=channel_axis, preview=preview, cancel=job.cancel, feed=feed
        )
        return self._run_job(
            job,
            gen,
            config.device,
            total=config.steps,
            desc="U-Net training",
            status="starting…",
            yielded=self._on_event,
            returned=self._on_result,
            errored=self._on_error,
        )

    def _on_event(self, ev):
        """A TrainEvent from the worker (GUI thread): plot, progress, status, preview."""
        if self._closed:
            return
        if ev.kind != "crashed":  # a crashed event's traceback holds the whole training frame
            self.last_event = ev
        if ev.kind == "start":
            from napari.utils.notifications import show_info, show_warning

            self.status.value = ev.message
            show_info(ev.message)
            if ev.warning:
                show_warning(ev.warning)
        elif ev.kind == "step":
            self.plot.add_loss(ev.step, ev.loss)
            eta = f"{ev.eta / 60:.1f} min" if ev.eta >= 60 else f"{ev.eta:.0f} s"
            ok = f" · painted px right {ev.agreement:.2f}" if ev.agreement is not None else ""
            self.status.value = f"step {ev.step}/{ev.total} · loss {ev.loss:.4f}{ok} · ETA {eta} · {ev.device}"
            # last: napari's progress bar may process queued events (even our finished slot)
            if self.progress is not None and ev.step > self.progress.n:
                self.progress.update(ev.step - self.progress.n)
        elif ev.kind == "live":
            self.last_live = ev.message
            self.status.value = f"step {ev.step}: {ev.message}"
        elif ev.kind == "validation":
            self.plot.add_val(ev.step, ev.val_metric)
            self.status.value = f"step {ev.step}: validation IoU {ev.val_metric:.3f}"
        elif ev.kind == "crashed" and ev.result is not None:
            # the error itself arrives next (errored); keep the weights trained until now
            self.result = ev.result
            _state.register_model(_state.JUST_TRAINED, ev.result.best_model())
            self.save_button.enabled = self.export_button.enabled = True
        elif ev.kind == "preview" and ev.preview is not None:
            self._show_preview(np.asarray(ev.preview), ev.preview_where[1])

    def _show_preview(self, plane: np.ndarray, z: int):
        """The prediction preview: ``plane`` on slice ``z`` of the first pair's labels layer."""
        like, idx = self._preview_like
        if like in self.viewer.layers:
            show_plane(
                self.viewer,
                PREVIEW_LAYER,
                plane,
                like,
                (z,) if idx else (),
                kind="labels",
                opacity=0.5,
                colormap=output_colormap(),  # a prediction: 0 = background (_colors.py)
            )

    def _on_result(self, result):
        from napari.utils.notifications import show_info

        if self._closed:
            return
        self.result = result
        _state.register_model(_state.JUST_TRAINED, result.best_model())
        self.save_button.enabled = self.export_button.enabled = True
        self.plot.redraw(force=True)
        best = f"best step {result.best_step}" + (f" (val IoU {result.best_metric:.3f})" if result.val_history else "")
        self.status.value = (
            f"{result.state.value} after {result.steps_done} steps; {best}. "
            f"Use it in Predict ('{_state.JUST_TRAINED}') or Save model."
        )
        show_info(
            f"training {result.state.value} after {result.steps_done} steps; the model is available in "
            f"Predict as '{_state.JUST_TRAINED}'"
        )

    def _on_error(self, exc):
        from napari.utils.notifications import show_error

        if self._closed:
            show_error(f"training failed: {error_text(exc)}")
            return
        kept = ""
        if self.result is not None and self.result.state.value == "crashed":
            kept = (
                f" The weights of the {self.result.steps_done} steps before the crash are kept: "
                f"Save model, or use '{_state.JUST_TRAINED}' in Predict."
            )
        self.status.value = f"crashed: {error_text(exc)}.{kept}"
        show_error(f"training failed: {error_text(exc)}.{kept}")

    def _on_stop(self, *_):
        """Finish the current step and keep the result (best and last weights)."""
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.value = "stopping after the current step…"

    def _on_save(self, path=None):
        """Save the trained model (best weights); asks for a file when ``path`` is None."""
        from napari.utils.notifications import show_error, show_info, show_warning

        if self.result is None:
            show_warning("no trained model yet: train first (or wait for training to stop)")
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                self.native, "Save U-Net model", "unet.safetensors", "U-Net model (*.safetensors)"
            )
            if not path:
                return None
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        try:
            out = self.result.save(path)
        except OSError as e:
            show_error(f"could not save the model to {path}: {e}; choose another folder")
            return None
        show_info(f"model saved to {path}")
        return Path(out) if out else path

    def _watch_strokes(self):
        """Live mode: follow the chosen labels layers' paint events; return the worker's ``feed``.

        A stroke marks its slice; 300 ms after the last one (a debounce on the GUI thread) the
        touched slices are copied (only those) into a list the worker drains before its next step:
        the worker never reads a layer napari is writing.
        """
        import threading

        from qtpy.QtCore import QTimer

        lock, pending, dirty = threading.Lock(), [], set()
        layers = [(i, row.labels.value) for i, row in enumerate(self.pairs)]

        def copy_dirty():
            taken = []
            for i, z in sorted(dirty, key=lambda d: (d[0], -1 if d[1] is None else d[1])):
                layer = layers[i][1]
                if layer not in self.viewer.layers:  # deleted mid-run: nothing to copy
                    continue
                taken.append((i, z, np.array(layer.data if z is None else layer.data[z])))
            dirty.clear()
            with lock:
                pending.extend(taken)

        timer = QTimer()
        timer.setSingleShot(True)
        timer.setInterval(300)
        timer.timeout.connect(copy_dirty)

        def on_paint(i, layer):
            def mark(event=None):
                idx = current_index(self.viewer, layer)
                dirty.add((i, idx[0] if idx else None))
                timer.start()

            return mark

        hooks = [(layer, on_paint(i, layer)) for i, layer in layers]
        for layer, hook in hooks:
            layer.events.paint.connect(hook)
            layer.events.data.connect(hook)

        def unhook():
            timer.stop()
            for layer, hook in hooks:
                for ev in (layer.events.paint, layer.events.data):
                    try:
                        ev.disconnect(hook)
                    except Exception:  # the layer is gone
                        pass

        self._unhook_strokes = unhook

        def feed():
            with lock:
                out = list(pending)
                pending.clear()
            return out

        return feed

    def _on_export(self, path=None):
        """Export the trained model (best weights) as a bioimage.io package; asks for a file when ``path`` is
        None. The export runs in a thread (a few seconds); returns the worker, or None."""
        from napari.utils.notifications import show_error, show_info, show_warning

        from napari_unet.core.export import bioimageio

        if self.result is None:
            show_warning("no trained model yet: train first (or wait for training to stop)")
            return None
        if not bioimageio.available():
            show_error(f"Export for bioimage.io needs the bioimageio extra; install it with: {bioimageio.INSTALL_HINT}")
            return None
        image = self.pairs[0].image.value if self.pairs else None
        if image is None:
            show_warning("choose the first pair's image: a slice of it is the package's test image")
            return None
        data, _ = current_plane(self.viewer, image)
        if data.ndim != 2:
            show_error(f"the package's test image must be a grey 2D slice; {image.name!r} gives shape {data.shape}")
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            path, _ = QFileDialog.getSaveFileName(
                self.native,
                "Export for bioimage.io (the slice on screen goes inside)",
                "unet.zip",
                "bioimage.io package (*.zip)",
            )
            if not path:
                return None
        from napari.qt.threading import create_worker

        model = self.result.best_model()
        self.status.value = "exporting for bioimage.io…"
        self.export_button.enabled = False

        def done(out):
            self.export_button.enabled = self.result is not None
            self.status.value = f"bioimage.io package written: {out}"
            show_info(f"bioimage.io package written to {out}")

        def failed(exc):
            self.export_button.enabled = self.result is not None
            self.status.value = f"export failed: {error_text(exc)}"
            show_error(f"export failed: {error_text(exc)}")

        import getpass

        worker = create_worker(
            bioimageio.export_package,
            model,
            Path(path),
            sample=data,
            authors=[getpass.getuser() or "napari-unet user"],
            _start_thread=False,
        )

        def finished():
            self.export_worker = None

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        self.export_worker = worker
        worker.start()
        return worker

    def _set_running(self, running: bool):
        if not running:
            self._stop_watching()
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.save_button.enabled = (not running) and self.result is not None
        self.export_button.enabled = self.save_button.enabled
