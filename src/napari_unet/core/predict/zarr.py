"""Prediction into an OME-Zarr image: the set-up that the CLI's ``predict`` and the Predict widget share.

:func:`prepare_zarr_prediction` checks the settings for the way the output will be filled and the size of
the plan (:func:`~.blocks.check_plan`), creates the output image (chunked like the input, or 1 plane x 512 x
512) or reopens it (a rerun resumes), and returns it with the generator that fills it: instances plane by
plane in this process (:func:`~.tiles.iter_predict`: object ids need whole planes), labels and probabilities
block by block (:func:`~.blocks.iter_predict_blocks`) here, on a given dask cluster, or on a LocalCluster of
its own.

A resumed output must be the same prediction: the output's metadata records what decides the result
(:func:`prediction_identity`: the model's weights and files, the settings, the input's identity), and a
rerun with anything else is refused before a chunk is written, saying what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from ..data.ngff import array_fingerprint, count_chunk_files, is_ome_zarr, ome_version, remove_output
from ..data.planes import as_stack, spatial_shape
from ..models.checkpoint import resolve_model_path
from .blocks import check_plan, check_workers, create_prediction, iter_predict_blocks, output_chunks
from .config import PredictConfig
from .events import BlockEvent, TileEvent
from .tiles import iter_predict

__all__ = ["files_sha256", "input_identity", "model_identity", "prediction_identity", "prepare_zarr_prediction"]


def prepare_zarr_prediction(
    model,
    image,
    target,
    config: PredictConfig,
    *,
    pixel_size: tuple[float, float] | None = None,
    z_spacing: float | None = None,
    unit: str | None = None,
    provenance: dict | None = None,
    client=None,
    workers: int | None = None,
    processes: bool = True,
    memory_limit: str | int = "2GiB",
    model_path: str | os.PathLike | None = None,
) -> tuple[object, Generator[TileEvent | BlockEvent, None, object]]:
    """(the output array at ``target``, the generator that fills it), after every check.

    Parameters
    ----------
    model : UNet
    image : array-like
        (Y, X) or (Z, Y, X) (plus ``config.channel_axis``); a lazy
        :class:`~napari_unet.core.data.ngff.ZarrView` is read block by block (and reopened by dask workers).
    target : str or Path
        The OME-Zarr image to write: a folder of its own, or ``<container>/labels/<name>`` inside an
        OME-Zarr container (then in the container's NGFF version).
    config : PredictConfig
        Its output: 'instances' (whole planes, in this process: no ``client`` nor ``workers``),
        'labels' or 'probabilities' (block-wise: :meth:`~.config.PredictConfig.check_blocks`).
    pixel_size, z_spacing, unit, provenance
        The output's metadata (:func:`~.blocks.create_prediction`).
    client, workers, processes, memory_limit
        Where the blocks run (:func:`~.blocks.iter_predict_blocks`): a dask client, else a LocalCluster
        of ``workers`` (1 to 4 per core: :func:`~.blocks.check_workers`) started for this run, else this process.
    model_path : str or Path, optional
        The model's file or package (or a shipped model's name): its bytes are part of the identity a
        resumed output must match (:func:`prediction_identity`).

    Returns
    -------
    (out, events)
        ``out`` is the output array (zarr); ``events`` yields a :class:`~.events.TileEvent` per tile
        (instances) or a :class:`~.events.BlockEvent` per block and returns the output.
    """
    on_cluster = client is not None or bool(workers)
    if workers:
        check_workers(workers)
    _check_route(model, config, on_cluster)
    target = Path(target)
    spatial, chunks = _layout(model, image, config)
    check_plan(spatial, chunks, image)
    record = {**(provenance or {}), **prediction_identity(model, image, config, model_path)}
    fresh = not is_ome_zarr(target)
    out = _create(model, target, spatial, chunks, config, (pixel_size, z_spacing, unit), record)
    if config.output == "instances":
        events = iter_predict(model, image, config, out=out)
    else:
        cluster = dict(client=client, workers=workers, processes=processes, memory_limit=memory_limit)
        events = iter_predict_blocks(model, image, str(target) if on_cluster else out, config, **cluster)
    return out, (_removed_if_nothing_written(events, target) if fresh else events)


def _removed_if_nothing_written(events, target: Path):
    """``events``; when they fail before a chunk is written (a cluster that does not start), the output this
    run created is removed again: a failed start leaves nothing behind."""
    try:
        return (yield from events)
    except Exception:
        if count_chunk_files(target / "0") == 0:
            remove_output(target)
        raise


def _check_route(model, config: PredictConfig, on_cluster: bool) -> None:
    """ValueError unless ``config`` can be predicted into an OME-Zarr (on a cluster, when ``on_cluster``)."""
    if config.output != "instances":
        config.check_blocks(model)
    elif on_cluster:
        raise ValueError(
            "instances need whole planes and are predicted in this process, not on a dask cluster: predict "
            "labels on the cluster, then make instances per slice (docs/scaling.md)"
        )


def _layout(model, image, config: PredictConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(spatial shape, chunks) of the output for ``image``: chunked like the image, else 1 x 512 x 512."""
    _, n_z, (H, W), is_stack = as_stack(image, config.channel_axis, model.config.in_channels)
    spatial = (n_z, H, W) if is_stack else (H, W)
    image_chunks = getattr(image, "chunks", None)
    if image_chunks is not None:
        image_chunks = spatial_shape(image_chunks, config.channel_axis)
    return spatial, output_chunks(spatial, image_chunks)


