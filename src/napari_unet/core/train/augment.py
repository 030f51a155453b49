"""Data augmentation: the paper's elastic deformation, flips/rotations, intensity jitter.

Every random function takes its random source explicitly (a numpy ``Generator``
or a ``torch.Generator``), never global state: the same seed gives the same
result, which keeps training runs and widget previews reproducible.

Elastic deformation (paper, section 3.1)
----------------------------------------
"random displacement vectors on a coarse 3 by 3 grid ... sampled from a
Gaussian distribution with 10 pixels standard deviation. Per-pixel
displacements are then computed using bicubic interpolation." Here:

* :func:`coarse_displacements` draws the ``(2, gy, gx)`` grid vectors; the grid
  points span the image, corners included.
* :func:`dense_displacement` interpolates them to ``(2, H, W)`` with an
  interpolating cubic B-spline (mirror boundary), written as two small matrices
  (``Ry @ C @ Rx.T``), so it costs a pair of tiny matrix products.
* the image, labels and weights are resampled at ``(y + dy, x + dx)`` with mirror
  (reflect) boundaries: the image bicubic (``order=3``) or bilinear, labels by
  nearest neighbour (an index gather, so no new label value can appear, whatever
  the dtype), weights bilinear.

Why torch ``grid_sample`` on the CPU: measured in ``benchmarks/bench_elastic.py``.
Bicubic ``grid_sample`` (Keys cubic convolution, a = -0.75) needs no spline
prefilter; on a 512 x 512 image plus labels (one thread) it takes about 8 ms,
about 10x faster than the ``elasticdeform`` package (cubic B-spline in C) and
4-5x faster than ``scipy.ndimage.map_coordinates(order=3)``, whose prefilter and
per-pixel spline dominate. Cubic convolution is a slightly different (also
"bicubic") interpolant than the B-spline; ``prefilter=False`` in scipy would be
faster but blurs the image, so it is not an option.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

__all__ = [
    "Deformed",
    "coarse_displacements",
    "dense_displacement",
    "elastic_deform",
    "elastic_deform_torch",
    "random_flip_rot",
    "intensity_jitter",
]

_MODES = {0: "nearest", 1: "bilinear", 3: "bicubic"}


class Deformed(NamedTuple):
    """Result of an elastic deformation; ``labels``/``weights`` are None when not given."""

    image: np.ndarray | torch.Tensor
    labels: np.ndarray | torch.Tensor | None
    weights: np.ndarray | torch.Tensor | None
    displacement: np.ndarray | torch.Tensor  # (2, H, W) or (B, 2, H, W): (dy, dx) in pixels


def _grid_shape(grid) -> tuple[int, int]:
    gy, gx = (grid, grid) if np.isscalar(grid) else tuple(grid)
    if int(gy) != gy or int(gx) != gx or gy < 2 or gx < 2:
        raise ValueError(
            f"grid must be an integer >= 2 (or a pair), the number of control points along each side "
            f"including the corners; the paper uses 3. Got {grid!r}"
        )
    return int(gy), int(gx)


def _check_sigma(sigma: float) -> float:
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0 (pixels; the paper uses 10), got {sigma!r}")
    return float(sigma)


def coarse_displacements(rng: np.random.Generator, grid=3, sigma: float = 10.0) -> np.ndarray:
    """Control-point displacements ``(2, gy, gx)`` (dy, dx), float32, drawn from N(0, sigma) pixels."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    gy, gx = _grid_shape(grid)
    return rng.normal(0.0, _check_sigma(sigma), size=(2, gy, gx)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _spline_matrix(n_out: int, n_grid: int) -> np.ndarray:
    """(n_out, n_grid) matrix: cubic B-spline interpolation (mirror boundary) of n_grid points
    spanning n_out pixels, corners included."""
    pos = np.linspace(0.0, n_grid - 1.0, n_out)[None]
    eye = np.eye(n_grid)
    m = np.stack([ndi.map_coordinates(e, pos, order=3, mode="mirror") for e in eye], axis=1)
    m.setflags(write=False)
    return m.astype(np.float32)


def dense_displacement(coarse, shape: tuple[int, int]):
    """Per-pixel displacement ``(..., 2, H, W)`` interpolated from ``coarse`` ``(..., 2, gy, gx)``.

    numpy in, numpy out; torch in, torch out (same device).
    """
    h, w = (int(s) for s in shape)
    if h < 2 or w < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels to deform, got {h} x {w}")
    gy, gx = coarse.shape[-2:]
    ry, rx = _spline_matrix(h, gy), _spline_matrix(w, gx)
    if isinstance(coarse, torch.Tensor):
        ry = torch.from_numpy(ry).to(coarse.device, coarse.dtype)
        rx = torch.from_numpy(rx).to(coarse.device, coarse.dtype)
        return ry @ coarse @ rx.T
    # a few broadcast multiply-adds instead of BLAS: no thread pool for a 3 x 3 grid
    tmp = np.asarray(coarse, dtype=np.float32) @ rx.T  # (..., 2, gy, W), tiny
    out = ry[:, 0, None] * tmp[..., 0, None, :]
    for i in range(1, gy):
        out += ry[:, i, None] * tmp[..., i, None, :]
    return out.astype(np.float32, copy=False)


def _warp(image, labels, weights, disp: torch.Tensor, order: int):
    """Resample (B, C, H, W) image, (B, H, W) labels/weights at (y + dy, x + dx); disp (B, 2, H, W)."""
    b, _, h, w = disp.shape
    dev, dt = disp.device, disp.dtype
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1) + disp[:, 0]
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w) + disp[:, 1]
    out_img = out_lab = out_w = None
    grid = torch.stack((xs * (2.0 / (w - 1)) - 1.0, ys * (2.0 / (h - 1)) - 1.0), dim=-1)
    if image is not None:
        out_img = F.grid_sample(image.to(dt), grid, mode=_MODES[order], padding_mode="reflection", align_corners=True)
    if weights is not None:
        out_w = F.grid_sample(
            weights.to(dt)[:, None], grid, mode="bilinear", padding_mode="reflection", align_corners=True
        )[:, 0]
    if labels is not None and _float_exact(labels, dt):
        # values exactly representable as floats: grid_sample's nearest mode returns input values only
        out_lab = F.grid_sample(
            labels[:, None].to(dt), grid, mode="nearest", padding_mode="reflection", align_corners=True
        )[:, 0].to(labels.dtype)
    elif labels is not None:
        # nearest neighbour as an index gather: exact for any dtype, never a new value. The source
        # row and column come from grid_sample too (sides < 2**24 are exact floats), so these labels
        # take the same pixel as the image and as small labels even where a coordinate is within an
        # ulp of a tie (rounding it ourselves picked the other pixel there: 2 x 2, dy = -0.50000006)
        rows = torch.arange(h, device=dev, dtype=dt).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.arange(w, device=dev, dtype=dt).view(1, 1, 1, w).expand(b, 1, h, w)
        src = F.grid_sample(
            torch.cat((rows, cols), dim=1), grid, mode="nearest", padding_mode="reflection", align_corners=True
        )
        flat = (src[:, 0].long() * w + src[:, 1].long()).view(b, -1)
        out_lab = torch.gather(labels.reshape(b, -1), 1, flat).view(b, h, w)
    return out_img, out_lab, out_w


