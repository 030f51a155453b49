"""Block-wise prediction into a chunked output, in this process or on a dask.distributed cluster.

A big volume is predicted one output block at a time (a block = one chunk of the
output, so every chunk file has exactly one writer). A block reads its part of
the image plus a halo of the network's margin; where the halo leaves the image
it is mirrored exactly as :func:`~.tiles.iter_predict` mirrors the whole plane
(the same reflected indices). Its tiles start on the ``2**depth`` grid of the
*image*, not of the block (a block that starts off the grid is predicted from
the grid line before it and cropped), and every plane is normalised with the
range of the whole plane, computed first. So a block-wise result equals the
single-process one: labels exactly, probabilities within float rounding (tile
layouts differ, so convolutions sum in a different order).

Blocks whose chunks are already on disk are skipped: a rerun after a crash or a
killed worker resumes (chunk files are written atomically,
:mod:`napari_unet.core.data.ngff`).

:func:`iter_predict_blocks` is a generator (one :class:`~.events.BlockEvent`
per block) that runs the blocks here or, given a ``dask.distributed.Client``,
on its workers: the model is scattered to every worker once, at most a few
blocks per worker are in flight (memory does not grow with the volume), and a
failed block is retried by the scheduler.

Instances are not made here: object ids need the whole plane (semantic labels
and probabilities only; docs/scaling.md); nor is the image zoomed, since blocks are
cut on its own grid (:meth:`~.config.PredictConfig.check_blocks`).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..data.intensity import fixed_range, model_normalization, plane_range, scale_intensity
from ..data.ngff import chunk_done, count_chunk_files, create_output, open_output
from ..data.planes import as_stack, plane_at
from ..network.device import autocast_dtype, memory_format, resolve_device
from .config import BLOCK_OUTPUTS, PROB_DTYPES, PredictConfig
from .events import BlockEvent
from .tiles import (
    _DIHEDRAL,
    TilePlan,
    auto_tile_out,
    check_plane,
    choose_precision,
    forward_tiles,
    output_spec,
    plan_tiles,
    tile_context,
)

__all__ = [
    "MAX_BLOCKS",
    "MAX_BLOCK_PIXELS",
    "MAX_PLANE_PIXELS",
    "Block",
    "check_plan",
    "check_workers",
    "create_prediction",
    "default_threads",
    "iter_predict_blocks",
    "local_cluster",
    "output_chunks",
    "plan_blocks",
    "plane_ranges",
    "predict_block",
    "run_block",
]

SCATTER_LIMIT = 2 << 30  # an in-memory image is copied to every worker up to this size
# A plan holds one Block (~0.5 KB) per chunk: 2**22 blocks (e.g. 10000 planes of 400 chunks) is ~2 GB of plan.
MAX_BLOCKS = 1 << 22
# One block's image window (float32) and result are in memory at once, per worker: 2**26 px is 256 MiB each.
MAX_BLOCK_PIXELS = 1 << 26
# Each plane's normalisation range (and instances) reads the whole plane: 2**30 px is 4 GiB as float32.
MAX_PLANE_PIXELS = 1 << 30
WORKERS_PER_CORE = 4


@dataclass(frozen=True)
class Block:
    """One output block: planes ``z`` and rows ``y`` / columns ``x`` (half-open), at chunk ``chunk``."""

    chunk: tuple[int, ...]
    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]


def plan_blocks(spatial: tuple[int, ...], chunks: tuple[int, ...]) -> list[Block]:
    """The blocks of an output of spatial shape (Z, H, W) or (H, W), one per chunk of ``chunks``."""
    if len(spatial) != len(chunks) or len(spatial) not in (2, 3):
        raise ValueError(f"chunks {chunks} do not match the spatial shape {spatial}")
    check_plan(spatial, chunks)
    grids = [range(math.ceil(s / c)) for s, c in zip(spatial, chunks)]
    out = []
    for idx in itertools.product(*grids):
        spans = [(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, spatial)]
        z = spans[0] if len(spatial) == 3 else (0, 1)
        out.append(Block(tuple(idx), z, spans[-2], spans[-1]))
    return out


def check_plan(spatial: tuple[int, ...], chunks: tuple[int, ...], source=None) -> None:
    """ValueError unless an output of ``spatial`` shape in ``chunks`` fits the limits, checked from the shapes
    alone (nothing planned or allocated): :data:`MAX_PLANE_PIXELS` per plane, :data:`MAX_BLOCK_PIXELS` per
    block, :data:`MAX_BLOCKS` blocks. ``source`` (a lazy zarr view) names the input and its real chunk files."""
    if any(int(c) < 1 for c in chunks):
        raise ValueError(f"chunk sizes must be >= 1, got {chunks}")
    spatial, chunks = tuple(int(s) for s in spatial), tuple(int(c) for c in chunks)
    plane = math.prod(spatial[-2:])
    block = math.prod(min(c, s) for c, s in zip(chunks, spatial))
    n_blocks = math.prod(math.ceil(s / c) for s, c in zip(spatial, chunks))
    shape = " x ".join(map(str, spatial))
    if plane > MAX_PLANE_PIXELS:
        why = f"a plane of {plane:,} px (limit {MAX_PLANE_PIXELS:,}: {plane * 4 / 2**30:,.0f} GiB as float32)"
    elif block > MAX_BLOCK_PIXELS:
        why = f"blocks of {block:,} px (chunks {chunks}; limit {MAX_BLOCK_PIXELS:,} px per block)"
    elif n_blocks > MAX_BLOCKS:
        why = f"{n_blocks:,} blocks of {' x '.join(map(str, chunks))} (limit {MAX_BLOCKS:,})"
    else:
        return
    raise ValueError(f"{_named(source)}{shape} pixels make {why}{_real_chunks(source)}: {_what_to_do()}")


def _named(source) -> str:
    path = getattr(source, "path", None)
    return f"{path}: " if path else ""


def _real_chunks(source) -> str:
    """', and its store holds N chunk files' for a zarr input: a shape declared far beyond the data shows."""
    path = getattr(source, "path", None)
    if path is None or type(source).__name__ != "ZarrView":
        return ""
    return f", and its store holds {count_chunk_files(path):,} chunk files"


def _what_to_do() -> str:
    return (
        "check the array's shape and chunks in its zarr.json / .zarray, crop the image, or rechunk it "
        "(e.g. 1 x 512 x 512 per chunk)"
    )


def check_workers(n_workers) -> int:
    """``n_workers`` as an int within 1 .. :data:`WORKERS_PER_CORE` x the cores, else a ValueError."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    most = WORKERS_PER_CORE * cores
    try:
        n = int(n_workers)
    except (TypeError, ValueError):
        n = None
    if n is None or n != n_workers or not 1 <= n <= most:
        raise ValueError(
            f"workers must be a whole number from 1 to {most} ({WORKERS_PER_CORE} per core, {cores} cores here), "
            f"got {n_workers!r}; for more, start a dask cluster and give its scheduler's address"
        )
    return n


