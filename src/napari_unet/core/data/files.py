"""TIFF stacks in and label TIFFs out (intensities: :mod:`.intensity`; channels: :mod:`.planes`).

Reading
-------
:func:`read_image` opens a TIFF (multi-page, BigTIFF, ImageJ hyperstack, OME)
or a folder of 2D TIFF slices and returns ``(array, ImageMeta)``. Files larger
than :func:`default_lazy_threshold` come back lazily so that a stack bigger
than RAM opens at once: a read-only ``numpy.memmap`` when the pixels are
stored uncompressed and contiguously, otherwise a read-only zarr array over
tifffile's zarr store (needs the optional ``zarr`` package).

Writing
-------
:func:`write_labels` writes a zlib-compressed, ImageJ-compatible TIFF
atomically: a crash mid-write leaves the previous file untouched and no
half-written file behind.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import stat
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import tifffile

__all__ = [
    "ImageMeta",
    "TIFF_SUFFIXES",
    "default_lazy_threshold",
    "is_tiff",
    "list_tiffs",
    "read_image",
    "write_labels",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_GIB = 1 << 30
_UNIT_ALIASES = {"micron": "µm", "microns": "µm", "um": "µm", "\\u00b5m": "µm", "μm": "µm", "µm": "µm"}


@dataclass(frozen=True)
class ImageMeta:
    """What :func:`read_image` learned about a file besides the pixels.

    ``pixel_size`` is ``(y, x)`` in ``unit`` (``None`` when the file does not
    say); ``z_spacing`` the distance between slices (``None`` when unknown).
    ``axes`` uses tifffile's letters, one per array dimension (``Z`` slices,
    ``C`` channels, ``S`` RGB samples, ``T`` time, ``Q`` unknown).
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    axes: str
    pixel_size: tuple[float, float] | None = None
    z_spacing: float | None = None
    unit: str | None = None
    lazy: bool = False

    def layer_scale(self, *, drop: str = "") -> tuple[float, ...]:
        """napari's per-dimension layer scale: the pixel size per axis (1.0 where unknown), skipping axes
        in ``drop``.

        An unknown stack axis (``Q``, ``I``) gets the z spacing when there is one.
        """
        py, px = self.pixel_size if self.pixel_size is not None else (1.0, 1.0)
        z = self.z_spacing if self.z_spacing is not None else 1.0
        per_axis = {"Y": py, "X": px, "Z": z, "Q": z, "I": z}
        return tuple(float(per_axis.get(a, 1.0)) for a in self.axes if a not in drop)


# --------------------------------------------------------------------------- reading


