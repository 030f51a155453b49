"""``napari-unet predict`` into an OME-Zarr image (core.predict.zarr.prepare_zarr_prediction): block by block
(a rerun resumes), in this process or on a dask cluster (--workers, --scheduler); instances plane by plane."""

from __future__ import annotations

import sys
from pathlib import Path

from ._errors import INTERRUPTED
from ._progress import _bar
from ._tiles import _drain_tiles, _predict_config


def _predict_zarr(args, model, image, meta, ch, target: Path) -> int:
    """Predict into an OME-Zarr image at ``target``: instances plane by plane, the rest block by block
    (resumable), here or on dask."""
    from ..core.predict.zarr import prepare_zarr_prediction

    _check_zarr_request(args)
    client = _client(args)
    try:
        out, events = prepare_zarr_prediction(
            model,
            image,
            target,
            _predict_config(args, ch),
            pixel_size=meta.pixel_size,
            z_spacing=meta.z_spacing,
            unit=meta.unit,
            provenance=_provenance(args),
            client=client,
            workers=args.workers,
            memory_limit=args.worker_memory,
            model_path=args.model,
        )
        if args.kind == "instances":
            _drain_tiles(events, args.quiet)
            print(f"wrote {target} (instances, shape {tuple(out.shape)})")
            return 0
        if _drain_blocks(events, _where(args, client), args.quiet):
            print(
                f"\ncancelled: the blocks written so far stay in {target}; run the same command to resume",
                file=sys.stderr,
            )
            return INTERRUPTED
    finally:
        if client is not None:
            client.close()
    print(f"wrote {target} ({args.kind}, shape {tuple(out.shape)}, chunks {tuple(out.chunks)})")
    return 0


def _check_zarr_request(args) -> None:
    """SystemExit for what an OME-Zarr output cannot do: --slices, --kind uncertainty, instances on dask; a
    ValueError for --workers outside 1 .. 4 per core (a zoom other than 1 is core's check:
    PredictConfig.check_blocks)."""
    if args.slices:
        raise SystemExit("error: --slices writes TIFFs only; a .zarr output takes the whole volume (a rerun resumes)")
    if args.kind not in ("labels", "probabilities", "instances"):
        raise SystemExit(
            f"error: --kind {args.kind} writes a TIFF (-o out.tif); an OME-Zarr output takes labels, "
            "probabilities or instances"
        )
    if args.workers is not None:
        from ..core.predict.blocks import check_workers

        try:
            check_workers(args.workers)
        except ValueError as e:
            raise ValueError(f"--workers {args.workers}: {e}") from None
    if args.kind == "instances" and (args.workers or args.scheduler):
        raise SystemExit(
            "error: --kind instances needs whole planes and runs in one process: drop --workers/--scheduler "
            "(or predict labels on the cluster; docs/scaling.md)"
        )


def _provenance(args) -> dict:
    """What the output's metadata records besides the prediction's identity (core): the model's name, TTA
    and the source image."""
    return {
        "model": str(args.model),
        "tta": bool(args.tta),
        "source": str(Path(args.image).resolve()),
    }


def _where(args, client) -> str:
    """Who predicts, for the bar's title: this process or the dask workers."""
    if args.workers:
        return f"{args.workers} dask worker(s)"
    if client is not None:
        return f"{len(client.scheduler_info()['workers'])} dask worker(s)"
    return "this process"


def _drain_blocks(events, where: str, quiet: bool) -> bool:
    """Run a block-wise prediction with a block bar; True when Ctrl-C stopped it."""
    bar = _BlockBar(quiet, where)
    try:
        for ev in events:
            bar(ev)
    except KeyboardInterrupt:
        return True
    finally:
        events.close()  # a cluster of its own (--workers) closes with it
        bar.close()
    return False


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


SCHEDULER_TIMEOUT = 5  # seconds to reach --scheduler: a live scheduler answers in well under one


def _client(args):
    """A dask.distributed Client of the cluster at --scheduler, or None (--workers: core starts its own).

    Made before the output: a scheduler that does not answer within :data:`SCHEDULER_TIMEOUT` seconds is an
    error, and nothing is written."""
    if not args.scheduler:
        return None
    try:
        from distributed import Client
    except ImportError as err:
        raise ImportError("--scheduler needs dask.distributed: pip install 'napari-unet[zarr]'") from err
    try:
        return Client(args.scheduler, timeout=SCHEDULER_TIMEOUT)
    except (OSError, ValueError, TypeError) as err:  # TimeoutError is an OSError
        raise ValueError(
            f"--scheduler {args.scheduler}: no dask scheduler answered within {SCHEDULER_TIMEOUT} s "
            f"({type(err).__name__}: {err}); start one (dask scheduler) or check the address; nothing was written"
        ) from None
