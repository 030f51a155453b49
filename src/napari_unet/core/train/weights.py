"""Per-pixel loss weights: class balance plus the border term of the U-Net paper (eq. 2).

.. math:: w(x) = w_c(x) + w_0 \\exp\\left(-\\frac{(d_1(x) + d_2(x))^2}{2\\sigma^2}\\right)

``d1`` / ``d2`` are the distances to the nearest and the second-nearest object
(instance). ``w_c`` balances the class frequencies over the *annotated* pixels;
pixels that are not annotated (label 0, see :mod:`napari_unet.core.labels`)
get weight 0 exactly, so sparse painting trains only on what was painted.

Where the border term applies
-----------------------------
Only on background pixels (target class 0) and only when an image has at least
two objects. Inside an object ``d1 = 0``, so the term would merely up-weight
object pixels that happen to lie near a neighbour; the paper's figure 3d shows
it on the thin background gaps between touching cells, which is what teaches
the network to keep them apart.

Speed
-----
The map is recomputed for a live preview while the user paints, so
:func:`border_weight` avoids one distance transform per object (the obvious
method, kept as :func:`weight_map_reference`). It runs one exact separable
distance transform that carries the *two nearest distinct objects* at once:

1. per column, the nearest object pixel above and below each pixel and the
   nearest one of a *different* object (prefix scans, O(pixels));
2. per row, candidates from columns ``x +- k`` for ``k = 1, 2, ...`` merged into
   ``(d1^2, nearest object, d2^2)``, only for background pixels that can still
   improve (``k^2 < d2^2``) and can still reach a visible weight.

Both steps use integer squared distances, so ``d1`` and ``d2`` are bit-identical
to scipy's Euclidean distance transform. The term is truncated to 0 where
``d1 + d2 > sigma * sqrt(2 ln(1 / cutoff))`` (26.3 px for sigma = 5 and the
default ``cutoff=1e-6``, i.e. where it is below ``1e-6 * w0``); the reference
applies the same truncation, so the two maps are exactly equal. Without the
truncation they would differ by less than ``cutoff * w0`` (1e-5 for w0 = 10).

Cost: the column pass is O(pixels); the row pass is O(background pixels x their
``d2``), so thin gaps are cheap. A 512 x 512 ISBI slice (~130 cells) takes ~45-55 ms
on a shared 2-core Xeon, 40-80x faster than the reference (see docs/benchmarks.md).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from ..data.labels import LabelMode, _as_int_labels, _check_mode, instances_from_labels, targets_from_labels

W0 = 10.0  # paper eq. 2: weight of the gaps between touching objects
SIGMA = 5.0  # paper eq. 2: width of that weight, px
_INF = np.int32(2**29)  # "no object within reach"; 2 * _INF + reach**2 still fits in int32

__all__ = [
    "SIGMA",
    "W0",
    "weight_map",
    "weight_map_reference",
    "class_balance_weights",
    "border_weight",
    "border_weight_reference",
    "two_nearest_distances",
    "cutoff_distance",
]


def _check_params(w0: float, sigma: float, cutoff: float) -> None:
    if not (np.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0 (the paper uses 10), got {w0!r}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 in pixels (the paper uses 5), got {sigma!r}")
    if not (0 < cutoff < 1):
        raise ValueError(f"cutoff must be in (0, 1) (relative to w0; default 1e-6), got {cutoff!r}")


def cutoff_distance(sigma: float, cutoff: float = 1e-6) -> float:
    """``d1 + d2`` beyond which the border term is below ``cutoff * w0`` and set to 0."""
    return float(sigma * math.sqrt(2.0 * math.log(1.0 / cutoff)))


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim < 2:
        raise ValueError(
            f"labels must be a 2D image (Y, X) or a stack (..., Y, X), got shape {arr.shape}; "
            "pass the painted Labels layer data"
        )
    return _as_int_labels(arr)


# --------------------------------------------------------------------------- class balance


def class_balance_weights(targets: np.ndarray, *, class_balance: bool = True) -> np.ndarray:
    """``w_c`` for one image of class targets (``IGNORE`` = not annotated -> 0).

    Inverse class frequency over the annotated pixels, normalised so that the
    annotated pixels average 1 (classes that do not occur take no part). With
    ``class_balance=False`` every annotated pixel weighs 1.
    """
    targets = np.asarray(targets)
    if targets.size == 0:
        return np.zeros(targets.shape, dtype=np.float32)
    # one look-up table indexed by target + 1 (IGNORE = -1 -> entry 0 -> weight 0): no boolean masks
    shifted = targets.ravel() + 1
    if shifted.max() > 4 * shifted.size + 1024:
        # sparse huge values (semantic mode on object ids): bincount's table would be as long as the largest
        # value (16 GB and 11 s for 2**31 - 1); number the values first, entry 0 kept for IGNORE
        shifted = np.unique(np.concatenate([[0], shifted]), return_inverse=True)[1][1:]
    counts = np.bincount(shifted)
    counts[0] = 0
    n_ann = int(counts.sum())
    lut = np.zeros(counts.shape, dtype=np.float32)
    present = counts > 0
    if n_ann:
        lut[present] = (n_ann / (present.sum() * counts[present])) if class_balance else 1.0
    return lut.take(shifted).reshape(targets.shape)


# --------------------------------------------------------------------------- border term, fast


def _window_max(a: np.ndarray, rows: int, w: int) -> np.ndarray:
    """In place: each entry of the flat (H, w) array becomes the max over itself and ``rows`` rows above."""
    s = 1
    while s <= rows:
        step = min(s, rows - s + 1)  # windows of 1, 2, 4, ... rows, the last one trimmed
        np.maximum(a[step * w :], a[: -step * w], out=a[step * w :])
        s += step
    return a


def _scan_up(lab: np.ndarray, w: int, reach: int, flat_idx: np.ndarray, sqw: np.ndarray):
    """Column summaries looking up (object pixels at rows <= y) of a flat, padded label image.

    Works on flat indices, so a gather needs no index arithmetic. Flat index 0 is a
    sentinel object (-1) in a row more than ``reach`` above every real row: a pixel
    with no object within reach above gets index 0, i.e. distance > reach.
    """
    feat = lab != 0
    last = np.multiply(flat_idx, feat)
    _window_max(last, reach, w)  # nearest object pixel at or above, if within reach
    prev = np.empty_like(last)  # nearest object pixel strictly above
    prev[:w] = 0
    prev[w:] = last[:-w]
    start = lab.take(prev) != lab  # first pixel of a run of one object
    start &= feat
    run = np.multiply(flat_idx, start)
    _window_max(run, reach, w)
    other = prev.take(run)  # the object pixel before the run belongs to another object
    top = sqw.size - 1
    a1 = sqw.take(np.minimum(flat_idx - last, top))
    a2 = sqw.take(np.minimum(flat_idx - other, top))
    return a1, lab.take(last), a2


def _column_summary(inst: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, along axis 0 only: (a1, l1, a2) = squared distance to the nearest object pixel,
    its object, and squared distance to the nearest pixel of any *other* object.

    Object pixels farther than ``reach`` count as absent (``_INF``); they cannot matter.
    Where ``a1`` is ``_INF`` the label ``l1`` is meaningless.
    """
    h, w = inst.shape
    p = reach + 1
    labp = np.zeros((h + 2 * p, w), dtype=np.int32)
    labp[0] = labp[-1] = -1
    labp[p : p + h] = inst
    flat_idx = np.arange(labp.size, dtype=np.int32 if labp.size < 2**31 else np.int64)
    # squared row distance looked up by flat-index difference (dy * w); beyond reach -> _INF
    sqw = np.full(p * w + 1, _INF, dtype=np.int32)
    sqw[: p * w : w] = np.arange(p, dtype=np.int32) ** 2
    up = _scan_up(labp.ravel(), w, reach, flat_idx, sqw)
    down = _scan_up(labp[::-1].ravel(), w, reach, flat_idx, sqw)
    up = [a.reshape(-1, w)[p : p + h] for a in up]
    down = [a.reshape(-1, w)[h + p - 1 : p - 1 : -1] for a in down]
    return _merge(*up, *down)


