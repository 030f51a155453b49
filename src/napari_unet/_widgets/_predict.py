"""Predict: overlap-tile prediction written straight into a layer, tile by tile.

For stacks bigger than RAM the prediction goes into an OME-Zarr image block by block (an
"OME-Zarr output" folder, or the image's own container's labels/ group), shown as a zarr-backed
layer while it fills, optionally on a dask LocalCluster ("workers"); a rerun resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, PushButton, SpinBox

from .._colors import output_colormap, training_colormap
from . import _state
from ._dock import fit_dock
from ._layers import (
    channel_select,
    check_image_layer,
    current_index,
    follow_layers,
    layer_picker,
    layer_pixels,
    n_channels,
    status_label,
)
from ._workers import Job, JobWidget, Throttle, error_text

if TYPE_CHECKING:
    import napari

MODEL_FILE = "model file…"
OUTPUTS = {
    "semantic labels": "labels",
    "instances": "instances",
    "probability map": "probabilities",
    "uncertainty (where to paint next)": "uncertainty",
}
CURRENT, STACK = "current slice", "whole stack"
OUTLINE_LAYER = "paint next"  # the Shapes layer outlining the square Go jumps to


def region_size(shape) -> int:
    """The side of the 'paint next' squares for planes of ``shape``: a quarter of the shorter side (64 px on a
    256 px slice: a patch to check and correct in a minute), 16 to 128 px."""
    return int(np.clip(min(int(v) for v in shape) // 4, 16, 128))


def _show_colorbar(layer) -> None:
    """The layer's colorbar on the canvas, where napari has one (0.5+)."""
    colorbar = getattr(layer, "colorbar", None)
    if colorbar is not None and hasattr(colorbar, "visible"):
        colorbar.visible = True