def _float_exact(labels: torch.Tensor, dt: torch.dtype) -> bool:
    """True when every label value survives a round trip through ``dt`` (float32: |v| <= 2**24)."""
    if labels.dtype == torch.bool or labels.numel() == 0:
        return True
    if labels.is_floating_point():
        return labels.dtype == dt
    limit = 2 ** {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}[dt]
    return bool(labels.min() >= -limit) and bool(labels.max() <= limit)


def _check_order(order: int) -> int:
    if order not in _MODES:
        raise ValueError(f"order must be 3 (bicubic), 1 (bilinear) or 0 (nearest), got {order!r}")
    return order


def elastic_deform(
    image: np.ndarray,
    labels: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    *,
    rng: np.random.Generator,
    grid=3,
    sigma: float = 10.0,
    order: int = 3,
    displacement: np.ndarray | None = None,
) -> Deformed:
    """Deform an image and its labels/weights with one smooth random field (paper section 3.1).

    Parameters
    ----------
    image
        (H, W) or (C, H, W), channels first.
    labels, weights
        (H, W) each, optional. Labels are resampled by nearest neighbour (no new
        values, dtype kept), weights bilinearly (float32).
    rng
        numpy Generator; the same seed gives the same deformation.
    grid, sigma
        Control points per side (corners included) and their displacement
        standard deviation in pixels (paper: 3 and 10).
    order
        Image interpolation: 3 bicubic, 1 bilinear, 0 nearest.
    displacement
        A (2, H, W) field to apply instead of drawing one (``rng`` is then unused).

    Returns
    -------
    Deformed
        float32 image of the input's shape, labels, float32 weights, and the
        float32 (2, H, W) displacement (dy, dx) in pixels.
    """
    _check_order(order)
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {img.shape}")
    hw = img.shape[-2:]
    for name, arr in (("labels", labels), ("weights", weights)):
        if arr is not None and np.shape(arr) != hw:
            raise ValueError(f"{name} must be (H, W) = {hw} like the image, got shape {np.shape(arr)}")
    if displacement is None:
        disp = dense_displacement(coarse_displacements(rng, grid, sigma), hw)
    else:
        disp = np.asarray(displacement, dtype=np.float32)
        if disp.shape != (2, *hw):
            raise ValueError(f"displacement must have shape (2, H, W) = {(2, *hw)}, got {disp.shape}")
    if not np.any(disp):  # exact identity (sigma = 0): no resampling round-off
        return Deformed(
            img.astype(np.float32),
            None if labels is None else np.array(labels),
            None if weights is None else np.asarray(weights, dtype=np.float32).copy(),
            disp,
        )
    t_img = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).reshape(1, -1, *hw)
    t_lab = None if labels is None else torch.from_numpy(_torchable(np.asarray(labels)))[None]
    t_w = None if weights is None else torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))[None]
    with torch.no_grad():
        o_img, o_lab, o_w = _warp(t_img, t_lab, t_w, torch.from_numpy(disp)[None], order)
    out_lab = None
    if labels is not None:
        out_lab = o_lab[0].numpy().astype(np.asarray(labels).dtype, copy=False)
    return Deformed(
        o_img.reshape(img.shape).numpy(),
        out_lab,
        None if o_w is None else o_w[0].numpy(),
        disp,
    )