def _reflect(idx: np.ndarray, n: int, symmetric: bool) -> np.ndarray:
    """Indices into [0, n) of mirrored positions: numpy.pad's 'reflect' ('symmetric'), repeated."""
    if symmetric:
        j = np.mod(idx, 2 * n)
        return np.where(j >= n, 2 * n - 1 - j, j)
    j = np.mod(idx, 2 * n - 2)
    return np.where(j >= n, 2 * n - 2 - j, j)


def plane_ranges(model, image, zs: Sequence[int], channel_axis: int | None = None) -> list[tuple[float, float]]:
    """Each plane's normalisation range, exactly as :func:`~.tiles.iter_predict` computes it."""
    getter = as_stack(image, channel_axis, model.config.in_channels)[0]
    norm = model_normalization(model)
    return [plane_range(getter(z), norm) for z in zs]


def predict_block(model, image, block: Block, ranges, config: PredictConfig) -> np.ndarray:
    """The prediction of one block: (Zb, Hb, Wb) class indices or (C, Zb, Hb, Wb) probabilities
    (float32); a 2D image has Zb = 1. ``ranges[z]`` is plane z's (lo, hi) (index with the plane)."""
    _, _, (H, W), is_stack = as_stack(image, config.channel_axis, model.config.in_channels)
    dev = resolve_device(_block_device(config.device, on_cluster=False))
    if config.threads:
        torch.set_num_threads(int(config.threads))
    step = 2**model.depth
    (y0, y1), (x0, x1) = block.y, block.x
    ay0, ax0 = y0 // step * step, x0 // step * step  # tiles on the image's grid
    ry, rx = y1 - ay0, x1 - ax0
    tile = config.tile_out or auto_tile_out((ry, rx), model, dev, memory_budget=config.memory_budget)
    plan = plan_tiles((ry, rx), model, tile)
    window = _Window.of(model, plan, (ay0, ax0), (H, W))
    amp = autocast_dtype(config.precision, dev)
    probs = config.output == "probabilities"
    res = _block_array(model.n_classes, block.z[1] - block.z[0], (ry, rx), probs)
    mem_fmt = memory_format(dev)
    with _shared_eval(model, dev, mem_fmt):
        for k, z in enumerate(range(*block.z)):
            plane = window.read(image, z if is_stack else None, config.channel_axis, ranges[z])
            for (ty, tx), r in forward_tiles(
                model,
                plane,
                plan,
                output=config.output,
                transforms=_DIHEDRAL if config.tta else ((0, False),),
                batch_size=config.batch_size or 1,
                device=dev,
                amp_dtype=amp,
                mem_fmt=mem_fmt,
            ):
                hy, hx = min(plan.tile_out[0], ry - ty), min(plan.tile_out[1], rx - tx)
                res[(slice(None), k) if probs else (k,)][..., ty : ty + hy, tx : tx + hx] = r[..., :hy, :hx]
    res = res[..., y0 - ay0 :, x0 - ax0 :]
    return res if is_stack else res[..., 0, :, :]


