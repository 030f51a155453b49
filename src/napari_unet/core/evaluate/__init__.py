"""Scoring: metrics (pixel error, Rand, IoU, instance F1) and predict-and-score (score)."""

from __future__ import annotations

from .metrics import instance_f1, iou, pixel_error, rand_error, vrand
from .score import evaluate_arrays

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = ["pixel_error", "vrand", "rand_error", "iou", "instance_f1", "evaluate_arrays"]