class PredictWidget(JobWidget, Container):
    """Pick a model (just trained, shipped or a file) and an image; watch the result fill in."""

    def __init__(self, viewer: napari.viewer.Viewer):  # npe2 injects the viewer
        super().__init__()
        from napari_unet.core.network.device import available_devices

        self.viewer = viewer
        self.model = ComboBox(label="model", choices=self._model_choices)
        # a napari-unet model file, or a bioimage.io package (ours, or a 2D U-Net of another tool)
        self.model_file = FileEdit(
            label="model file", mode="r", filter="*.safetensors *.zip rdf.yaml *.bioimageio.yaml", visible=False
        )
        self.image = layer_picker(viewer, "image", inputs=True, label="image")
        self.channels = channel_select(viewer, label="+ channels")
        self.output = ComboBox(label="output", choices=list(OUTPUTS), value="semantic labels")
        self.where = ComboBox(label="predict", choices=[CURRENT, STACK], value=CURRENT)
        self.zoom = FloatSpinBox(
            value=1.0,
            min=0.0,
            max=8.0,
            step=0.05,
            enabled=False,
            tooltip="zoom the image by this factor for the model and the result back (0.5: your objects are twice as "
            "large as the ones the model was trained on, e.g. another objective); editing it turns 'auto' off",
        )
        self.zoom_auto = CheckBox(
            text="auto",
            value=True,
            tooltip="the model's own zoom (recorded when it was trained; 1 for the shipped models), shown in the box "
            "once a prediction starts",
        )
        self._showing_zoom = False  # the box shows the model's own zoom: not an edit
        zoom_row = Container(widgets=[self.zoom, self.zoom_auto], layout="horizontal", labels=False, label="zoom")
        zoom_row.margins = (0, 0, 0, 0)
        self.tta = CheckBox(text="test-time augmentation (8 flips/rotations)", value=False)
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.zarr_out = FileEdit(
            label="OME-Zarr output",
            mode="w",
            filter="*.zarr",
            tooltip="empty: the prediction lives in memory. A .zarr folder: it is written there block by block "
            "(stacks bigger than RAM; a rerun resumes) and the layer shows it as it fills",
        )
        self.workers = SpinBox(
            label="workers",
            min=0,
            max=max(1, os.cpu_count() or 1),
            value=0,
            tooltip="0: predict in napari's process. N: a dask LocalCluster of N worker processes writes the whole "
            "stack into the OME-Zarr output (or, for an image opened from an OME-Zarr, into its labels/ group)",
        )
        # rarely changed: folded away so the Predict button stays on a small screen
        self.show_advanced = CheckBox(text="advanced settings", value=False)
        self.advanced = Container(widgets=[zoom_row, self.device, self.zarr_out, self.workers], visible=False)
        self.advanced.margins = (0, 0, 0, 0)
        self.processes = True  # LocalCluster worker processes (tests use threads: faster to start)
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.paint_next = ComboBox(label="paint next", choices=[], visible=False, nullable=True)
        self.go_button = PushButton(text="Go", visible=False, tooltip="show the chosen region: its slice, centred")
        self.regions = []
        self.to_labels_button = PushButton(
            text="Correct it: to training labels",
            enabled=False,
            tooltip="copy the finished prediction into a new Labels layer in the training convention "
            "(1 = background, 2.. = objects or classes), ready to paint over the mistakes and retrain",
        )
        row = Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False)
        row.margins = (0, 0, 0, 0)
        self.status = status_label("")
        self.status.native.setWordWrap(True)
        self.extend(
            [
                self.model,
                self.model_file,
                self.image,
                self.channels,
                self.output,
                self.where,
                self.tta,
                self.show_advanced,
                self.advanced,
                row,
                self.paint_next,
                self.go_button,
                self.to_labels_button,
                self.status,
            ]
        )

        self.job: Job | None = None
        self.layer = None
        self.predicted_slices = None  # what the last run covered: None = all, else the slice indices
        self.complete = False  # the last run finished every tile
        self.done = self.total = 0
        self._unit = "tiles"  # what done / total count: tiles, or blocks of an OME-Zarr output
        self._zoom_note = ""  # the zoom of the running prediction, e.g. 'zoom auto (x0.50)'
        self._refresh = Throttle(0.1)  # at most 10 layer refreshes per second

        self.show_advanced.changed.connect(lambda v: setattr(self.advanced, "visible", bool(v)))
        self.match = None  # how the suggested model suits the image (core.train.rank_models)
        self._suggesting = False  # the widget, not the user, sets the model
        # the user chose a model, or one was trained in this session: a new image no longer changes it
        self._model_chosen = _state.latest() is not None
        self.model.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._follow_model_kind)
        self.image.changed.connect(self._suggest_model)
        self.zarr_out.changed.connect(self._follow_model_kind)
        self.workers.changed.connect(self._follow_model_kind)
        self.zoom.changed.connect(self._on_zoom_edited)
        self.zoom_auto.changed.connect(lambda auto: setattr(self.zoom, "enabled", not auto))
        self.predict_button.changed.connect(self._on_predict)
        self.cancel_button.changed.connect(self._on_cancel)
        self.to_labels_button.changed.connect(self._on_to_labels)
        self.go_button.changed.connect(self._on_go)
        _state.events.models_changed.connect(self._on_models_changed)
        follow_layers(viewer, self)
        fit_dock(self)  # scrolls in its dock, tabs with the plugin's other docks
        self._stop_on_close()
        self.model_file.visible = self.model.value == MODEL_FILE
        self._suggest_model()
        self._follow_model_kind()
        self._explain_buttons(False)

    def _model_choices(self, *_):
        from napari_unet.core.models.checkpoint import available_models

        # (label, value) pairs: this session's runs ("run 2 · 60 steps · ..."), shipped, earlier sessions' runs
        shipped = [(name, name) for name in available_models()]
        return [*_state.choices(True), *shipped, *_state.choices(False), (MODEL_FILE, MODEL_FILE)]

    def _on_close(self):
        _state.events.models_changed.disconnect(self._on_models_changed)

    def _on_models_changed(self):
        if self._closed:
            return
        try:
            self._suggesting = True
            self.model.reset_choices()
            if _state.latest() is not None:  # the run this session trained last
                self.model.value = _state.latest()
                self.match, self._model_chosen = None, True
        except RuntimeError:
            pass
        finally:
            self._suggesting = False

    def _on_model_changed(self, value=None, *_):
        self.model_file.visible = value == MODEL_FILE
        if not self._suggesting:
            self._model_chosen = True
            self.match = None
        self._follow_model_kind()

    def _suggest_model(self, *_):
        """Choose the shipped model whose training images look most like the image (core.train.rank_models),
        unless the user chose one or one was trained in this session. Says how well it suits."""
        from napari_unet.core.models.checkpoint import available_models
        from napari_unet.core.train.start import rank_models

        layer = self.image.value
        if self._model_chosen or self._closed or layer is None or self.channels.value:
            return
        try:
            check_image_layer(layer)
            ranked = rank_models(layer.data, list(available_models()), channel_axis=-1 if layer.rgb else None)
        except (ValueError, OSError, TypeError):
            return  # the image cannot be scored (NaN, a pyramid, ...): Predict says why when pressed
        if not ranked:
            return
        self.match = match = ranked[0]
        self._suggesting = True
        try:
            self.model.value = match.name
        finally:
            self._suggesting = False
        self.status.value = (
            f"no model here was trained on images like {layer.name!r}: best {match.describe()}. Expect mistakes, or "
            "train one on this image (Annotate, then Train)"
            if match.poor
            else f"model chosen for {layer.name!r}: {match.describe()}"
        )

    def _model_label_mode(self) -> str:
        """'instance' or 'semantic' for the chosen model ('' when unknown), read without its weights."""
        from napari_unet.core.models.checkpoint import resolve_model_path
        from napari_unet.core.models.load import read_info

        name = self.model.value
        if name in _state.TRAINED_MODELS:
            return getattr(getattr(_state.TRAINED_MODELS[name], "info", None), "label_mode", "") or ""
        try:
            path = Path(str(self.model_file.value)) if name == MODEL_FILE else resolve_model_path(name)
            return read_info(path).label_mode or "" if path.is_file() else ""
        except (OSError, ValueError):
            return ""

    def _follow_model_kind(self, *_):
        """Labels output follows the model: instances for an instance model (whole planes: not block-wise into
        an OME-Zarr), semantic labels otherwise. A probability or uncertainty output stays."""
        if self.output.value not in ("semantic labels", "instances"):
            return
        mode = self._model_label_mode()
        if not mode:
            return
        blockwise = str(self.zarr_out.value or "") not in ("", ".") or bool(self.workers.value)
        self.output.value = "instances" if mode == "instance" and not blockwise else "semantic labels"

    def load(self):
        """The chosen UNet (raises FileNotFoundError / CheckpointError / ValueError with a user message)."""
        from napari_unet.core.models.load import load_model

        name = self.model.value
        if name in _state.TRAINED_MODELS:
            return _state.TRAINED_MODELS[name]
        if name == MODEL_FILE:
            path = Path(str(self.model_file.value))
            if not path.is_file():
                raise FileNotFoundError(
                    f"choose a model file (.safetensors) or a bioimage.io package (.zip, rdf.yaml); {str(path)!r} is "
                    "not a file"
                )
            from ._trust import load_asking

            return load_asking(load_model, path, self.native)  # a package's code runs only on 'Trust and load'
        return load_model(name)

    def _model_source(self):
        """The chosen model's file or shipped name (its bytes are part of an OME-Zarr output's identity); None
        for a model trained in this session (its weights identify it)."""
        name = self.model.value
        if name in _state.TRAINED_MODELS:
            return None
        return Path(str(self.model_file.value)) if name == MODEL_FILE else name

    def _on_zoom_edited(self, *_):
        if not self._showing_zoom:
            self.zoom_auto.value = False

    def _zoom_text(self, model) -> str:
        """'zoom auto (x0.50)' (the model's own) or 'zoom x0.50' (the one chosen)."""
        from napari_unet.core.data.zoom import model_zoom

        if self.zoom_auto.value:
            return f"zoom auto (x{model_zoom(model):.2f})"
        return f"zoom x{float(self.zoom.value):.2f}"

    def _show_model_zoom(self, model):
        """With 'auto', the box shows the zoom ``model`` predicts at (its own)."""
        from napari_unet.core.data.zoom import model_zoom

        if self.zoom_auto.value:
            self._showing_zoom = True
            try:
                self.zoom.value = model_zoom(model)
            finally:
                self._showing_zoom = False

    def _config(self, output: str, channel_axis: int | None):
        """The PredictConfig of the controls (ValueError, from its checks, for a zoom out of range)."""
        from napari_unet.core.predict.config import PredictConfig

        return PredictConfig(
            output=output,
            channel_axis=channel_axis,
            zoom=None if self.zoom_auto.value else float(self.zoom.value),
            tta=bool(self.tta.value),
            device=self.device.value,
        )

    def _check_channels(self, model, layer):
        """ValueError unless ``layer`` (with '+ channels') gives the model's input channels."""
        want, have = model.config.in_channels, n_channels(layer, self.channels.value)
        if want != have:
            raise ValueError(
                f"the model expects {want} input channel(s), {layer.name!r} gives {have}: "
                + (
                    "choose one grey channel as the image (right-click an RGB layer > Split RGB) and no '+ channels'"
                    if want == 1
                    else f"add {want - 1} channel layer(s) of the same shape under '+ channels', in the order "
                    "the model was trained on (or choose an RGB image for a 3-channel model)"
                )
            )

    def _on_predict(self, *_):
        """Create the output layer, then fill it from a worker; returns the Job or None."""
        from napari.utils.notifications import show_error, show_warning

        from napari_unet.core.predict.tiles import allocate_output, iter_predict

        if self.job is not None and self.job.running:
            show_warning("a prediction is already running: press Cancel first, or wait for it to finish")
            return None
        if "train" in _state.RUNNING:
            show_warning(
                "training is running: stop it (Train > Stop) or wait for it to finish, then predict. "
                "Training shows a live prediction preview meanwhile"
            )
            return None
        layer = self.image.value
        output = OUTPUTS[self.output.value]
        try:
            check_image_layer(layer)
            model = self.load()
            self._check_channels(model, layer)
            # read-only for the worker; a grey numpy, dask or zarr layer is read one slice at a time
            data, channel_axis = layer_pixels(layer, self.channels.value)
            config = self._config(output, channel_axis)
            target = self._zarr_target(layer, output)
        except (ValueError, FileNotFoundError) as e:
            show_error(f"cannot predict: {e}")
            return None
        self._show_model_zoom(model)
        if self.match is not None and self.match.poor and self.match.name == self.model.value:
            show_warning(
                f"{self.match.describe()}: this model was trained on images unlike {layer.name!r}; expect mistakes, "
                "or train one on this image (Annotate, then Train)"
            )
        if target is not None:
            return self._predict_blocks(layer, model, config, target)
        spatial = tuple(data.shape[:-1] if channel_axis is not None else data.shape)
        idx = current_index(self.viewer, layer)
        slices = [idx[0]] if (self.where.value == CURRENT and idx) else None
        out = allocate_output(output, model.n_classes, spatial)
        self.layer = self._output_layer(layer, output, out, model)
        self.predicted_slices, self.complete = slices, False
        self.probabilities = out if output == "probabilities" else None

        self.job = job = Job("predict")
        gen = iter_predict(model, data, config, out=out, slices=slices)
        self.done, self.total, self._unit = 0, 0, "tiles"
        self._zoom_note = self._zoom_text(model)
        return self._run_job(
            job,
            gen,
            self.device.value,
            total=0,
            desc="U-Net prediction",
            status=f"predicting at {self._zoom_note}…",
            yielded=self._on_progress,
            returned=self._on_result,
            errored=self._on_error,
            aborted=self._on_aborted,
        )

    def _zarr_target(self, layer, output: str) -> Path | None:
        """Where a block-wise prediction goes, or None (in memory, tile by tile)."""
        from napari_unet.core.data.ngff import is_ome_zarr

        chosen = str(self.zarr_out.value or "")
        if chosen not in ("", "."):
            return Path(chosen)
        if not self.workers.value:
            return None
        src = (layer.metadata or {}).get("path")
        if src and is_ome_zarr(src) and output != "probabilities":
            return Path(src) / "labels" / f"unet-{output}"
        raise ValueError(
            "workers write into an OME-Zarr: choose an 'OME-Zarr output' folder (.zarr), or open the image from an "
            "OME-Zarr (the prediction then goes into its labels/ group)"
        )

    def _predict_blocks(self, layer, model, config, target: Path):
        """Block-wise prediction into the OME-Zarr ``target``, shown as a zarr-backed layer as it fills."""
        from dataclasses import replace

        from napari.utils.notifications import show_error

        from napari_unet.core.data.ngff import ZarrView
        from napari_unet.core.predict.zarr import prepare_zarr_prediction

        try:
            if config.output == "instances":
                raise ValueError(
                    "instances need whole planes: predict them in memory (no OME-Zarr output, 0 workers), or "
                    "predict semantic labels into the OME-Zarr"
                )
            if self.channels.value or getattr(layer, "rgb", False):
                raise ValueError("an OME-Zarr output takes one grey image layer (no RGB, no '+ channels')")
            image = _block_image(layer)
            md = layer.metadata or {}
            layer_scale = tuple(float(v) for v in layer.scale)  # the layer's pixel size, Z first for a stack
            workers = int(self.workers.value)
            out, gen = prepare_zarr_prediction(
                model,
                image,
                target,
                replace(config, precision="auto"),
                pixel_size=md.get("pixel_size") or layer_scale[-2:],
                z_spacing=md.get("z_spacing") or (layer_scale[0] if len(image.shape) == 3 else None),
                unit=md.get("unit"),
                provenance={"model": str(getattr(getattr(model, "info", None), "name", "") or self.model.value)},
                workers=workers or None,
                processes=self.processes,
                model_path=self._model_source(),
            )
        except (ValueError, ImportError, RuntimeError) as e:
            show_error(f"cannot predict: {e}")
            return None
        if config.output == "probabilities":
            fg = 1 if model.n_classes > 1 else 0
            shown = ZarrView(target / "0", {0: fg})  # lazy: re-read at every refresh
        else:
            shown = out
        self.layer = self._output_layer(layer, config.output, shown, model, zarr_path=target)
        self.predicted_slices, self.complete = None, False
        self.probabilities = None
        self.job = job = Job("predict")
        self.done, self.total, self._unit = 0, 0, "blocks"
        self._zoom_note = ""  # block-wise: always the image as it is
        return self._run_job(
            job,
            gen,
            self.device.value,
            total=0,
            desc="U-Net prediction (blocks)",
            status=f"predicting into {target}…",
            yielded=self._on_progress,
            returned=self._on_result,
            errored=self._on_error,
            aborted=self._on_aborted,
        )

    def _output_layer(self, image, output: str, out, model, zarr_path: Path | None = None):
        """A fresh layer whose data IS ``out`` (the worker writes, the GUI thread refreshes)."""
        name = (
            f"{image.name} "
            + {
                "labels": "prediction",
                "instances": "instances",
                "probabilities": "probability",
                "uncertainty": "uncertainty",
            }[output]
        )
        # each round is a new layer ('... prediction 2'): the previous round stays, hidden, to compare
        base, k = name, 1
        while name in self.viewer.layers:
            self.viewer.layers[name].visible = False
            k += 1
            name = f"{base} {k}"
        info = getattr(model, "info", None)
        kw = dict(
            name=name,
            scale=image.scale,
            translate=image.translate,
            metadata={
                "model": getattr(info, "name", ""),
                "image": image.name,
                "output": output,
                "label_mode": getattr(info, "label_mode", ""),
            },
        )
        if zarr_path is not None:
            kw["metadata"]["path"] = str(zarr_path)
            if output == "probabilities":
                return self.viewer.add_image(
                    out, colormap="inferno", contrast_limits=(0.0, 1.0), opacity=0.7, blending="additive", **kw
                )
        if output == "uncertainty":
            # from black, added to the image: certain pixels leave it as it is, uncertain ones glow
            layer = self.viewer.add_image(
                out, colormap="hot", contrast_limits=(0.0, 1.0), opacity=0.8, blending="additive", **kw
            )
            _show_colorbar(layer)
            return layer
        if output == "probabilities":
            fg = 1 if out.shape[0] > 1 else 0  # class axis first: show the foreground channel
            kw["metadata"]["probabilities"] = out
            return self.viewer.add_image(
                out[fg], colormap="inferno", contrast_limits=(0.0, 1.0), opacity=0.7, blending="additive", **kw
            )
        classes = list(getattr(info, "classes", None) or ())
        if output == "labels" and len(classes) == model.n_classes:  # the model's class names, shown on hover
            kw["features"] = {"index": list(range(len(classes))), "class": classes}
        return self.viewer.add_labels(out, opacity=0.6, colormap=output_colormap(), **kw)

    def _on_progress(self, ev):
        """A TileEvent or a BlockEvent (GUI thread): status, progress bar, and a throttled layer refresh."""
        if self._closed:
            return
        # status first: the progress bar and refresh below may process queued
        # events (the returned/finished slots) before they return
        self.done, self.total = ev.done, ev.total
        refresh = ev.kind == "slice" or self._refresh(force=ev.kind == "block" and ev.done == ev.total)
        if ev.kind == "start" and ev.skipped:
            self.status.value = f"resuming: {ev.skipped} of {ev.total} blocks already written"
        elif refresh:
            self.status.value = f"{ev.done} of {ev.total} {self._unit}"
        if self.progress is not None:
            if self.progress.total != ev.total:
                self.progress.total = ev.total
            self.progress.update(ev.done - self.progress.n)
        if refresh and ev.kind != "start" and self.layer is not None and self.layer in self.viewer.layers:
            self.layer.refresh()

    def _on_result(self, out):
        if self._closed or self.layer is None:
            return
        if self.layer in self.viewer.layers:
            self.layer.refresh()
        self.complete = True
        self.status.value = f"done: {_count(self.total, self._unit)}{self._objects()}" + (
            f" at {self._zoom_note}" if self._zoom_note else ""
        )
        if self.layer.metadata.get("output") == "uncertainty":
            self._rank_regions()

    def _objects(self) -> str:
        """', 37 objects' for an instances output (counted on the slices predicted), else ''."""
        if self.layer.metadata.get("output") != "instances":
            return ""
        data = np.asarray(self.layer.data)
        planes = [data] if data.ndim == 2 else [data[z] for z in (self.predicted_slices or range(len(data)))]
        n = sum(len(np.unique(p)) - int(not p.all()) for p in planes)
        return f", {_count(n, 'objects')}"

    def _rank_regions(self):
        """Fill 'paint next' with the most uncertain regions of the slices predicted (unpainted ones first)."""
        from napari_unet.core.predict.guidance import rank_regions

        unc = np.asarray(self.layer.data)
        if self.predicted_slices is not None and unc.ndim == 3:  # only what was predicted
            keep = np.zeros(unc.shape[0], bool)
            keep[self.predicted_slices] = True
            unc = np.where(keep[:, None, None], unc, 0.0)
        painted = self._painted_like(unc.shape)
        self.regions = rank_regions(unc, painted=painted, k=8, size=region_size(unc.shape[-2:]))
        self.paint_next.choices = [(r.describe(), r) for r in self.regions]
        self.paint_next.visible = self.go_button.visible = bool(self.regions)
        if self.regions:
            self.paint_next.value = self.regions[0]
            self.status.value += (
                f"; paint next: {self.regions[0].describe()} (Go jumps there: paint over what the prediction "
                "gets wrong in that square)"
            )

    def _painted_like(self, shape):
        """The training labels painted on this image (Annotate names them '<image> labels'), if any."""
        from napari.layers import Labels

        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and tuple(layer.data.shape) == tuple(shape) and layer is not self.layer:
                if layer.metadata.get("training_labels_for") == self.layer.metadata.get("image"):
                    return np.asarray(layer.data)
        return None

    def _on_go(self, *_):
        """Move the viewer to the chosen region: its slice, centred and zoomed on it."""
        region = self.paint_next.value
        if region is None or self.layer is None or self.layer not in self.viewer.layers:
            return
        world = self.layer.data_to_world(region.center)
        if region.z is not None:
            self.viewer.dims.set_point(0, world[0])
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9 moved it to viewer.scene
        camera.center = tuple(world[-2:])
        camera.zoom = max(camera.zoom, 2.0)
        self._outline(region)

    def _outline(self, region):
        """Outline ``region`` in the 'paint next' Shapes layer (one rectangle), keeping the active layer."""
        lead = () if region.z is None else (float(region.z),)
        y0, x0 = float(region.y), float(region.x)
        h, w = np.asarray(self.layer.data.shape[-2:], dtype=float)
        y1, x1 = min(y0 + region.size, h), min(x0 + region.size, w)
        rect = np.array([(*lead, y0, x0), (*lead, y0, x1), (*lead, y1, x1), (*lead, y1, x0)])  # 4 corners: 3D too
        active = self.viewer.layers.selection.active
        if OUTLINE_LAYER in self.viewer.layers and self.viewer.layers[OUTLINE_LAYER].ndim == rect.shape[1]:
            shapes = self.viewer.layers[OUTLINE_LAYER]
            shapes.data = [rect]
            shapes.visible = True
        else:
            if OUTLINE_LAYER in self.viewer.layers:
                self.viewer.layers.remove(OUTLINE_LAYER)
            self.viewer.add_shapes(
                [rect],
                shape_type="rectangle",
                edge_color="yellow",
                face_color="transparent",
                edge_width=2,
                name=OUTLINE_LAYER,
                scale=self.layer.scale,
                translate=self.layer.translate,
                metadata={"output": "guidance"},
            )
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _on_to_labels(self, *_):
        """The finished prediction as training labels (+1: 0 stays 'not annotated'); returns the layer."""
        from napari.layers import Labels
        from napari.utils.notifications import show_info, show_warning

        layer = self.layer
        if not (isinstance(layer, Labels) and layer in self.viewer.layers and self.complete):
            show_warning(
                "predict semantic labels or instances first and let the run finish; then the prediction "
                "can become training labels"
            )
            return None
        pred = np.asarray(layer.data)
        lab = np.zeros(pred.shape, dtype=np.uint32)  # slices that were not predicted stay 'not annotated'
        where = (slice(None),) if self.predicted_slices is None else (self.predicted_slices,)
        lab[where] = pred[where].astype(np.uint32) + 1
        # a second press makes another layer (napari numbers the name): earlier corrections are never replaced
        new = self.viewer.add_labels(
            lab,
            name=f"{layer.name} to correct",
            scale=layer.scale,
            translate=layer.translate,
            metadata={"training_labels_for": layer.metadata.get("image", "")},
            colormap=training_colormap(),
        )
        layer.visible = False
        self.viewer.layers.selection.active = new
        new.mode = "paint"
        kind = "objects" if layer.metadata.get("output") == "instances" else "classes"
        show_info(
            f"'{new.name}': 1 = background, 2.. = {kind}. Paint over the mistakes (0 erases a pixel from "
            f"training), then choose it as the labels in Train"
        )
        if layer.metadata.get("output") == "labels" and layer.metadata.get("label_mode") == "instance":
            show_warning(
                "these are semantic labels of an instance model: all objects share one value, so "
                "training in instance mode would see one big object. Predict 'instances' first for that"
            )
        return new

    def _on_error(self, exc):
        from napari.utils.notifications import show_error

        # failed before any tile (e.g. NaN in the image): the empty output layer would look like a
        # prediction that found nothing, so it goes; a later failure keeps the tiles written, as Cancel does
        nothing = self.done == 0 and self.layer is not None
        if nothing and not self._closed and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
            self.layer = None
        kept = "" if nothing else f" ({self.done} of {self.total} {self._unit} kept)"
        show_error(f"prediction failed: {error_text(exc)}{kept}")
        if not self._closed:
            self.status.value = f"failed: {error_text(exc)}{kept}"

    def _on_aborted(self, *_):
        from napari.utils.notifications import show_info

        msg = f"prediction cancelled: {self.done} of {self.total} tiles kept"
        show_info(msg)
        if not self._closed:
            self.status.value = msg
            if self.layer is not None and self.layer in self.viewer.layers:
                self.layer.refresh()

    def _on_cancel(self, *_):
        """Stop after the current tile; what is written stays in the layer."""
        if self.job is not None and self.job.running:
            self.job.stop(quit=True)

    def _set_running(self, running: bool):
        self.predict_button.enabled = not running
        self.cancel_button.enabled = running
        from napari.layers import Labels

        self.to_labels_button.enabled = not running and self.complete and isinstance(self.layer, Labels)
        self._explain_buttons(running)

    def _explain_buttons(self, running: bool):
        """Every button says what it does, and a greyed-out one why it is off."""
        self.predict_button.tooltip = (
            "a prediction is running: Cancel stops it after the current tile"
            if running
            else "predict the chosen image with the chosen model"
        )
        self.cancel_button.tooltip = "stop after the current tile" if running else "nothing is running"
        why = ""
        if running:
            why = "wait for the prediction to finish"
        elif self.layer is None or self.layer not in self.viewer.layers:
            why = "predict 'semantic labels' or 'instances' first"
        elif self.layer.metadata.get("output") not in ("labels", "instances"):
            why = f"the {self.layer.metadata.get('output')} output is not labels: predict 'semantic labels' or 'instances'"
        elif not self.complete:
            why = "the last prediction stopped early: run it to the end"
        self.to_labels_button.tooltip = (
            f"off: {why}"
            if why
            else "copy the finished prediction into a new Labels layer in the training convention "
            "(1 = background, 2.. = objects or classes), ready to paint over the mistakes and retrain"
        )


def _count(n: int, unit: str) -> str:
    """'1 tile', '8 tiles'."""
    return f"{n} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def _block_image(layer):
    """The pixels to predict block-wise: the OME-Zarr the layer was opened from (lazy; dask workers reopen it
    from its path), else the layer's data."""
    from napari_unet.core.data.ngff import is_ome_zarr, read_ome_zarr

    src = (layer.metadata or {}).get("path")
    if src and is_ome_zarr(src):
        view, _ = read_ome_zarr(src)
        if tuple(view.shape) == tuple(layer.data.shape):
            return view
    return np.asarray(layer.data)