@dataclass(frozen=True)
class _Window:
    """The mirrored window of a plane that one block's tiles read: the same reflected indices as
    :func:`~.tiles.mirror_pad` gives the whole plane, read as one box of the image."""

    rows: np.ndarray  # image row of every window row
    cols: np.ndarray

    @classmethod
    def of(cls, model, plan: TilePlan, origin: tuple[int, int], hw: tuple[int, int]) -> _Window:
        """The window of ``plan``'s tiles placed at ``origin`` (on the image's grid) in a plane of ``hw``."""
        m = tile_context(model)
        (ay0, ax0), (H, W) = origin, hw
        symmetric = min(H, W) < 2  # as tiles.mirror_pad
        rows = _reflect(np.arange(ay0 - m, ay0 + plan.ys[-1] + plan.tile_out[0] + m), H, symmetric)
        cols = _reflect(np.arange(ax0 - m, ax0 + plan.xs[-1] + plan.tile_out[1] + m), W, symmetric)
        return cls(rows, cols)

    def read(self, image, z: int | None, channel_axis: int | None, lo_hi: tuple[float, float]) -> np.ndarray:
        """Plane ``z``'s window (C, h, w), checked and normalised with the whole plane's ``lo_hi``."""
        r0, r1 = int(self.rows.min()), int(self.rows.max()) + 1
        c0, c1 = int(self.cols.min()), int(self.cols.max()) + 1
        raw = plane_at(image, z, channel_axis, slice(r0, r1), slice(c0, c1))
        check_plane(raw, 0 if z is None else z)
        return scale_intensity(raw[:, self.rows - r0][:, :, self.cols - c0], *lo_hi)


def _block_array(n_classes: int, nz: int, hw: tuple[int, int], probs: bool) -> np.ndarray:
    """Zeros for one block's result: (C, nz, h, w) float32 probabilities or (nz, h, w) class indices."""
    if probs:
        return np.zeros((n_classes, nz, *hw), np.float32)
    return np.zeros((nz, *hw), np.uint8 if n_classes < 256 else np.uint16)


@contextmanager
def _shared_eval(model, dev: torch.device, mem_fmt: torch.memory_format):
    """``model`` in eval mode on ``dev`` in ``mem_fmt``, changed only where it is not already so.

    A model shared by several worker threads must not change under them: the distributed path sends a
    copy that is already in eval mode, on the CPU, in the CPU's layout, so nothing changes there.
    """
    was_training = model.training
    if was_training:
        model.eval()
    here = next(model.parameters()).device
    if here.type != dev.type or (dev.index is not None and here.index != dev.index):
        model.to(dev)
    if _needs_layout(model, mem_fmt):
        model.to(memory_format=mem_fmt)
    try:
        yield
    finally:
        if was_training:
            model.train(True)


def _needs_layout(model, mem_fmt) -> bool:
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and not w.is_contiguous(memory_format=mem_fmt)


def _eval_copy(model):
    """A CPU copy in eval mode (Dropout off) and the convolution layout set: what workers share read-only."""
    import copy

    m = copy.deepcopy(model).cpu().eval()
    return m.to(memory_format=memory_format(torch.device("cpu")))


def _to_store_dtype(res: np.ndarray, prob_dtype: str) -> np.ndarray:
    if prob_dtype == "uint8":
        return np.clip(np.rint(res * 255.0), 0, 255).astype(np.uint8)
    return res.astype(prob_dtype)


