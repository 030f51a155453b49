"""OME-Zarr (NGFF 0.4 and 0.5) images in, predictions out, one chunk file at a time.

Reading
-------
:func:`read_ome_zarr` opens the full-resolution level of an OME-Zarr image (the
first dataset of its first multiscale) lazily: nothing is read until a plane or
block is indexed. Singleton ``t`` / ``c`` axes are dropped; the pixel size and
slice spacing come from the level's ``scale`` transform, the unit from the axes.

Writing
-------
:func:`create_output` makes (or reopens, to resume) an OME-Zarr image for a
prediction: by default the NGFF labels layout inside the input container
(``image.zarr/labels/<name>``, listed in ``image.zarr/labels``), so
napari-ome-zarr and other viewers show it over the image. Each chunk file is
written to a temporary file and renamed into place (:class:`AtomicLocalStore`),
so a killed run leaves complete chunks or none, and :func:`chunk_done` tells a
rerun which ones it can skip. Empty chunks are written too, so "the file
exists" means "this chunk was predicted".

zarr (>= 3) is an optional dependency (``pip install napari-unet[zarr]``),
imported only here and only when needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .files import ImageMeta

__all__ = [
    "AtomicLocalStore",
    "ZarrView",
    "chunk_done",
    "create_output",
    "is_ome_zarr",
    "labels_of",
    "open_output",
    "read_ome_zarr",
]

ZARR_SUFFIXES = (".zarr", ".ome.zarr")
_AXIS_LETTER = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_UNITS_IN = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "angstrom": "Å", "meter": "m"}
_UNITS_OUT = {v: k for k, v in _UNITS_IN.items()} | {"um": "micrometer", "micron": "micrometer"}


def import_zarr(what: str = "OME-Zarr"):
    """The zarr module, or an ImportError that says how to get it."""
    try:
        import zarr
    except ImportError as err:
        raise ImportError(
            f"{what} needs the 'zarr' package (version 3 or newer): pip install 'napari-unet[zarr]'"
        ) from err
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ImportError(f"{what} needs zarr >= 3, found {zarr.__version__}: pip install -U 'zarr>=3'")
    return zarr


# ----------------------------------------------------------------------------- metadata


def _attrs(path: Path) -> tuple[dict, int] | None:
    """(attributes, zarr format) of the group at ``path``, read from its JSON (no zarr import), or None."""
    v3 = path / "zarr.json"
    if v3.is_file():
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(v3.read_text())
            return meta.get("attributes", {}) or {}, 3
        return None
    v2 = path / ".zattrs"
    if v2.is_file() or (path / ".zgroup").is_file():
        try:
            return (json.loads(v2.read_text()) if v2.is_file() else {}), 2
        except (OSError, ValueError):
            return None
    return None


def _ome(attrs: dict) -> dict:
    """NGFF 0.5 keeps its keys under ``ome``; 0.4 at the top level."""
    return attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs


def is_ome_zarr(path) -> bool:
    """True when ``path`` is a folder holding an OME-Zarr image (a ``multiscales`` group)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    if not p.is_dir():
        return False
    found = _attrs(p)
    return found is not None and bool(_ome(found[0]).get("multiscales"))


def labels_of(path) -> list[str]:
    """Names listed in the container's ``labels`` group (NGFF labels), those that exist."""
    found = _attrs(Path(path) / "labels")
    if found is None:
        return []
    names = _ome(found[0]).get("labels") or []
    return [n for n in names if is_ome_zarr(Path(path) / "labels" / n)]


def _scale_of(ms: dict, level: int) -> list[float] | None:
    scale = None
    for tr in ms["datasets"][level].get("coordinateTransformations", []) or []:
        if tr.get("type") == "scale" and "scale" in tr:
            scale = [float(v) for v in tr["scale"]]
    for tr in ms.get("coordinateTransformations", []) or []:  # a multiscale-wide scale multiplies
        if tr.get("type") == "scale" and "scale" in tr and scale is not None:
            scale = [a * float(b) for a, b in zip(scale, tr["scale"])]
    return scale


