"""Overlap-tile prediction with a tile progress bar: predict's TIFF output, and its instances into an OME-Zarr."""

from __future__ import annotations

from ._progress import _TileBar


def _predict_tiles(args, model, image, ch, out=None):
    """``args.kind`` of ``image`` by overlap-tile prediction (into ``out`` if given), with the tile bar."""
    from ..core.drain import drain
    from ..core.predict.tiles import iter_predict

    bar = _TileBar(args.quiet)
    try:
        return drain(
            iter_predict(
                model,
                image,
                channel_axis=ch,
                output=args.kind,
                out=out,
                tile_out=args.tile_out,
                tta=args.tta,
                device=args.device,
                min_size=args.min_size,
                precision=args.precision,
                scale=args.scale,
            ),
            bar,
        )
    finally:
        bar.close()
