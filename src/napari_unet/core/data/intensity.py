"""Intensity normalisation: ONE mapping for training, prediction and the previews.

Every 2D plane is mapped with its own robust percentiles (default 1 and 99.8,
stored in the model file) to roughly [0, 1]: ``(x - lo) / (hi - lo)``, computed
in float32 by :func:`scale_intensity`. :func:`percentiles` samples big or lazy
stacks instead of reading them in full; :func:`normalize` is both in one call.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_real", "normalize", "percentiles", "plane_range", "scale_intensity"]

DEFAULT_LOW, DEFAULT_HIGH = 1.0, 99.8  # percentiles; a model file may store its own


def _check_finite(values: np.ndarray, what: str = "image") -> None:
    if values.dtype.kind in "fc":
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(
                f"{what} contains {bad} NaN or inf value(s); replace them (e.g. numpy.nan_to_num or "
                "Fiji's Process > Math > Remove NaNs) before segmenting"
            )


def _not_real(dtype) -> str:
    if np.dtype(dtype).kind == "c":
        return (
            "image must hold real numbers (integers or floats), got complex numbers; save the image's "
            "magnitude (or real part) as the image, e.g. numpy.abs(image)"
        )
    return f"image must hold numbers (integers or floats), got dtype {dtype}; convert it to a numeric image"


def check_real(dtype) -> None:
    """ValueError unless ``dtype`` is bool, integer or float (a cast would drop a complex part with a warning)."""
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(_not_real(dtype))


def _sample_for_percentiles(image, max_samples: int) -> np.ndarray:
    """A deterministic subsample: evenly spaced planes, then a pixel stride within them.

    Reading whole planes keeps it cheap on memmaps and chunked zarr stores, where
    scattered single-pixel reads would touch every chunk.
    """
    shape = tuple(image.shape)
    size = int(np.prod(shape, dtype=np.int64))
    if size <= max_samples:
        return np.asarray(image)
    if len(shape) <= 2:
        step = int(np.ceil(np.sqrt(size / max_samples)))
        return np.asarray(image[::step, ::step] if len(shape) == 2 else image[::step])
    planes = int(np.prod(shape[:-2]))
    plane_size = shape[-2] * shape[-1]
    n_planes = int(min(planes, max(1, max_samples // plane_size), 64))
    picks = np.unique(np.linspace(0, planes - 1, n_planes).round().astype(int))
    step = max(1, int(np.ceil(np.sqrt(len(picks) * plane_size / max_samples))))
    out = []
    for flat in picks:
        idx = np.unravel_index(flat, shape[:-2])
        plane = image[tuple(int(i) for i in idx)]
        out.append(np.asarray(plane)[::step, ::step].ravel())
    return np.concatenate(out)


def percentiles(
    image, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH, *, max_samples: int = 4_000_000
) -> tuple[float, float]:
    """Robust intensity range ``(lo, hi)`` at the ``low`` / ``high`` percentiles.

    Works on numpy arrays, memmaps, zarr and dask arrays; beyond ``max_samples``
    pixels a deterministic subsample of evenly spaced planes is used, so a huge
    lazy stack is never read in full.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    if int(np.prod(np.shape(image))) == 0:
        raise ValueError("cannot normalise an empty image (no pixels)")
    sample = _sample_for_percentiles(image, max_samples)
    check_real(sample.dtype)
    _check_finite(sample)
    lo, hi = np.percentile(sample.astype(np.float64, copy=False).ravel(), [low, high])
    return float(lo), float(hi)


def normalize(
    image,
    *,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    lo_hi: tuple[float, float] | None = None,
    clip: bool = False,
    eps: float = 1e-6,
) -> np.ndarray:
    """Percentile normalisation to float32: ``lo`` -> 0, ``hi`` -> 1.

    Parameters
    ----------
    image
        Any numeric array (uint8, uint16, float...), read in full.
    low, high
        Percentiles used when ``lo_hi`` is not given.
    lo_hi
        Precomputed ``(lo, hi)`` from :func:`percentiles`; pass the training
        image's values at prediction time so both see the same mapping.
    clip
        Clip the result to [0, 1].
    eps
        When ``hi - lo <= eps`` (a constant image) the result is ``image - lo``
        (zeros for a constant image) instead of a division by ~0.

    Raises
    ------
    ValueError
        NaN or inf in the image, or a non-numeric image.
    """
    arr = np.asarray(image)
    check_real(arr.dtype)
    _check_finite(arr)
    if lo_hi is None:
        lo, hi = percentiles(arr, low, high)
    else:
        lo, hi = (float(v) for v in lo_hi)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"lo_hi must be finite numbers, got {lo_hi}")
    out = scale_intensity(arr, lo, hi, eps=eps)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def scale_intensity(plane, lo: float, hi: float, *, eps: float = 0.0) -> np.ndarray:
    """``(plane - lo) / (hi - lo)`` in float32 (no division when ``hi - lo <= eps``: a constant image)."""
    out = np.asarray(plane).astype(np.float32, copy=False)
    scale = 1.0 / (hi - lo) if hi - lo > eps else 1.0
    return (out - np.float32(lo)) * np.float32(scale)


def model_normalization(model) -> dict:
    """The normalisation ``model`` stores (its ``info.normalization``; {} = napari-unet's default)."""
    return getattr(getattr(model, "info", None), "normalization", None) or {}


def fixed_range(normalize) -> tuple[float, float] | None:
    """A prediction's ``normalize`` argument as one (lo, hi) for every plane, or None (True: each plane's own
    range, :func:`plane_range`). False / None: the image as it is, (0, 1)."""
    if normalize is True:
        return None
    if normalize is False or normalize is None:
        return 0.0, 1.0
    lo, hi = map(float, normalize)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN in, NaN logits out: labels from nothing
        raise ValueError(f"normalize must be True, False or a finite (lo, hi) intensity range, got {normalize}")
    return lo, hi


def plane_range(plane, norm: dict | None = None) -> tuple[float, float]:
    """``(lo, hi)`` of one plane for a model's stored normalisation, mapped by :func:`scale_intensity`.

    ``{'method': 'percentile', 'low': .., 'high': ..}`` is napari-unet's (the default). Models from
    bioimage.io packages (core/bioimageio.py) bring others, each an affine map of the plane:
    ``'mean_std'`` (zero mean, unit variance), ``'affine'`` (``(x - lo) * scale``) and ``'none'``.
    An ``eps`` is added to the divisor, as bioimage.io does.
    """
    norm = norm or {}
    method = norm.get("method", "percentile")
    eps = float(norm.get("eps", 0.0))
    if method == "none":
        return 0.0, 1.0
    if method == "affine":
        lo = float(norm["lo"])
        return lo, lo + 1.0 / float(norm["scale"])
    if method == "mean_std":
        arr = _sample_for_percentiles(plane, 4_000_000).astype(np.float64, copy=False)
        _check_finite(arr)
        mean = float(arr.mean())
        return mean, mean + float(arr.std()) + eps
    lo, hi = percentiles(plane, norm.get("low", DEFAULT_LOW), norm.get("high", DEFAULT_HIGH))
    return lo, hi + eps