def is_tiff(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file that starts with a TIFF signature (reads 4 bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_tiffs(folder: str | os.PathLike) -> list[Path]:
    """TIFF files directly in ``folder``, hidden files skipped, in natural order (2 before 10)."""
    folder = Path(folder)
    files = [
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TIFF_SUFFIXES
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def default_lazy_threshold() -> int:
    """Bytes above which :func:`read_image` reads lazily: 1 GiB or a quarter of free RAM, the smaller."""
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux / macOS
        return _GIB
    return int(min(_GIB, max(free // 4, 64 << 20)))


def _damaged(path, err: BaseException | None = None) -> ValueError:
    detail = f" ({type(err).__name__}: {err})" if err is not None else ""
    return ValueError(f"cannot read {path}: the file is damaged or truncated{detail}")


def _raise_named(path, err: Exception):
    """Raise ``err``, met while reading ``path``: this module's own messages (they start "cannot read <path>")
    and a file gone missing as they are, anything else (tifffile's, numpy's, a codec's) as a damaged file
    that names ``path``."""
    if isinstance(err, FileNotFoundError) or (
        isinstance(err, ValueError) and str(err).startswith(f"cannot read {path}")
    ):
        raise err
    raise _damaged(path, err) from err


def _check_tiff_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if not is_tiff(path):
        raise ValueError(
            f"cannot read {path}: not a TIFF file. U-Net Segment reads TIFF stacks (.tif, .tiff, "
            "OME-TIFF, ImageJ) or a folder of 2D TIFF slices; convert other formats to TIFF first"
        )


# tifffile does not raise for many kinds of damage: it logs a warning and returns what it
# could parse (fewer pages, a series of the wrong shape). These messages mean the file is broken.
_DAMAGE_MESSAGES = ("invalid page offset", "corrupt", "failed to reshape", "truncat", "invalid tag", "unexpected end")


class _TiffLogCatcher(logging.Filter):
    """Collects (and silences) tifffile's warnings raised by this thread only."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record):
        if record.thread != self.thread or record.levelno < logging.WARNING:
            return True
        self.messages.append(record.getMessage())
        return False


@contextlib.contextmanager
def _catch_tifffile_damage(path):
    """Turn tifffile's damage warnings into a ValueError and keep them off the console."""
    logger = logging.getLogger("tifffile")
    catcher = _TiffLogCatcher()
    logger.addFilter(catcher)
    try:
        yield
    finally:
        logger.removeFilter(catcher)
    for msg in catcher.messages:
        if any(key in msg.lower() for key in _DAMAGE_MESSAGES):
            raise ValueError(f"cannot read {path}: the file is damaged or truncated ({msg.strip()})")


def _check_complete(tif: tifffile.TiffFile, series, path) -> None:
    """Raise when the pixel data of ``series`` runs past the end of the file (truncated copy)."""
    size = tif.filehandle.size
    if series.dataoffset is not None:
        if series.dataoffset + series.nbytes > size:
            raise _damaged(path)
        return
    for page in series.pages:
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ())
        counts = getattr(page, "databytecounts", ())
        if any(o + c > size for o, c in zip(offsets, counts)):
            raise _damaged(path)


def _norm_unit(unit) -> str | None:
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("latin-1")
    unit = str(unit).strip()
    if not unit or unit.lower() in ("pixel", "pixels", "none"):
        return None
    return _UNIT_ALIASES.get(unit.lower(), unit)


def _res_to_size(tag) -> float | None:
    if tag is None:
        return None
    value = tag.value
    num, den = value if isinstance(value, tuple) else (value, 1)
    if not num or not den:
        return None
    return float(den) / float(num)


def _pixel_meta(tif: tifffile.TiffFile, page) -> tuple[tuple[float, float] | None, float | None, str | None]:
    """(pixel size (y, x), z spacing, unit) from OME, ImageJ or plain resolution tags, in that order."""
    if tif.is_ome and tif.ome_metadata:
        with contextlib.suppress(ElementTree.ParseError, ValueError, TypeError):
            root = ElementTree.fromstring(tif.ome_metadata)
            pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
            if pixels is not None:
                sx, sy, sz = (pixels.get(f"PhysicalSize{a}") for a in "XYZ")
                if sx or sy:
                    sx = float(sx or sy)
                    sy = float(sy or sx)
                    unit = _norm_unit(pixels.get("PhysicalSizeXUnit", "µm"))  # OME's default unit
                    return (sy, sx), (float(sz) if sz else None), unit
    tags = page.tags
    sx = _res_to_size(tags.get("XResolution"))
    sy = _res_to_size(tags.get("YResolution"))
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        unit = _norm_unit(ij.get("unit"))
        spacing = ij.get("spacing")
        if unit is None:  # ImageJ's "pixel" unit: an uncalibrated image (resolution tags are 1/1)
            return None, None, None
        if sx is None and sy is None:
            return None, (float(spacing) if spacing else None), unit
        sx = sx if sx is not None else sy
        sy = sy if sy is not None else sx
        return (sy, sx), (float(spacing) if spacing else None), unit
    runit = tags.get("ResolutionUnit")
    runit = int(runit.value) if runit is not None else 2
    # Inch-based resolution is almost always a screen DPI default (72, 96, 300), not a pixel size.
    if runit == 3 and sx is not None:
        sy = sy if sy is not None else sx
        return (sy * 1e4, sx * 1e4), None, "µm"  # centimetre -> micrometre
    return None, None, None


def _import_zarr(path):
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - zarr ships with napari
        raise ImportError(
            f"{path} is compressed or split and too large to read into memory at once; install the "
            "'zarr' package to open it lazily, or pass lazy=False if it fits in RAM"
        ) from err
    return zarr


def _open_lazy(path: Path, contiguous: bool):
    """A read-only memmap when the pixels are contiguous and uncompressed, else a zarr array."""
    if contiguous:
        with contextlib.suppress(ValueError, OSError):
            return tifffile.memmap(path, series=0, mode="r")
    zarr = _import_zarr(path)
    store = None
    try:
        store = tifffile.imread(path, aszarr=True, series=0)
        arr = zarr.open(store, mode="r")
    except Exception as err:
        if store is not None:
            store.close()
        raise _damaged(path, err) from err
    if not hasattr(arr, "dtype"):  # a multiscale (pyramid) group: level 0 is full resolution
        arr = arr["0"]
    return _close_with(arr, store)


def _close_with(arr, store):
    """Close the TIFF file behind a lazy array when the array goes away (no leaked file handles)."""
    weakref.finalize(arr, store.close)
    return arr


def _probe(path: Path):
    """(shape, dtype, axes, pixel_size, z, unit, contiguous) of series 0, or a ValueError for a broken file."""
    _check_tiff_file(path)
    try:
        with _catch_tifffile_damage(path), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if 0 in tuple(series.shape):  # before the size check, which took it for a truncated file
                raise ValueError(
                    f"cannot read {path}: the image is empty (shape {tuple(series.shape)}, no pixels); "
                    "open the file the image was saved to, or save it again"
                )
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            _check_complete(tif, series, path)
            pixel_size, z, unit = _pixel_meta(tif, page)
            contiguous = series.dataoffset is not None
            return tuple(series.shape), np.dtype(series.dtype), series.axes, pixel_size, z, unit, contiguous
    except Exception as err:  # tifffile raises many kinds for broken headers
        _raise_named(path, err)


def _load(path, **kwargs):
    try:
        with _catch_tifffile_damage(path):
            return tifffile.imread(path, **kwargs)
    except Exception as err:  # a strip that decodes to the wrong size ('cannot reshape ...'), a codec's error
        _raise_named(path, err)


def _read_file(path: Path, lazy: bool | None, threshold: int):
    shape, dtype, axes, pixel_size, z, unit, contiguous = _probe(path)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    use_lazy = nbytes > threshold if lazy is None else bool(lazy)
    if use_lazy:
        data = _open_lazy(path, contiguous and dtype.isnative)
    else:
        data = _load(path, series=0)
    return data, ImageMeta(str(path), shape, str(dtype), axes, pixel_size, z, unit, use_lazy)


def _read_folder(folder: Path, lazy: bool | None, threshold: int):
    files = list_tiffs(folder)
    if not files:
        raise ValueError(
            f"cannot read {folder}: the folder holds no TIFF files (.tif/.tiff); "
            "put one 2D TIFF per slice in it, or open a multi-page TIFF instead"
        )
    return _read_sequence(files, folder, lazy, threshold)


def _read_sequence(files: list[Path], origin: Path, lazy: bool | None, threshold: int):
    """Stack equally shaped TIFF files along a new first axis (``Z``)."""
    shape, dtype, axes, pixel_size, z, unit, _ = _probe(files[0])
    for f in files[1:]:
        other_shape, other_dtype = _probe(f)[:2]
        if (other_shape, other_dtype) != (shape, dtype):
            raise ValueError(
                f"cannot stack {origin}: slice {f.name!r} is {other_shape} {other_dtype} but {files[0].name!r} "
                f"is {shape} {dtype}; all slices of a stack must have the same shape and dtype"
            )
    full = (len(files), *shape)
    nbytes = int(np.prod(full, dtype=np.int64)) * dtype.itemsize
    use_lazy = nbytes > threshold if lazy is None else bool(lazy)
    if use_lazy:
        zarr = _import_zarr(origin)
        store = tifffile.imread([str(f) for f in files], aszarr=True)
        data = _close_with(zarr.open(store, mode="r"), store)
    else:
        data = np.empty(full, dtype)
        for i, f in enumerate(files):
            data[i] = _load(f)
    return data, ImageMeta(str(origin), full, str(dtype), "Z" + axes, pixel_size, z, unit, use_lazy)


def read_image(path: str | os.PathLike | list, *, lazy: bool | None = None, lazy_threshold: int | None = None):
    """Read a TIFF file or a folder of 2D TIFF slices.

    Parameters
    ----------
    path
        A TIFF file (multi-page, BigTIFF, ImageJ hyperstack, OME-TIFF), a folder
        of equally sized 2D TIFF slices (stacked in natural file-name order), or a
        list of such files (stacked in the given order).
    lazy
        ``None`` (default): lazy when the data is larger than ``lazy_threshold``.
        ``True``/``False`` force it. A lazy result is a read-only memmap
        (uncompressed, contiguous TIFF) or a zarr array; index it like numpy.
    lazy_threshold
        Bytes; default :func:`default_lazy_threshold` (1 GiB or a quarter of free RAM).

    Returns
    -------
    (array, ImageMeta)

    Raises
    ------
    ValueError
        Not a TIFF, a damaged or truncated file, an empty folder, or slices that differ.
    """
    threshold = default_lazy_threshold() if lazy_threshold is None else int(lazy_threshold)
    if isinstance(path, (list, tuple)):
        if not path:
            raise ValueError("cannot read an empty list of files")
        files = [Path(p) for p in path]
        return _read_sequence(files, files[0], lazy, threshold)
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, lazy, threshold)
    return _read_file(path, lazy, threshold)


# --------------------------------------------------------------------------- writing


def _label_dtype(labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("labels must be whole numbers; got a float array with fractions, NaN or inf")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size == 0:
        raise ValueError("cannot write empty labels (an array with no pixels)")
    lo, hi = labels.min(), labels.max()
    if lo < 0:
        raise ValueError(f"labels must be >= 0, got minimum {lo}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            return labels.astype(dt, copy=False)
    raise ValueError(f"labels up to {hi} do not fit in 32 bits")


def _mode_for(path: Path) -> int:
    """Permissions for a file written to ``path``: those of the file it replaces,
    else what ``open()`` would give (0o666 minus the process umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports it without touching it; elsewhere os.umask is the only way (set and restore).
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _remove_stale_temps(path: Path, folder: Path) -> None:
    """Delete temporary files of earlier writes to ``path`` whose process is gone (kill -9, power loss):
    they are invisible (dot files) and can be large. POSIX only (elsewhere, probing a pid is not safe)."""
    if os.name != "posix":
        return
    base = f".{path.name}."
    for f in folder.glob(glob.escape(base) + "*.tmp"):
        pid = f.name[len(base) :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                f.unlink()
        except OSError:
            pass  # alive (another user's process): leave it


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Open a temporary file beside ``path`` for binary writing; on success it is
    flushed, fsynced and renamed over ``path`` (``os.replace``). On any error the
    temporary file is removed and an existing ``path`` is left untouched, so a
    crash never leaves a half-written file that looks complete."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():  # else mkstemp's error names a hidden temporary file the user never asked for
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    _remove_stale_temps(path, folder)
    # the writer's pid in the name, so a later write can tell a killed writer's leftovers from a live one's
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:  # a named file: tifffile wants fh.name to be a path
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; the result should look like open() made it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not possible on every platform.
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_labels(
    path: str | os.PathLike,
    labels,
    *,
    pixel_size: tuple[float, float] | float | None = None,
    z_spacing: float | None = None,
    unit: str = "µm",
) -> Path:
    """Write ``labels`` as a zlib-compressed TIFF, atomically.

    2D ``(Y, X)`` or stacks ``(Z, Y, X)``; the smallest unsigned dtype that holds
    the values is used. Up to 65535 labels the file is an ImageJ hyperstack
    (Fiji opens it with its calibration); beyond that ImageJ cannot hold the
    values and a plain uint32 TIFF is written.

    The data go to a temporary file in the same folder, which is flushed, fsynced
    and then renamed over ``path`` (``os.replace``), so a crash never leaves a
    half-written file and never clobbers an existing good one.
    """
    path = Path(path)
    data = _label_dtype(np.asarray(labels))
    if data.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D (Y, X) or a stack (Z, Y, X), got shape {data.shape}")
    if pixel_size is not None and np.ndim(pixel_size) == 0:
        pixel_size = (float(pixel_size), float(pixel_size))
    # minisblack: a (Z, Y, 3) stack must never be mistaken for RGB.
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack"}
    imagej = data.dtype != np.uint32
    md: dict[str, Any] = {"axes": "ZYX" if data.ndim == 3 else "YX"}
    kwargs["metadata"] = md
    if imagej:
        if pixel_size is not None:
            md["unit"] = "um" if _norm_unit(unit) == "µm" else unit  # ImageJ wants ASCII
        if z_spacing is not None:
            md["spacing"] = float(z_spacing)
        kwargs["imagej"] = True
    if pixel_size is not None:
        py, px = (float(v) for v in pixel_size)
        if py <= 0 or px <= 0:
            raise ValueError(f"pixel_size must be > 0, got {pixel_size}")
        kwargs["resolution"] = (1.0 / px, 1.0 / py)
        if not imagej:
            kwargs["resolutionunit"] = "CENTIMETER"
            kwargs["resolution"] = (1e4 / px, 1e4 / py)  # µm -> pixels per cm
    with atomic_write(path) as fh:
        tifffile.imwrite(fh, data, **kwargs)
    return path
