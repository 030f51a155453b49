"""Scale: a model knows objects at the size it was trained on; images at another magnification are
resampled to that size for the network and the result back to the image's grid.

``scale`` is the zoom applied to the user's image before the network (0.5: the image is shrunk to
half its size, for objects twice as large as the model's). A trained model records the scale its
training images were resampled by (``ModelInfo.scale['input_scale']``), so predicting with it on
images like those uses the same zoom by default. The auto start (:mod:`.start`) tries the
:data:`SCALES` and keeps the one at which a start model agrees best with the strokes.

Resampling is scipy.ndimage.zoom (linear, ``grid_mode``: pixel areas line up), with a Gaussian
anti-alias before shrinking, as skimage's ``rescale(anti_aliasing=True)``; labels use nearest.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["SCALES", "check_scale", "model_scale", "pick_scale", "resize", "shape_at", "zoom_labels", "zoom_plane"]

# the magnifications tried by the auto start: a factor 2 either way (20x <-> 40x objectives), in sqrt(2) steps
SCALES = (0.5, 0.71, 1.0, 1.41, 2.0)
SCALE_RANGE = (0.125, 8.0)
# another scale is taken only when it agrees clearly better than the image as it is: by MIN_GAIN, and
# with at most MAX_LEFT of the disagreement left. A model at another magnification mostly stops
# disagreeing when zoomed (DSB nuclei 3x: 0.92 -> 0.97 at x0.5); strokes painted over a model's mistakes
# are disagreement by construction, at every zoom, and a zoom that happens to score 0.03 better there
# (ISBI correction strokes: 0.73 at x2, which cleared MIN_GAIN over the images as they are) is noise
# that cost 0.17 IoU (docs/accuracy.md)
MIN_GAIN = 0.03
MAX_LEFT = 0.5


def check_scale(scale: float) -> float:
    """``scale`` as a float, or ValueError that says what is allowed."""
    s = float(scale)
    if not (math.isfinite(s) and SCALE_RANGE[0] <= s <= SCALE_RANGE[1]):
        raise ValueError(
            f"scale must be between {SCALE_RANGE[0]} and {SCALE_RANGE[1]} (the zoom applied to the image before the "
            f"network; 1 = as it is), got {scale}"
        )
    return s


def model_scale(model) -> float:
    """The zoom ``model`` expects its images at (recorded at training; 1 when unknown)."""
    info = getattr(model, "info", None)
    rec = getattr(info, "scale", None) or {}
    return float(rec.get("input_scale", 1.0))


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


def pick_scale(scores: dict[float, float], default: float = 1.0) -> float:
    """The scale with the best agreement; ``default`` (the model's own) unless another one is better by
    :data:`MIN_GAIN` and leaves at most :data:`MAX_LEFT` of the disagreement at ``default``."""
    scores = {s: a for s, a in scores.items() if a is not None and np.isfinite(a)}
    if not scores:
        return default
    best = max(scores, key=lambda s: (scores[s], -abs(math.log(s / default))))
    base = scores.get(default)
    if base is not None and (scores[best] < base + MIN_GAIN or 1.0 - scores[best] > MAX_LEFT * (1.0 - base)):
        return default
    return float(best)
