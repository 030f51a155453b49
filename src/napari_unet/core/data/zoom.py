"""Scale: a model knows objects at the size it was trained on; images at another magnification are
resampled to that size for the network and the result back to the image's grid.

``scale`` is the zoom applied to the user's image before the network (0.5: the image is shrunk to
half its size, for objects twice as large as the model's). A trained model records the scale its
training images were resampled by (``ModelInfo.zoom['input_zoom']``), so predicting with it on
images like those uses the same zoom by default. The auto start (:mod:`.start`) tries the
:data:`ZOOMS` and keeps the one at which a start model agrees best with the strokes.

Resampling is scipy.ndimage.zoom (linear, ``grid_mode``: pixel areas line up), with a Gaussian
anti-alias before shrinking, as skimage's ``rescale(anti_aliasing=True)``; labels use nearest.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["ZOOM_RANGE", "check_zoom", "model_zoom", "resize", "shape_at", "zoom_labels", "zoom_plane"]

ZOOM_RANGE = (0.125, 8.0)


def check_zoom(scale: float) -> float:
    """``scale`` as a float, or ValueError that says what is allowed."""
    s = float(scale)
    if not (math.isfinite(s) and ZOOM_RANGE[0] <= s <= ZOOM_RANGE[1]):
        raise ValueError(
            f"scale must be between {ZOOM_RANGE[0]} and {ZOOM_RANGE[1]} (the zoom applied to the image before the "
            f"network; 1 = as it is), got {scale}"
        )
    return s


def model_zoom(model) -> float:
    """The zoom ``model`` expects its images at (recorded at training; 1 when unknown)."""
    info = getattr(model, "info", None)
    rec = getattr(info, "zoom", None) or {}
    return float(rec.get("input_zoom", 1.0))


def shape_at(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return tuple(max(1, int(round(n * scale))) for n in shape)


def zoom_plane(plane: np.ndarray, scale: float) -> np.ndarray:
    """A (C, H, W) float plane resampled by ``scale`` (linear; anti-aliased when shrinking)."""
    plane = np.asarray(plane, dtype=np.float32)
    if scale == 1.0:
        return plane
    if scale < 1.0:
        sigma = (1.0 / scale - 1.0) / 2.0  # skimage.transform.rescale's anti-aliasing sigma
        plane = ndimage.gaussian_filter(plane, (0, sigma, sigma), mode="mirror")
    return resize(plane, shape_at(plane.shape[-2:], scale), order=1)


def zoom_labels(labels: np.ndarray, scale: float) -> np.ndarray:
    """A 2D label plane resampled by ``scale`` (nearest: no new values)."""
    labels = np.asarray(labels)
    if scale == 1.0:
        return labels
    return resize(labels, shape_at(labels.shape, scale), order=0)


def resize(arr: np.ndarray, shape: tuple[int, int], *, order: int) -> np.ndarray:
    """``arr`` (..., H, W) resampled to (..., *shape) exactly (pixel areas aligned, edges mirrored)."""
    arr = np.asarray(arr)
    h, w = arr.shape[-2:]
    if (h, w) == tuple(shape):
        return arr
    factors = (1.0,) * (arr.ndim - 2) + (shape[0] / h, shape[1] / w)
    out = ndimage.zoom(arr, factors, order=order, mode="mirror" if order else "nearest", grid_mode=True)
    return out[..., : shape[0], : shape[1]]
