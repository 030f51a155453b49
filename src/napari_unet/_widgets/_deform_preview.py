"""Live elastic-deformation preview: what training sees (image, labels and weights deformed together)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Slider

from ._dock import fit_dock
from ._layers import (
    Debounce,
    beside,
    current_plane,
    follow_layers,
    keep_selection,
    layer_picker,
    remove_on_close,
    show_plane,
    show_weight_map,
    status_label,
)

if TYPE_CHECKING:
    import napari

IMAGE_LAYER, LABELS_LAYER, WEIGHTS_LAYER = "deformed image", "deformed labels", "deformed weights"
GRID_LAYER, VECTORS_LAYER = "deformation grid", "displacement vectors"
PREVIEW_LAYERS = (IMAGE_LAYER, LABELS_LAYER, WEIGHTS_LAYER, GRID_LAYER, VECTORS_LAYER)
GRID_LINES = 9  # lines of the warped grid overlay per direction


class DeformationWidget(Container):
    """Seeded elastic deformation (paper section 3.1) of the slice on screen, updated as sliders move.

    Shows the deformed image, labels and weight map as three layers (updated in
    place), the coarse control-point displacements as vectors and a warped grid, all
    beside the image (never over it: the image and the strokes stay in view, and the
    brush stays on the layer the user chose). Closing the dock removes them.
    """

    def __init__(self, viewer: napari.viewer.Viewer):  # npe2 injects the viewer
        super().__init__()
        from napari_unet.core.train.config import LIMITS, TrainConfig

        self.viewer = viewer
        self.image = layer_picker(viewer, "image", inputs=True, label="image")
        self.labels = layer_picker(viewer, "labels", inputs=True, label="labels")
        grid_lo, grid_hi = LIMITS["elastic_grid"]
        self.grid = Slider(label="grid points", min=grid_lo, max=grid_hi, value=TrainConfig.default("elastic_grid"))
        self.sigma = FloatSlider(
            label="deformation strength σ (px)", min=0.0, max=40.0, step=0.5, value=TrainConfig.default("elastic_sigma")
        )
        self.seed = Slider(label="seed", min=0, max=999, value=0)
        self.mode = ComboBox(label="label mode", choices=["instance", "semantic"], value="instance")
        self.live = CheckBox(text="show live", value=True)
        self.status = status_label("")
        self.extend([self.image, self.labels, self.grid, self.sigma, self.seed, self.mode, self.live, self.status])
        self.last_ms = float("nan")
        self.n_updates = 0
        # 100 ms: follow a dragged slider without queueing every value
        self._debounce = Debounce(viewer, self, self._update, ms=100)
        self._schedule = self._debounce.schedule
        for w in (self.image, self.labels, self.grid, self.sigma, self.seed, self.mode, self.live):
            w.changed.connect(self._schedule)
        follow_layers(viewer, self)
        fit_dock(self)  # scrolls in its dock, tabs with the plugin's other docks
        remove_on_close(viewer, self, PREVIEW_LAYERS)
        self._schedule()

    def _update(self):
        """Deform the slice on screen with the current seed and show the results."""
        from napari.utils.notifications import show_warning

        from napari_unet.core.train.augment import coarse_displacements, dense_displacement, elastic_deform
        from napari_unet.core.train.weights import weight_map

        img_layer, lab_layer = self.image.value, self.labels.value
        if not self.live.value or img_layer is None or img_layer not in self.viewer.layers:
            return None
        if getattr(img_layer, "rgb", False) or img_layer.ndim not in (2, 3):
            self.status.value = "choose a grey 2D image or (Z, Y, X) stack"
            return None
        plane, idx = current_plane(self.viewer, img_layer)
        labels = weights = None
        if lab_layer is not None and lab_layer in self.viewer.layers:
            if tuple(lab_layer.data.shape) != tuple(img_layer.data.shape):
                show_warning(
                    f"deformation preview: labels {tuple(lab_layer.data.shape)} do not match the image "
                    f"{tuple(img_layer.data.shape)}; choose the labels painted on this image"
                )
            else:
                labels, _ = current_plane(self.viewer, lab_layer)
                try:  # labels that break the convention (negative values): a traceback from a timer before
                    weights = weight_map(labels, mode=self.mode.value)
                except ValueError as e:
                    show_warning(f"deformation preview: {e}")
                    return None
                labels = labels.astype(np.int32, copy=False)
        t0 = time.perf_counter()
        rng = np.random.default_rng(int(self.seed.value))
        try:
            coarse = coarse_displacements(rng, int(self.grid.value), float(self.sigma.value))
            dense = dense_displacement(coarse, plane.shape)
            d = elastic_deform(
                plane.astype(np.float32),
                labels,
                weights,
                rng=rng,
                grid=int(self.grid.value),
                sigma=float(self.sigma.value),
                displacement=dense,
            )
        except ValueError as e:
            self.status.value = str(e)
            return None
        self.last_ms = 1000 * (time.perf_counter() - t0)

        lo, hi = (float(v) for v in img_layer.contrast_limits)
        first = IMAGE_LAYER not in self.viewer.layers
        dx = beside(img_layer)
        show_plane(self.viewer, IMAGE_LAYER, d.image, img_layer, idx, shift_x=dx, colormap="gray",
                   contrast_limits=(lo, hi))  # fmt: skip
        if d.labels is not None:
            show_plane(self.viewer, LABELS_LAYER, np.asarray(d.labels), img_layer, idx, kind="labels", shift_x=dx,
                       opacity=0.4)  # fmt: skip
            show_weight_map(self.viewer, WEIGHTS_LAYER, d.weights, img_layer, idx, shift_x=dx, opacity=0.6,
                            visible=False)  # fmt: skip
        self._show_grid(coarse, dense, plane.shape, img_layer, idx, dx)
        if first:
            self.viewer.reset_view()  # the image and its deformed copy both in view
        where = f"slice {idx[0]}" if idx else "image"
        self.status.value = (
            f"{where}: seed {self.seed.value}, max shift {np.abs(dense).max():.1f} px, {self.last_ms:.0f} ms"
        )
        self.n_updates += 1
        return d

    def _show_grid(self, coarse, dense, shape, like, idx, dx: float = 0.0):
        """Control-point vectors and a warped grid (straight input lines as they appear deformed)."""
        H, W = shape
        gy, gx = coarse.shape[1:]
        ys, xs = np.meshgrid(np.linspace(0, H - 1, gy), np.linspace(0, W - 1, gx), indexing="ij")
        pos = np.stack([ys.ravel(), xs.ravel()], axis=1)
        # output pixel p samples the input at p + d(p): a straight input line shows up near p - d(p)
        vec = -np.stack([coarse[0].ravel(), coarse[1].ravel()], axis=1)
        lead = np.asarray(idx, dtype=float)

        def pad(a, zero=False):  # prepend the leading (slice) coordinates
            return np.concatenate([np.broadcast_to(0.0 if zero else lead, (len(a), len(idx))), a], axis=1)

        vectors = np.stack([pad(pos), pad(vec, zero=True)], axis=1)
        paths = []
        t = np.linspace(0, 1, 64)
        for f in np.linspace(0, 1, GRID_LINES):
            for pts in (
                np.stack([np.full_like(t, f * (H - 1)), t * (W - 1)], 1),
                np.stack([t * (H - 1), np.full_like(t, f * (W - 1))], 1),
            ):
                iy, ix = pts[:, 0].round().astype(int), pts[:, 1].round().astype(int)
                warped = pts - np.stack([dense[0][iy, ix], dense[1][iy, ix]], 1)
                paths.append(pad(warped))
        active = self.viewer.layers.selection.active
        translate = np.asarray(like.translate, dtype=float).copy()
        translate[-1] += dx * float(like.scale[-1])
        kw = dict(scale=like.scale, translate=translate, metadata={"output": "preview"})
        for name in (VECTORS_LAYER, GRID_LAYER):
            if name in self.viewer.layers and self.viewer.layers[name].ndim != len(idx) + 2:
                self.viewer.layers.remove(name)
        for name in (VECTORS_LAYER, GRID_LAYER):  # the image moved or changed size: place them again
            if name in self.viewer.layers and not np.array_equal(self.viewer.layers[name].translate, translate):
                self.viewer.layers[name].translate = translate
        if VECTORS_LAYER in self.viewer.layers:
            self.viewer.layers[VECTORS_LAYER].data = vectors
        else:
            self.viewer.add_vectors(
                vectors, name=VECTORS_LAYER, edge_color="cyan", edge_width=2, length=1.0, vector_style="arrow", **kw
            )
        if GRID_LAYER in self.viewer.layers:
            self.viewer.layers[GRID_LAYER].data = paths
        else:
            self.viewer.add_shapes(
                paths, shape_type="path", name=GRID_LAYER, edge_color="yellow", edge_width=1, opacity=0.6, **kw
            )
        keep_selection(self.viewer, active)
