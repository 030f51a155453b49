"""Overlap-tile prediction with a tile progress bar: predict's TIFF output, and its instances into an OME-Zarr."""

from __future__ import annotations

from ._progress import _TileBar


def _predict_config(args, ch):
    """The PredictConfig of the predict command's options (``ch``: the image's channel axis)."""
    from ..core.predict.config import PredictConfig

    return PredictConfig(
        output=args.kind,
        channel_axis=ch,
        zoom=args.zoom,
        tile_out=args.tile_out,
        tta=args.tta,
        device=args.device,
        precision=args.precision,
        min_size=args.min_size,
        prob_dtype=args.prob_dtype,
    )


def _predict_tiles(args, model, image, ch):
    """``args.kind`` of ``image`` by overlap-tile prediction, with the tile bar."""
    from ..core.predict.tiles import iter_predict

    return _drain_tiles(iter_predict(model, image, _predict_config(args, ch)), args.quiet)


def _drain_tiles(events, quiet: bool):
    """Run a tile-by-tile prediction with the tile bar; returns its result."""
    from ..core.drain import drain

    bar = _TileBar(quiet)
    try:
        return drain(events, bar)
    finally:
        bar.close()
