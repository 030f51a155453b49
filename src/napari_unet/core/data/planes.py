"""Channels and planes: the (C, H, W) plane ``z`` of an image or stack, read lazily, written once.

Prediction, training and the training preview all take 2D planes out of
(Y, X) or (Z, Y, X) images with an optional channel axis; :func:`plane_at`
is how. :func:`as_grey` turns an RGB image into a grey one on request.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_grey", "as_stack", "channels_last", "declared_channel_axis", "pick_channel", "plane_at"]


def declared_channel_axis(shape, axes: str | None) -> int | None:
    """The channel axis a file declares: tifffile's ``C`` (channels) or ``S`` (RGB samples), longer than 1.

    ``axes`` has one letter per dimension (:attr:`.io.ImageMeta.axes`); None when it does not match
    ``shape`` or declares no channels.
    """
    shape = tuple(shape)
    if not axes or len(axes) != len(shape):
        return None
    for letter in "CS":
        if letter in axes and shape[axes.index(letter)] > 1:
            return axes.index(letter)
    return None


def channels_last(image, channel_axis: int | None):
    """``image`` with its channel axis moved last (a view for numpy and memmaps); unchanged without one."""
    if channel_axis is None:
        return image
    return np.moveaxis(image, channel_axis % len(np.shape(image)), -1)


def pick_channel(image, channel_axis: int | None, channel: int):
    """Channel ``channel`` of ``image`` (basic indexing: a view of a memmap, nothing read).

    ValueError when the image has no channel axis or no such channel.
    """
    shape = tuple(np.shape(image))
    if channel_axis is None:
        raise ValueError(f"channel {channel} was asked for, but the image (shape {shape}) has no channel axis")
    axis = channel_axis % len(shape)
    idx = [slice(None)] * len(shape)
    idx[axis] = channel_index(shape[axis], channel)
    return image[tuple(idx)]


def channel_index(n: int, channel: int) -> int:
    """Channel ``channel`` (negative: from the end) of ``n`` as an index 0..n-1, or a ValueError that says so."""
    if not -n <= channel < n:
        raise ValueError(f"channel {channel} does not exist; the image has {n} channels (0..{n - 1})")
    return channel % n


def spatial_shape(shape, channel_axis: int | None) -> tuple:
    """``shape`` (of an image, or its chunks) without the channel axis (None: all of it)."""
    shape = tuple(shape)
    if channel_axis is None:
        return shape
    return tuple(n for i, n in enumerate(shape) if i != channel_axis % len(shape))


def plane_at(
    image, z: int | None, channel_axis: int | None = None, rows: slice = slice(None), cols: slice = slice(None)
) -> np.ndarray:
    """Plane ``z`` of ``image`` (its ``rows`` x ``cols`` box) as a (C, h, w) array (C = 1 without a channel axis).

    ``z`` None: ``image`` is one plane (2D, plus the channel axis if any). Only
    that box of that plane is read from a lazy (memmap, zarr, dask) stack.
    """
    idx: list = ([] if z is None else [z]) + [rows, cols]
    if channel_axis is None:
        return np.asarray(image[tuple(idx)])[None]
    ca = channel_axis % len(np.shape(image))
    idx.insert(ca, slice(None))
    plane = np.asarray(image[tuple(idx)])  # lazily indexed first, then the channel axis to the front
    return np.moveaxis(plane, ca if z is None else (0 if ca == 0 else ca - 1), 0)  # an int z removed its axis


def as_stack(image, channel_axis: int | None, in_channels: int):
    """Check ``image`` for a model; return (getter(z) -> (C, H, W) array, n_slices, spatial shape, is_stack)."""
    ndim = len(image.shape)
    if channel_axis is not None:
        channel_axis = channel_axis % ndim
        spatial = list(spatial_shape(image.shape, channel_axis))
        n_ch = image.shape[channel_axis]
    else:
        spatial = list(image.shape)
        n_ch = 1
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"expected a 2D image (Y, X) or a stack (Z, Y, X){' plus a channel axis' if channel_axis is not None else ''},"
            f" got shape {tuple(image.shape)}"
        )
    if channel_axis is None and ndim == 3 and image.shape[-1] in (2, 3, 4) and image.shape[-2] > image.shape[-1]:
        # (Y, X, C): slices 2-4 pixels wide are no stack anyone segments; this is colour or channels last
        raise ValueError(
            f"this looks like an image with {image.shape[-1]} channels last (shape {tuple(image.shape)}), not a "
            f"stack of {image.shape[0]} slices: pass channel_axis=-1 for a model with {image.shape[-1]} input "
            "channels, or pick one channel (image[..., k]) or convert to grey for a grey model"
        )
    if n_ch != in_channels:
        what = f"{n_ch} channels" if channel_axis is not None else "no channel axis (1 channel)"
        todo = (
            "pick one channel (CLI: --channel K) or use a model trained on these channels"
            if in_channels == 1
            else f"give an image with {in_channels} channels and its channel axis (CLI: --channel-axis)"
        )
        raise ValueError(f"the model expects {in_channels} input channel(s), the image has {what}: {todo}")
    if min(spatial[-2:]) < 1:
        raise ValueError(f"image is empty (shape {tuple(image.shape)})")
    is_stack = len(spatial) == 3

    def get(z: int) -> np.ndarray:
        return plane_at(image, z if is_stack else None, channel_axis)

    n = spatial[0] if is_stack else 1
    return get, n, tuple(spatial[-2:]), is_stack


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as PIL's convert('L')


def as_grey(
    image,
    *,
    channel_axis: int | None = None,
    axes: str | None = None,
    channel: int | None = None,
    convert_rgb: bool = False,
):
    """Return a grey (single-channel) image of 2 to 4 dimensions.

    An RGB/RGBA image (last axis of length 3 or 4 with uint8 pixels, or an ``S``/``C``
    axis in ``axes`` from :class:`ImageMeta`, or ``channel_axis``) is refused unless
    the caller says what to do: ``channel=k`` keeps channel ``k`` (dtype kept),
    ``convert_rgb=True`` converts to luminance (float32; the mean for other than 3/4
    channels).

    Raises
    ------
    ValueError
        RGB without an explicit choice, or fewer than 2 / more than 4 dimensions.
    """
    shape = tuple(np.shape(image))
    ndim = len(shape)
    if channel_axis is None and axes is not None and len(axes) == ndim:
        for letter in "SC":
            if letter in axes and shape[axes.index(letter)] > 1:
                channel_axis = axes.index(letter)
                break
    if channel_axis is None and ndim >= 3 and shape[-1] in (3, 4):
        dtype = getattr(image, "dtype", None)
        if dtype is not None and np.dtype(dtype) == np.uint8:
            channel_axis = ndim - 1
    if channel_axis is not None:
        channel_axis = channel_axis % ndim
        n = shape[channel_axis]
        if channel is not None:
            image = np.take(np.asarray(image), channel_index(n, channel), axis=channel_axis)
        elif convert_rgb:
            arr = np.moveaxis(np.asarray(image), channel_axis, -1).astype(np.float32)
            if n in (3, 4):
                image = arr[..., :3] @ _LUMA  # alpha dropped
            else:
                image = arr.mean(axis=-1)
        else:
            raise ValueError(
                f"this looks like an RGB image (shape {shape}); U-Net Segment expects grey images — convert "
                "to greyscale or pick one channel (convert_rgb=True, or channel=0/1/2)"
            )
        shape = tuple(np.shape(image))
        ndim = len(shape)
    if ndim < 2 or ndim > 4:
        raise ValueError(
            f"expected a grey image with 2 to 4 dimensions ((Y, X), (Z, Y, X) or (T, Z, Y, X)), got {ndim}D "
            f"shape {shape}"
        )
    return image
