"""The training losses: eq. 2's weighted cross-entropy, and the keep-prior term for fine-tuning.

Also :func:`annotated_iou`, the validation score on annotated pixels only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labels import ANY_OBJECT, IGNORE

__all__ = ["annotated_iou", "kept_start_loss", "prior_loss", "weighted_loss"]


def weighted_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by eq. 2, averaged over annotated pixels.

    :data:`.labels.ANY_OBJECT` pixels (part of a partly painted object) cost -log(p_interior + p_border).
    """
    return _weighted_ce(F.log_softmax(logits.float(), dim=1), target, weights)


def _weighted_ce(logp: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`weighted_loss` from the log-probabilities (cross_entropy is nll_loss of them)."""
    any_obj = target == ANY_OBJECT
    ce = F.nll_loss(logp, torch.where(any_obj, 1, target).clamp_min(0), reduction="none")
    if bool(any_obj.any()):
        ce = torch.where(any_obj, -torch.logsumexp(logp[:, 1:], dim=1), ce)
    ann = target != IGNORE
    n = ann.sum().clamp_min(1)
    return (ce * weights * ann).sum() / n


def prior_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(teacher || model) averaged over the pixels nobody annotated (knowledge distillation).

    Sparse scribbles supervise object interiors and far background, never the
    boundaries. Fine-tuned on scribbles alone, a pretrained model forgets what it
    knew about everything else (measured in docs/accuracy.md: the shipped nuclei
    model fell from IoU 0.82 to 0.59 in 5 CPU minutes). Matching the starting
    model's own soft prediction wherever the user did not paint keeps that
    knowledge, while the painted pixels (the weighted loss) correct it where the
    user says it is wrong.
    """
    if not bool((target == IGNORE).any()):
        return logits.new_zeros(())
    return _prior_kl(F.log_softmax(logits.float(), dim=1), teacher_logits, target)


def _prior_kl(logp: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`prior_loss` from the model's log-probabilities (some pixel must be unannotated)."""
    unann = target == IGNORE
    logq = F.log_softmax(teacher_logits.float(), dim=1)
    kl = (logq.exp() * (logq - logp)).sum(dim=1)
    return (kl * unann).sum() / unann.sum()


def kept_start_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, keep_prior: float
) -> torch.Tensor:
    """Fine-tuning a start model that is kept: eq. 2 on the painted pixels, ``keep_prior`` x the
    :func:`prior_loss` on the others, each pixel counted once (both sums over the tile's pixels).

    Averaging each term over its own pixels instead weighs a stroke pixel ~40x an unpainted one when
    strokes cover 2.5 % of the tile: the strokes (object interiors, far background, which a model that
    is kept already gets right) then pull its boundaries out of place, and 5 CPU minutes on DSB strokes
    cost the shipped nuclei model 0.016 IoU and 0.04 instance F1 (docs/accuracy.md). Counted once,
    it holds them. On dense labels (a corrected prediction) it is eq. 2 alone.

    Its scale is a dense loss's (a mean over all pixels): Adam (the CPU default) does not see the
    difference; with SGD (the CUDA default's optimizer) the strokes' gradient is the painted share of what
    it was, and the model holds as with Adam (DSB strokes, SGD momentum 0.99 at 1e-4, 5 CPU min: 0.821 /
    F1 0.79, the model as it is; averaged per term, 0.792 / F1 0.76). A resumed run (which has no
    teacher) starts with gradients larger than the saved optimizer state's by that share: not measured.
    """
    share = (target != IGNORE).float().mean()
    logp = F.log_softmax(logits.float(), dim=1)  # once for both terms
    ce = _weighted_ce(logp, target, weights)
    if share >= 1:  # dense labels: nothing left to keep
        return ce
    return share * ce + keep_prior * (1 - share) * _prior_kl(logp, teacher_logits, target)


def annotated_iou(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean IoU over the classes present in the annotation, on annotated pixels only."""
    ann = target != IGNORE
    p, t = pred[ann], target[ann]
    t = np.where(t == ANY_OBJECT, np.where((p == 1) | (p == 2), p, 1), t)  # object: interior or border both right
    ious = []
    for c in range(n_classes):
        tc, pc = t == c, p == c
        if not tc.any():
            continue
        ious.append((tc & pc).sum() / max((tc | pc).sum(), 1))
    return float(np.mean(ious)) if ious else float("nan")
