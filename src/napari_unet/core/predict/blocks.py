"""Block-wise prediction into a chunked output, in this process or on a dask.distributed cluster.

A big volume is predicted one output block at a time (a block = one chunk of the
output, so every chunk file has exactly one writer). A block reads its part of
the image plus a halo of the network's margin; where the halo leaves the image
it is mirrored exactly as :func:`~.tiling.iter_predict` mirrors the whole plane
(the same reflected indices). Its tiles start on the ``2**depth`` grid of the
*image*, not of the block (a block that starts off the grid is predicted from
the grid line before it and cropped), and every plane is normalised with the
range of the whole plane, computed first. So a block-wise result equals the
single-process one: labels exactly, probabilities within float rounding (tile
layouts differ, so convolutions sum in a different order).

Blocks whose chunks are already on disk are skipped: a rerun after a crash or a
killed worker resumes (chunk files are written atomically, :mod:`.ngff`).

:func:`iter_predict_blocks` is a generator (one :class:`~.events.BlockEvent`
per block) that runs the blocks here or, given a ``dask.distributed.Client``,
on its workers: the model is scattered to every worker once, at most a few
blocks per worker are in flight (memory does not grow with the volume), and a
failed block is retried by the scheduler.

Instances are not made here: object ids need the whole plane (semantic labels
and probabilities only; docs/scaling.md).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.intensity import fixed_range, model_normalization, plane_range, scale_intensity
from ..data.ngff import chunk_done, create_output, open_output
from ..data.planes import as_stack, plane_at
from ..data.zoom import model_zoom
from ..network.device import autocast_dtype, memory_format, resolve_device
from .events import BlockEvent
from .tiles import (
    _DIHEDRAL,
    auto_tile_out,
    check_plane,
    choose_precision,
    forward_tiles,
    output_spec,
    plan_tiles,
    tile_context,
)

__all__ = ["Block", "BlockSettings", "iter_predict_blocks", "plan_blocks", "plane_ranges", "predict_block"]

BLOCK_OUTPUTS = ("labels", "probabilities")
PROB_DTYPES = ("float16", "uint8", "float32")
SCATTER_LIMIT = 2 << 30  # an in-memory image is copied to every worker up to this size


@dataclass(frozen=True)
class Block:
    """One output block: planes ``z`` and rows ``y`` / columns ``x`` (half-open), at chunk ``chunk``."""

    chunk: tuple[int, ...]
    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]


@dataclass(frozen=True)
class BlockSettings:
    """What every block task needs besides the model, the image and the block (picklable, frozen)."""

    output: str = "labels"
    channel_axis: int | None = None
    tile_out: int | tuple[int, int] | None = None
    device: str = "cpu"
    precision: str | None = None
    prob_dtype: str = "float16"
    tta: bool = False
    threads: int | None = None  # torch threads per task (per dask worker)


def plan_blocks(spatial: tuple[int, ...], chunks: tuple[int, ...]) -> list[Block]:
    """The blocks of an output of spatial shape (Z, H, W) or (H, W), one per chunk of ``chunks``."""
    if len(spatial) != len(chunks) or len(spatial) not in (2, 3):
        raise ValueError(f"chunks {chunks} do not match the spatial shape {spatial}")
    if any(int(c) < 1 for c in chunks):
        raise ValueError(f"chunk sizes must be >= 1, got {chunks}")
    grids = [range(math.ceil(s / c)) for s, c in zip(spatial, chunks)]
    out = []
    for idx in itertools.product(*grids):
        spans = [(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, spatial)]
        z = spans[0] if len(spatial) == 3 else (0, 1)
        out.append(Block(tuple(idx), z, spans[-2], spans[-1]))
    return out


def _reflect(idx: np.ndarray, n: int, symmetric: bool) -> np.ndarray:
    """Indices into [0, n) of mirrored positions: numpy.pad's 'reflect' ('symmetric'), repeated."""
    if symmetric:
        j = np.mod(idx, 2 * n)
        return np.where(j >= n, 2 * n - 1 - j, j)
    j = np.mod(idx, 2 * n - 2)
    return np.where(j >= n, 2 * n - 2 - j, j)