def _out_index(block: Block, is_stack: bool, probs: bool) -> tuple:
    idx = (slice(*block.z),) if is_stack else ()
    idx = idx + (slice(*block.y), slice(*block.x))
    return (slice(None), *idx) if probs else idx


def _open(out):
    if isinstance(out, (str, os.PathLike)):
        return open_output(out)
    return out


def run_block(model, image, out, block: Block, ranges, config: PredictConfig, is_stack: bool) -> int:
    """Predict ``block`` and write it into ``out`` (an array, or the path of a
    :func:`~napari_unet.core.data.ngff.create_output` image, opened here: on a dask worker). Returns the
    pixels written."""
    res = predict_block(model, image, block, ranges, config)
    probs = config.output == "probabilities"
    if probs:
        res = _to_store_dtype(res, config.prob_dtype)
    _open(out)[_out_index(block, is_stack, probs)] = res
    return int(np.prod(res.shape[-2:])) * (block.z[1] - block.z[0])


def _done(arr, block: Block, is_stack: bool, probs: bool) -> bool:
    if not hasattr(arr, "metadata") or not hasattr(arr, "store"):
        return False
    coords = tuple(block.chunk) if is_stack else tuple(block.chunk[-2:])
    return chunk_done(arr, (0, *coords) if probs else coords)


def output_chunks(spatial: tuple[int, ...], image_chunks: tuple[int, ...] | None, default: int = 512) -> tuple:
    """Chunks like the input's (its spatial part), else 1 plane x ``default`` x ``default``."""
    if image_chunks is not None and len(image_chunks) >= len(spatial):
        return tuple(int(c) for c in image_chunks[-len(spatial) :])
    yx = (min(default, spatial[-2]), min(default, spatial[-1]))
    return ((1,) if len(spatial) == 3 else ()) + yx


def create_prediction(
    path,
    model,
    spatial: tuple[int, ...],
    *,
    output: str = "labels",
    chunks: tuple[int, ...],
    pixel_size: tuple[float, float] | None = None,
    z_spacing: float | None = None,
    unit: str | None = None,
    prob_dtype: str = "float16",
    version: str = "0.5",
    provenance: dict | None = None,
):
    """The OME-Zarr image :func:`iter_predict_blocks` fills (:func:`~napari_unet.core.data.ngff.create_output`):
    labels as an NGFF labels image, probabilities (class axis first) as ``prob_dtype``; a rerun with the same
    settings reopens it."""
    if output not in BLOCK_OUTPUTS + ("instances",):
        raise ValueError(f"output must be labels, probabilities or instances, got {output!r}")
    probs = output == "probabilities"
    shape, dtype = output_spec(output, model.n_classes, spatial)
    chunks = tuple(chunks)
    if probs:
        if prob_dtype not in PROB_DTYPES:
            raise ValueError(f"prob_dtype must be one of {PROB_DTYPES}, got {prob_dtype!r}")
        dtype, chunks = prob_dtype, (model.n_classes, *chunks)
    is_stack = len(spatial) == 3
    axes = ("C" if probs else "") + ("ZYX" if is_stack else "YX")
    ps = tuple(pixel_size) if pixel_size is not None else (1.0, 1.0)
    voxel_size = ((1.0,) if probs else ()) + ((z_spacing or 1.0,) if is_stack else ()) + ps  # NGFF 'scale'
    prov = {"kind": output, **(provenance or {})}
    if probs:
        prov["probabilities"] = prob_dtype + (" (p * 255)" if prob_dtype == "uint8" else "")
    return create_output(
        path,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        axes=axes,
        scale=voxel_size,
        unit=unit,
        labels=not probs,
        version=version,
        provenance=prov,
    )