class ZarrView:
    """A lazy, picklable, read-only view of one zarr array with some axes fixed (singleton ``t``/``c``).

    Indexing reads only what is asked for. Pickling keeps the path, not the data, so a dask worker
    reopens the array from shared storage.
    """

    def __init__(self, path: str | os.PathLike, fixed: dict[int, int] | None = None):
        self.path = str(path)
        self.fixed = dict(fixed or {})
        self._arr = None
        arr = self.array
        self.dtype = np.dtype(arr.dtype)
        self.shape = tuple(s for i, s in enumerate(arr.shape) if i not in self.fixed)
        self.chunks = tuple(c for i, c in enumerate(arr.chunks) if i not in self.fixed)

    @property
    def array(self):
        if self._arr is None:
            self._arr = import_zarr().open_array(self.path, mode="r")
        return self._arr

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {"path": self.path, "fixed": self.fixed, "dtype": self.dtype, "shape": self.shape, "chunks": self.chunks}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._arr = None

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        full, it = [], iter(key)
        for i in range(self.ndim + len(self.fixed)):
            full.append(self.fixed[i] if i in self.fixed else next(it))
        return np.asarray(self.array[tuple(full)])

    def take(self, axis: int, index: int) -> ZarrView:
        """The view with one more axis fixed at ``index`` (e.g. one channel); reads nothing."""
        axis = axis % self.ndim
        free = [i for i in range(self.ndim + len(self.fixed)) if i not in self.fixed]
        n = self.shape[axis]
        if not -n <= index < n:
            raise ValueError(f"index {index} is out of range for an axis of {n}")
        return ZarrView(self.path, {**self.fixed, free[axis]: index % n})

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return f"ZarrView({self.path!r}, shape={self.shape}, dtype={self.dtype})"


def read_ome_zarr(path, *, level: int = 0) -> tuple[ZarrView, ImageMeta]:
    """Open an OME-Zarr image lazily: ``(view, ImageMeta)`` of its full-resolution level (``level=0``).

    Singleton ``t`` and ``c`` axes are dropped (``ImageMeta.axes`` has a letter per remaining axis:
    ``C`` channels, ``Z``, ``Y``, ``X``, ``T`` time). ``pixel_size`` and ``z_spacing`` come from the
    level's scale transform, ``unit`` from the ``x`` axis.
    """
    p = Path(path)
    found = _attrs(p)
    if found is None or not _ome(found[0]).get("multiscales"):
        raise ValueError(
            f"cannot read {p}: not an OME-Zarr image (no 'multiscales' in its zarr.json or .zattrs); give the "
            "image's top folder (e.g. image.zarr), or a labels image inside it (image.zarr/labels/<name>)"
        )
    ms = _ome(found[0])["multiscales"][0]
    axes = ms.get("axes") or [{"name": n} for n in "tczyx"[-len(ms["datasets"]) :]]
    axes = [{"name": a} if isinstance(a, str) else a for a in axes]
    if not 0 <= level < len(ms["datasets"]):
        raise ValueError(f"{p} has {len(ms['datasets'])} resolution levels; level {level} does not exist")
    arr_path = p / ms["datasets"][level]["path"]
    probe = import_zarr().open_array(str(arr_path), mode="r")
    if len(axes) != probe.ndim:
        raise ValueError(f"cannot read {p}: its metadata names {len(axes)} axes, the array has {probe.ndim}")
    names = [str(a.get("name", "")).lower() for a in axes]
    fixed = {i: 0 for i, n in enumerate(names) if n in ("t", "c") and probe.shape[i] == 1}
    view = ZarrView(arr_path, fixed)
    letters = "".join(_AXIS_LETTER.get(n, "Q") for i, n in enumerate(names) if i not in fixed)
    scale = _scale_of(ms, level)
    pixel_size = z = unit = None
    if scale is not None and len(scale) == len(names):
        by = dict(zip(names, scale))
        if "y" in by and "x" in by:
            pixel_size = (by["y"], by["x"])
        z = by.get("z")
        u = next((a.get("unit") for a in axes if str(a.get("name", "")).lower() == "x"), None)
        unit = _UNITS_IN.get(str(u).lower(), u) if u else None
    meta = ImageMeta(str(p), view.shape, str(view.dtype), letters, pixel_size, z, unit, lazy=True)
    return view, meta


# ----------------------------------------------------------------------------- writing


def _atomic_put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _atomic_store_class():
    import asyncio  # here: the reader imports this module, and only writing needs it

    zarr = import_zarr()
    from zarr.storage import LocalStore

    class _AtomicLocalStore(LocalStore):
        """A LocalStore whose every write is a temporary file renamed into place.

        zarr's LocalStore opens the chunk file and writes into it, so a process killed mid-write
        leaves a truncated chunk that a resumed run would take for a finished one.
        """

        async def set(self, key: str, value, byte_range=None) -> None:  # noqa: ARG002 - same signature
            if not self._is_open:
                await self._open()
            self._check_writable()
            await asyncio.to_thread(_atomic_put, self.root / key, value.to_bytes())

    _ = zarr
    return _AtomicLocalStore


_STORE_CLASS = None


def AtomicLocalStore(root, *, read_only: bool = False):  # noqa: N802 - a class for the caller
    """A zarr LocalStore at ``root`` that writes every key atomically (temporary file + rename)."""
    global _STORE_CLASS
    if _STORE_CLASS is None:
        _STORE_CLASS = _atomic_store_class()
    return _STORE_CLASS(str(root), read_only=read_only)


