"""Prediction into an OME-Zarr image: the set-up that the CLI's ``predict`` and the Predict widget share.

:func:`prepare_zarr_prediction` checks the settings for the way the output will be filled, creates the
output image (chunked like the input, or 1 plane x 512 x 512) or reopens it (a rerun resumes), and returns
it with the generator that fills it: instances plane by plane in this process
(:func:`~.tiles.iter_predict`: object ids need whole planes), labels and probabilities block by block
(:func:`~.blocks.iter_predict_blocks`) here, on a given dask cluster, or on a LocalCluster of its own.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

from ..data.ngff import is_ome_zarr, ome_version
from ..data.planes import as_stack, spatial_shape
from .blocks import create_prediction, iter_predict_blocks, output_chunks
from .config import PredictConfig
from .events import BlockEvent, TileEvent
from .tiles import iter_predict

__all__ = ["prepare_zarr_prediction"]


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
        of ``workers`` started for this run, else this process.

    Returns
    -------
    (out, events)
        ``out`` is the output array (zarr); ``events`` yields a :class:`~.events.TileEvent` per tile
        (instances) or a :class:`~.events.BlockEvent` per block and returns the output.
    """
    on_cluster = client is not None or bool(workers)
    _check_route(model, config, on_cluster)
    target = Path(target)
    out = _create(model, image, target, config, pixel_size, z_spacing, unit, provenance)
    if config.output == "instances":
        return out, iter_predict(model, image, config, out=out)
    cluster = dict(client=client, workers=workers, processes=processes, memory_limit=memory_limit)
    return out, iter_predict_blocks(model, image, str(target) if on_cluster else out, config, **cluster)


def _check_route(model, config: PredictConfig, on_cluster: bool) -> None:
    """ValueError unless ``config`` can be predicted into an OME-Zarr (on a cluster, when ``on_cluster``)."""
    if config.output != "instances":
        config.check_blocks(model)
    elif on_cluster:
        raise ValueError(
            "instances need whole planes and are predicted in this process, not on a dask cluster: predict "
            "labels on the cluster, then make instances per slice (docs/scaling.md)"
        )


def _create(model, image, target: Path, config: PredictConfig, pixel_size, z_spacing, unit, provenance):
    """The output image at ``target`` for ``image``, chunked like it; reopened when it exists (resume)."""
    _, n_z, (H, W), is_stack = as_stack(image, config.channel_axis, model.config.in_channels)
    spatial = (n_z, H, W) if is_stack else (H, W)
    image_chunks = getattr(image, "chunks", None)
    if image_chunks is not None:
        image_chunks = spatial_shape(image_chunks, config.channel_axis)
    container = target.parent.parent
    inside = target.parent.name == "labels" and is_ome_zarr(container)
    return create_prediction(
        target,
        model,
        spatial,
        output=config.output,
        chunks=output_chunks(spatial, image_chunks),
        pixel_size=pixel_size,
        z_spacing=z_spacing,
        unit=unit,
        prob_dtype=config.prob_dtype,
        version=ome_version(container) if inside else "0.5",
        provenance=provenance,
    )
