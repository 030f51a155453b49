"""Overlap-tile prediction (paper, fig. 2): any image size, mirrored border context, no seams.

A valid-padding U-Net loses ``margin`` pixels of context on each side, so every
output tile is predicted from an input tile that is ``2 * margin`` larger; at
the image border that context is mirrored. Max pooling makes the network
shift-equivariant only in steps of ``2**depth`` pixels, so all tiles start on
that grid: the tiled result then equals a single whole-image pass (up to
float rounding), which is what "seamless" means here and what the tests check.

Padded ('same') models are tiled the same way with a fixed context margin that
is cropped from every tile; their result is near-seamless rather than exact.

:func:`iter_predict` is a generator (one :class:`TileEvent` per tile, returns the
result) so a GUI can show progress and cancel between tiles; :func:`predict`
drains it.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..data.intensity import check_real, fixed_range, model_normalization, percentiles, plane_range, scale_intensity
from ..data.labels import instances_from_semantic
from ..data.planes import as_stack
from ..data.zoom import resize, shape_at, zoom_plane
from ..drain import drain
from ..network.device import (
    autocast_dtype,
    available_memory,
    cpu_bf16_native,
    default_precision,
    memory_format,
    resolve_device,
)
from ..network.unet import UNet, input_size_for_output, margin
from .config import OUTPUTS, Output, PredictConfig
from .events import TileEvent

__all__ = [
    "BF16_MIN_AGREEMENT",
    "BF16_MIN_SPEEDUP",
    "CPU_MAX_TILE_IN",
    "GPU_MAX_TILE_IN",
    "OUTPUTS",
    "Output",
    "TRIAL_MIN_TILES",
    "TRIAL_ROUNDS",
    "TilePlan",
    "allocate_output",
    "auto_tile_out",
    "bytes_per_pixel",
    "check_plane",
    "choose_precision",
    "entropy",
    "forward_tiles",
    "iter_predict",
    "mirror_pad",
    "output_spec",
    "plan_tiles",
    "predict",
    "predict_whole",
    "tile_context",
]

log = logging.getLogger("napari_unet")


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one plane go (output = image coordinates)."""

    tile_out: tuple[int, int]
    tile_in: tuple[int, int]
    context: int  # mirrored context on each side: tile_in = tile_out + 2 * context
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    pad: tuple[tuple[int, int], tuple[int, int]]

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


# ----------------------------------------------------------------------------- planning


