"""Live weight-map preview: w(x) of paper eq. 2 for the slice on screen, updated while painting.

The map is the one training weighs that slice with: it comes from the same core function
(``core.train.sampling.slice_weights``: class balance only on densely painted slices), and its
settings (w0, border width σ, the two toggles, label mode) are :data:`_state.weights()`, the ones the
Train widget shows and trains with: changing one here changes it there, and back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider

from . import _state
from ._dock import fit_dock
from ._layers import (
    Debounce,
    current_plane,
    follow_layers,
    layer_picker,
    remove_on_close,
    show_weight_map,
    status_label,
)

if TYPE_CHECKING:
    import napari

LAYER_NAME = "weight map"
# one name per sigma: eq. 2's border width here and in Train, "deformation strength σ" for the elastic one
SIGMA_LABEL = "border width σ (px)"
W0_TIP = "eq. 2: weight of the gaps between touching objects (paper 10); Train uses the same"
SIGMA_TIP = "eq. 2: width σ of the border weight around objects (paper 5 px); Train uses the same"
BALANCE_TEXT = "class balance"
BALANCE_TIP = (
    "w_c of eq. 2: weigh rare classes up; training applies it only to slices painted at least half, since on "
    "strokes the painted share says how you painted, not what the image holds"
)
BORDER_TEXT = "border term"
BORDER_TIP = "eq. 2's w0 · exp(-(d1 + d2)^2 / 2σ^2): weigh the thin gaps between touching objects up"


class SharedWeights:
    """The eq. 2 boxes (``w0``, ``sigma``, ``class_balance``, ``border`` and the label-mode box named by
    ``_mode_attr``) of a widget that shares them through :func:`_state.weights`: what the Weight map preview
    sets, Train uses, and the other way round."""

    _mode_attr = "label_mode"
    _following = False  # showing the shared settings, not editing them

    def _share_weights(self, *_):
        if self._following:
            return
        _state.set_weights(
            w0=float(self.w0.value),
            sigma=float(self.sigma.value),
            class_balance=bool(self.class_balance.value),
            border=bool(self.border.value),
            label_mode=getattr(self, self._mode_attr).value,
        )

    def _show_weights(self):
        shared, self._following = _state.weights(), True  # not shared back half-updated
        try:
            self.w0.value, self.sigma.value = shared.w0, shared.sigma
            getattr(self, self._mode_attr).value = shared.label_mode
            self.class_balance.value, self.border.value = shared.class_balance, shared.border
        finally:
            self._following = False


class WeightMapWidget(SharedWeights, Container):
    """Shows the loss weights (class balance + border term) of the painted labels as an Image layer,
    with a colorbar.

    The map is recomputed on the GUI thread (a 512 x 512 ISBI slice takes 45-58 ms
    on 2 CPU cores, docs/benchmarks.md) 0.2 s after the last change, so it runs when
    a stroke ends rather than during it; a thread would cost more in copies than it saves.
    """

    def __init__(self, viewer: napari.viewer.Viewer):  # npe2 injects the viewer
        super().__init__()
        shared = _state.weights()
        self.viewer = viewer
        self.labels = layer_picker(viewer, "labels", inputs=True, label="labels")
        self.mode = ComboBox(label="label mode", choices=["instance", "semantic"], value=shared.label_mode)
        self.w0 = FloatSlider(label="border w0", min=0.0, max=30.0, step=0.5, value=shared.w0, tooltip=W0_TIP)
        self.sigma = FloatSlider(label=SIGMA_LABEL, min=1.0, max=20.0, step=0.5, value=shared.sigma, tooltip=SIGMA_TIP)
        self.class_balance = CheckBox(text=BALANCE_TEXT, value=shared.class_balance, tooltip=BALANCE_TIP)
        self.border = CheckBox(text=BORDER_TEXT, value=shared.border, tooltip=BORDER_TIP)
        self.live = CheckBox(text="show live", value=True)
        self.status = status_label("")
        self.extend(
            [self.labels, self.mode, self.w0, self.sigma, self.class_balance, self.border, self.live, self.status]
        )
        self._connected = None
        self.last_ms = float("nan")
        self.n_updates = 0
        self._debounce = Debounce(viewer, self, self._update)
        self._schedule = self._debounce.schedule

        self.labels.changed.connect(self._on_labels_changed)
        for w in (self.mode, self.w0, self.sigma, self.class_balance, self.border, self.live):
            w.changed.connect(self._schedule)
        # the settings tried here are the ones to train with: the Train widget shows the same
        for w in (self.mode, self.w0, self.sigma, self.class_balance, self.border):
            w.changed.connect(self._share_weights)
        _state.events.weights_changed.connect(self._follow_weights)  # psygnal holds the method weakly
        follow_layers(viewer, self)
        fit_dock(self)  # scrolls in its dock, tabs with the plugin's other docks
        remove_on_close(viewer, self, (LAYER_NAME,))
        self._on_labels_changed(self.labels.value)

    # ------------------------------------------------------------------ events

    def _on_labels_changed(self, layer=None, *_):
        if self._connected is not None:
            for ev in _paint_events(self._connected):
                ev.disconnect(self._schedule)
        self._connected = layer
        if layer is not None:
            for ev in _paint_events(layer):
                ev.connect(self._schedule)
        self._schedule()

    _mode_attr = "mode"

    def _follow_weights(self):
        """Train changed a shared setting: show it (each box's change signal schedules a new map)."""
        try:
            self._show_weights()
        except RuntimeError:  # the dock's Qt widgets are gone
            pass

    def train_config(self):
        """The TrainConfig part that decides the weights: the shared settings, as Train passes them."""
        from napari_unet.core.train.config import TrainConfig

        return TrainConfig(**weight_fields(_state.weights()))

    def _update(self):
        """Compute w(x) for the slice on screen and show it in the 'weight map' layer."""
        from napari.utils.notifications import show_warning

        from napari_unet.core.train.sampling import slice_weights

        layer = self.labels.value
        if not self.live.value or layer is None or layer not in self.viewer.layers:
            return None
        plane, idx = current_plane(self.viewer, layer)
        t0 = time.perf_counter()
        try:
            w = slice_weights(np.asarray(plane), self.train_config())
        except ValueError as e:
            show_warning(f"weight map: {e}")
            return None
        self.last_ms = 1000 * (time.perf_counter() - t0)
        hi = float(w.max()) if w.size else 0.0
        out = show_weight_map(self.viewer, LAYER_NAME, w, layer, idx, opacity=0.7)
        out.colorbar.visible = True
        where = f"slice {idx[0]}" if idx else "image"
        self.status.value = f"{where}: max w = {hi:.2f}, {self.last_ms:.0f} ms{_balance_note(self.class_balance.value)}"
        self.n_updates += 1
        return out


def weight_fields(shared) -> dict:
    """TrainConfig fields from the shared weight settings. A ticked toggle is None, not True: the paper's
    weights unless the run keeps a start model's prediction (then that model's weighting is kept, off)."""
    return dict(
        w0=float(shared.w0),
        sigma=float(shared.sigma),
        label_mode=shared.label_mode,
        class_balance=None if shared.class_balance else False,
        border_weights=None if shared.border else False,
    )


def _balance_note(balance: bool) -> str:
    return "" if not balance else " (class balance: densely painted slices only, as in training)"


def _paint_events(layer):
    evs = layer.events
    return [getattr(evs, n) for n in ("paint", "data", "set_data", "labels_update") if hasattr(evs, n)]