def _torchable(a: np.ndarray) -> np.ndarray:
    # torch has no uint16/uint32/uint64 gather on every version: widen losslessly
    if a.dtype in (np.uint16, np.uint32):
        return a.astype(np.int64)
    if a.dtype == np.uint64:
        if a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError("uint64 labels above 2**63 are not supported")
        return a.astype(np.int64)
    return np.ascontiguousarray(a)


def elastic_deform_torch(
    image: torch.Tensor | None,
    labels: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None,
    grid=3,
    sigma: float = 10.0,
    order: int = 3,
) -> Deformed:
    """Batched elastic deformation on the training device, one random field per sample.

    ``image`` (B, C, H, W) float, ``labels`` (B, H, W) any integer dtype (nearest
    neighbour via gather, values kept), ``weights`` (B, H, W) (bilinear). Same
    interpolants and boundaries as :func:`elastic_deform` (``grid_sample`` with
    ``padding_mode='reflection'``, ``align_corners=True``). ``generator`` draws
    the control points (on its own device; ``None`` uses torch's global
    generator). Returns tensors and the (B, 2, H, W) displacement.
    """
    _check_order(order)
    gy, gx = _grid_shape(grid)
    sigma = _check_sigma(sigma)
    ref = next((t for t in (image, labels, weights) if t is not None), None)
    if ref is None:
        raise ValueError("give at least one of image, labels, weights")
    if image is not None and image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
    b, h, w = (image.shape[0], *image.shape[-2:]) if image is not None else tuple(ref.shape)
    for name, t in (("labels", labels), ("weights", weights)):
        if t is not None and tuple(t.shape) != (b, h, w):
            raise ValueError(f"{name} must be (B, H, W) = {(b, h, w)}, got {tuple(t.shape)}")
    dev = ref.device
    gdev = generator.device if generator is not None else dev
    coarse = torch.randn((b, 2, gy, gx), generator=generator, device=gdev, dtype=torch.float32) * sigma
    disp = dense_displacement(coarse.to(dev), (h, w))
    img_dt = image.dtype if image is not None and image.is_floating_point() else torch.float32
    with torch.no_grad():
        o_img, o_lab, o_w = _warp(image, labels, weights, disp, order)
    if o_img is not None:
        o_img = o_img.to(img_dt)
    return Deformed(o_img, o_lab, o_w, disp)


def random_flip_rot(rng: np.random.Generator, *arrays):
    """Apply the same random flip and 90-degree rotation to all arrays (last two axes).

    One of the 8 symmetries of the square, uniformly. ``None`` entries pass
    through. Returns a tuple of contiguous arrays. Non-square images keep their
    shape only for the 180-degree rotation and flips, so rotate all or none.
    """
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        a = np.rot90(np.asarray(a), k, axes=(-2, -1))
        if flip:
            a = a[..., ::-1]
        out.append(np.ascontiguousarray(a))
    return tuple(out)


def intensity_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 0.1,
    contrast: float = 0.1,
    gamma: float = 0.1,
) -> np.ndarray:
    """Mild random gamma, contrast and brightness change (float32, same shape).

    Works on the image rescaled to [0, 1] by its own min/max and maps back, so
    the value range stays comparable: gamma ``exp(N(0, gamma))``, contrast
    ``1 + U(-contrast, contrast)`` about the mean, brightness ``U(-b, b)`` of the range.
    """
    x = np.asarray(image, dtype=np.float32)
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if x.size:
        lo, hi = float(x.min()), float(x.max())
    g = float(np.exp(rng.normal(0.0, gamma))) if gamma > 0 else 1.0
    c = 1.0 + float(rng.uniform(-contrast, contrast)) if contrast > 0 else 1.0
    b = float(rng.uniform(-brightness, brightness)) if brightness > 0 else 0.0
    if hi <= lo:
        return x.copy()
    n = (x - lo) / (hi - lo)
    n = np.power(n, g, dtype=np.float32)
    n = (n - n.mean()) * c + n.mean() + b
    return (n * (hi - lo) + lo).astype(np.float32)