def _positions(size: int, tile: int, stride: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    pos = []
    p = 0
    while p + tile < size:
        pos.append(p)
        p += stride
    last = -(-(size - tile) // step) * step  # aligned, covers the end, <= previous + stride
    if not pos or last > pos[-1]:
        pos.append(last)
    return pos


def tile_context(model: UNet) -> int:
    """Mirrored context on each side of a tile: the valid network's own :func:`~.model.margin`,
    or a fixed ``2**depth``-aligned context for padded networks."""
    declared = getattr(model, "context", None)  # a bioimage.io package's halo (core/bioimageio.py)
    if declared is not None:
        return int(declared)
    if model.padding == "valid":
        return margin(model.depth)
    step = 2**model.depth
    return max(step, -(-32 // step) * step)


def plan_tiles(shape: tuple[int, int], model: UNet, tile_out: int | tuple[int, int]) -> TilePlan:
    """Tile positions for a plane of ``shape`` with output tiles of (at least) ``tile_out``."""
    depth, padding = model.depth, model.padding
    step = 2**depth
    m = tile_context(model)
    if isinstance(tile_out, int):
        tile_out = (tile_out, tile_out)
    t_out, t_in = [], []
    for want, size in zip(tile_out, shape):
        want = int(want)
        if want < 1:
            raise ValueError(f"tile size must be >= 1, got {want}")
        # never make a tile much larger than the image needs, nor smaller than the 2**depth grid the tiles
        # are placed on (a smaller one left gaps between tiles: ~94 % of the image unpredicted at 1-4 px)
        want = max(min(want, size), step)
        if padding == "valid":
            tin = input_size_for_output(want, depth, "valid")
            tout = tin - 2 * m
        else:
            tout = -(-want // step) * step
            tin = tout + 2 * m
        t_out.append(tout)
        t_in.append(tin)
    ys = _positions(shape[0], t_out[0], t_out[0] // step * step or step, step)
    xs = _positions(shape[1], t_out[1], t_out[1] // step * step or step, step)
    pad = (
        (m, ys[-1] + t_out[0] + m - shape[0]),
        (m, xs[-1] + t_out[1] + m - shape[1]),
    )
    return TilePlan(tuple(t_out), tuple(t_in), m, tuple(ys), tuple(xs), pad)


def mirror_pad(plane: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Mirror (reflect) padding of the last two axes; repeats the reflection for tiny images."""
    widths = [(0, 0)] * (plane.ndim - 2) + [tuple(pad[0]), tuple(pad[1])]
    if min(plane.shape[-2:]) < 2:
        return np.pad(plane, widths, mode="symmetric")
    return np.pad(plane, widths, mode="reflect")


# ----------------------------------------------------------------------------- memory


def bytes_per_pixel(model: UNet) -> int:
    """Conservative activation bytes per input pixel for one tile in inference.

    The skip connections (c, c/2, c/4... per input pixel over all levels, ~2c) stay
    alive while the top level works on ~4c more (conv in/out, concat of 2c); x 4
    bytes, x 2 for the backend's workspace.
    """
    c = model.config.base_channels
    return int(4 * (2 * c + 4 * c + model.config.in_channels + model.n_classes) * 2)


# On a CPU a valid depth-4 net computes (T_in / T_out)^2 input pixels per output pixel
# (2.17x at 572 -> 388, 1.6x at 876 -> 692, 1.39x at 1212 -> 1028), while the dense conv
# throughput peaks around 384-512 px tiles and falls once a tile's activations leave the
# cache (176 GFLOP/s at 384^2, 124 at 1024^2 on an idle 2-core Xeon). The tile sweep in
# benchmarks/bench_predict.py puts the optimum at 700-876 px input (a 2048^2 image in
# 3 x 3 tiles of 876 -> 692); 1212 px tiles were 1.6x slower.
CPU_MAX_TILE_IN = 956
GPU_MAX_TILE_IN = 2044


def _balanced(size: int, max_out: int) -> int:
    """Smallest tile that covers ``size`` with as few tiles as ``max_out`` allows.

    Tiles of exactly ``max_out`` would leave a mostly-empty last row and column
    (2048 px at 836 px tiles: 3 tiles, the last one 45% used); splitting the
    image evenly over the same number of tiles computes up to a third less.
    """
    n = -(-size // max(1, max_out))
    return min(size, -(-size // n))


def auto_tile_out(
    shape: tuple[int, int],
    model: UNet,
    device: torch.device,
    *,
    batch_size: int = 1,
    memory_budget: int | None = None,
) -> tuple[int, int]:
    """Output tile size from the memory budget and the image size.

    Small images run as one tile; big ones are split evenly into the fewest
    tiles no larger than the budget (and, on a CPU, the cache-friendly maximum)
    allows.
    """
    budget = memory_budget if memory_budget is not None else available_memory(device)
    m = tile_context(model)
    bpp = bytes_per_pixel(model) * max(1, batch_size)
    max_in = int(math.sqrt(max(budget, 1) / bpp))
    cap = CPU_MAX_TILE_IN if device.type == "cpu" else GPU_MAX_TILE_IN
    max_in = min(max_in, cap)
    step = 2**model.depth
    max_out = max(step, max_in - 2 * m)
    return (_balanced(shape[0], max_out), _balanced(shape[1], max_out))


# ----------------------------------------------------------------------------- prediction

_DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]


def _apply_d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1))


def _invert_d4(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -k, dims=(-2, -1))
    if flip:
        x = torch.flip(x, dims=(-1,))
    return x


def check_plane(raw: np.ndarray, z: int) -> None:
    """ValueError unless plane (or window) ``raw`` of slice ``z`` holds real, finite numbers: also with
    normalize=False, where no percentile looks at the pixels."""
    check_real(raw.dtype)
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise ValueError(f"slice {z} contains NaN or inf values; replace them (e.g. with 0) before predicting")


@dataclass(frozen=True)
class _Run:
    """One :func:`iter_predict` call, planned: the planes to read, the output, the tiles and the device."""

    config: PredictConfig
    getter: Callable[[int], np.ndarray]  # slice z -> its (C, H, W) plane
    zs: list[int]
    is_stack: bool
    hw: tuple[int, int]  # the image's plane
    net_hw: tuple[int, int]  # the plane the network sees (hw at ``zoom``)
    zoom: float
    out: np.ndarray
    plan: TilePlan
    batch_size: int
    device: torch.device
    amp_dtype: torch.dtype | None
    mem_fmt: torch.memory_format
    fixed: tuple[float, float] | None  # one intensity range for every plane, else each plane's own
    norm: dict | None  # the model's normalisation (percentiles by default)
    min_px: int  # instances: the size filter
    border: bool | None  # instances: the model learned a border class

    @property
    def total(self) -> int:
        return self.plan.n_tiles * len(self.zs)


def iter_predict(
    model: UNet,
    image,
    config: PredictConfig | None = None,
    *,
    out: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
) -> Generator[TileEvent, None, np.ndarray]:
    """Overlap-tile prediction of a 2D image or a (Z, Y, X) stack, slice by slice.

    Parameters
    ----------
    model : UNet
        Trained network (put in eval mode here; moved to ``config.device``).
    image : array-like
        (Y, X) or (Z, Y, X), plus a channel axis if ``config.channel_axis`` is given.
        numpy, memmap, dask or zarr: only one slice is read at a time.
    config : PredictConfig, optional
        What to predict and how (output, zoom, normalisation, tiles, device, precision...); None: its defaults.
    out : array, optional
        Where to write (numpy, memmap, zarr, a napari layer's data); must have
        the result's shape (:func:`output_spec`). Written tile by tile, so a caller can show progress.
    slices : sequence of int, optional
        Only these slices of a stack (e.g. the one on screen).

    Yields
    ------
    TileEvent after every tile and after every completed slice.

    Returns
    -------
    numpy array (or ``out``) with the result.
    """
    config = PredictConfig() if config is None else config
    if not hasattr(image, "shape"):  # a list of slices: one array, so errors can name its shape
        image = np.asarray(image)
    run = _plan_run(model, image, config, out, slices)
    whole = (slice(0, run.hw[0]), slice(0, run.hw[1]))
    done = 0
    ids_used = 0  # instances: ids so far, so every slice's objects get new ones (in the order predicted)
    with _evaluating(model, run.device, run.mem_fmt):
        for z in run.zs:
            for region in _predict_plane(model, run, z):
                done += 1
                yield TileEvent(done, run.total, z, region, "tile")
            if config.output == "instances":
                ids_used = _label_instances(model, run, z, ids_used)
            yield TileEvent(done, run.total, z, whole, "slice")
    return run.out


def _plan_run(model: UNet, image, config: PredictConfig, out, slices) -> _Run:
    """Everything :func:`iter_predict` needs before its first tile, with the image and ``out`` checked."""
    dev = resolve_device(config.device)
    getter, n_z, (H, W), is_stack = as_stack(image, config.channel_axis, model.config.in_channels)
    if n_z == 0:  # else an empty result, as if there were nothing to find
        raise ValueError(f"image is empty (shape {tuple(image.shape)}: a stack of 0 slices)")
    zs = list(range(n_z)) if slices is None else [int(z) for z in slices]
    for z in zs:
        if not 0 <= z < n_z:
            raise ValueError(f"slice {z} is out of range for a stack of {n_z} slices")
    info = getattr(model, "info", None)
    post = getattr(info, "postprocess", None) or {}
    out = _output_array(out, config.output, model.n_classes, (n_z, H, W) if is_stack else (H, W))
    amp_dtype = _amp_dtype(model, image, config, dev)
    zoom = config.zoom_for(model)
    net_hw = shape_at((H, W), zoom) if zoom != 1.0 else (H, W)  # the network sees the image resampled to this
    plan, batch_size = _tile_layout(model, config, dev, net_hw)
    return _Run(
        config=config,
        getter=getter,
        zs=zs,
        is_stack=is_stack,
        hw=(H, W),
        net_hw=net_hw,
        zoom=zoom,
        out=out,
        plan=plan,
        batch_size=batch_size,
        device=dev,
        amp_dtype=amp_dtype,
        mem_fmt=memory_format(dev),
        # percentiles per 2D plane, as in training: a slice gets the same input whether it is predicted
        # alone or as part of its stack
        fixed=fixed_range(config.normalize),
        norm=model_normalization(model),
        min_px=int(post.get("min_size", 0) if config.min_size is None else config.min_size),
        # instances: interior + border classes only for an instance-mode model that learned a border class
        border=None if info is None else bool(info.border_class and info.label_mode == "instance"),
    )


def _output_array(out, output: Output, n_classes: int, spatial: tuple[int, ...]):
    """``out`` checked against the result's shape, or a new zeroed array of it."""
    shape, dtype = output_spec(output, n_classes, spatial)
    if out is None:
        return np.zeros(shape, dtype=dtype)
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape} for output={output!r}")
    return out


def _amp_dtype(model: UNet, image, config: PredictConfig, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``config.precision`` on ``dev``; 'auto' runs :func:`choose_precision` first."""
    precision = config.precision
    if precision == "auto":
        kw = dict(device=dev, channel_axis=config.channel_axis, normalize=config.normalize)
        precision, why = choose_precision(model, image, **kw)
        log.info("precision %s: %s", precision, why)
    return autocast_dtype(precision, dev)


def _tile_layout(model: UNet, config: PredictConfig, dev: torch.device, net_hw: tuple[int, int]):
    """(the :class:`TilePlan` of a plane the network sees, tiles per forward pass)."""
    if config.tile_out is None:
        kw = dict(batch_size=config.batch_size or 1, memory_budget=config.memory_budget)
        tile = auto_tile_out(net_hw, model, dev, **kw)
    else:
        tile = config.tile_out
    plan = plan_tiles(net_hw, model, tile)
    batch_size = config.batch_size
    if batch_size is None:
        budget = config.memory_budget if config.memory_budget is not None else available_memory(dev)
        per_tile = bytes_per_pixel(model) * plan.tile_in[0] * plan.tile_in[1]
        batch_size = int(max(1, min(plan.n_tiles, budget // max(per_tile, 1), 8 if dev.type == "cuda" else 1)))
    return plan, batch_size


@contextmanager
def _evaluating(model: UNet, dev: torch.device, mem_fmt: torch.memory_format):
    """``model`` in eval mode on ``dev`` in ``mem_fmt`` while the prediction runs; its training mode back after."""
    was_training = model.training
    model.eval()
    model.to(dev)
    model.to(memory_format=mem_fmt)
    try:
        yield
    finally:
        model.train(was_training)
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _predict_plane(model: UNet, run: _Run, z: int) -> Generator[tuple[slice, slice], None, None]:
    """Predict slice ``z`` into ``run.out``; yields the output region of each tile as it is written."""
    raw = run.getter(z)
    check_plane(raw, z)
    plane = scale_intensity(raw, *(run.fixed or plane_range(raw, run.norm)))
    if run.zoom == 1.0:
        yield from _tiles_into_out(model, run, plane, z)
    else:
        yield from _zoomed_into_out(model, run, plane, z)


def _tiles(model: UNet, run: _Run, plane: np.ndarray, want: Output):
    """(region, result cropped at the plane's edge) per tile of one normalised (C, h, w) plane."""
    h, w = plane.shape[-2:]
    plan = run.plan
    for (y, x), r in forward_tiles(
        model,
        mirror_pad(plane, plan.pad),
        plan,
        output=want,
        transforms=_DIHEDRAL if run.config.tta else [(0, False)],
        batch_size=run.batch_size,
        device=run.device,
        amp_dtype=run.amp_dtype,
        mem_fmt=run.mem_fmt,
    ):
        hy, hx = min(plan.tile_out[0], h - y), min(plan.tile_out[1], w - x)
        yield (slice(y, y + hy), slice(x, x + hx)), r[..., :hy, :hx]


def _tiles_into_out(model: UNet, run: _Run, plane: np.ndarray, z: int):
    """Zoom 1: class indices (or probabilities, or their entropy) straight into ``run.out``, tile by tile."""
    output = run.config.output
    want = "labels" if output in ("labels", "instances") else "probabilities"
    for region, r in _tiles(model, run, plane, want):
        if output == "probabilities":
            run.out[(slice(None), z, *region) if run.is_stack else (slice(None), *region)] = r
        else:
            run.out[(z, *region) if run.is_stack else region] = entropy(r) if output == "uncertainty" else r
        yield region


def _zoomed_into_out(model: UNet, run: _Run, plane: np.ndarray, z: int):
    """Another zoom: probabilities at the model's zoom, resampled back to the image's grid, then the output.
    Every tile's region is the whole plane (it changes only once the plane is resampled)."""
    H, W = run.hw
    prob = np.zeros((model.n_classes, *run.net_hw), np.float32)
    for region, r in _tiles(model, run, zoom_plane(plane, run.zoom), "probabilities"):
        prob[(slice(None), *region)] = r
        yield (slice(0, H), slice(0, W))
    prob = resize(prob, (H, W), order=1)
    output = run.config.output
    if output == "probabilities":
        run.out[(slice(None), z) if run.is_stack else (slice(None),)] = prob
    elif output == "uncertainty":
        run.out[(z,) if run.is_stack else ()] = entropy(prob)
    else:
        run.out[(z,) if run.is_stack else ()] = prob.argmax(axis=0)


def _label_instances(model: UNet, run: _Run, z: int, ids_used: int) -> int:
    """Slice ``z``'s class indices in ``run.out`` become instance ids above ``ids_used``; returns the new count."""
    plane_idx = (z,) if run.is_stack else ()
    # the model's size filter is in its pixels: at another zoom, objects cover 1/zoom^2 as many; a size
    # the user gives is in the image's pixels
    px = int(round(run.min_px / run.zoom**2)) if run.config.min_size is None else run.min_px
    inst = instances_from_semantic(
        np.asarray(run.out[plane_idx]), model.n_classes, min_size=px, border_class=run.border
    )
    # unique ids over the whole stack: offset by the ids the slices before used (a running count:
    # re-reading earlier slices would be O(Z^2) on zarr / memmap outputs, and with out-of-order
    # ``slices`` would read slices not predicted yet)
    if run.is_stack:
        inst[inst > 0] += ids_used
        ids_used = max(ids_used, int(inst.max()))
    run.out[plane_idx] = inst
    return ids_used


def forward_tiles(
    model: UNet,
    padded: np.ndarray,
    plan: TilePlan,
    *,
    output: Output,
    transforms=((0, False),),
    batch_size: int = 1,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    mem_fmt: torch.memory_format = torch.contiguous_format,
) -> Generator[tuple[tuple[int, int], np.ndarray], None, None]:
    """The network over the tiles of ``plan`` on one mirrored, normalised (C, H', W') plane.

    Yields ``((y, x), result)`` per tile, ``y, x`` the tile's output origin and ``result`` the full
    output tile: (C, toy, tox) probabilities or (toy, tox) class indices. The model must already be in
    eval mode on ``device``. :func:`iter_predict` runs it on whole planes and
    :func:`~napari_unet.core.predict.blocks.predict_block` on the part of a plane one block needs; both cut
    the same grid-aligned windows out of the same mirrored plane, so their results agree.
    """
    C = model.n_classes
    (toy, tox), (tiy, tix) = plan.tile_out, plan.tile_in
    crop_y = crop_x = None  # how much the network output exceeds the tile (padded nets)
    need_softmax = output == "probabilities" or len(transforms) > 1
    lab_dtype = torch.uint8 if C < 256 else torch.int16
    coords = [(y, x) for y in plan.ys for x in plan.xs]
    for b0 in range(0, len(coords), batch_size):
        batch_coords = coords[b0 : b0 + batch_size]
        if len(batch_coords) == 1:
            y, x = batch_coords[0]
            batch = padded[None, :, y : y + tiy, x : x + tix]  # a view: one copy below
        else:
            batch = np.stack([padded[:, y : y + tiy, x : x + tix] for y, x in batch_coords])
        xt = torch.from_numpy(batch).to(device).contiguous(memory_format=mem_fmt)
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            prob = None
            for k, flip in transforms:
                xin = _apply_d4(xt, k, flip) if (k or flip) else xt
                logits = model(xin)
                if crop_y is None:
                    crop_y = (logits.shape[-2] - toy) // 2
                    crop_x = (logits.shape[-1] - tox) // 2
                if not (k or flip):
                    # crop before the softmax: padded nets predict their context too
                    logits = logits[..., crop_y : crop_y + toy, crop_x : crop_x + tox]
                if not need_softmax:
                    prob = logits  # argmax(logits) == argmax(softmax(logits))
                    break
                p = torch.softmax(logits.float(), dim=1)
                if k or flip:
                    p = _invert_d4(p, k, flip)[..., crop_y : crop_y + toy, crop_x : crop_x + tox]
                prob = p if prob is None else prob.add_(p)
            if len(transforms) > 1:
                prob = prob / len(transforms)
        if output == "probabilities":
            res = prob.float().cpu().numpy()
        else:
            res = prob.argmax(dim=1).to(lab_dtype).cpu().numpy()
        yield from zip(batch_coords, res)


# ----------------------------------------------------------------------------- automatic precision

BF16_MIN_AGREEMENT = 0.995  # labels that must agree with fp32 on the trial tile
BF16_MIN_SPEEDUP = 1.15  # bf16 must be this much faster to be worth the (small) disagreement
TRIAL_ROUNDS = 3  # fp32, bf16, fp32, bf16, ...: each a warm-up and a timed pass
TRIAL_MIN_TILES = 16  # the trial runs 12 tile passes; below 16 tiles' worth of image it cannot pay off
_CHOSEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _trial(model: UNet, x: torch.Tensor, amp_dtype: torch.dtype | None) -> tuple[float, np.ndarray]:
    """(seconds of one forward pass after a warm-up, the labels) of one tile (choose_precision interleaves
    its trials, so noise hits both precisions alike)."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
        model(x)  # warm-up: oneDNN picks and caches its kernels
        t0 = time.perf_counter()
        logits = model(x)
        seconds = time.perf_counter() - t0
    return seconds, logits.argmax(dim=1).cpu().numpy()


def choose_precision(
    model: UNet,
    image,
    *,
    device: str | torch.device | None = None,
    channel_axis: int | None = None,
    normalize: bool | tuple[float, float] = True,
    tile: int = 256,
) -> tuple[str, str]:
    """('bf16' or 'fp32', why) for predicting ``image`` with ``model`` on ``device``.

    Off the CPU: :func:`.device.default_precision`. On a CPU without native bf16 (no avx512_bf16 /
    amx_bf16, :func:`.device.cpu_bf16_native`): fp32, no trial. Otherwise one tile of ``image`` (the
    middle slice's centre, ``tile`` px output) runs in fp32 and in bf16: bf16 is chosen when it is
    at least :data:`BF16_MIN_SPEEDUP` x faster and its labels agree >= :data:`BF16_MIN_AGREEMENT`
    with fp32's. The choice is remembered per model (one trial per process). An image smaller than
    :data:`TRIAL_MIN_TILES` trial tiles gets fp32 without a trial: the trial would cost more than it saves.
    """
    dev = resolve_device(device)
    if dev.type != "cpu":
        p = default_precision(dev)
        return p, f"{p} is the default on {dev.type}"
    native, why = cpu_bf16_native()
    if not native:
        return "fp32", why
    cached = _CHOSEN.get(model)
    if cached is not None:
        return cached
    getter, n_z, (H, W), _ = as_stack(image, channel_axis, model.config.in_channels)
    plan = plan_tiles((H, W), model, (min(tile, H), min(tile, W)))
    if n_z * H * W < TRIAL_MIN_TILES * plan.tile_out[0] * plan.tile_out[1]:
        return "fp32", f"{why}, but the image is too small for a bf16 trial to pay off"
    raw = getter(n_z // 2)
    lo, hi = fixed_range(normalize) or plane_range(raw, model_normalization(model))
    padded = mirror_pad(scale_intensity(raw, lo, hi), plan.pad)
    y, x = plan.ys[len(plan.ys) // 2], plan.xs[len(plan.xs) // 2]
    xt = torch.from_numpy(np.ascontiguousarray(padded[None, :, y : y + plan.tile_in[0], x : x + plan.tile_in[1]]))
    was = model.training
    model.eval()
    model.to(dev)
    try:
        xt = xt.contiguous(memory_format=memory_format(dev))
        model.to(memory_format=memory_format(dev))
        # interleaved rounds, best of each: a load spike from other processes hits one round, not one precision
        t32 = t16 = math.inf
        for _ in range(TRIAL_ROUNDS):
            t, lab32 = _trial(model, xt, None)
            t32 = min(t32, t)
            t, lab16 = _trial(model, xt, torch.bfloat16)
            t16 = min(t16, t)
    finally:
        model.train(was)
    agree = float(np.mean(lab32 == lab16))
    speed = t32 / max(t16, 1e-9)
    measured = f"bf16 {speed:.2f}x the speed of fp32 on a {plan.tile_in[0]} px trial tile, labels agree {agree:.2%}"
    if speed >= BF16_MIN_SPEEDUP and agree >= BF16_MIN_AGREEMENT:
        choice = ("bf16", f"{why}; {measured}")
    elif agree < BF16_MIN_AGREEMENT:
        choice = ("fp32", f"{why}, but {measured} (< {BF16_MIN_AGREEMENT:.1%})")
    else:
        choice = ("fp32", f"{why}, but {measured}: not worth it")
    _CHOSEN[model] = choice
    return choice


def entropy(prob: np.ndarray) -> np.ndarray:
    """Uncertainty of class probabilities (C, ...): their entropy over log(C), 0 (sure) .. 1 (all classes equal)."""
    p = np.clip(np.asarray(prob, dtype=np.float32), 1e-7, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])).astype(np.float32)


def output_spec(output: Output, n_classes: int, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], type]:
    """Shape and dtype of :func:`iter_predict`'s result (class axis first for probabilities)."""
    if output == "probabilities":
        return (n_classes, *spatial), np.float32
    if output == "uncertainty":
        return spatial, np.float32
    if output == "labels":
        return spatial, (np.uint8 if n_classes < 256 else np.uint16)
    return spatial, np.uint32


def allocate_output(output: Output, n_classes: int, spatial: tuple[int, ...]) -> np.ndarray:
    """A zeroed array to pass as :func:`iter_predict`'s ``out`` (e.g. a layer's data, filled tile by tile)."""
    shape, dtype = output_spec(output, n_classes, spatial)
    return np.zeros(shape, dtype=dtype)


def predict(
    model: UNet, image, *, out: np.ndarray | None = None, slices: Sequence[int] | None = None, **settings
) -> np.ndarray:
    """Overlap-tile prediction without progress events; ``settings`` are :class:`.PredictConfig`'s fields
    (``output``, ``zoom``, ``tile_out``, ...). See :func:`iter_predict`."""
    return drain(iter_predict(model, image, PredictConfig(**settings), out=out, slices=slices))


def predict_whole(model: UNet, image: np.ndarray, *, normalize=False) -> np.ndarray:
    """Class probabilities (C, H, W) of a 2D image from ONE forward pass over the
    mirrored image; the reference that tiled prediction must equal."""
    image = np.asarray(image, dtype=np.float32)
    if normalize is True:
        lo, hi = percentiles(image)
    elif normalize:
        lo, hi = normalize
    else:
        lo, hi = 0.0, 1.0
    plane = scale_intensity(image, lo, hi)[None]
    H, W = plane.shape[-2:]
    m = tile_context(model)
    step = 2**model.depth
    if model.padding == "valid":
        tin = [input_size_for_output(s, model.depth) for s in (H, W)]
    else:
        tin = [-(-s // step) * step + 2 * m for s in (H, W)]
    padded = mirror_pad(plane, ((m, tin[0] - H - m), (m, tin[1] - W - m)))
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            p = torch.softmax(model(torch.from_numpy(padded[None]).to(next(model.parameters()).device)), dim=1)[0]
    finally:
        model.train(was)
    if model.padding == "same":
        p = p[:, m : m + H, m : m + W]
    return p[:, :H, :W].cpu().numpy()
