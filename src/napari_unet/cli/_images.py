"""Reading the images and labels a command is given: TIFFs, folders of TIFF slices, OME-Zarr images (lazily),
with their channel axis from the file or from --channel-axis / --channel."""

from __future__ import annotations


def _read_with_meta(path: str, what: str):
    """(pixels, ImageMeta) of a TIFF or a folder of TIFF slices; a missing file is a one-line error."""
    from ..core.data.files import read_image

    try:
        return read_image(path)
    except FileNotFoundError:
        raise SystemExit(f"error: {what} {path} does not exist") from None


def _read(path: str, what: str):
    return _read_with_meta(path, what)[0]


def _read_image(path: str, args):
    """The pixels of image ``path``, their channel axis (-1: moved last, a view; or None) and the file's ImageMeta.

    The channel axis is the file's own (tifffile's C or S axis, e.g. ImageJ/OME channels, RGB, planar
    RGB), or ``--channel-axis`` (``none``: the file's C axis is slices); ``--channel K`` keeps one channel.
    """
    from ..core.data.planes import channels_last, declared_channel_axis

    arr, meta = _open_image(path)
    given = getattr(args, "channel_axis", None)
    if given is None:
        ch = declared_channel_axis(arr.shape, meta.axes)
    elif given == "none":
        ch = None
    else:
        ch = int(given)
        if not -arr.ndim <= ch < arr.ndim:
            raise ValueError(f"--channel-axis {given}: {path} has only {arr.ndim} axes (shape {tuple(arr.shape)})")
    if getattr(args, "channel", None) is not None:
        if ch is None:
            raise ValueError(
                f"--channel {args.channel}: {path} (shape {tuple(arr.shape)}, axes {meta.axes}) declares no "
                "channel axis; say which axis holds the channels with --channel-axis"
            )
        return _pick(arr, ch, args.channel), None, meta
    if ch is not None and arr.shape[ch] == 1:
        return _pick(arr, ch, 0), None, meta
    if hasattr(arr, "take") and type(arr).__name__ == "ZarrView":
        return arr, (None if ch is None else ch % arr.ndim), meta  # lazy: the channel axis stays where it is
    return channels_last(arr, ch), (None if ch is None else -1), meta


def _pick(arr, ch, k):
    from ..core.data.planes import channel_index, pick_channel

    if type(arr).__name__ == "ZarrView":  # lazy: fix the axis instead of reading the whole channel
        return arr.take(ch, channel_index(arr.shape[ch], k))
    return pick_channel(arr, ch, k)


def _open_image(path: str):
    """(pixels, ImageMeta) of a TIFF, a folder of TIFF slices or an OME-Zarr image (lazily)."""
    from ..core.data.ngff import is_ome_zarr, read_ome_zarr

    return read_ome_zarr(path) if is_ome_zarr(path) else _read_with_meta(path, "image")
