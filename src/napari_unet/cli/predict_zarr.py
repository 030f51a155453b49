"""``napari-unet predict`` into an OME-Zarr image: block by block (a rerun resumes), in this process or on a
dask cluster (--workers, --scheduler)."""

from __future__ import annotations

import sys
from pathlib import Path

from ._errors import INTERRUPTED
from ._progress import _bar
from ._tiles import _predict_tiles


def _predict_zarr(args, model, image, meta, ch, target: Path) -> int:
    """Predict into an OME-Zarr image at ``target``, block by block (resumable), here or on dask."""
    _check_zarr_request(args, model)
    out = _create_output(args, model, image, meta, ch, target)
    if args.kind == "instances":
        _predict_tiles(args, model, image, ch, out=out)
        print(f"wrote {target} (instances, shape {tuple(out.shape)})")
        return 0
    return _predict_blocks(args, model, image, ch, target, out)


def _check_zarr_request(args, model) -> None:
    """SystemExit for what an OME-Zarr output cannot do: --slices, a zoom, --kind uncertainty, instances on dask."""
    from ..core.data.zoom import model_zoom

    if args.slices:
        raise SystemExit("error: --slices writes TIFFs only; a .zarr output takes the whole volume (a rerun resumes)")
    zoom = model_zoom(model) if args.scale is None else args.scale
    if zoom != 1.0 and args.kind != "instances":
        raise SystemExit(
            f"error: block-wise OME-Zarr prediction runs at the image's own scale, and this model zooms images "
            f"x{zoom:.2f}: predict into a TIFF (-o out.tif), or give --scale 1 to predict the volume as it is"
        )
    if args.kind not in ("labels", "probabilities", "instances"):
        raise SystemExit(
            f"error: --kind {args.kind} writes a TIFF (-o out.tif); an OME-Zarr output takes labels, "
            "probabilities or instances"
        )
    if args.kind == "instances" and (args.workers or args.scheduler):
        raise SystemExit(
            "error: --kind instances needs whole planes and runs in one process: drop --workers/--scheduler "
            "(or predict labels on the cluster; docs/scaling.md)"
        )


def _create_output(args, model, image, meta, ch, target: Path):
    """The OME-Zarr image at ``target`` (a rerun with the same settings reopens it): chunks as the image's,
    pixel size and provenance (the model, its checksum, the source image) in its metadata."""
    from ..core.data.ngff import ome_version
    from ..core.data.planes import as_stack
    from ..core.models.checkpoint import resolve_model_path
    from ..core.predict.blocks import create_prediction, output_chunks

    _, n_z, (H, W), is_stack = as_stack(image, ch, model.config.in_channels)
    spatial = (n_z, H, W) if is_stack else (H, W)
    chunks = output_chunks(spatial, _spatial_chunks(image, ch))
    inside = target.parent.name == "labels" and Path(args.image).resolve() == target.parent.parent.resolve()
    provenance = {
        "model": str(args.model),
        "model_sha256": _sha256(resolve_model_path(args.model)),
        "tta": bool(args.tta),
        "source": str(Path(args.image).resolve()),
    }
    return create_prediction(
        target,
        model,
        spatial,
        output=args.kind,
        chunks=chunks,
        pixel_size=meta.pixel_size,
        z_spacing=meta.z_spacing,
        unit=meta.unit,
        prob_dtype=args.prob_dtype,
        version=ome_version(args.image) if inside else "0.5",
        provenance=provenance,
    )


def _predict_blocks(args, model, image, ch, target: Path, out) -> int:
    """Fill ``out`` block by block, in this process or on the dask cluster of --workers / --scheduler."""
    from ..core.predict.blocks import default_threads, iter_predict_blocks

    client = _client(args)
    n_workers = len(client.scheduler_info()["workers"]) if client is not None else 1
    gen = iter_predict_blocks(
        model,
        image,
        str(target) if client is not None else out,
        output=args.kind,
        channel_axis=ch,
        tile_out=args.tile_out,
        tta=args.tta,
        device=args.device if client is None else ("cpu" if args.device == "auto" else args.device),
        precision=args.precision,
        prob_dtype=args.prob_dtype,
        client=client,
        threads=default_threads(n_workers) if args.workers else None,
        scale=args.scale,
    )
    bar = _BlockBar(args.quiet, f"{n_workers} dask worker(s)" if client is not None else "this process")
    try:
        for ev in gen:
            bar(ev)
    except KeyboardInterrupt:
        print(
            f"\ncancelled: the blocks written so far stay in {target}; run the same command to resume", file=sys.stderr
        )
        return INTERRUPTED
    finally:
        bar.close()
        _close_client(client, args)
    print(f"wrote {target} ({args.kind}, shape {tuple(out.shape)}, chunks {tuple(out.chunks)})")
    return 0


class _BlockBar:
    """A progress callback for block events: the bar opens at the start event, which says how many blocks a
    previous run wrote already; ``where``: this process or the dask workers, for the bar's title."""

    def __init__(self, quiet: bool, where: str):
        self.quiet, self.where, self.bar = quiet, where, None

    def __call__(self, ev) -> None:
        if ev.kind == "start":
            if ev.message and not self.quiet:
                print(ev.message, file=sys.stderr)
            if ev.skipped:
                print(f"resuming: {ev.skipped} of {ev.total} blocks are already written", file=sys.stderr)
            self.bar = _bar(ev.total, f"predict ({self.where})", self.quiet)
            self.bar.unit = "block"
            self.bar.update(ev.skipped)
        else:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _close_client(client, args) -> None:
    """Close the dask client, and the local cluster --workers started."""
    if client is not None:
        cluster = getattr(client, "cluster", None)
        client.close()
        if args.workers and cluster is not None:
            cluster.close()


def _client(args):
    """A dask.distributed Client for --scheduler / --workers, or None (this process)."""
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise ImportError("--scheduler needs dask.distributed: pip install 'napari-unet[zarr]'") from err
        return Client(args.scheduler)
    if args.workers:
        from ..core.predict.blocks import local_cluster

        return local_cluster(args.workers, memory_limit=args.worker_memory)
    return None


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def _spatial_chunks(image, ch):
    from ..core.data.planes import spatial_shape

    chunks = getattr(image, "chunks", None)
    return None if chunks is None else spatial_shape(chunks, ch)