def _axes_meta(letters: str, unit: str | None) -> list[dict]:
    kind = {"C": "channel", "T": "time", "Z": "space", "Y": "space", "X": "space"}
    out = []
    unit_name = _UNITS_OUT.get(unit, unit) if unit else None
    for letter in letters:
        ax: dict[str, Any] = {"name": letter.lower(), "type": kind[letter]}
        if kind[letter] == "space" and unit_name:
            ax["unit"] = unit_name
        out.append(ax)
    return out


def _multiscales(letters: str, scale: tuple[float, ...], unit: str | None, name: str, version: str) -> dict:
    ms: dict[str, Any] = {
        "axes": _axes_meta(letters, unit),
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}
        ],
        "name": name,
    }
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def _wrap(attrs: dict, version: str) -> dict:
    return {"ome": {"version": version, **attrs}} if version == "0.5" else attrs


def open_output(path):
    """The array of a prediction written by :func:`create_output` (its level 0), for reading and writing."""
    zarr = import_zarr()
    return zarr.open_array(store=AtomicLocalStore(Path(path) / "0"), mode="r+")


def create_output(
    path,
    *,
    shape: tuple[int, ...],
    dtype,
    chunks: tuple[int, ...],
    axes: str,
    scale: tuple[float, ...] | None = None,
    unit: str | None = None,
    labels: bool = True,
    version: str = "0.5",
    provenance: dict | None = None,
):
    """Create the OME-Zarr image group ``path`` with one array (level ``0``), or reopen it to resume.

    ``axes`` has one letter per dimension (``C`` = the class axis of probabilities, ``Z``, ``Y``,
    ``X``). ``labels`` adds the NGFF ``image-label`` metadata; when ``path`` is ``<container>/labels/
    <name>`` the name is added to the container's ``labels`` list. ``version`` '0.5' writes zarr v3,
    '0.4' zarr v2 (match the input container's). ``provenance`` (model, kind, settings) is stored
    under ``napari-unet``; an existing output with other provenance, shape, dtype or chunks is refused,
    so a rerun never mixes two predictions.

    Returns the array (writes are atomic per chunk, every chunk is written even when empty).
    """
    zarr = import_zarr()
    if version not in ("0.4", "0.5"):
        raise ValueError(f"OME-Zarr version must be '0.4' or '0.5', got {version!r}")
    path = Path(path)
    dtype = np.dtype(dtype)
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    provenance = json.loads(json.dumps(provenance or {}))  # as it reads back
    scale = tuple(scale) if scale is not None else (1.0,) * len(shape)
    if is_ome_zarr(path):
        arr = open_output(path)
        found = _attrs(path)
        old = (found[0] if found else {}).get("napari-unet", {}) or {}
        have = (tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks))
        if have != (shape, dtype, chunks) or old != provenance:
            raise ValueError(
                f"{path} already holds another prediction (shape {have[0]}, {have[1]}, chunks {have[2]}, "
                f"{old.get('kind', '?')} of model {old.get('model', '?')!r}); delete it or write somewhere else"
            )
        return arr
    if path.exists() and any(path.iterdir()):
        raise ValueError(f"{path} exists and is not an OME-Zarr image; choose a new folder for the prediction")
    fmt = 3 if version == "0.5" else 2
    group_attrs: dict[str, Any] = {"multiscales": [_multiscales(axes, scale, unit, path.name, version)]}
    if labels:
        group_attrs["image-label"] = {"version": version} if version == "0.4" else {}
    group = zarr.open_group(store=AtomicLocalStore(path), mode="a", zarr_format=fmt)
    kw: dict[str, Any] = {}
    if fmt == 3:
        kw["dimension_names"] = [a.lower() for a in axes]
    arr = group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        config={"write_empty_chunks": True},
        **kw,
    )
    # metadata last: a group without it is an unfinished output, which create_output refuses to reuse
    group.attrs.update({**_wrap(group_attrs, version), "napari-unet": provenance})
    if labels and path.parent.name == "labels" and is_ome_zarr(path.parent.parent):
        lg = zarr.open_group(store=AtomicLocalStore(path.parent), mode="a", zarr_format=fmt)
        names = list(_ome(dict(lg.attrs)).get("labels") or [])
        if path.name not in names:
            names.append(path.name)
        lg.attrs.update(_wrap({"labels": names}, version))
    return arr


def chunk_done(arr, coords: tuple[int, ...]) -> bool:
    """True when chunk ``coords`` of ``arr`` (from :func:`create_output`) is on disk (written in full)."""
    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    return (Path(str(arr.store.root)) / arr.path / key).is_file()


def ome_version(path) -> str:
    """'0.5' for a zarr v3 container, else '0.4'."""
    found = _attrs(Path(path))
    return "0.5" if found is not None and found[1] == 3 else "0.4"