def plane_ranges(model, image, zs: Sequence[int], channel_axis: int | None = None) -> list[tuple[float, float]]:
    """Each plane's normalisation range, exactly as :func:`~.tiling.iter_predict` computes it."""
    getter = as_stack(image, channel_axis, model.config.in_channels)[0]
    norm = model_normalization(model)
    return [plane_range(getter(z), norm) for z in zs]


def predict_block(model, image, block: Block, ranges, settings: BlockSettings) -> np.ndarray:
    """The prediction of one block: (Zb, Hb, Wb) class indices or (C, Zb, Hb, Wb) probabilities
    (float32); a 2D image has Zb = 1. ``ranges[z]`` is plane z's (lo, hi) (index with the plane)."""
    _, n_z, (H, W), is_stack = as_stack(image, settings.channel_axis, model.config.in_channels)
    dev = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    step = 2**model.depth
    m = tile_context(model)
    (y0, y1), (x0, x1) = block.y, block.x
    ay0, ax0 = y0 // step * step, x0 // step * step  # tiles on the image's grid
    ry, rx = y1 - ay0, x1 - ax0
    tile = settings.tile_out or auto_tile_out((ry, rx), model, dev)
    plan = plan_tiles((ry, rx), model, tile)
    symmetric = min(H, W) < 2  # as tiling.mirror_pad
    rows = _reflect(np.arange(ay0 - m, ay0 + plan.ys[-1] + plan.tile_out[0] + m), H, symmetric)
    cols = _reflect(np.arange(ax0 - m, ax0 + plan.xs[-1] + plan.tile_out[1] + m), W, symmetric)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1

    # A model shared by several worker threads must not change under them: switch modes and layouts only
    # when needed (the distributed path sends a copy that is already in eval mode, so nothing changes)
    was_training = model.training
    if was_training:
        model.eval()
    mem_fmt = memory_format(dev)
    here = next(model.parameters()).device
    if here.type != dev.type or (dev.index is not None and here.index != dev.index):
        model.to(dev)
    if _needs_layout(model, mem_fmt):
        model.to(memory_format=mem_fmt)
    amp = autocast_dtype(settings.precision, dev)
    C = model.n_classes
    nz = block.z[1] - block.z[0]
    probs = settings.output == "probabilities"
    res = np.zeros((C, nz, ry, rx), np.float32) if probs else np.zeros((nz, ry, rx), np.uint8 if C < 256 else np.uint16)
    try:
        for k, z in enumerate(range(*block.z)):
            raw = plane_at(image, z if is_stack else None, settings.channel_axis, slice(r0, r1), slice(c0, c1))
            check_plane(raw, z)
            window = raw[:, rows - r0][:, :, cols - c0]
            lo, hi = ranges[z]
            plane = scale_intensity(window, lo, hi)
            for (ty, tx), r in forward_tiles(
                model,
                plane,
                plan,
                output=settings.output,
                transforms=_DIHEDRAL if settings.tta else ((0, False),),
                device=dev,
                amp_dtype=amp,
                mem_fmt=mem_fmt,
            ):
                hy, hx = min(plan.tile_out[0], ry - ty), min(plan.tile_out[1], rx - tx)
                if probs:
                    res[:, k, ty : ty + hy, tx : tx + hx] = r[:, :hy, :hx]
                else:
                    res[k, ty : ty + hy, tx : tx + hx] = r[:hy, :hx]
    finally:
        if was_training:
            model.train(True)
    res = res[..., y0 - ay0 :, x0 - ax0 :]
    return res if is_stack else res[..., 0, :, :]


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


