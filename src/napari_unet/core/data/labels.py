"""The one label convention used by the CLI, the widgets, the docs and training.

Training labels (what a user paints in napari)
-----------------------------------------------
* ``0`` -- **not annotated**. The loss ignores these pixels, so sparse painting
  on a few slices is valid training data. With ``zero_is_background=True`` a
  fully annotated image may use 0 for background instead.
* ``mode='semantic'`` -- value ``k >= 1`` is class ``k - 1``; value 1 (class 0)
  is the background class.
* ``mode='instance'`` -- ``1`` is background and every value ``>= 2`` is its own
  object. The network learns background/foreground (plus an optional border
  class); the paper's border weights (eq. 2) come from the instances, which is
  what teaches it to keep touching objects apart.

Predictions (what the network writes)
-------------------------------------
Semantic predictions are class indices (0 = background, so it shows as
transparent in a napari Labels layer); instance predictions are 0 for
background and 1..N for objects. Adding 1 to a semantic prediction turns it
into training labels again (0 would otherwise mean "not annotated").
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from .planes import spatial_shape

__all__ = [
    "ANY_OBJECT",
    "IGNORE",
    "LabelMode",
    "MODES",
    "annotated_mask",
    "check_pair",
    "check_shapes",
    "instances_from_labels",
    "instances_from_semantic",
    "isbi_to_instances",
    "n_classes_for",
    "object_boundaries",
    "shift_zero",
    "targets_from_labels",
]

IGNORE = -1
# a target for "object, interior or border": object pixels of a partly painted object (a stroke inside it)
# in instance mode with a border class; where its border runs is not painted, so neither class is asserted
ANY_OBJECT = 99
LabelMode = Literal["semantic", "instance"]
MODES = ("semantic", "instance")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"label mode must be 'semantic' or 'instance', got {mode!r}")


def _as_int_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)):
            raise ValueError("labels contain NaN or inf; labels must be whole numbers >= 0")
        if np.any(labels != np.round(labels)):
            raise ValueError("labels must be whole numbers (0 = not annotated, 1 = background, 2.. = objects/classes)")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "b":
        labels = labels.astype(np.int64) + 1  # False -> background, True -> class/object
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = not annotated, 1 = background, 2.. = objects/classes)")
    return labels


def annotated_mask(labels, *, zero_is_background: bool = False) -> np.ndarray:
    """Boolean mask of the pixels that take part in the loss."""
    labels = np.asarray(labels)
    if zero_is_background:
        return np.ones(labels.shape, dtype=bool)
    return labels > 0


def shift_zero(labels, zero_is_background: bool) -> np.ndarray:
    """Map 0 to background (1) when the image is fully annotated."""
    labels = _as_int_labels(labels)
    if zero_is_background:
        labels = np.where(labels == 0, 1, labels)
    return labels


def n_classes_for(mode: LabelMode, labels=None, *, border_class: bool = False) -> int:
    """Number of network outputs needed for ``labels`` in ``mode``."""
    _check_mode(mode)
    if mode == "instance":
        return 3 if border_class else 2
    if labels is None:
        return 2
    labels = _as_int_labels(labels)  # NaN, fractions or negative values: the message says what is wrong
    m = int(np.max(labels)) if np.size(labels) else 0
    return max(2, m)


def targets_from_labels(
    labels,
    *,
    mode: LabelMode = "semantic",
    n_classes: int | None = None,
    zero_is_background: bool = False,
    border_class: bool = False,
    partial_objects: bool = False,
) -> np.ndarray:
    """Per-pixel class targets (int64) with ``IGNORE`` (-1) where not annotated.

    Semantic: value k >= 1 -> class k-1. Instance: 1 -> 0 (background), >= 2 -> 1
    (foreground); with ``border_class`` object pixels on the boundary of their
    object (touching background or another object) become class 2.

    ``partial_objects`` (with ``border_class``): an object painted only in part (it touches
    unpainted pixels: a stroke, not a mask) says "object" but not where its border is, so its
    pixels off the painted boundaries get :data:`ANY_OBJECT` (interior or border) instead of
    interior: strokes near an object's edge then do not teach the border head that it is interior.
    """
    _check_mode(mode)
    labels = shift_zero(labels, zero_is_background)
    target = np.full(labels.shape, IGNORE, dtype=np.int64)
    if mode == "semantic":
        ann = labels > 0
        target[ann] = labels[ann] - 1
        if n_classes is not None and ann.any() and target.max() >= n_classes:
            raise ValueError(
                f"labels contain value {int(labels.max())} (class {int(target.max())}) but the model has "
                f"{n_classes} classes; use values 1..{n_classes} (0 = not annotated)"
            )
        return target
    target[labels == 1] = 0
    obj = labels >= 2
    target[obj] = 1
    if border_class:
        edge = object_boundaries(labels) & obj
        if partial_objects:
            unpainted_near = ndi.binary_dilation(labels == 0, structure=_CROSS) & obj
            partial = np.unique(labels[unpainted_near])
            target[np.isin(labels, partial) & obj & ~edge] = ANY_OBJECT
        target[edge] = 2
    return target


_CROSS = ndi.generate_binary_structure(2, 1)


def object_boundaries(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of a different annotated value (2D or per slice of ND)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=bool)
    for ax in (-1, -2):
        a = np.moveaxis(labels, ax, -1)
        o = np.moveaxis(out, ax, -1)
        diff = (a[..., 1:] != a[..., :-1]) & (a[..., 1:] > 0) & (a[..., :-1] > 0)
        o[..., 1:] |= diff
        o[..., :-1] |= diff
    return out & (labels >= 2)


def instances_from_labels(labels, *, mode: LabelMode = "instance", zero_is_background: bool = False) -> np.ndarray:
    """Object instances (int32, 0 = no object) for the border weight term of one 2D image.

    Instance mode: every value >= 2 is one object. Semantic mode: connected
    components of each non-background class (values >= 2).
    """
    _check_mode(mode)
    labels = shift_zero(labels, zero_is_background)
    if mode == "instance":
        inst = np.where(labels >= 2, labels - 1, 0)
        return inst.astype(np.int32)
    inst = np.zeros(labels.shape, dtype=np.int32)
    nxt = 0
    for v in np.unique(labels):
        if v < 2:
            continue
        comp, n = ndi.label(labels == v)
        inst[comp > 0] = comp[comp > 0] + nxt
        nxt += n
    return inst


def check_shapes(image, labels, *, channel_axis: int | None = None, name: str = "") -> None:
    """ValueError unless ``labels`` has the shape of ``image`` (without its channel axis); reads no data."""
    ishape = spatial_shape(np.shape(image), channel_axis)
    lshape = tuple(np.shape(labels))
    pre = f"{name}: " if name else ""
    if ishape != lshape:
        raise ValueError(
            f"{pre}labels have shape {lshape} but the image has shape {ishape}; "
            "paint labels on a layer made for this image (same height, width and slices)"
        )


def check_pair(image: np.ndarray, labels: np.ndarray, *, channel_axis: int | None = None, name: str = "") -> None:
    """Raise a ValueError that says what to do when ``labels`` cannot train on ``image``."""
    check_shapes(image, labels, channel_axis=channel_axis, name=name)
    pre = f"{name}: " if name else ""
    if np.size(labels) == 0:  # else 'nothing is annotated yet', as if the user had not painted
        raise ValueError(f"{pre}the image is empty (shape {tuple(np.shape(image))}, no pixels); choose an image")
    lab = _as_int_labels(labels)
    if not np.any(lab > 0):
        raise ValueError(
            f"{pre}nothing is annotated yet: all labels are 0 (= not annotated). Paint background with 1 "
            "and objects with 2, 3, ... (or set zero_is_background for fully annotated masks)"
        )


# ----------------------------------------------------------------------------- predictions -> instances, other formats


def instances_from_semantic(
    labels: np.ndarray, n_classes: int, min_size: int = 0, *, border_class: bool | None = None
) -> np.ndarray:
    """Instances from a semantic prediction of one plane.

    2 classes: connected components (4-connected) of the foreground, so the
    background gap the border weights taught the net keeps touching cells apart.
    ``border_class`` (an instance-mode model with classes background, interior,
    border; None: ``n_classes == 3``): components of the interior grown back over
    the border pixels. Other models with more classes (semantic, e.g. mitochondria
    and synapses): the components of each class, numbered across classes.
    Objects smaller than ``min_size`` pixels are dropped (specks of foreground;
    the shipped nuclei model sets 30, chosen on training images) and the rest
    numbered 1..N.
    """
    if border_class is None:
        border_class = n_classes == 3
    if n_classes >= 3 and not border_class:
        inst = np.zeros(labels.shape, dtype=np.int64)
        for c in range(1, n_classes):
            comp, n = ndi.label(labels == c)
            inst[comp > 0] = comp[comp > 0] + inst.max()
    elif n_classes >= 3:
        seeds, _ = ndi.label(labels == 1)
        fg = labels >= 1
        if seeds.max() == 0:
            return seeds.astype(np.uint32)
        dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        inst = seeds[iy, ix]
        inst[~fg] = 0
    else:
        inst, _ = ndi.label(labels >= 1)
    if min_size > 1 and inst.max() > 0:
        sizes = np.bincount(inst.ravel())
        keep = sizes >= min_size
        keep[0] = False
        lut = np.zeros(sizes.size, dtype=np.int64)
        lut[keep] = np.arange(1, int(keep.sum()) + 1)
        inst = lut[inst]
    return inst.astype(np.uint32)


def isbi_to_instances(lab) -> np.ndarray:
    """ISBI 2012 labels (0 = membrane, 255 = cell) -> instance-mode labels (1 = membrane, >= 2 = cells)."""
    lab = np.asarray(lab)
    out = np.ones(lab.shape, dtype=np.int32)
    planes = [lab] if lab.ndim == 2 else list(lab)
    for z, p in enumerate(planes):
        comp, _ = ndi.label(p > 0)
        tgt = out if lab.ndim == 2 else out[z]
        tgt[comp > 0] = comp[comp > 0] + 1
    return out
