"""Training data: annotated slices prepared once, then tiles sampled around annotated pixels.

:func:`prepare_slices` normalises every annotated slice (:mod:`.intensity`), turns its
labels into targets and computes its eq. 2 weight map (:mod:`.weights`);
:func:`sample_batch` crops tiles around random annotated pixels (mirrored at the
image border) and augments image, targets and weights together (:mod:`.augment`).
This is half of the fine-tuning recipe; the other half is :mod:`.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..data.intensity import check_real, percentiles, scale_intensity
from ..data.labels import IGNORE, annotated_mask, check_pair, targets_from_labels
from ..data.planes import plane_at
from ..data.zoom import zoom_labels, zoom_plane
from . import augment as aug
from .weights import weight_map

__all__ = ["DENSE", "TrainSlice", "as_pairs", "crop_tile", "prepare_slices", "sample_batch", "slice_weights", "weigh"]

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class TrainSlice:
    image: np.ndarray  # (C, H, W) float32 normalised
    target: np.ndarray  # (H, W) int64, IGNORE where not annotated
    weights: np.ndarray  # (H, W) float32 (ones until :func:`weigh`)
    labels: np.ndarray  # (H, W) the painted labels, for the weight map
    where: tuple[int, int]  # (pair index, z)
    n_annotated: int
    annotated_idx: np.ndarray  # flat indices of annotated pixels


def as_pairs(images, labels) -> list[tuple]:
    if isinstance(images, (list, tuple)) != isinstance(labels, (list, tuple)):
        raise ValueError("give images and labels both as arrays or both as lists of the same length")
    if not isinstance(images, (list, tuple)):
        images, labels = [images], [labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays; give one labels array per image")
    if not images:
        raise ValueError("no training data: give at least one image with labels")
    return list(zip(images, labels))


# Slices with at least this fraction painted count as densely annotated: their class frequencies are the
# image's, so class balance (w_c) applies. On strokes (a few % painted) the painted frequencies say how the
# user painted, not what the image holds: balancing them weighs the rarely painted class ~3x and floods it
# (VNC mitochondria from the EM model: predicted 11 % of the image where the truth is 5.6 %, IoU 0.47 vs
# 0.59 without; docs/accuracy.md), so w_c = 1 there.
DENSE = 0.5


def prepare_slices(
    pairs, config: TrainConfig, n_classes: int, in_channels: int, channel_axis, *, weights: bool = True
) -> list[TrainSlice]:
    """The annotated slices, normalised, with targets and (``weights``) eq. 2 weight maps (else ones)."""
    out = []
    zoom = config.zoom or 1.0  # None (not decided yet): the images as they are
    for i, (img, lab) in enumerate(pairs):
        name = f"pair {i}" if len(pairs) > 1 else ""
        lab = np.asarray(lab)
        check_pair(img, lab, channel_axis=channel_axis, name=name)
        if lab.ndim not in (2, 3):
            raise ValueError(
                f"{name + ': ' if name else ''}expected 2D (Y, X) or a stack (Z, Y, X), got labels of shape {lab.shape}"
            )
        planes = [lab] if lab.ndim == 2 else list(lab)
        for z, lab_z in enumerate(planes):
            ann = annotated_mask(lab_z, zero_is_background=config.zero_is_background)
            if not ann.any():
                continue
            im = plane_at(img, None if lab.ndim == 2 else z, channel_axis)
            check_real(im.dtype)  # a complex image lost its imaginary part to the cast, with only a warning
            im = im.astype(np.float32)
            if not np.all(np.isfinite(im)):
                raise ValueError(
                    f"{name + ': ' if name else ''}the image contains NaN or inf values; replace them before training"
                )
            if im.shape[0] != in_channels:
                raise ValueError(f"the model expects {in_channels} channel(s), the image has {im.shape[0]}")
            # per-slice percentiles and the same mapping as tiling.iter_predict at prediction time
            im = scale_intensity(im, *percentiles(im, config.norm_low, config.norm_high))
            if zoom != 1.0:  # at the model's object size (core/data/zoom.py), as prediction will see it
                im, lab_z = zoom_plane(im, zoom), zoom_labels(lab_z, zoom)
                ann = annotated_mask(lab_z, zero_is_background=config.zero_is_background)
                if not ann.any():
                    continue
            target = targets_from_labels(
                lab_z,
                mode=config.label_mode,
                n_classes=n_classes,
                zero_is_background=config.zero_is_background,
                border_class=config.border_class,
                partial_objects=config.partial_objects,
            )
            ones = np.ones(lab_z.shape, np.float32)  # until weigh()
            idx = np.flatnonzero(target.ravel() != IGNORE)
            out.append(TrainSlice(im.astype(np.float32), target, ones, lab_z, (i, z), len(idx), idx))
    if not out:
        raise ValueError("nothing is annotated yet: paint background with 1 and objects with 2, 3, ...")
    if weights:
        weigh(out, config)
    return out


def weigh(slices: list[TrainSlice], config: TrainConfig) -> None:
    """Each slice's eq. 2 weight map, in place (``config.class_balance`` / ``border_weights`` decided)."""
    for s in slices:
        s.weights = slice_weights(s.labels, config, n_annotated=s.n_annotated)