def _merge(a1, l1, a2, c1, m1, c2):
    """Summary of the union of two item sets, each summarised as (best, its label, best other label).

    ``(a1, l1, a2)``: nearest item, its label, nearest item of any other label. The
    second-nearest of the union never has the label that ends up nearest.
    """
    other = np.maximum(a1, c1)
    other[m1 == l1] = _INF
    n2 = np.minimum(a2, c2)
    np.minimum(n2, other, out=n2)
    n1 = np.minimum(a1, c1)
    nl = l1.copy()
    np.copyto(nl, m1, where=c1 < a1)
    return n1, nl, n2


def two_nearest_distances(
    instances: np.ndarray, *, reach: float, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (int32) to the nearest and second-nearest object, at ``mask`` pixels.

    Exact wherever ``d1 + d2 <= reach``; elsewhere ``d2`` is ``_INF`` or at least
    correct in saying ``d1 + d2 > reach``. Returns flat arrays for the pixels of
    ``mask`` in row-major order; default mask: every non-object pixel.
    """
    inst = np.ascontiguousarray(instances, dtype=np.int32)
    if inst.ndim != 2:
        raise ValueError(f"instances must be 2D (Y, X), got shape {inst.shape}")
    if mask is None:
        mask = inst == 0
    h, w = inst.shape
    k_max = int(math.floor(reach))
    a1, l1, a2 = _column_summary(inst, k_max)
    # pad columns so that x +- k never leaves the array
    wp = w + 2 * k_max
    a1p = np.full((h, wp), _INF, dtype=np.int32)
    a1p[:, k_max : w + k_max] = a1
    a2p = np.full((h, wp), _INF, dtype=np.int32)
    a2p[:, k_max : w + k_max] = a2
    l1p = np.zeros((h, wp), dtype=np.int32)
    l1p[:, k_max : w + k_max] = l1
    a1p, a2p, l1p = a1p.ravel(), a2p.ravel(), l1p.ravel()
    ys, xs = np.nonzero(mask)
    f = (ys * wp + (xs + k_max)).astype(np.int32 if a1p.size < 2**31 else np.int64)
    pos = np.arange(f.size)
    t1, tl, t2 = a1p.take(f), l1p.take(f), a2p.take(f)
    d1 = np.empty(f.size, dtype=np.int32)
    d2 = np.empty(f.size, dtype=np.int32)
    for k in range(1, k_max + 1):
        kk = k * k
        # open while a closer second object may exist (kk < d2) and d1 + d2 <= reach is still
        # possible: later candidates are >= k away, so d1 >= min(d1, k) and d2 >= k. The margin
        # keeps the test conservative against rounding in the final float comparison.
        live = t2 > kk
        if 2 * k > reach:
            live &= t1 <= (reach - k) ** 2 + 1e-6
        n_live = np.count_nonzero(live)
        if n_live < 0.9 * live.size:  # finished pixels may stay a while: merging cannot change them
            dead = ~live
            d1[pos[dead]] = t1[dead]
            d2[pos[dead]] = np.where(t2[dead] > kk, _INF, t2[dead])
            f, pos, t1, tl, t2 = f[live], pos[live], t1[live], tl[live], t2[live]
            if n_live == 0:
                break
        for g in (f - k, f + k):
            c1 = a1p.take(g)
            c1 += kk
            m1 = l1p.take(g)
            c2 = a2p.take(g)
            c2 += kk
            # second-nearest of the union: never the label that ends up nearest
            other = np.maximum(t1, c1)
            other[m1 == tl] = _INF
            np.minimum(t2, c2, out=t2)
            np.minimum(t2, other, out=t2)
            np.copyto(tl, m1, where=c1 < t1)
            np.minimum(t1, c1, out=t1)
    else:
        d1[pos] = t1
        d2[pos] = np.where(t2 > k_max * k_max, _INF, t2) if f.size else t2
    return d1, d2


def border_weight(
    instances: np.ndarray,
    w0: float = W0,
    sigma: float = SIGMA,
    *,
    mask: np.ndarray | None = None,
    cutoff: float = 1e-6,
) -> np.ndarray:
    """The border term ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` of one 2D image (float32).

    Parameters
    ----------
    instances
        2D int array, 0 = no object, 1..N = objects (see ``instances_from_labels``).
    mask
        Pixels that receive the term; default: every non-object pixel. ``weight_map``
        passes the annotated background pixels.
    cutoff
        The term is set to 0 where it is below ``cutoff * w0`` (see the module docstring).
    """
    _check_params(w0, sigma, cutoff)
    inst = np.asarray(instances)
    out = np.zeros(inst.shape, dtype=np.float32)
    if mask is None:
        mask = inst == 0
    if w0 == 0 or not mask.any() or _n_objects_below_2(inst):
        return out
    reach = cutoff_distance(sigma, cutoff)
    d1, d2 = two_nearest_distances(inst, reach=reach, mask=mask)
    out[mask] = _term(np.sqrt(d1.astype(np.float64)), np.sqrt(d2.astype(np.float64)), w0, sigma, reach)
    return out


def _n_objects_below_2(inst: np.ndarray) -> bool:
    hi = inst.max(initial=0)
    return hi <= 0 or np.min(inst, where=inst > 0, initial=hi) == hi


def _term(d1: np.ndarray, d2: np.ndarray, w0: float, sigma: float, reach: float) -> np.ndarray:
    s = d1 + d2
    return np.where(s <= reach, w0 * np.exp(-(s * s) / (2.0 * sigma * sigma)), 0.0)


# --------------------------------------------------------------------------- public map


def weight_map(
    labels,
    *,
    w0: float = W0,
    sigma: float = SIGMA,
    mode: LabelMode = "instance",
    zero_is_background: bool = False,
    class_balance: bool = True,
    border: bool = True,
    border_class: bool = False,
    cutoff: float = 1e-6,
) -> np.ndarray:
    """Loss weights of paper eq. 2 for painted labels (float32, same shape as ``labels``).

    Parameters
    ----------
    labels
        2D (Y, X) or ND (..., Y, X) labels in the convention of
        :mod:`napari_unet.core.labels` (0 = not annotated -> weight 0). ND input
        is processed one 2D slice at a time (class balance included), so
        ``weight_map(stack)[i] == weight_map(stack[i])``.
    w0, sigma
        Border term amplitude and width in pixels (paper: 10 and 5).
    mode
        ``'instance'`` (1 = background, every value >= 2 an object) or
        ``'semantic'`` (objects = connected components of each class >= 2).
    class_balance
        ``w_c`` = inverse class frequency over the annotated pixels, averaging 1
        there; ``False``: ``w_c = 1`` on annotated pixels.
    border
        Add the border term on annotated background pixels (class 0) of slices
        with at least two objects; see the module docstring for why not inside
        objects.
    border_class
        Balance the classes of ``targets_from_labels(..., border_class=True)``.
    cutoff
        Border term truncation, relative to ``w0``.
    """
    _check_mode(mode)
    _check_params(w0, sigma, cutoff)
    lab = _check_labels(labels)
    out = np.zeros(lab.shape, dtype=np.float32)
    for idx in np.ndindex(*lab.shape[:-2]):
        out[idx] = _weight_map_2d(
            lab[idx], w0, sigma, mode, zero_is_background, class_balance, border, border_class, cutoff, border_weight
        )
    return out


def _weight_map_2d(lab, w0, sigma, mode, zib, class_balance, border, border_class, cutoff, border_fn):
    target = targets_from_labels(lab, mode=mode, zero_is_background=zib, border_class=border_class)
    w = class_balance_weights(target, class_balance=class_balance)
    if border and w0 > 0:
        inst = instances_from_labels(lab, mode=mode, zero_is_background=zib)
        w += border_fn(inst, w0, sigma, mask=target == 0, cutoff=cutoff)
    return w


# --------------------------------------------------------------------------- slow reference


def border_weight_reference(
    instances: np.ndarray,
    w0: float = W0,
    sigma: float = SIGMA,
    *,
    mask: np.ndarray | None = None,
    cutoff: float = 1e-6,
) -> np.ndarray:
    """Obviously correct border term: one Euclidean distance transform per object, two smallest per pixel."""
    _check_params(w0, sigma, cutoff)
    inst = np.asarray(instances)
    out = np.zeros(inst.shape, dtype=np.float32)
    if mask is None:
        mask = inst == 0
    ids = np.unique(inst[inst > 0])
    if w0 == 0 or ids.size < 2:
        return out
    dists = np.stack([ndi.distance_transform_edt(inst != i) for i in ids])
    two = np.partition(dists, 1, axis=0)[:2]
    term = _term(two[0], two[1], w0, sigma, cutoff_distance(sigma, cutoff))
    out[mask] = term[mask]
    return out


def weight_map_reference(
    labels,
    *,
    w0: float = W0,
    sigma: float = SIGMA,
    mode: LabelMode = "instance",
    zero_is_background: bool = False,
    class_balance: bool = True,
    border: bool = True,
    border_class: bool = False,
    cutoff: float = 1e-6,
) -> np.ndarray:
    """:func:`weight_map` computed with :func:`border_weight_reference` (slow; tests and benchmarks)."""
    _check_mode(mode)
    _check_params(w0, sigma, cutoff)
    lab = _check_labels(labels)
    out = np.zeros(lab.shape, dtype=np.float32)
    for idx in np.ndindex(*lab.shape[:-2]):
        out[idx] = _weight_map_2d(
            lab[idx],
            w0,
            sigma,
            mode,
            zero_is_background,
            class_balance,
            border,
            border_class,
            cutoff,
            border_weight_reference,
        )
    return out
