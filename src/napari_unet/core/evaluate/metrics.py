"""Evaluation metrics: pixel error, V_rand / Rand error, IoU, instance F1.

Conventions
-----------
All functions take *prediction-style* arrays: ``0`` is background (or, for
ISBI ground truth, membrane) and ``1..N`` are objects. Training labels from
:mod:`napari_unet.core.labels` (1 = background, >= 2 = objects) must be turned
into this form first: ``np.where(labels >= 2, labels - 1, 0)``.

Stacks
------
A 3D array ``(Z, Y, X)`` is a stack of independent 2D images unless
``stack='3d'``: objects never continue across slices and label ids may repeat
from slice to slice (as in ISBI 2012 and the DSB 2018 stack). ``stack='pooled'``
(default) sums the counts of all slices before forming the score, the way the
Fiji ISBI script sums true/false positives over slices; ``stack='mean'`` averages
the per-slice scores; ``stack='3d'`` treats the array as one volume.

ISBI 2012 (the U-Net paper's EM benchmark)
-----------------------------------------
The challenge scores a membrane probability map by thresholding it, taking the
4-connected components of the cell pixels (:func:`segmentation_from_membranes`)
and comparing them with the ground truth cells using the *foreground-restricted
Rand F-score* V_rand (:func:`vrand`). The reported *Rand error* is
``1 - V_rand`` (:func:`rand_error`); the paper reports 0.0382 on the hidden test
set. The challenge also took the best score over thresholds; ``vrand`` scores
one segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "RandScores",
    "instance_f1",
    "iou",
    "mean_iou",
    "pixel_error",
    "rand_error",
    "rand_scores",
    "segmentation_from_membranes",
    "vrand",
]

StackMode = Literal["pooled", "mean", "3d"]
_STACK_MODES = ("pooled", "mean", "3d")


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "prediction and ground truth") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {a.shape} and {b.shape}")


def _check_stack(stack: str) -> None:
    if stack not in _STACK_MODES:
        raise ValueError(f"stack must be 'pooled', 'mean' or '3d', got {stack!r}")


def _slices(a: np.ndarray, stack: str) -> list[np.ndarray]:
    """2D images of ``a`` (or ``[a]`` for a volume / a single image)."""
    if a.ndim <= 2 or stack == "3d":
        return [a]
    return list(a.reshape(-1, *a.shape[-2:]))


def _binary(x, threshold: float) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "b":
        return x
    if x.dtype.kind == "f":
        return x > threshold
    return x > 0


def _as_segmentation(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "b":
        return x.astype(np.int64)
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise ValueError(f"{name} must hold whole-number labels, got floats with fractions, NaN or inf")
    elif x.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label array, got dtype {x.dtype}")
    if x.size and x.min() < 0:
        raise ValueError(f"{name} must be >= 0 (0 = background)")
    return x.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- pixels


def pixel_error(pred, truth, *, threshold: float = 0.5) -> float:
    """Fraction of pixels whose binary class differs (ISBI 2012 "pixel error").

    Integer/bool inputs are foreground where ``!= 0``; float inputs (probabilities)
    where ``> threshold``. For ISBI compare cells with cells (truth 255 = cell),
    or membranes with membranes: the error is the same either way.
    """
    p, t = _binary(pred, threshold), _binary(truth, threshold)
    _check_same_shape(p, t)
    if p.size == 0:
        raise ValueError("cannot score empty arrays")
    return float(np.count_nonzero(p != t) / p.size)


def iou(pred, truth, n_classes: int | None = None) -> np.ndarray:
    """Per-class intersection over union of two class maps (values ``0..n_classes-1``).

    Classes absent from both arrays get NaN, so ``np.nanmean`` (:func:`mean_iou`)
    averages only the classes that occur. Pooled over all pixels of a stack.
    """
    p = _as_segmentation(pred, "pred")
    t = _as_segmentation(truth, "truth")
    _check_same_shape(p, t)
    if n_classes is None:
        n_classes = int(max(p.max(initial=0), t.max(initial=0))) + 1
    if p.size and max(p.max(), t.max()) >= n_classes:
        raise ValueError(f"class values must be < n_classes={n_classes}, got up to {int(max(p.max(), t.max()))}")
    cm = np.bincount((t * n_classes + p).ravel(), minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(pred, truth, n_classes: int | None = None) -> float:
    """Mean of :func:`iou` over the classes present in either array."""
    return float(np.nanmean(iou(pred, truth, n_classes)))


# --------------------------------------------------------------------------- Rand


@dataclass(frozen=True)
class RandScores:
    """Foreground-restricted Rand scores (all in [0, 1], higher is better).

    ``split``: Rand recall -- low when true cells are split into several pieces.
    ``merge``: Rand precision -- low when different true cells are merged.
    ``v_rand``: their harmonic mean, ``2 * split * merge / (split + merge)``.
    """

    v_rand: float
    split: float
    merge: float

    @property
    def rand_error(self) -> float:
        return 1.0 - self.v_rand


def _rand_sums(pred: np.ndarray, truth: np.ndarray, pred_zero: str) -> tuple[float, float, float]:
    """(sum_ij p_ij^2, sum_i a_i^2 (truth), sum_j b_j^2 (pred)) in raw pixel-pair counts.

    Only pixels with ``truth != 0`` count. Predicted label 0 inside the truth
    foreground is, with ``pred_zero='singletons'``, a set of one-pixel segments
    (as in the Fiji / ISBI 2012 script and the SNEMI3D definition), so a thick
    predicted membrane costs split score; with ``'segment'`` it is one segment
    like any other label (scikit-image's ``adapted_rand_error``).
    """
    fg = truth != 0
    t = truth[fg]
    p = pred[fg]
    if t.size == 0:
        return 0.0, 0.0, 0.0
    _, t = np.unique(t, return_inverse=True)
    p_values, p = np.unique(p, return_inverse=True)
    nt, np_ = int(t.max()) + 1, int(p.max()) + 1
    pairs = np.bincount(t.ravel().astype(np.int64) * np_ + p.ravel(), minlength=nt * np_).reshape(nt, np_)
    a = pairs.sum(axis=1).astype(np.float64)
    if pred_zero == "singletons" and p_values[0] == 0:
        zeros = float(pairs[:, 0].sum())
        inner = pairs[:, 1:].astype(np.float64)
        b = inner.sum(axis=0)
        return float((inner**2).sum()) + zeros, float((a**2).sum()), float((b**2).sum()) + zeros
    b = pairs.sum(axis=0).astype(np.float64)
    return float((pairs.astype(np.float64) ** 2).sum()), float((a**2).sum()), float((b**2).sum())


def _scores(s_ab: float, s_a: float, s_b: float) -> RandScores:
    if s_a == 0:  # no foreground in the truth: nothing to get wrong
        return RandScores(1.0, 1.0, 1.0)
    split = s_ab / s_a
    merge = s_ab / s_b if s_b > 0 else 1.0
    return RandScores(2.0 * s_ab / (s_a + s_b), split, merge)


def rand_scores(
    pred_seg,
    truth_seg,
    *,
    stack: StackMode = "pooled",
    pred_zero: Literal["singletons", "segment"] = "singletons",
) -> RandScores:
    """Foreground-restricted Rand F-score (V_rand) with its split and merge parts.

    Parameters
    ----------
    pred_seg, truth_seg
        Label images (0 = background/membrane, 1..N = segments). Pixels where the
        truth is 0 are left out (the "foreground restriction").
    stack
        How a (Z, Y, X) stack is scored; see the module docstring.
    pred_zero
        ``'singletons'`` (default, Fiji/ISBI 2012, SNEMI3D): predicted 0 inside a
        true cell counts as one-pixel segments. ``'segment'``: 0 is an ordinary
        segment, matching ``skimage.metrics.adapted_rand_error(truth, pred)``
        (whose ``1 - error`` equals this V_rand).
    """
    _check_stack(stack)
    if pred_zero not in ("singletons", "segment"):
        raise ValueError(f"pred_zero must be 'singletons' or 'segment', got {pred_zero!r}")
    p = _as_segmentation(pred_seg, "pred_seg")
    t = _as_segmentation(truth_seg, "truth_seg")
    _check_same_shape(p, t)
    sums = [_rand_sums(ps, ts, pred_zero) for ps, ts in zip(_slices(p, stack), _slices(t, stack))]
    if stack == "mean" and len(sums) > 1:
        per = [_scores(*s) for s in sums if s[1] > 0] or [RandScores(1.0, 1.0, 1.0)]
        return RandScores(*(float(np.mean([getattr(r, f) for r in per])) for f in ("v_rand", "split", "merge")))
    return _scores(*(float(sum(s[i] for s in sums)) for i in range(3)))


def vrand(pred_seg, truth_seg, *, stack: StackMode = "pooled", pred_zero: str = "singletons") -> float:
    """V_rand, the ISBI 2012 foreground-restricted Rand F-score (1.0 = perfect); see :func:`rand_scores`."""
    return rand_scores(pred_seg, truth_seg, stack=stack, pred_zero=pred_zero).v_rand


def rand_error(pred_seg, truth_seg, *, stack: StackMode = "pooled", pred_zero: str = "singletons") -> float:
    """The "Rand error" ISBI 2012 and the U-Net paper report: ``1 - V_rand`` (0 = perfect)."""
    return 1.0 - vrand(pred_seg, truth_seg, stack=stack, pred_zero=pred_zero)


def segmentation_from_membranes(binary_cells, *, threshold: float = 0.5) -> np.ndarray:
    """Cells as 4-connected components: the ISBI 2012 way to turn a map into a segmentation.

    ``binary_cells`` is True/non-zero on cell interior and 0 on membrane (for float
    input: cell probability ``> threshold``; pass ``1 - p_membrane`` for a membrane
    probability map). Returns int32 labels, 0 = membrane, ids unique across a
    stack; slices of a (Z, Y, X) stack are labelled independently. Ground truth
    in this form: ``segmentation_from_membranes(train_labels == 255)``.
    """
    cells = _binary(binary_cells, threshold)
    if cells.ndim < 2:
        raise ValueError(f"expected a 2D image or a stack of 2D images, got shape {cells.shape}")
    out = np.zeros(cells.shape, dtype=np.int32)
    flat_in = cells.reshape(-1, *cells.shape[-2:])
    flat_out = out.reshape(-1, *cells.shape[-2:])
    offset = 0
    for i in range(flat_in.shape[0]):
        lab, n = ndi.label(flat_in[i])  # default structure = 4-connectivity, as Fiji's script
        flat_out[i] = np.where(lab > 0, lab + offset, 0)
        offset += n
    return out


# --------------------------------------------------------------------------- instances


def _match_counts(pred: np.ndarray, truth: np.ndarray, iou_threshold: float):
    """(tp, n_pred, n_true, matched IoUs) for one image or volume; 0 = background."""
    _, p = np.unique(pred, return_inverse=True)
    p = p.reshape(pred.shape)
    if pred.size and pred.min() != 0:
        p = p + 1  # no background in pred: keep index 0 free for it
    _, t = np.unique(truth, return_inverse=True)
    t = t.reshape(truth.shape)
    if truth.size and truth.min() != 0:
        t = t + 1
    n_p, n_t = int(p.max(initial=0)), int(t.max(initial=0))
    if n_p == 0 or n_t == 0:
        return 0, n_p, n_t, np.zeros(0)
    area_p = np.bincount(p.ravel(), minlength=n_p + 1)
    area_t = np.bincount(t.ravel(), minlength=n_t + 1)
    both = (p > 0) & (t > 0)
    # Sparse overlap table: one bincount over the (true, pred) id pairs that actually touch.
    code = t[both].astype(np.int64) * (n_p + 1) + p[both]
    codes, inter = np.unique(code, return_counts=True)
    ti, pi = np.divmod(codes, n_p + 1)
    ious = inter / (area_t[ti] + area_p[pi] - inter)
    if iou_threshold >= 0.5:
        # IoU > 0.5 is possible with at most one partner on each side: the matching is unique.
        keep = ious > iou_threshold
        return int(keep.sum()), n_p, n_t, ious[keep]
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix

    cand = ious > iou_threshold
    if not cand.any():
        return 0, n_p, n_t, np.zeros(0)
    rows, r_inv = np.unique(ti[cand], return_inverse=True)
    cols, c_inv = np.unique(pi[cand], return_inverse=True)
    mat = coo_matrix((ious[cand], (r_inv, c_inv)), shape=(len(rows), len(cols))).toarray()
    r, c = linear_sum_assignment(mat, maximize=True)
    matched = mat[r, c]
    matched = matched[matched > iou_threshold]
    return len(matched), n_p, n_t, matched


def instance_f1(pred_instances, true_instances, iou_threshold: float = 0.5, *, stack: StackMode = "pooled") -> dict:
    """Object-level detection scores: a predicted object matches a true one at IoU > ``iou_threshold``.

    Matching is one-to-one (unique for thresholds >= 0.5, optimal assignment
    below). Label ids need not be consecutive; 0 is background.

    Returns
    -------
    dict with ``f1``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn`` and
    ``mean_matched_iou`` (NaN when nothing matched). With no objects in either
    input all scores are 1.0 (nothing to find, nothing found). For a stack,
    ``'pooled'`` sums tp/fp/fn over slices, ``'mean'`` averages the per-slice
    f1/precision/recall (tp/fp/fn are still totals).
    """
    _check_stack(stack)
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be >= 0 and < 1, got {iou_threshold}")
    p = _as_segmentation(pred_instances, "pred_instances")
    t = _as_segmentation(true_instances, "true_instances")
    _check_same_shape(p, t)
    per = [_match_counts(ps, ts, iou_threshold) for ps, ts in zip(_slices(p, stack), _slices(t, stack))]

    def prf(tp, n_p, n_t):
        fp, fn = n_p - tp, n_t - tp
        precision = tp / n_p if n_p else 1.0 if n_t == 0 else 0.0
        recall = tp / n_t if n_t else 1.0 if n_p == 0 else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
        return f1, precision, recall

    tp = sum(x[0] for x in per)
    n_p = sum(x[1] for x in per)
    n_t = sum(x[2] for x in per)
    matched = np.concatenate([x[3] for x in per]) if per else np.zeros(0)
    if stack == "mean" and len(per) > 1:
        f1, precision, recall = (float(v) for v in np.mean([prf(*x[:3]) for x in per], axis=0))
    else:
        f1, precision, recall = prf(tp, n_p, n_t)
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "tp": int(tp),
        "fp": int(n_p - tp),
        "fn": int(n_t - tp),
        "mean_matched_iou": float(matched.mean()) if matched.size else float("nan"),
    }
