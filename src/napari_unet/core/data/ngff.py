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
import hashlib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .files import ImageMeta

__all__ = [
    "AtomicLocalStore",
    "ZarrView",
    "array_fingerprint",
    "chunk_done",
    "count_chunk_files",
    "create_output",
    "is_ome_zarr",
    "labels_of",
    "open_output",
    "read_ome_zarr",
    "remove_output",
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
        meta = _json_object(v3)
        attrs = meta.get("attributes") if meta is not None else None
        return (attrs or {}, 3) if attrs is None or isinstance(attrs, dict) else None
    v2 = path / ".zattrs"
    if v2.is_file() or (path / ".zgroup").is_file():
        attrs = _json_object(v2) if v2.is_file() else {}
        return None if attrs is None else (attrs, 2)
    return None


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is unreadable, no JSON or no object."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) else None


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


def _multiscale(attrs: dict, path: Path) -> dict:
    """The first multiscale of an OME-Zarr's attributes, checked: a ValueError naming ``path`` and what is wrong."""
    found = _ome(attrs).get("multiscales")
    where = f"cannot read {path}: its 'multiscales' metadata"
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise ValueError(f"{where} must be a list of multiscale objects (NGFF), got {_short(found)}")
    ms = found[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise ValueError(f"{where} has no 'datasets' list (one entry per resolution level), got {_short(datasets)}")
    for d in datasets:
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"].strip("/."):
            raise ValueError(f"{where}: every dataset needs a 'path' naming its array, got {_short(d)}")
        if d["path"].startswith("/") or ".." in Path(d["path"]).parts:
            raise ValueError(f"{where}: a dataset's path must name an array inside the image, got {d['path']!r}")
    axes = ms.get("axes")
    if axes is not None and (not isinstance(axes, list) or not all(isinstance(a, (str, dict)) for a in axes)):
        raise ValueError(f"{where}: 'axes' must be a list of names or objects, got {_short(axes)}")
    return ms


def _short(value, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _scale_of(ms: dict, level: int) -> list | None:
    """The level's 'scale' transform (times a multiscale-wide one), as written: :func:`_physical` checks it."""
    scale = None
    for tr in _transforms(ms["datasets"][level]):
        if tr.get("type") == "scale" and isinstance(tr.get("scale"), list):
            scale = list(tr["scale"])
    for tr in _transforms(ms):  # a multiscale-wide scale multiplies
        if tr.get("type") == "scale" and isinstance(tr.get("scale"), list) and scale is not None:
            scale = [_times(a, b) for a, b in zip(scale, tr["scale"])]
    return scale


def _transforms(node: dict) -> list[dict]:
    found = node.get("coordinateTransformations")
    return [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []


def _times(a, b):
    try:
        return float(a) * float(b)
    except (TypeError, ValueError):
        return None


def _physical(value, path: Path, axis: str) -> float | None:
    """A scale value as a pixel size: positive and finite, else None with a warning.

    A size of 0, below 0, NaN or infinite describes no pixel, and copying it into the prediction's metadata
    would make the output unreadable for viewers; the pixels themselves are fine, so the image is still
    predicted and the output says 1 (unknown) on that axis.
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if math.isfinite(v) and v > 0:
        return v
    warnings.warn(
        f"{path}: the scale of axis {axis!r} is {value!r}, not a positive size; it is ignored (1 in outputs)",
        stacklevel=3,
    )
    return None


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
            self._arr = _open_array(Path(self.path))
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
        try:
            return np.asarray(self.array[tuple(full)])
        except (RuntimeError, ValueError, TypeError) as err:  # a codec's error, a chunk of the wrong size
            raise ValueError(
                f"cannot read the zarr array {self.path} (at {_short(tuple(full))}): {type(err).__name__}: {err}; "
                "a chunk file is damaged or does not match the array's metadata (zarr.json / .zarray)"
            ) from err

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
    level's scale transform (a size that is not positive and finite is ignored, with a warning),
    ``unit`` from the ``x`` axis. Metadata that is no NGFF multiscale is a ValueError naming the file.
    """
    p = Path(path)
    found = _attrs(p)
    if found is None or not _ome(found[0]).get("multiscales"):
        raise ValueError(
            f"cannot read {p}: not an OME-Zarr image (no 'multiscales' in its zarr.json or .zattrs); give the "
            "image's top folder (e.g. image.zarr), or a labels image inside it (image.zarr/labels/<name>)"
        )
    ms = _multiscale(found[0], p)
    axes = ms.get("axes") or [{"name": n} for n in "tczyx"[-len(ms["datasets"]) :]]
    axes = [{"name": a} if isinstance(a, str) else a for a in axes]
    if not 0 <= level < len(ms["datasets"]):
        raise ValueError(f"{p} has {len(ms['datasets'])} resolution levels; level {level} does not exist")
    arr_path = p / ms["datasets"][level]["path"]
    probe = _open_array(arr_path)
    if len(axes) != probe.ndim:
        raise ValueError(f"cannot read {p}: its metadata names {len(axes)} axes, the array has {probe.ndim}")
    names = [str(a.get("name", "")).lower() for a in axes]
    fixed = {i: 0 for i, n in enumerate(names) if n in ("t", "c") and probe.shape[i] == 1}
    view = ZarrView(arr_path, fixed)
    letters = "".join(_AXIS_LETTER.get(n, "Q") for i, n in enumerate(names) if i not in fixed)
    pixel_size, z, unit = _calibration(_scale_of(ms, level), names, axes, p)
    meta = ImageMeta(str(p), view.shape, str(view.dtype), letters, pixel_size, z, unit, lazy=True)
    return view, meta


def _calibration(scale, names: list[str], axes: list[dict], path: Path) -> tuple:
    """(pixel size (y, x) or None, z spacing or None, unit or None) of a level's ``scale``."""
    pixel_size = z = unit = None
    if scale is not None and len(scale) == len(names):
        by = dict(zip(names, scale))
        if "y" in by and "x" in by:
            yx = (_physical(by["y"], path, "y"), _physical(by["x"], path, "x"))
            pixel_size = yx if None not in yx else None
        z = _physical(by["z"], path, "z") if "z" in by else None
        u = next((a.get("unit") for a in axes if str(a.get("name", "")).lower() == "x"), None)
        unit = _UNITS_IN.get(str(u).lower(), u) if isinstance(u, str) and u else None
    return pixel_size, z, unit


def _open_array(path: Path, mode: str = "r"):
    """The zarr array at ``path``; metadata zarr cannot read is a ValueError naming the array."""
    zarr = import_zarr()
    try:
        return zarr.open_array(str(path), mode=mode)
    except (ValueError, TypeError, KeyError, AttributeError, FileNotFoundError, RecursionError) as err:
        raise ValueError(f"cannot open the zarr array {path}: {type(err).__name__}: {err}") from err


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
        have = {"shape": tuple(arr.shape), "dtype": str(np.dtype(arr.dtype)), "chunks": tuple(arr.chunks)}
        changes = _changes(
            {**have, **_flat(old)}, {"shape": shape, "dtype": str(dtype), "chunks": chunks, **_flat(provenance)}
        )
        if changes:
            raise ValueError(
                f"{path} already holds another prediction, and resuming it would mix two results: "
                f"{'; '.join(changes)}. To start over, delete {path} (or write somewhere else, e.g. another -o); "
                "to resume, run it with the same model, settings and input"
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


def _flat(d: dict, prefix: str = "") -> dict:
    """``{'a': {'b': 1}}`` as ``{'a.b': 1}``: each setting on its own line of a message."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _changes(have: dict, want: dict) -> list[str]:
    """'key: recorded -> now' for each entry that differs (lists and tuples alike)."""
    norm = json.loads(json.dumps({"have": have, "want": want}, default=str))
    old, new = norm["have"], norm["want"]
    return [
        f"{k} was {_short(old.get(k, 'not recorded'), 40)}, now {_short(new.get(k, 'not recorded'), 40)}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def remove_output(path) -> None:
    """Delete the prediction ``path`` made by :func:`create_output` and its entry in a container's labels list."""
    import shutil

    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    labels = path.parent
    found = _attrs(labels) if labels.name == "labels" else None
    if found is None:
        return
    names = list(_ome(found[0]).get("labels") or [])
    if path.name in names:
        names.remove(path.name)
        zarr = import_zarr()
        lg = zarr.open_group(store=AtomicLocalStore(labels), mode="a", zarr_format=found[1])
        lg.attrs.update(_wrap({"labels": names}, "0.5" if found[1] == 3 else "0.4"))


def chunk_done(arr, coords: tuple[int, ...]) -> bool:
    """True when chunk ``coords`` of ``arr`` (from :func:`create_output`) is on disk (written in full)."""
    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    return (Path(str(arr.store.root)) / arr.path / key).is_file()


# ----------------------------------------------------------------------------- identity

INPUT_HASH_BYTES = 1 << 30  # chunk files up to this total are hashed in full, beyond it a sample
SAMPLED_CHUNKS = 256
_META_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def array_fingerprint(path) -> dict:
    """What identifies the pixels of the zarr array at ``path``, from its files (nothing is decoded).

    The array's metadata file (shape, dtype, chunks, codecs: sha256 of zarr.json or .zarray), the number
    and total size of its chunk files, a sha256 of their names and sizes, and a sha256 of their bytes: of
    every chunk file while they total at most :data:`INPUT_HASH_BYTES` (1 GiB: ~1 s at the ~1 GB/s that
    sha256 reads), else of :data:`SAMPLED_CHUNKS` files spread over the sorted list. A resumed prediction
    compares it with the one recorded in its output: a changed chunk is found in full mode always, in
    sampled mode when the change alters a compressed file's size or a sampled file.
    """
    root = Path(path)
    meta = next((root / f for f in ("zarr.json", ".zarray") if (root / f).is_file()), None)
    files = _chunk_files(root)
    listing = hashlib.sha256()
    for rel, size in files:
        listing.update(f"{rel}\0{size}\n".encode())
    total = sum(size for _, size in files)
    chosen = files
    if total > INPUT_HASH_BYTES and len(files) > SAMPLED_CHUNKS:
        chosen = [files[i * len(files) // SAMPLED_CHUNKS] for i in range(SAMPLED_CHUNKS)]
    content = hashlib.sha256()
    for rel, _ in chosen:
        content.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                content.update(piece)
    return {
        "metadata_sha256": hashlib.sha256(meta.read_bytes()).hexdigest() if meta is not None else None,
        "chunk_files": len(files),
        "chunk_bytes": total,
        "listing_sha256": listing.hexdigest(),
        "chunks_sha256": content.hexdigest(),
        "chunks_hashed": "all" if chosen is files else len(chosen),
    }


def _chunk_files(root: Path) -> list[tuple[str, int]]:
    """(path relative to ``root``, size) of every chunk file of the array at ``root``, sorted."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            if name in _META_FILES or name.startswith("."):  # metadata, and unfinished atomic writes
                continue
            full = Path(folder) / name
            out.append((full.relative_to(root).as_posix(), full.stat().st_size))
    return sorted(out)


def count_chunk_files(path) -> int:
    """How many chunk files the zarr array at ``path`` holds on disk."""
    return len(_chunk_files(Path(path)))


def ome_version(path) -> str:
    """'0.5' for a zarr v3 container, else '0.4'."""
    found = _attrs(Path(path))
    return "0.5" if found is not None and found[1] == 3 else "0.4"
