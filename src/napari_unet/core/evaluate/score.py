"""Predict an image and score it against ground truth, slice by slice (the CLI's ``evaluate``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..data.planes import spatial_shape
from ..drain import drain
from ..predict.config import PredictConfig
from ..predict.events import TileEvent
from ..predict.tiles import iter_predict
from . import metrics

__all__ = ["KINDS", "evaluate_arrays"]

KINDS = ("auto", "membranes", "instances")


def evaluate_arrays(
    model,
    image,
    truth,
    *,
    kind: str = "auto",
    tta: bool = False,
    device=None,
    min_size: int | None = None,
    progress: Callable[[TileEvent], None] | None = None,
    channel_axis: int | None = None,
    zoom: float | None = None,
) -> dict:
    """Predict ``image`` and score it against ``truth`` (per slice, then averaged).

    kind 'membranes' (ISBI: truth 0 = membrane, >0 = cell): pixel error of
    membrane vs cell, V_rand and Rand error of the cell segmentation.
    kind 'instances' (truth 0 = background, 1..N objects): foreground IoU and
    instance F1 at IoU 0.5. ``progress`` sees every :class:`TileEvent` of the prediction;
    ``channel_axis`` is the image's channel axis for a multichannel model; ``zoom`` the zoom for the
    network (None: the model's own, :func:`~napari_unet.core.data.zoom.model_zoom`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    truth = np.asarray(truth)
    _check_truth(truth, spatial_shape(np.shape(image), channel_axis), channel_axis)
    if kind == "auto":
        kind = _guess_kind(truth)
    config = PredictConfig(
        output="labels" if kind == "membranes" else "instances",
        tta=tta,
        device=device,
        min_size=min_size,
        channel_axis=channel_axis,
        zoom=zoom,
    )
    pred = drain(iter_predict(model, image, config), progress)
    planes_p = [pred] if pred.ndim == 2 else list(pred)
    planes_t = [truth] if truth.ndim == 2 else list(truth)
    score = _score_membranes if kind == "membranes" else _score_instances
    rows = [score(p, t) for p, t in zip(planes_p, planes_t)]
    keys = rows[0].keys()
    return {
        "kind": kind,
        "n_slices": len(rows),
        **{k: float(np.mean([r[k] for r in rows])) for k in keys},
        "per_slice": rows,
    }


def _check_truth(truth: np.ndarray, spatial: tuple[int, ...], channel_axis: int | None) -> None:
    """ValueError unless ``truth`` has the image's spatial shape (zip() would score the slices both have,
    silently)."""
    if truth.shape != spatial:
        raise ValueError(
            f"the ground truth has shape {truth.shape} but the image has shape {spatial}"
            + (" (without its channel axis)" if channel_axis is not None else "")
            + "; give the labels made for this image (same height, width and slices)"
        )


def _guess_kind(truth: np.ndarray) -> str:
    """'membranes' for ISBI-style truth (only 0 and 255), else 'instances'; ValueError for training labels."""
    if truth.size and truth.min() >= 1:
        # every pixel an object: training labels (1 = background) scored as instances, foreground IoU near 1
        # whatever the model does
        raise ValueError(
            "the ground truth has no background (0): these look like training labels (1 = background, "
            "2.. = objects). Evaluation wants 0 = background, 1..N = objects: subtract 1 from them, or choose "
            "kind 'instances' to score them as they are"
        )
    return "membranes" if set(np.unique(truth)) <= {0, 255} and truth.max() == 255 else "instances"


def _score_membranes(pred: np.ndarray, truth: np.ndarray) -> dict:
    """One slice's pixel error, V_rand and Rand error (class 0 = membrane, the background of the cells)."""
    cells_pred = pred != 0
    cells_true = truth != 0
    seg_p = metrics.segmentation_from_membranes(cells_pred)
    seg_t = metrics.segmentation_from_membranes(cells_true)
    return {
        "pixel_error": metrics.pixel_error(cells_pred, cells_true),
        "v_rand": metrics.vrand(seg_p, seg_t),
        "rand_error": metrics.rand_error(seg_p, seg_t),
    }


def _score_instances(pred: np.ndarray, truth: np.ndarray) -> dict:
    """One slice's foreground IoU and instance F1 (with its precision and recall) at IoU 0.5."""
    f1 = metrics.instance_f1(pred, truth, iou_threshold=0.5)
    return {
        "foreground_iou": float(metrics.iou(pred > 0, truth > 0, n_classes=2)[1]),
        "instance_f1": f1["f1"],
        "precision": f1["precision"],
        "recall": f1["recall"],
    }
