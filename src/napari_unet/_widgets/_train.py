"""Train: fit a U-Net to painted Labels layers in a background thread, with a live loss plot."""

from __future__ import annotations

from pathlib import Path

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

from . import _state
from ._workers import (
    Job,
    check_image_layer,
    current_index,
    error_text,
    follow_layers,
    layer_choices,
    show_plane,
    warm_up_torch,
)

PREVIEW_LAYER = "prediction preview"
SCRATCH, PRETRAINED, CHECKPOINT = "scratch", "pretrained", "checkpoint file"


def defaults_for(device: str, fine_tune: bool = False) -> dict:
    """The settings for a device type: core.train.recommended_settings (shared with the CLI)."""
    from napari_unet.core.train import recommended_settings

    return recommended_settings(device, fine_tune=fine_tune)


def _devices() -> list[str]:
    import torch

    devs = ["auto", "cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


class PairRow(Container):
    """One (image, labels) training pair."""

    def __init__(self, viewer):
        super().__init__(layout="horizontal", labels=False)
        self.image = ComboBox(choices=layer_choices(viewer, "image"), nullable=True, tooltip="image")
        self.labels = ComboBox(choices=layer_choices(viewer, "labels"), nullable=True, tooltip="painted labels")
        self.extend([self.image, self.labels])
        self.margins = (0, 0, 0, 0)


class TrainWidget(Container):
    """Pick image/labels pairs, a starting model and a few settings; train; watch; stop; save."""

    def __init__(self, viewer: napari.viewer.Viewer):  # noqa: F821 (string annotation: npe2 injects the viewer)
        super().__init__()
        from napari_unet.core.checkpoint import available_models
        from napari_unet.core.tiling import resolve_device

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
        starts = ([PRETRAINED] if shipped else []) + [CHECKPOINT, SCRATCH]
        self.start = ComboBox(label="start from", choices=starts, value=starts[0] if shipped else SCRATCH)
        self.pretrained = ComboBox(label="pretrained", choices=shipped or [""], visible=bool(shipped))
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.safetensors", visible=False)
        self.keep_prior = CheckBox(
            text="keep what the model knows where I did not paint", value=True,
            tooltip="fine-tuning: unpainted pixels keep the starting model's prediction (distillation), so a few "
                    "strokes correct the model instead of making it forget the rest",
        )
        self.label_mode = ComboBox(label="label mode", choices=["instance", "semantic"], value="instance")

        dev = resolve_device("auto").type
        d = defaults_for(dev)
        self.steps = SpinBox(label="steps", min=1, max=100_000, value=d["steps"])
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4, value=d["lr"])
        self.lr.native.setDecimals(6)
        self.tile_size = SpinBox(label="tile size (input)", min=44, max=2044, step=4, value=d["tile_size"],
                                 tooltip="input tile side; a valid size for the depth (depth 4: 188 + 16k)")
        self.augment = CheckBox(text="augmentation (elastic, flips, intensity)", value=True)
        self.device = ComboBox(label="device", choices=_devices(), value="auto")

        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.optimizer = ComboBox(label="optimizer", choices=["adam", "sgd"], value=d["optimizer"])
        self.batch_size = SpinBox(label="batch size", min=1, max=64, value=d["batch_size"])
        self.w0 = FloatSpinBox(label="border w0", min=0.0, max=100.0, value=10.0,
                               tooltip="eq. 2: weight of the gaps between touching objects (paper 10)")
        self.sigma = FloatSpinBox(label="border sigma (px)", min=0.5, max=50.0, value=5.0,
                                  tooltip="eq. 2: width of the border weight (paper 5 px)")
        self.elastic_grid = SpinBox(label="deformation grid", min=2, max=10, value=3,
                                    tooltip="elastic deformation: control points per side (paper 3 x 3)")
        self.elastic_sigma = FloatSpinBox(label="deformation sigma (px)", min=0.0, max=50.0, value=10.0,
                                          tooltip="elastic deformation: std of the control-point displacements "
                                                  "(paper 10 px); lower it if the Deformation preview tears labels")
        self.depth = SpinBox(label="depth", min=1, max=6, value=d["depth"])
        self.base_channels = SpinBox(label="base channels", min=2, max=256, value=d["base_channels"])
        self.val_fraction = FloatSpinBox(label="validation fraction", min=0.0, max=0.9, step=0.05, value=0.0)
        self.val_every = SpinBox(label="validate every N steps", min=1, max=100_000, value=50)
        self.preview_every = SpinBox(label="preview every N steps", min=0, max=100_000, value=25,
                                     tooltip="predict the slice on screen every N steps (0 = never)")
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.advanced = Container(widgets=[self.optimizer, self.batch_size, self.w0, self.sigma, self.elastic_grid,
                                           self.elastic_sigma, self.depth,
                                           self.base_channels, self.val_fraction, self.val_every,
                                           self.preview_every, self.seed], visible=False)

        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.save_button = PushButton(text="Save model…", enabled=False)
        run_row = Container(widgets=[self.train_button, self.stop_button, self.save_button], layout="horizontal",
                            labels=False)
        run_row.margins = (0, 0, 0, 0)
        self.status = Label(value="idle")
        self.status.native.setWordWrap(True)

        self.extend([self.pairs_box, self.start, self.pretrained, self.checkpoint, self.keep_prior, self.label_mode,
                     self.steps,
                     self.lr, self.tile_size, self.augment, self.device, self.show_advanced, self.advanced,
                     run_row, self.status])
        from ._plot import LossPlot

        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot.native)

        self.job: Job | None = None
        self._closed = False  # the Qt widget is gone: slots only clean up
        self.result = None
        self.progress = None
        self.last_event = None
        self._on_add_pair()

        self.add_pair.changed.connect(self._on_add_pair)
        self.remove_pair.changed.connect(self._on_remove_pair)
        self.start.changed.connect(self._on_start_changed)
        self.show_advanced.changed.connect(lambda v: setattr(self.advanced, "visible", bool(v)))
        self.device.changed.connect(self._on_device_changed)
        self.train_button.changed.connect(self._on_train)
        self.stop_button.changed.connect(self._on_stop)
        self.save_button.changed.connect(lambda *_: self._on_save())
        follow_layers(viewer, self)
        self.native.destroyed.connect(_stopper(self))
        self._on_start_changed(self.start.value)

    # ------------------------------------------------------------------ settings

    def _on_add_pair(self, *_):
        row = PairRow(self.viewer)
        self.pairs.append(row)
        self.pairs_box.insert(len(self.pairs_box) - 1, row)
        # a new row proposes the next image and a labels layer not used yet
        imgs = [v for _, v in layer_choices(self.viewer, "image")()]
        labs = [v for _, v in layer_choices(self.viewer, "labels")()]
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

    def _on_start_changed(self, value=None, *_):
        from napari_unet.core.tiling import resolve_device

        self.pretrained.visible = value == PRETRAINED
        self.checkpoint.visible = value == CHECKPOINT
        self.keep_prior.visible = value != SCRATCH
        # a pretrained model fixes the architecture: depth / channels are ignored then
        self.depth.enabled = self.base_channels.enabled = value == SCRATCH
        # fine-tuning wants a 10x lower rate than training from scratch (docs/accuracy.md)
        dev = resolve_device(self.device.value or "auto").type
        self.lr.value = defaults_for(dev, fine_tune=value != SCRATCH)["lr"]

    def _on_device_changed(self, value=None, *_):
        from napari_unet.core.tiling import resolve_device

        d = defaults_for(resolve_device(value or "auto").type, fine_tune=self.start.value != SCRATCH)
        for k in ("depth", "base_channels", "tile_size", "optimizer", "lr", "steps", "batch_size"):
            getattr(self, k).value = d[k]

    def config(self):
        """The frozen TrainConfig for the current settings (raises ValueError with a user message)."""
        from napari_unet.core.model import is_valid_size, nearest_valid_sizes
        from napari_unet.core.train import TrainConfig

        init = None
        if self.start.value == PRETRAINED:
            init = self.pretrained.value or None
        elif self.start.value == CHECKPOINT:
            path = Path(str(self.checkpoint.value))
            if not path.is_file():
                raise ValueError(f"choose a model file to start from (now {str(path)!r}), or start from scratch")
            init = str(path)
        tile, depth = int(self.tile_size.value), int(self.depth.value)
        if init is None and not is_valid_size(tile, depth):
            lo, hi = nearest_valid_sizes(tile, depth)
            near = f"{lo} and {hi}" if lo is not None else f"{hi}"
            raise ValueError(f"tile size {tile} gives no valid output for depth {depth}; nearest valid sizes are {near}")
        return TrainConfig(
            depth=depth, base_channels=int(self.base_channels.value), label_mode=self.label_mode.value,
            w0=float(self.w0.value), sigma=float(self.sigma.value), optimizer=self.optimizer.value,
            elastic_grid=int(self.elastic_grid.value), elastic_sigma=float(self.elastic_sigma.value),
            lr=float(self.lr.value), steps=int(self.steps.value), batch_size=int(self.batch_size.value),
            tile_size=tile, augment=bool(self.augment.value), val_fraction=float(self.val_fraction.value),
            val_every=int(self.val_every.value), preview_every=int(self.preview_every.value),
            init=init, seed=int(self.seed.value), device=self.device.value,
            keep_prior=1.0 if (init is not None and self.keep_prior.value) else 0.0,
        )

    def training_data(self):
        """Plain copies of the chosen layers' data: ([images], [labels], preview) -- or ValueError."""
        from napari_unet.core.labels import check_pair

        images, labels, names = [], [], []
        for i, row in enumerate(self.pairs):
            img, lab = row.image.value, row.labels.value
            where = f"pair {i + 1}" if len(self.pairs) > 1 else "training pair"
            if img is None or lab is None:
                raise ValueError(f"{where}: choose an image and its painted labels (Annotate > New training labels)")
            check_image_layer(img)
            # copies: the user keeps painting while the worker reads them
            image = np.array(img.data)
            label = np.array(lab.data)
            check_pair(image, label, name=f"{where} ({img.name!r} / {lab.name!r})")
            images.append(image)
            labels.append(label)
            names.append((img, lab))
        # preview the slice on screen of the first pair
        img0 = names[0][0]
        idx = current_index(self.viewer, img0)
        preview = (0, idx[0] if idx else 0) if self.preview_every.value > 0 else None
        self._preview_like = (names[0][1], idx)
        return images, labels, preview

    # ------------------------------------------------------------------ run

    def _on_train(self, *_):
        """Check everything on the GUI thread, then start the worker (returns the Job or None)."""
        from napari.utils import progress
        from napari.utils.notifications import show_error, show_warning

        from napari_unet.core.train import iter_train

        from napari_unet.core.tiling import resolve_device

        from ._workers import gui_threads, start_worker

        if self.job is not None and self.job.running:
            show_warning("training is already running: press Stop first, or wait for it to finish")
            return None
        if "predict" in _state.RUNNING:
            show_warning("a prediction is running: cancel it (Predict > Cancel) or wait for it, then train")
            return None
        try:
            config = self.config()
            images, labels, preview = self.training_data()
        except (ValueError, FileNotFoundError) as e:
            show_error(str(e))
            return None

        self.job = job = Job("train")
        self.result = None
        self.plot.clear()
        gen = iter_train(config, images, labels, preview=preview, cancel=job.cancel)
        self.progress = progress(total=config.steps, desc="U-Net training")
        self._set_running(True)
        self.status.value = "starting…"
        _state.RUNNING["train"] = job
        on_cpu = resolve_device(config.device).type == "cpu"
        job.worker = start_worker(gen, yielded=self._on_event, returned=self._on_result, errored=self._on_error,
                                  finished=self._on_finished, threads=gui_threads() if on_cpu else None)
        return job

    def _on_event(self, ev):
        """A TrainEvent from the worker (GUI thread): plot, progress, status, preview."""
        if self._closed:
            return
        if ev.kind != "crashed":  # a crashed event's traceback holds the whole training frame
            self.last_event = ev
        if ev.kind == "step":
            self.plot.add_loss(ev.step, ev.loss)
            eta = f"{ev.eta / 60:.1f} min" if ev.eta >= 60 else f"{ev.eta:.0f} s"
            self.status.value = f"step {ev.step}/{ev.total} · loss {ev.loss:.4f} · ETA {eta} · {ev.device}"
            # last: napari's progress bar may process queued events (even our finished slot)
            if self.progress is not None and ev.step > self.progress.n:
                self.progress.update(ev.step - self.progress.n)
        elif ev.kind == "validation":
            self.plot.add_val(ev.step, ev.val_metric)
            self.status.value = f"step {ev.step}: validation IoU {ev.val_metric:.3f}"
        elif ev.kind == "crashed" and ev.result is not None:
            # the error itself arrives next (errored); keep the weights trained until now
            self.result = ev.result
            _state.register_model(_state.JUST_TRAINED, ev.result.best_model())
            self.save_button.enabled = True
        elif ev.kind == "preview" and ev.preview is not None:
            like, idx = self._preview_like
            if like in self.viewer.layers:
                z = ev.preview_where[1] if idx else None
                show_plane(self.viewer, PREVIEW_LAYER, np.asarray(ev.preview), like,
                           (z,) if z is not None else (), kind="labels", opacity=0.5)

    def _on_result(self, result):
        from napari.utils.notifications import show_info

        if self._closed:
            return
        self.result = result
        _state.register_model(_state.JUST_TRAINED, result.best_model())
        self.save_button.enabled = True
        self.plot.redraw(force=True)
        best = f"best step {result.best_step}" + (f" (val IoU {result.best_metric:.3f})" if result.val_history else "")
        self.status.value = (f"{result.state.value} after {result.steps_done} steps; {best}. "
                             f"Use it in Predict ('{_state.JUST_TRAINED}') or Save model.")
        show_info(f"training {result.state.value} after {result.steps_done} steps; the model is available in "
                  f"Predict as '{_state.JUST_TRAINED}'")

    def _on_error(self, exc):
        from napari.utils.notifications import show_error

        if self._closed:
            show_error(f"training failed: {error_text(exc)}")
            return
        kept = ""
        if self.result is not None and self.result.state.value == "crashed":
            kept = (f" The weights of the {self.result.steps_done} steps before the crash are kept: "
                    f"Save model, or use '{_state.JUST_TRAINED}' in Predict.")
        self.status.value = f"crashed: {error_text(exc)}.{kept}"
        show_error(f"training failed: {error_text(exc)}.{kept}")

    def _on_finished(self, *_):
        if not self._closed:
            self._set_running(False)
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if _state.RUNNING.get("train") is self.job:
            _state.RUNNING.pop("train", None)
        if self.job is not None:
            self.job.worker = None  # drop the generator (and its model/tensors) now

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

            path, _ = QFileDialog.getSaveFileName(self.native, "Save U-Net model", "unet.safetensors",
                                                  "U-Net model (*.safetensors)")
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

    def _set_running(self, running: bool):
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.save_button.enabled = (not running) and self.result is not None


def _stopper(widget):
    """Closing the widget (or napari) stops training: holds the Job, not the widget."""
    holder = {"widget": widget}

    def stop(*_):
        w = holder.pop("widget", None)
        if w is not None:
            w._closed = True
        job = getattr(w, "job", None)
        if job is not None:
            job.stop(quit=True)
            if _state.RUNNING.get("train") is job:
                _state.RUNNING.pop("train", None)

    return stop
