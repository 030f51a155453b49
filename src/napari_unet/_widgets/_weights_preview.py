"""Live weight-map preview: w(x) of paper eq. 2 for the slice on screen, updated while painting."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider

from . import _state
from ._layers import Debounce, current_plane, follow_layers, layer_picker, show_weight_map, status_label

if TYPE_CHECKING:
    import napari

LAYER_NAME = "weight map"


class WeightMapWidget(Container):
    """Shows the loss weights (class balance + border term) of the painted labels as an Image layer.

    The map is recomputed on the GUI thread (a 512 x 512 ISBI slice takes 45-58 ms
    on 2 CPU cores, docs/benchmarks.md) 0.2 s after the last change, so it runs when
    a stroke ends rather than during it; a thread would cost more in copies than it saves.
    """

    def __init__(self, viewer: napari.viewer.Viewer):  # npe2 injects the viewer
        super().__init__()
        from napari_unet.core.train.weights import SIGMA, W0

        self.viewer = viewer
        self.labels = layer_picker(viewer, "labels", inputs=True, label="labels")
        self.mode = ComboBox(label="label mode", choices=["instance", "semantic"], value="instance")
        self.w0 = FloatSlider(label="w0", min=0.0, max=30.0, step=0.5, value=W0)
        self.sigma = FloatSlider(label="sigma (px)", min=1.0, max=20.0, step=0.5, value=SIGMA)
        self.class_balance = CheckBox(text="class balance", value=True)
        self.border = CheckBox(text="border term", value=True)
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
        # the w0 / sigma tried here are the ones to train with: the Train widget follows them
        for w in (self.w0, self.sigma):
            w.changed.connect(self._share_weights)
        follow_layers(viewer, self)
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

    def _share_weights(self, *_):
        _state.events.weights_changed.emit(float(self.w0.value), float(self.sigma.value))

    def _update(self):
        """Compute w(x) for the slice on screen and show it in the 'weight map' layer."""
        from napari.utils.notifications import show_warning

        from napari_unet.core.train.weights import weight_map

        layer = self.labels.value
        if not self.live.value or layer is None or layer not in self.viewer.layers:
            return None
        plane, idx = current_plane(self.viewer, layer)
        t0 = time.perf_counter()
        try:
            w = weight_map(
                plane,
                w0=float(self.w0.value),
                sigma=float(self.sigma.value),
                mode=self.mode.value,
                class_balance=self.class_balance.value,
                border=self.border.value,
            )
        except ValueError as e:
            show_warning(f"weight map: {e}")
            return None
        self.last_ms = 1000 * (time.perf_counter() - t0)
        hi = float(w.max()) if w.size else 0.0
        out = show_weight_map(self.viewer, LAYER_NAME, w, layer, idx, opacity=0.7)
        where = f"slice {idx[0]}" if idx else "image"
        self.status.value = f"{where}: max w = {hi:.2f}, {self.last_ms:.0f} ms"
        self.n_updates += 1
        return out


def _paint_events(layer):
    evs = layer.events
    return [getattr(evs, n) for n in ("paint", "data", "set_data", "labels_update") if hasattr(evs, n)]