def iter_predict_blocks(
    model,
    image,
    out,
    config: PredictConfig | None = None,
    *,
    chunks: tuple[int, ...] | None = None,
    client=None,
    workers: int | None = None,
    processes: bool = True,
    memory_limit: str | int = "2GiB",
    in_flight: int | None = None,
    retries: int = 2,
) -> Generator[BlockEvent, None, object]:
    """Predict ``image`` block by block into ``out``; yields a :class:`BlockEvent` per block, returns ``out``.

    Parameters
    ----------
    model : UNet
    image : array-like
        (Y, X) or (Z, Y, X) (plus ``config.channel_axis``): numpy, memmap or a lazy
        :class:`~napari_unet.core.data.ngff.ZarrView` (which dask workers reopen from its path: put it on
        storage every worker sees).
    out : str, Path or array
        The path of an image made by :func:`create_prediction` (required on a cluster), or an
        array of the result's shape (numpy or zarr; class axis first for probabilities). Blocks are
        its chunks (or ``chunks``); blocks whose chunk files exist are skipped (resume).
    config : PredictConfig, optional
        Its output must be labels or probabilities and its zoom 1 (:meth:`PredictConfig.check_blocks`);
        ``prob_dtype`` is how probabilities are stored, ``threads`` the torch threads per block task.
        None: its defaults.
    client : dask.distributed.Client, optional
        Run the blocks on its workers (the model is scattered once); None = here, one after another.
    workers : int, optional
        Without a client: start a LocalCluster of this many workers (``processes``: worker processes,
        else threads; ``memory_limit`` each) for this run and close it at the end (also when the
        generator is closed early).
    in_flight : int, optional
        Blocks submitted at a time (default: 3 per worker), so neither the scheduler nor this
        process holds a task per block of a huge volume.
    retries : int
        How often the scheduler retries a failed block (e.g. a worker that was killed).
    """
    config = PredictConfig() if config is None else config
    config.check_blocks(model)
    if client is None and workers:
        check_workers(workers)  # a cluster of our own, checked first: the same call on it
        own = local_cluster(workers, memory_limit=memory_limit, processes=processes)
        try:
            config = replace(config, threads=config.threads or default_threads(workers))
            kw = dict(chunks=chunks, client=own, in_flight=in_flight, retries=retries)
            return (yield from iter_predict_blocks(model, image, out, config, **kw))
        finally:
            cluster = own.cluster
            own.close()
            cluster.close()
    config = replace(config, device=_block_device(config.device, on_cluster=client is not None))
    job = _BlockJob.plan(model, image, out, config, chunks, client)
    # with a client, the model and the image (unless workers read it from its path) travel once, before any task
    shipped = _ship(client, model, image) if client is not None and (job.todo or config.precision == "auto") else None
    config, why = _block_precision(model, image, config, client, shipped)
    message = f"precision {config.precision or 'default'}: {why}" if why else ""
    yield BlockEvent(job.skipped, job.total, job.skipped, None, "start", message)
    if not job.todo:
        return job.arr
    ranges = _block_ranges(model, image, job.todo, config, client, shipped, retries)
    if client is None:
        done = job.skipped
        for b in job.todo:
            run_block(model, image, job.arr, b, ranges, config, job.is_stack)
            done += 1
            yield BlockEvent(done, job.total, job.skipped, b, "block")
    else:
        yield from _distributed(client, *shipped, out, job, ranges, config, in_flight, retries)
    return job.arr


def _block_device(device, on_cluster: bool):
    """The device blocks run on: None = the CPU; 'auto' on a cluster = the CPU (the workers' devices are
    not this process's to see)."""
    if device is None or (on_cluster and str(device) == "auto"):
        return "cpu"
    return str(device)


@dataclass(frozen=True)
class _BlockJob:
    """What :func:`iter_predict_blocks` writes: the output array, its blocks and the ones still to do."""

    arr: object
    is_stack: bool
    total: int
    todo: list[Block]

    @property
    def skipped(self) -> int:
        return self.total - len(self.todo)

    @classmethod
    def plan(cls, model, image, out, config: PredictConfig, chunks, client) -> _BlockJob:
        """The blocks of ``out`` (its chunks, or ``chunks``) for ``image``, with ``out`` checked."""
        _, n_z, (H, W), is_stack = as_stack(image, config.channel_axis, model.config.in_channels)
        spatial = (n_z, H, W) if is_stack else (H, W)
        probs = config.output == "probabilities"
        want = ((model.n_classes,) if probs else ()) + spatial
        arr = _open(out)  # opened here too: the shape check and the resume
        if client is not None and not isinstance(out, (str, os.PathLike)):
            raise ValueError("with a dask client, out must be the path of an OME-Zarr output (ngff.create_output)")
        if tuple(arr.shape) != want:
            raise ValueError(f"out has shape {tuple(arr.shape)}, expected {want} for output={config.output!r}")
        if chunks is None:
            have = getattr(arr, "chunks", None)
            chunks = tuple(have[1:] if probs else have) if have is not None else output_chunks(spatial, None)
        blocks = plan_blocks(spatial, tuple(chunks))
        todo = [b for b in blocks if not _done(arr, b, is_stack, probs)]
        return cls(arr, is_stack, len(blocks), todo)