def run_block(model, image, out, block: Block, ranges, settings: BlockSettings, is_stack: bool) -> int:
    """Predict ``block`` and write it into ``out`` (an array, or the path of a :func:`~.ngff.create_output`
    image, opened here: on a dask worker). Returns the pixels written."""
    res = predict_block(model, image, block, ranges, settings)
    probs = settings.output == "probabilities"
    if probs:
        res = _to_store_dtype(res, settings.prob_dtype)
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
    """The OME-Zarr image :func:`iter_predict_blocks` fills (:func:`~.ngff.create_output`): labels as an NGFF
    labels image, probabilities (class axis first) as ``prob_dtype``; a rerun with the same settings reopens it."""
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
    scale = ((1.0,) if probs else ()) + ((z_spacing or 1.0,) if is_stack else ()) + ps
    prov = {"kind": output, **(provenance or {})}
    if probs:
        prov["probabilities"] = prob_dtype + (" (p * 255)" if prob_dtype == "uint8" else "")
    return create_output(
        path,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        axes=axes,
        scale=scale,
        unit=unit,
        labels=not probs,
        version=version,
        provenance=prov,
    )


def iter_predict_blocks(
    model,
    image,
    out,
    *,
    output: str = "labels",
    channel_axis: int | None = None,
    normalize: bool | tuple[float, float] = True,
    tile_out: int | tuple[int, int] | None = None,
    device: str = "cpu",
    precision: str | None = None,
    prob_dtype: str = "float16",
    tta: bool = False,
    chunks: tuple[int, ...] | None = None,
    client=None,
    workers: int | None = None,
    processes: bool = True,
    threads: int | None = None,
    in_flight: int | None = None,
    retries: int = 2,
    scale: float | None = None,
) -> Generator[BlockEvent, None, object]:
    """Predict ``image`` block by block into ``out``; yields a :class:`BlockEvent` per block, returns ``out``.

    Parameters
    ----------
    model : UNet
    image : array-like
        (Y, X) or (Z, Y, X) (plus ``channel_axis``): numpy, memmap or a lazy :class:`~.ngff.ZarrView`
        (which dask workers reopen from its path: put it on storage every worker sees).
    out : str, Path or array
        The path of an image made by :func:`~.ngff.create_output` (required with ``client``), or an
        array of the result's shape (numpy or zarr; class axis first for probabilities). Blocks are
        its chunks (or ``chunks``); blocks whose chunk files exist are skipped (resume).
    output : {'labels', 'probabilities'}
    prob_dtype : {'float16', 'uint8', 'float32'}
        How probabilities are stored (uint8: p * 255, rounded).
    tta : bool
        Average the 8 flips/rotations, as :func:`~.tiling.iter_predict`.
    client : dask.distributed.Client, optional
        Run the blocks on its workers (the model is scattered once); None = here, one after another.
    workers : int, optional
        Without a client: start a LocalCluster of this many workers (``processes``: worker processes,
        else threads) for this run and close it at the end (also when the generator is closed early).
    threads : int, optional
        torch threads per block task (per worker); None = torch's default.
    in_flight : int, optional
        Blocks submitted at a time (default: 3 per worker), so neither the scheduler nor this
        process holds a task per block of a huge volume.
    retries : int
        How often the scheduler retries a failed block (e.g. a worker that was killed).
    scale : float, optional
        The zoom to predict at (None: the model's own, :func:`~.scale.model_zoom`); only 1 works block-wise.
    """
    if output not in BLOCK_OUTPUTS:
        raise ValueError(
            f"block-wise prediction writes {' or '.join(BLOCK_OUTPUTS)}, not {output!r}: instances need whole "
            "planes; predict labels, then make instances per slice (docs/scaling.md)"
        )
    zoom = model_zoom(model) if scale is None else float(scale)
    if zoom != 1.0:  # blocks are cut on the image's grid; a zoomed model needs whole planes
        raise ValueError(
            f"this model zooms images x{zoom:.2f} (core/scale.py); block-wise prediction runs at the "
            "image's own scale: predict plane by plane (iter_predict) instead, or at scale 1"
        )
    if prob_dtype not in PROB_DTYPES:
        raise ValueError(f"prob_dtype must be one of {PROB_DTYPES}, got {prob_dtype!r}")
    fixed = fixed_range(normalize)  # None: each plane's own range
    if client is None and workers:  # a cluster of our own, checked first: the same call on it
        own = local_cluster(workers, processes=processes)
        try:
            return (
                yield from iter_predict_blocks(
                    model,
                    image,
                    out,
                    output=output,
                    channel_axis=channel_axis,
                    normalize=normalize,
                    tile_out=tile_out,
                    device=device,
                    precision=precision,
                    prob_dtype=prob_dtype,
                    tta=tta,
                    chunks=chunks,
                    client=own,
                    threads=threads or default_threads(workers),
                    in_flight=in_flight,
                    retries=retries,
                    scale=scale,
                )
            )
        finally:
            cluster = own.cluster
            own.close()
            cluster.close()
    _, n_z, (H, W), is_stack = as_stack(image, channel_axis, model.config.in_channels)
    spatial = (n_z, H, W) if is_stack else (H, W)
    probs = output == "probabilities"
    want = ((model.n_classes,) if probs else ()) + spatial
    arr = _open(out)  # opened here too: the shape check and the resume
    if client is not None and not isinstance(out, (str, os.PathLike)):
        raise ValueError("with a dask client, out must be the path of an OME-Zarr output (ngff.create_output)")
    if tuple(arr.shape) != want:
        raise ValueError(f"out has shape {tuple(arr.shape)}, expected {want} for output={output!r}")
    if chunks is None:
        have = getattr(arr, "chunks", None)
        chunks = tuple(have[1:] if probs else have) if have is not None else output_chunks(spatial, None)
    blocks = plan_blocks(spatial, tuple(chunks))
    todo = [b for b in blocks if not _done(arr, b, is_stack, probs)]
    skipped = len(blocks) - len(todo)
    total = len(blocks)
    # with a client, the model and the image (unless workers read it from its path) travel once, before any task
    shipped = _ship(client, model, image) if client is not None and (todo or precision == "auto") else None
    why = ""
    if precision == "auto":
        kw = dict(device=device, channel_axis=channel_axis, normalize=normalize)
        if client is None:
            precision, why = choose_precision(model, image, **kw)
        else:  # the workers' CPUs decide, not this one's
            precision, why = client.submit(choose_precision, *shipped, pure=False, **kw).result()
    settings = BlockSettings(output, channel_axis, tile_out, str(device), precision, prob_dtype, tta, threads)
    yield BlockEvent(
        skipped, total, skipped, None, "start", f"precision {settings.precision or 'default'}: {why}" if why else ""
    )
    if not todo:
        return arr
    zs = sorted({z for b in todo for z in range(*b.z)})
    if fixed is not None:
        ranges = {z: fixed for z in zs}
    elif client is None:
        ranges = dict(zip(zs, plane_ranges(model, image, zs, channel_axis)))
    else:  # each plane's own range, computed where the image is
        futs = [client.submit(_plane_range_task, *shipped, z, channel_axis, pure=False, retries=retries) for z in zs]
        ranges = dict(zip(zs, client.gather(futs)))

    if client is None:
        done = skipped
        for b in todo:
            run_block(model, image, arr, b, ranges, settings, is_stack)
            done += 1
            yield BlockEvent(done, total, skipped, b, "block")
        return arr

    yield from _distributed(client, *shipped, out, todo, ranges, settings, is_stack, skipped, total, in_flight, retries)
    return arr


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


def _distributed(
    client, model_arg, image_arg, out, todo, ranges, settings, is_stack, skipped, total, in_flight, retries
):
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    limit = in_flight or 3 * n_workers
    out_arg = str(out)
    pending = iter(todo)

    def submit(b):
        # only this block's planes' ranges travel with it
        r = {z: ranges[z] for z in range(*b.z)}
        return client.submit(
            run_block, model_arg, image_arg, out_arg, b, r, settings, is_stack, pure=False, retries=retries
        )

    by_future = {}
    for b in itertools.islice(pending, limit):
        by_future[submit(b)] = b
    queue = as_completed(list(by_future))
    done = skipped
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
            yield BlockEvent(done, total, skipped, b, "block")
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
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError("distributed prediction needs dask.distributed: pip install 'napari-unet[zarr]'") from err
    cluster = LocalCluster(
        n_workers=int(n_workers),
        threads_per_worker=1,
        processes=processes,
        memory_limit=memory_limit,
        dashboard_address=":0",
    )
    return Client(cluster)


def default_threads(n_workers: int) -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n // max(1, n_workers))
