"""Train: fit a U-Net to painted Labels layers in a background thread, with a live loss plot."""

from __future__ import annotations

import copy
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
from ._dock import fit_dock
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
from ._weights_preview import (
    BALANCE_TEXT,
    BALANCE_TIP,
    BORDER_TEXT,
    BORDER_TIP,
    SIGMA_LABEL,
    SIGMA_TIP,
    W0_TIP,
    SharedWeights,
    weight_fields,
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


class StepClock:
    """A steady ETA: the median time per step over the last ``window`` steps, none before ``first`` steps.

    The first steps pay for warm-up (the first tiles, allocator, caches): a mean from step 1 once
    promised 22 min for an 85 s run."""

    def __init__(self, first: int = 5, window: int = 30):
        self.first, self.window = first, window
        self.times: list[tuple[int, float]] = []

    def tick(self, step: int, elapsed: float) -> None:
        self.times.append((step, elapsed))
        del self.times[: -self.window - 1]

    def per_step(self) -> float | None:
        if len(self.times) <= self.first:
            return None
        (s0, t0), *rest = self.times
        dts = [(t - tp) / max(s - sp, 1) for (sp, tp), (s, t) in zip(self.times, rest)]
        return float(np.median(dts))

    def eta(self, steps_left: int) -> str:
        per = self.per_step()
        if per is None:
            return "…"
        left = per * steps_left
        return f"{left / 60:.1f} min" if left >= 60 else f"{left:.0f} s"


def best_text(result) -> str:
    """What "best" means for this run: the top validation IoU, else the lowest smoothed training loss."""
    if result.val_history:
        return f"best: step {result.best_step} (highest validation IoU, {result.best_metric:.3f})"
    if result.best_step == result.steps_done:
        return "kept: the last step's weights"
    return f"best: step {result.best_step} (lowest smoothed training loss; no validation data)"


# the ISBI 2012 EM sample's data citation (the plugin's EM sample): prefilled when exporting a model trained on it
ISBI_CITATION = (
    "Arganda-Carreras et al. (2015) Crowdsourcing the creation of image segmentation algorithms for "
    "connectomics. doi:10.3389/fnana.2015.00142"
)
EXPORT_FIELDS = (
    ("name", "name", "the package's name, as bioimage.io lists it"),
    ("authors", "authors", "who made the model: names, comma-separated (required)"),
    ("license", "licence", "SPDX id, e.g. CC-BY-4.0, MIT, BSD-3-Clause"),
    ("cite", "data citation", "the training data's citation ending in doi:10... or a https:// address "
     "(optional; the U-Net paper, Ronneberger et al. 2015, is always cited)"),
    ("description", "description", "what the model segments, in one or two sentences (optional)"),
)  # fmt: skip


def export_arguments(model, details: dict) -> dict:
    """export_package's keyword arguments (the CLI's too) from the export dialog's answers; ValueError
    with what to fix."""
    from dataclasses import replace as replace_info

    from napari_unet.core.export.bioimageio import parse_citation

    authors = [a.strip() for a in str(details.get("authors", "")).split(",") if a.strip()]
    if not authors:
        raise ValueError("export: give at least one author (your name; several separated by commas)")
    cite = str(details.get("cite", "")).strip()
    description = str(details.get("description", "")).strip()
    if description and getattr(model, "info", None) is not None:
        model = copy.copy(model)  # the kept run's own info stays as trained
        model.info = replace_info(model.info, description=description)
    return dict(
        model=model,
        authors=authors,
        license=str(details.get("license") or "CC-BY-4.0").strip(),
        name=str(details.get("name") or "").strip() or None,
        cite=[parse_citation(cite)] if cite else None,
    )


def ask_export_details(parent, defaults: dict) -> dict | None:
    """A small form for the package's name, authors, licence, citation and description (None: cancelled)."""
    from qtpy.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLineEdit

    dialog = QDialog(parent)
    dialog.setWindowTitle("Export for bioimage.io")
    form = QFormLayout(dialog)
    edits = {}
    for key, label, tip in EXPORT_FIELDS:
        edits[key] = QLineEdit(str(defaults.get(key, "")))
        edits[key].setToolTip(tip)
        edits[key].setPlaceholderText(tip)
        form.addRow(label, edits[key])
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    form.addRow(buttons)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return {key: edit.text() for key, edit in edits.items()}


class PairRow(Container):
    """One (image, labels) training pair."""

    def __init__(self, viewer):
        super().__init__(layout="horizontal", labels=False)
        self.image = layer_picker(viewer, "image", tooltip="image")
        self.labels = layer_picker(viewer, "labels", inputs=True, tooltip="painted labels")
        self.channels = channel_select(viewer)
        self.extend([self.image, self.labels, self.channels])
        self.margins = (0, 0, 0, 0)


class TrainWidget(SharedWeights, JobWidget, Container):
    """Pick image/labels pairs, a starting model and a few settings; train; watch; stop; save."""

    _unhook_strokes = None  # live mode: disconnects the stroke hooks (set by _watch_strokes)
    run_name: str | None = None  # the name this widget's last run is kept under ("run 2")

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
        shared = _state.weights()  # eq. 2's settings, shown (and edited) by the Weight map preview too
        self.label_mode = ComboBox(label="label mode", choices=["instance", "semantic"], value=shared.label_mode)

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
        self.w0 = FloatSpinBox(label="border w0", **{**limits("w0"), "value": shared.w0}, tooltip=W0_TIP)
        self.sigma = FloatSpinBox(label=SIGMA_LABEL, **{**limits("sigma"), "value": shared.sigma}, tooltip=SIGMA_TIP)
        self.class_balance = CheckBox(text=BALANCE_TEXT, value=shared.class_balance, tooltip=BALANCE_TIP)
        self.border = CheckBox(text=BORDER_TEXT, value=shared.border, tooltip=BORDER_TIP)
        self.elastic_grid = SpinBox(
            label="deformation grid",
            **limits("elastic_grid"),
            tooltip="elastic deformation: control points per side (paper 3 x 3)",
        )
        self.elastic_sigma = FloatSpinBox(
            label="deformation strength σ (px)",
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
                self.device,
                self.optimizer,
                self.batch_size,
                self.w0,
                self.sigma,
                self.class_balance,
                self.border,
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
        # every run is kept (and saved to the user folder, _state.models_dir); Save / Export act on this one
        self.saved_model = ComboBox(
            label="model",
            choices=self._model_choices,
            nullable=True,
            tooltip="the runs of this session and the earlier ones (each saved as it ends to "
            f"{_state.models_dir()}); Save model… and Export act on this one",
        )
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
        # where this run starts from and why (auto start): stays until the next run
        self.start_reason = status_label("")
        self.start_reason.native.setWordWrap(True)

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
                self.live,
                self.show_advanced,
                self.advanced,
                run_row,
                self.saved_model,
                self.export_button,
                self.status,
                self.start_reason,
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
        self.clock = StepClock()
        self.export_details: dict | None = None  # what the last export was asked (author...), offered again
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
        for w in (self.label_mode, self.w0, self.sigma, self.class_balance, self.border):
            w.changed.connect(self._share_weights)
        self.train_button.changed.connect(self._on_train)
        self.stop_button.changed.connect(self._on_stop)
        self.save_button.changed.connect(lambda *_: self._on_save())
        self.export_button.changed.connect(lambda *_: self._on_export())
        self.saved_model.changed.connect(lambda *_: self._enable_model_buttons())
        _state.events.models_changed.connect(self._on_models_changed)
        follow_layers(viewer, self)
        fit_dock(self)  # scrolls in its dock, tabs with the plugin's other docks
        self._stop_on_close()
        self._on_start_changed(self.start.value)
        self._enable_model_buttons(False)  # runs saved by earlier sessions can be saved / exported at once

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
        _state.events.models_changed.disconnect(self._on_models_changed)

    def _model_choices(self, *_):
        return _state.choices()

    def _on_models_changed(self):
        """A run was kept: list it, and choose the newest run of this session."""
        if self._closed:
            return
        try:
            self.saved_model.reset_choices()
            if _state.latest() is not None:
                self.saved_model.value = _state.latest()
        except RuntimeError:  # the dock's Qt widgets are gone
            pass
        self._enable_model_buttons()

    def _enable_model_buttons(self, running: bool | None = None):
        """Save / Export act on the chosen run, once no run is training."""
        if running is None:
            running = not self.train_button.enabled  # the run's state as _set_running last showed it
        ok = not running and self.saved_model.value is not None
        self.save_button.enabled = self.export_button.enabled = ok

    def _on_weights_changed(self):
        """The Weight map preview changed a shared setting: what the user looked at is what training uses."""
        if self._closed:
            return
        self._show_weights()

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
            # session (a correction round starts from the model it corrects when that agrees best; earlier
            # sessions' runs are not scored: each candidate costs seconds)
            path = Path(str(self.checkpoint.value))
            if path.is_file():
                read_info(path)  # a damaged file is refused now, not after the shipped models were scored
            candidates = ((str(path),) if path.is_file() else ()) + tuple(
                str(_state.model_file(name)) for _, name in _state.choices(session=True)
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
            **weight_fields(_state.weights()),
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
        self.plot.set_total(None if self.live.value else config.steps)
        self.clock = StepClock()
        self.start_reason.value = ""
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
        if ev.kind == "scoring":
            # the auto start scores each candidate model on the strokes (seconds each): say which
            self.status.value = f"{ev.message}…"
            if self.progress is not None:
                self.progress.set_description(f"U-Net training: {ev.message}")
        elif ev.kind == "start":
            from napari.utils.notifications import show_info, show_warning

            self.status.value = "training…"
            self.start_reason.value = ev.message
            if self.progress is not None:
                self.progress.set_description("U-Net training")
            show_info(ev.message)
            if ev.warning:
                show_warning(ev.warning)
        elif ev.kind == "step":
            self.plot.add_loss(ev.step, ev.loss)
            self.clock.tick(ev.step, ev.elapsed)
            ok = f" · painted px right {ev.agreement:.2f}" if ev.agreement is not None else ""
            eta = self.clock.eta(ev.total - ev.step)
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
            self.run_name = self._keep_run(ev.result, ev.agreement)
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
        agreement = self.last_event.agreement if self.last_event is not None else None
        self.run_name = name = self._keep_run(result, agreement)
        self.plot.redraw(force=True)
        self.status.value = (
            f"{result.state.value} after {result.steps_done} steps; {best_text(result)}. Kept as '{name}' "
            f"(saved in {_state.models_dir()}): choose it in Predict, or Save model…"
        )
        show_info(f"training {result.state.value} after {result.steps_done} steps; kept as '{name}' (Predict lists it)")

    def _keep_run(self, result, agreement: float | None) -> str:
        """Keep the run's best weights as "run N" (listed in Predict and here, and saved to the user folder)."""
        from napari.utils.notifications import show_warning

        val = result.best_metric if result.val_history else None
        summary = _state.describe(result.steps_done, val_iou=val, agreement=agreement)
        try:
            return _state.register_run(result.best_model(), summary, result)
        except OSError as e:
            show_warning(f"the run is kept for this session only: could not save it to {_state.models_dir()}: {e}")
            return _state.latest()

    def _on_error(self, exc):
        from napari.utils.notifications import show_error

        if self._closed:
            show_error(f"training failed: {error_text(exc)}")
            return
        kept = ""
        if self.result is not None and self.result.state.value == "crashed":
            kept = (
                f" The weights of the {self.result.steps_done} steps before the crash are kept as "
                f"'{self.run_name}': Save model, or choose it in Predict."
            )
        self.status.value = f"crashed: {error_text(exc)}.{kept}"
        show_error(f"training failed: {error_text(exc)}.{kept}")

    def _on_stop(self, *_):
        """Finish the current step and keep the result (best and last weights)."""
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.value = "stopping after the current step…"

    def _chosen_model(self):
        """The run chosen in the model box (its best weights), or None with a warning."""
        from napari.utils.notifications import show_error, show_warning

        name = self.saved_model.value
        if name is None or name not in _state.TRAINED_MODELS:
            show_warning("no trained model yet: train first (or wait for training to stop)")
            return None
        try:
            return _state.TRAINED_MODELS[name]
        except (OSError, ValueError) as e:  # a saved run's file went missing or was damaged
            show_error(f"could not load {name!r}: {e}")
            return None

    def _on_save(self, path=None):
        """Save the chosen run (best weights); asks for a file when ``path`` is None."""
        from napari.utils.notifications import show_error, show_info

        from napari_unet.core.models.checkpoint import save_model

        model = self._chosen_model()
        if model is None:
            return None
        if path is None:
            from qtpy.QtWidgets import QFileDialog

            default = f"unet-{str(self.saved_model.value).replace(' ', '-')}.safetensors"
            path, _ = QFileDialog.getSaveFileName(
                self.native, "Save U-Net model", default, "U-Net model (*.safetensors)"
            )
            if not path:
                return None
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        try:
            out = save_model(path, model)
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

    def _on_export(self, path=None, details: dict | None = None):
        """Export the chosen run (best weights) as a bioimage.io package; asks for a file when ``path`` is
        None and for its details (name, authors, licence, citation, description: :func:`ask_export_details`)
        when ``details`` is None. The export runs in a thread (a few seconds); returns the worker, or None."""
        from napari.utils.notifications import show_error, show_info, show_warning

        from napari_unet.core.export import bioimageio

        model = self._chosen_model()
        if model is None:
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
        if details is None:
            details = ask_export_details(self.native, self._export_defaults())
            if details is None:
                return None
        try:
            kwargs = export_arguments(model, details)
        except ValueError as e:
            show_error(str(e))
            return None
        self.export_details = details
        from napari.qt.threading import create_worker

        self.status.value = "exporting for bioimage.io…"
        self.export_button.enabled = False

        def done(out):
            self._enable_model_buttons()
            self.status.value = f"bioimage.io package written: {out}"
            show_info(f"bioimage.io package written to {out}")

        def failed(exc):
            self._enable_model_buttons()
            self.status.value = f"export failed: {error_text(exc)}"
            show_error(f"export failed: {error_text(exc)}")

        worker = create_worker(
            bioimageio.export_package, kwargs.pop("model"), Path(path), sample=data, _start_thread=False, **kwargs
        )

        def finished():
            self.export_worker = None

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        self.export_worker = worker
        worker.start()
        return worker

    def _export_defaults(self) -> dict:
        """What the export dialog starts with: the last export's answers, else the run's name, no author
        (the login name is not an author's name), CC-BY-4.0 and the data citation of a shipped sample."""
        if self.export_details is not None:
            return {**self.export_details, "name": f"U-Net {self.saved_model.value}"}
        image = self.pairs[0].image.value if self.pairs else None
        cite = ""
        if image is not None and image.name.startswith("EM (ISBI 2012)"):
            cite = ISBI_CITATION
        return dict(name=f"U-Net {self.saved_model.value}", authors="", license="CC-BY-4.0", cite=cite, description="")

    def _set_running(self, running: bool):
        if not running:
            self._stop_watching()
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self._enable_model_buttons(running)