def _create(model, target: Path, spatial, chunks, config: PredictConfig, calibration, provenance):
    """The output image at ``target``; reopened when it exists and records the same prediction (resume)."""
    pixel_size, z_spacing, unit = calibration
    container = target.parent.parent
    inside = target.parent.name == "labels" and is_ome_zarr(container)
    return create_prediction(
        target,
        model,
        spatial,
        output=config.output,
        chunks=chunks,
        pixel_size=pixel_size,
        z_spacing=z_spacing,
        unit=unit,
        prob_dtype=config.prob_dtype,
        version=ome_version(container) if inside else "0.5",
        provenance=provenance,
    )


# ----------------------------------------------------------------------------- identity


def prediction_identity(model, image, config: PredictConfig, model_path=None) -> dict:
    """What decides a prediction's result, as its output's metadata records it (JSON).

    ``model``: :func:`model_identity`; ``settings``: the channel, zoom, precision, output kind,
    normalisation, test-time augmentation, how probabilities are stored and the smallest instance
    (tiles, batches, device and threads change no label: blocks equal one process); ``input``:
    :func:`input_identity`.
    """
    settings = {
        "output": config.output,
        "channel_axis": config.channel_axis,
        "zoom": config.zoom_for(model),
        "precision": config.precision,
        "normalize": config.normalize,
        "tta": bool(config.tta),
        "prob_dtype": config.prob_dtype if config.output == "probabilities" else None,
        "min_size": config.min_size if config.output == "instances" else None,
    }
    return {"model": model_identity(model, model_path), "settings": settings, "input": input_identity(image)}


def model_identity(model, model_path=None) -> dict:
    """sha256 of the network (architecture, info, every weight's bytes) and, given ``model_path``, of the
    file or package (:func:`files_sha256`): weights swapped inside a package change both."""
    h = hashlib.sha256(repr(model.config).encode())
    info = getattr(model, "info", None)
    if info is not None:
        fields = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else repr(info)
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\0".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    out = {"weights_sha256": h.hexdigest()}
    if model_path is not None:
        out["files_sha256"] = files_sha256(model_path)
    return out


def files_sha256(model_path) -> str:
    """sha256 of a model file, of a package .zip, or of every file in the folder of a package's rdf.yaml
    (its weights and attachments), by relative path and bytes."""
    p = resolve_model_path(model_path)
    if p.is_file() and p.name.lower().endswith((".yaml", ".yml")):
        p = p.parent
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(p).as_posix().encode() + b"\0" if p.is_dir() else b"")
        with open(f, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                h.update(piece)
    return h.hexdigest()


def input_identity(image) -> dict:
    """The input's shape, dtype and a checksum of its pixels: for a lazy OME-Zarr view its chunks, the axes it
    fixes (a channel) and :func:`~napari_unet.core.data.ngff.array_fingerprint` of its store; for an array in
    memory a sha256 of its bytes."""
    out = {"shape": [int(n) for n in image.shape], "dtype": str(np.dtype(image.dtype))}
    if type(image).__name__ == "ZarrView":
        fixed = {str(k): int(v) for k, v in sorted(image.fixed.items())}
        return {**out, "chunks": list(image.chunks), "fixed": fixed, **array_fingerprint(image.path)}
    arr = np.asarray(image)
    h = hashlib.sha256()
    for part in arr if arr.ndim > 2 else [arr]:  # a plane at a time: a view is copied plane by plane
        h.update(np.ascontiguousarray(part).tobytes())
    return {**out, "pixels_sha256": h.hexdigest()}
