"""Layers: choosing them, checking them, reading the slice on screen and showing one plane in place.

Everything here runs on the GUI thread; workers never see a layer (see :mod:`._workers`).
:class:`Debounce` is the one timer both live previews use.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import numpy as np

from .._colors import training_colormap

DEBOUNCE_MS = 200  # paint -> preview delay: long enough to skip mid-stroke updates, short enough to feel live


def status_label(value: str = ""):
    """The status line under a widget's buttons: wraps, so a docked widget shows the whole sentence
    (a start choice and its reason, an error) instead of cutting it off at the dock's width.

    It takes the width the dock has and never asks for more: a wrapped label's preferred width
    grows with its text, and a long message would widen the dock and shrink (redraw) the canvas
    beside it the moment training starts (with software OpenGL, the longest pause of a live run).
    """
    from magicgui.widgets import Label
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=value)
    label.native.setWordWrap(True)
    policy = label.native.sizePolicy()  # keeps the height-for-width that word wrap set
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    label.native.setSizePolicy(policy)
    return label


def is_plugin_output(layer) -> bool:
    """A layer this plugin made (a prediction, a preview, the uncertainty): its metadata carries 'output'."""
    return bool((getattr(layer, "metadata", None) or {}).get("output"))


def layer_choices(viewer, kind: str, *, inputs: bool = False) -> Callable:
    """A magicgui ``choices`` callable listing the viewer's layers of one kind ('image' or 'labels').

    ``inputs``: only the user's layers, never the plugin's own outputs (:func:`is_plugin_output`): a
    prediction's 0 is background where training labels' 0 is 'not annotated'.
    """

    def choices(widget=None):
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        return [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, cls) and not (inputs and is_plugin_output(layer))
        ]

    return choices


def layer_picker(viewer, kind: str, *, inputs: bool = False, **kwargs):
    """A layer ComboBox (:func:`layer_choices`) that starts on the active layer, or on the only one that fits.

    Whenever its choices are refreshed (:func:`follow_layers`) and nothing is chosen, it takes the
    active layer if that fits, else the only fitting layer; a choice already made is kept. Long layer
    names are elided in the box and shown whole in its tooltip.
    """
    kwargs.setdefault("nullable", True)
    return _picker_class()(viewer, choices=layer_choices(viewer, kind, inputs=inputs), **kwargs)


def _start_value(viewer, layers: list):
    """The layer a picker starts on: the active one when it fits, else the only one, else None."""
    active = viewer.layers.selection.active  # through npe2's viewer proxy: a proxy, so matched by (unique) name
    for layer in layers:
        if active is not None and layer.name == active.name:
            return layer
    return layers[0] if len(layers) == 1 else None


@functools.cache
def _picker_class():
    """The picker class, built on first use (Qt and magicgui are imported only by the widgets)."""
    from magicgui.widgets import ComboBox
    from qtpy.QtWidgets import QComboBox

    class LayerPicker(ComboBox):
        def __init__(self, viewer, **kwargs):
            self._viewer = viewer
            self._tooltip = kwargs.get("tooltip") or ""
            super().__init__(**kwargs)
            native = self.native
            native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            native.setMinimumContentsLength(8)  # a long name never widens the dock: elided, whole in the tooltip
            self.changed.connect(self._show_name)
            self._preselect()

        def reset_choices(self, *_):
            super().reset_choices()
            self._preselect()

        def _preselect(self):
            if self.value is None:
                value = _start_value(self._viewer, [layer for _, layer in self._default_choices()])
                if value is not None:
                    self.value = value
            self._show_name()

        def _show_name(self, *_):
            name = getattr(self.value, "name", "")
            self.native.setToolTip(f"{self._tooltip}: {name}" if self._tooltip and name else name or self._tooltip)

    return LayerPicker


def channel_select(viewer, label: str = ""):
    """A list of image layers to add to the chosen image as more input channels (multichannel models).

    Shown only while two grey image layers of one shape exist (e.g. napari split a file's channels);
    nothing chosen = the image alone. Refreshed with the layer pickers (:func:`follow_layers`).
    """
    from magicgui.widgets import Select

    def choices(widget=None):
        from napari.layers import Image

        # grey images, not this plugin's own outputs (predictions, uncertainty, previews carry 'output')
        grey = [
            layer
            for layer in viewer.layers
            if isinstance(layer, Image) and not layer.rgb and not (layer.metadata or {}).get("output")
        ]
        shapes = [tuple(layer.data.shape) for layer in grey]
        # only layers with a same-shape partner can be channels of one image
        grouped = [layer for layer, shape in zip(grey, shapes) if shapes.count(shape) > 1]
        if widget is not None:
            widget.visible = bool(grouped)
        return [(layer.name, layer) for layer in grouped]

    select = Select(
        label=label,
        choices=choices,
        value=[],
        tooltip="+ channels: grey layers of the image's shape to feed the model as more input channels, after the "
        "image (e.g. the membrane channel beside the nuclei one). None chosen: the image alone",
    )
    select.native.setMaximumHeight(64)
    return select


def follow_layers(viewer, container) -> None:
    """Refresh the container's layer pickers when layers are added, removed or renamed.

    The viewer's events hold only a weak reference to the container, so a closed widget is not
    kept alive by them (its ``destroyed`` clean-ups run, and it is garbage-collected).
    """
    ref = weakref.ref(container)

    def reset(event=None):
        c = ref()
        if c is None:
            return
        try:
            c.reset_choices()
        except RuntimeError:  # the Qt widget is gone
            pass

    events = (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved)
    for ev in events:
        ev.connect(reset)

    def disconnect(*_):
        for ev in events:
            ev.disconnect(reset)

    container.native.destroyed.connect(disconnect)


def remove_on_close(viewer, container, names) -> None:
    """Remove a preview's layers ``names`` when the container's Qt widget is destroyed (its dock closed).

    Only layers the plugin made (``metadata['output']``) are removed: never a user's layer of the same name.
    """

    def remove(*_):
        for name in names:
            try:
                if name in viewer.layers and (viewer.layers[name].metadata or {}).get("output"):
                    viewer.layers.remove(name)
            except Exception:  # the viewer is closing or closed
                pass

    container.native.destroyed.connect(remove)


def check_image_layer(layer, what: str = "image") -> None:
    """Raise ValueError (user-facing) unless ``layer`` is a 2D image or a (Z, Y, X) stack, grey or RGB
    (an RGB image's colours are channels for a model)."""
    if layer is None:
        raise ValueError(f"no {what} layer chosen: open an image (File > Open, or File > Open Sample > U-Net Segment)")
    if getattr(layer, "multiscale", False):
        raise ValueError(
            f"{layer.name!r} is a multiscale (pyramid) image; open its full-resolution level as a plain layer"
        )
    if layer.ndim not in (2, 3):
        raise ValueError(
            f"{layer.name!r} has {layer.ndim} dimensions {tuple(layer.data.shape)}; expected a 2D image (Y, X) or "
            "a stack (Z, Y, X). Split channels or time points into separate layers first"
        )


def check_training_labels(layer, where: str = "training pair") -> None:
    """Raise ValueError (user-facing, with what to do) when ``layer`` is one of this plugin's outputs.

    A prediction's 0 is background where training labels' 0 is 'not annotated', and its 1 an object
    where theirs is background: trained on as it is, it teaches the wrong thing without a warning.
    """
    if not is_plugin_output(layer):
        return
    kind = (layer.metadata or {}).get("output")
    if kind in ("labels", "instances"):
        raise ValueError(
            f"{where}: {layer.name!r} is a prediction, not training labels (0 is background there, 'not annotated' "
            "in training): in Predict press 'Correct it: to training labels', paint over its mistakes, and choose "
            "that layer as the labels"
        )
    raise ValueError(
        f"{where}: {layer.name!r} is a layer this plugin shows ({kind}), not training labels: choose the labels you "
        "painted (Annotate > New training labels), or a prediction turned into labels by Predict's 'Correct it'"
    )


def layer_pixels(layer, extra=(), *, copy: bool = False) -> tuple:
    """The pixels of image ``layer`` for a model, and their channel axis (-1, channels last, or None).

    An RGB layer's colours are its channels. ``extra`` image layers of the same shape (e.g. the
    layers napari made of one file's channels) are stacked after ``layer`` as more channels, in the
    order given. ``copy``: a private copy (the user keeps painting while a worker reads it).
    """
    extra = [e for e in extra if e is not layer]
    rgb = bool(getattr(layer, "rgb", False))
    if not extra:
        data = np.array(layer.data) if copy else layer.data
        return data, (-1 if rgb else None)
    if rgb:
        raise ValueError(f"{layer.name!r} is RGB: its colours are already its channels; add no channel layers to it")
    shape = tuple(layer.data.shape)
    for e in extra:
        if getattr(e, "rgb", False) or tuple(e.data.shape) != shape:
            raise ValueError(
                f"channel layer {e.name!r} (shape {tuple(e.data.shape)}) does not fit {layer.name!r} (shape {shape}): "
                "channels must be grey layers of the same shape, e.g. the layers of one multichannel file"
            )
    return np.stack([np.asarray(x.data) for x in (layer, *extra)], axis=-1), -1


def n_channels(layer, extra=()) -> int:
    """How many input channels :func:`layer_pixels` gives (reads no pixels)."""
    if getattr(layer, "rgb", False):
        return int(layer.data.shape[-1])
    return 1 + len([e for e in extra if e is not layer])


def current_index(viewer, layer) -> tuple[int, ...]:
    """Indices of the leading (non-YX) axes of ``layer`` at the slice on screen, clipped to the data."""
    shape = layer.data.shape[:-1] if getattr(layer, "rgb", False) else layer.data.shape
    lead = len(shape) - 2
    if lead <= 0:
        return ()
    pt = layer.world_to_data(viewer.dims.point)
    pt = np.asarray(pt)[-len(shape) :]
    return tuple(int(np.clip(round(float(p)), 0, s - 1)) for p, s in zip(pt[:lead], shape[:lead]))


def current_plane(viewer, layer) -> tuple[np.ndarray, tuple[int, ...]]:
    """The 2D (Y, X) plane of ``layer`` on screen (a copy) and its leading indices."""
    idx = current_index(viewer, layer)
    return np.array(layer.data[idx] if idx else layer.data), idx


def show_plane(
    viewer,
    name: str,
    plane: np.ndarray,
    like,
    idx: tuple[int, ...],
    kind: str = "image",
    shift_x: float = 0.0,
    **kwargs,
):
    """Show one 2D plane as layer ``name`` placed at slice ``idx`` of layer ``like``; update in place if it exists.

    The layer holds (1, ..., 1, Y, X) data translated to the slice, so a preview of
    one slice shows on that slice only and costs one plane of memory, not a stack.
    ``shift_x``: pixels (of ``like``) to move it right, e.g. beside the image (:func:`beside`).
    The layer never becomes the selected one: the brush stays on the layer the user chose.
    """
    data = plane.reshape((1,) * len(idx) + plane.shape)
    scale = np.asarray(like.scale, dtype=float)
    translate = np.asarray(like.translate, dtype=float).copy()
    translate[: len(idx)] += np.asarray(idx, dtype=float) * scale[: len(idx)]
    translate[-1] += shift_x * scale[-1]
    from napari.layers import Labels

    active = viewer.layers.selection.active
    if (
        name in viewer.layers
        and viewer.layers[name].data.ndim == data.ndim
        and ((kind == "labels") == isinstance(viewer.layers[name], Labels))
    ):
        layer = viewer.layers[name]
        # each assignment refreshes the layer: set only what changed (the preview of a
        # running training comes every few steps, on the GUI thread)
        if not np.array_equal(layer.translate, translate):
            layer.translate = translate
        if not np.array_equal(layer.scale, scale):
            layer.scale = scale
        layer.data = data
        for k, v in kwargs.items():
            if k not in ("colormap", "name") and getattr(layer, k, None) != v:
                setattr(layer, k, v)
    else:
        if name in viewer.layers:
            viewer.layers.remove(name)
        add = viewer.add_labels if kind == "labels" else viewer.add_image
        if kind == "labels":  # previews of labels are in the training convention unless told (_colors.py)
            kwargs.setdefault("colormap", training_colormap())
        kwargs.setdefault("metadata", {"output": "preview"})  # a plugin output: never offered as an input channel
        layer = add(data, name=name, scale=scale, translate=translate, **kwargs)
    keep_selection(viewer, active)
    return layer


def keep_selection(viewer, active) -> None:
    """Select ``active`` again (or nothing) after adding a preview layer, which napari selects."""
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active  # keep painting on the labels layer
    elif active is None:
        viewer.layers.selection.clear()


def beside(like) -> float:
    """How far right (in pixels of ``like``) a preview goes to sit beside ``like`` with a small gap."""
    width = like.data.shape[-2] if getattr(like, "rgb", False) else like.data.shape[-1]
    return float(width + max(8, width // 20))


def show_weight_map(viewer, name: str, weights: np.ndarray, like, idx: tuple[int, ...], **kwargs):
    """A weight map (eq. 2) as :func:`show_plane` shows it in both previews: magma, additive, 0..max."""
    hi = float(weights.max()) if weights.size else 0.0
    return show_plane(viewer, name, weights, like, idx, colormap="magma", blending="additive",
                      contrast_limits=(0.0, max(hi, 1e-3)), **kwargs)  # fmt: skip


class Debounce:
    """Calls ``update`` once, ``ms`` after the last of a burst of ``schedule()`` calls (GUI thread).

    Also follows the viewer's slice slider, and disconnects from the viewer when
    ``container`` is destroyed (holding no reference to the container).
    """

    def __init__(self, viewer, container, update: Callable, ms: int = DEBOUNCE_MS):
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(ms)
        self.timer.timeout.connect(update)
        viewer.dims.events.current_step.connect(self.schedule)
        timer, slot = self.timer, self.schedule

        def cleanup(*_):
            try:
                timer.stop()
                timer.timeout.disconnect()  # a late schedule() (a stroke, a slider) then updates nothing
            except (RuntimeError, TypeError):  # Qt deleted the timer first (napari closing)
                pass
            try:
                viewer.dims.events.current_step.disconnect(slot)
            except Exception:  # the viewer is already closed
                pass

        container.native.destroyed.connect(cleanup)

    def schedule(self, *_):
        """(Re)start the timer; ``update`` runs once the changes pause."""
        try:
            self.timer.start()
        except RuntimeError:  # Qt object deleted
            pass