def _block_precision(model, image, config: PredictConfig, client, shipped) -> tuple[PredictConfig, str]:
    """(``config`` with 'auto' precision chosen, why); the workers' CPUs choose on a cluster, not this one's."""
    if config.precision != "auto":
        return config, ""
    kw = dict(device=config.device, channel_axis=config.channel_axis, normalize=config.normalize)
    if client is None:
        precision, why = choose_precision(model, image, **kw)
    else:
        precision, why = client.submit(choose_precision, *shipped, pure=False, **kw).result()
    return replace(config, precision=precision), why


def _block_ranges(model, image, todo, config: PredictConfig, client, shipped, retries) -> dict:
    """Each plane's (lo, hi) for the blocks ``todo``: the fixed range, or each whole plane's own, computed
    where the image is (here, or on the cluster)."""
    zs = sorted({z for b in todo for z in range(*b.z)})
    fixed = fixed_range(config.normalize)
    if fixed is not None:
        return {z: fixed for z in zs}
    if client is None:
        return dict(zip(zs, plane_ranges(model, image, zs, config.channel_axis)))
    ch = config.channel_axis
    futs = [client.submit(_plane_range_task, *shipped, z, ch, pure=False, retries=retries) for z in zs]
    return dict(zip(zs, client.gather(futs)))


def _ship(client, model, image) -> tuple:
    """(model, image) for tasks on ``client``: scattered once to every worker (the image only when workers
    cannot reopen it from its path, and only below :data:`SCATTER_LIMIT`)."""
    by_path = _picklable_by_path(image)
    if not by_path:
        nbytes = int(np.prod(image.shape, dtype=np.int64)) * np.dtype(image.dtype).itemsize
        if nbytes > SCATTER_LIMIT:
            raise ValueError(
                f"the image ({nbytes / 2**30:.1f} GiB) is no OME-Zarr: every worker would get a copy of it. Convert "
                "it to an OME-Zarr on storage the workers see and predict that (workers read their blocks from it)"
            )
    image_arg = image if by_path else client.scatter(image, broadcast=True, hash=False)
    # once per worker; eval mode before it leaves: threads of one worker share the object
    model_arg = client.scatter(_eval_copy(model), broadcast=True, hash=False)
    return model_arg, image_arg


def _distributed(client, model_arg, image_arg, out, job: _BlockJob, ranges, config, in_flight, retries):
    """The blocks ``job.todo`` on ``client``, at most ``in_flight`` at a time; a :class:`BlockEvent` per block."""
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = in_flight or 3 * n_workers
    out_arg = str(out)
    pending = iter(job.todo)

    def submit(b):
        # only this block's planes' ranges travel with it
        r = {z: ranges[z] for z in range(*b.z)}
        return client.submit(
            run_block, model_arg, image_arg, out_arg, b, r, config, job.is_stack, pure=False, retries=retries
        )

    by_future = {}
    for b in itertools.islice(pending, limit):
        by_future[submit(b)] = b
    queue = as_completed(list(by_future))
    done = job.skipped
    try:
        for fut in queue:
            b = by_future.pop(fut)
            fut.result()  # raises the block's error (after the scheduler's retries)
            done += 1
            nxt = next(pending, None)
            if nxt is not None:
                f = submit(nxt)
                by_future[f] = nxt
                queue.add(f)
            yield BlockEvent(done, job.total, job.skipped, b, "block")
    finally:
        if by_future:  # stopped early or failed: what is written stays, a rerun skips it
            client.cancel(list(by_future))


def _plane_range_task(model, image, z, channel_axis):
    return plane_ranges(model, image, [z], channel_axis)[0]


def _picklable_by_path(image) -> bool:
    return hasattr(image, "path") and hasattr(image, "__getstate__") and type(image).__name__ == "ZarrView"


def local_cluster(
    n_workers: int, *, memory_limit: str | int = "2GiB", processes: bool = True, threads: int | None = None
):
    """A ``dask.distributed`` LocalCluster + Client of ``n_workers`` single-threaded workers.

    Each worker runs one block at a time with ``threads`` torch threads (default: the cores shared out).
    """
    n_workers = check_workers(n_workers)
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError("distributed prediction needs dask.distributed: pip install 'napari-unet[zarr]'") from err
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=processes,
        memory_limit=memory_limit,
        dashboard_address=":0",
    )
    return Client(cluster)


def default_threads(n_workers: int) -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n // max(1, n_workers))
