"""npe2 reader: TIFF files, folders of TIFF slices and OME-Zarr images, lazily when large.

No Qt, no napari import: the reader returns plain layer data tuples. Large files
come back as a dask array (over tifffile's zarr store) or a read-only memmap, so
a stack bigger than RAM opens at once. An OME-Zarr folder (drag and drop
``image.zarr``) opens as a lazy multiscale image plus one Labels layer per image
in its ``labels`` group (where napari-unet writes predictions).
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.core.data.files import TIFF_SUFFIXES, is_tiff, list_tiffs, read_image
from napari_unet.core.data.ngff import is_ome_zarr
from napari_unet.core.data.planes import declared_channel_axis


def _tiff_file(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES and path.is_file() and is_tiff(path)


def _readable(path) -> bool:
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    if p.is_dir():
        if is_ome_zarr(p):
            return True
        try:
            return bool(list_tiffs(p))
        except OSError:
            return False
    return _tiff_file(p)


def napari_get_reader(path):
    """Return :func:`reader_function` when ``path`` is ours, else None (quickly, reading 4 bytes).

    Ours: a TIFF file (checked by suffix and signature) or a folder with TIFF
    files. A list (napari's "stack" open) is accepted only when every entry is
    a TIFF file; the files become one stacked layer.
    """
    if isinstance(path, (list, tuple)):
        if not path or not all(isinstance(p, (str, os.PathLike)) and _tiff_file(Path(p)) for p in path):
            return None
        return reader_function
    return reader_function if _readable(path) else None


def _as_dask(data):
    """Wrap a zarr array in dask so napari slices it lazily; numpy and memmaps pass through."""
    if type(data).__module__.split(".")[0] == "zarr":
        try:
            import dask.array as da
        except ImportError:  # napari can display zarr arrays directly
            return data
        return da.from_zarr(data)
    return data


def _layer_name(path: str) -> str:
    name = Path(path).name
    for suffix in (*TIFF_SUFFIXES, ".ome"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def layer_data(path) -> tuple:
    """One image layer data tuple ``(data, kwargs, 'image')`` for a TIFF file, a folder or a list of files."""
    data, meta = read_image(list(path) if isinstance(path, (list, tuple)) else path)
    # what napari cannot show: it said 'Image data must have at least 2 dimensions', or an empty NotImplementedError
    if len(meta.shape) < 2:
        raise ValueError(f"cannot open {meta.path}: it holds 1D data (shape {meta.shape}); images have 2 or more axes")
    if meta.dtype.startswith("complex"):
        raise ValueError(
            f"cannot open {meta.path}: it holds complex numbers, which napari cannot show; save the image's "
            "magnitude (e.g. numpy.abs(image)) as a TIFF"
        )
    return _as_dask(data), _image_kwargs(meta, _layer_name(meta.path)), "image"


def _image_kwargs(meta, name: str, channels: bool = True) -> dict:
    """An image layer's name, scale and metadata; with ``channels``, the file's channel axis (one layer each)."""
    kwargs: dict = {"name": name}
    drop = "S" if meta.axes.endswith("S") else ""  # RGB(A) samples last: napari shows colour
    channel_axis = declared_channel_axis(meta.shape, meta.axes) if channels else None
    if channel_axis is not None and not (drop and channel_axis == len(meta.axes) - 1):
        kwargs["channel_axis"] = channel_axis  # channels (or planar RGB): one layer each
        drop += meta.axes[channel_axis]
    kwargs["scale"] = meta.layer_scale(drop=drop)
    kwargs["metadata"] = {
        "path": meta.path,
        "axes": meta.axes,
        "pixel_size": meta.pixel_size,
        "z_spacing": meta.z_spacing,
        "unit": meta.unit,
        "lazy": meta.lazy,
    }
    return kwargs


def _pyramid(levels: list, kwargs: dict):
    """A layer's data: the levels of a multiscale image (``kwargs`` says so), or its only level."""
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return levels
    return levels[0]


def _zarr_levels(path: Path, fixed: dict[int, int], ms: dict) -> list:
    """Every resolution level (``ms``: its NGFF multiscales entry) of an OME-Zarr image as a lazy dask
    array, the ``fixed`` axes dropped."""
    import dask.array as da

    from napari_unet.core.data.ngff import import_zarr

    zarr = import_zarr()
    levels = []
    for ds in ms["datasets"]:
        arr = da.from_zarr(zarr.open_array(str(path / ds["path"]), mode="r"))
        levels.append(arr[tuple(fixed.get(ax, slice(None)) for ax in range(arr.ndim))])
    return levels


def zarr_layers(path) -> list[tuple]:
    """An OME-Zarr image (lazy, all levels) and the Labels layers of its ``labels`` group.

    A labels image (``image.zarr/labels/<name>``, or any image with NGFF ``image-label`` metadata) opens as
    a Labels layer.
    """
    from napari_unet.core.data.ngff import _attrs, _ome, labels_of, read_ome_zarr

    p = Path(path)
    view, meta = read_ome_zarr(p)
    attrs = _ome(_attrs(p)[0])
    kind = "labels" if "image-label" in attrs else "image"
    kwargs = _image_kwargs(meta, p.name.removesuffix(".zarr").removesuffix(".ome") or p.name, kind == "image")
    layers = [(_pyramid(_zarr_levels(p, view.fixed, attrs["multiscales"][0]), kwargs), kwargs, kind)]
    for name in labels_of(p):
        sub_path = p / "labels" / name
        sub, sub_meta = read_ome_zarr(sub_path)
        lkw = {
            "name": name,
            "scale": sub_meta.layer_scale(),
            "opacity": 0.6,
            "metadata": {"path": sub_meta.path, "axes": sub_meta.axes, "lazy": True},
        }
        ms = _ome(_attrs(sub_path)[0])["multiscales"][0]
        layers.append((_pyramid(_zarr_levels(sub_path, sub.fixed, ms), lkw), lkw, "labels"))
    return layers


def reader_function(path):
    """Read a TIFF file, a folder of slices or a list of TIFF files (stacked) into one image layer;
    an OME-Zarr folder into its image and its labels."""
    if isinstance(path, (str, os.PathLike)) and is_ome_zarr(path):
        return zarr_layers(path)
    return [layer_data(path)]