def slice_weights(labels: np.ndarray, config: TrainConfig, *, n_annotated: int | None = None) -> np.ndarray:
    """The eq. 2 weight map (float32) training uses for one painted slice ``labels`` under ``config``.

    Class balance applies only to densely painted slices (:data:`DENSE`) and when ``config.class_balance``
    is not False (None, not decided by a start yet, counts as the paper's: on); the border term unless
    ``config.border_weights`` is False. ``n_annotated``: the slice's annotated pixels (its targets'), counted
    here when not given. The Weight map preview calls this, so it shows what training weighs."""
    if n_annotated is None:
        target = targets_from_labels(
            labels,
            mode=config.label_mode,
            zero_is_background=config.zero_is_background,
            border_class=config.border_class,
            partial_objects=config.partial_objects,
        )
        n_annotated = int(np.count_nonzero(target != IGNORE))
    dense = config.zero_is_background or n_annotated >= DENSE * labels.size
    # class balance over background / object, border-class pixels counting as object: the recipe
    # the shipped nuclei model was trained with (balancing the 1 px border on its own would weigh
    # it ~10x; not measured, so not changed)
    return weight_map(
        labels,
        w0=config.w0,
        sigma=config.sigma,
        mode=config.label_mode,
        zero_is_background=config.zero_is_background,
        class_balance=config.class_balance is not False and dense,  # None (unresolved): the paper
        border=config.border_weights is not False,
    ).astype(np.float32)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def crop_tile(s: TrainSlice, oy: int, ox: int, t_in: int, crop: int):
    """Input tile at output origin (oy, ox), mirrored outside the image, with label/weight tiles of the same
    size (ignored outside); ``crop`` = (tile_in - tile_out) / 2, the context the network consumes per side."""
    H, W = s.target.shape
    ys = np.arange(oy - crop, oy - crop + t_in)
    xs = np.arange(ox - crop, ox - crop + t_in)
    img = s.image[:, _reflect(ys, H)[:, None], _reflect(xs, W)[None, :]]
    tgt = np.full((t_in, t_in), IGNORE, dtype=np.int64)
    wts = np.zeros((t_in, t_in), dtype=np.float32)
    iy = (ys >= 0) & (ys < H)
    ix = (xs >= 0) & (xs < W)
    if iy.any() and ix.any():
        y0, y1 = np.flatnonzero(iy)[[0, -1]]
        x0, x1 = np.flatnonzero(ix)[[0, -1]]
        tgt[y0 : y1 + 1, x0 : x1 + 1] = s.target[ys[y0] : ys[y1] + 1, xs[x0] : xs[x1] + 1]
        wts[y0 : y1 + 1, x0 : x1 + 1] = s.weights[ys[y0] : ys[y1] + 1, xs[x0] : xs[x1] + 1]
    return img, tgt, wts


def sample_batch(slices, probs, config: TrainConfig, t_in: int, t_out: int, rng: np.random.Generator):
    """A batch of (input tiles, target tiles, weight tiles) centred on random annotated pixels, augmented."""
    imgs, tgts, wtss = [], [], []
    for _ in range(config.batch_size):
        s = slices[rng.choice(len(slices), p=probs)]
        H, W = s.target.shape
        flat = s.annotated_idx[rng.integers(len(s.annotated_idx))]
        cy, cx = divmod(int(flat), W)
        oy = cy - int(rng.integers(0, t_out))
        ox = cx - int(rng.integers(0, t_out))
        c = (t_in - t_out) // 2
        img, tgt, wts = crop_tile(s, oy, ox, t_in, c)
        if config.augment:
            if config.elastic_sigma > 0:
                # labels shifted by +1 so IGNORE (-1) -> 0 survives nearest interpolation
                d = aug.elastic_deform(
                    img, (tgt + 1).astype(np.int32), wts, rng=rng, grid=config.elastic_grid, sigma=config.elastic_sigma
                )
                img, tgt, wts = d.image, d.labels.astype(np.int64) - 1, d.weights
            if config.flips:
                img, tgt, wts = aug.random_flip_rot(rng, img, tgt, wts)
            if config.intensity:
                img = aug.intensity_jitter(img, rng)
        imgs.append(np.ascontiguousarray(img, dtype=np.float32))
        tgts.append(np.ascontiguousarray(tgt[c : c + t_out, c : c + t_out]))
        wtss.append(np.ascontiguousarray(wts[c : c + t_out, c : c + t_out], dtype=np.float32))
    return np.stack(imgs), np.stack(tgts), np.stack(wtss)
