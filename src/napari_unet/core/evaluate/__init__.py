"""Scoring: metrics (pixel error, Rand, IoU, instance F1) and predict-and-score (score)."""

from __future__ import annotations

from .metrics import (
    RandScores,
    instance_f1,
    iou,
    mean_iou,
    pixel_error,
    rand_error,
    rand_scores,
    segmentation_from_membranes,
    vrand,
)
from .score import KINDS, evaluate_arrays

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
    "KINDS",
    "evaluate_arrays",
]
