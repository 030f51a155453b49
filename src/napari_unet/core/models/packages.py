"""bioimage.io model packages (spec 0.5) read back: ours exactly, other 2D U-Nets wrapped.

Packages are written by :mod:`napari_unet.core.export.bioimageio` (``export_package``).

Import (:func:`load_package`): our own packages give back the :class:`~napari_unet.core.network.unet.UNet` of
their attached ``.safetensors`` file. Other packages with ``pytorch_state_dict`` or ``torchscript`` weights, one 2D input of
one channel and one output of class scores are wrapped as a :class:`PackagedModel` that
:func:`~napari_unet.core.predict.tiles.iter_predict` tiles with the package's declared halo and pre/post-processing.
Anything else raises :class:`PackageError` saying what is not supported.

The trust rule: weights that carry no Python code load freely (our attached ``.safetensors``, and
``torchscript``, which torch runs itself). ``pytorch_state_dict`` weights need the package's
architecture source (``model.py``) to be imported, which runs whatever that file says: such a package
is refused with :class:`CodeNotTrusted` (the package, the code file and its sha256) unless the caller
passes ``trust_code=True`` (``--trust-code``; napari asks first). Only a file inside the package can be
trusted: an ``import_from`` architecture (any importable module: ``subprocess``, ``os``...) is refused
always. Every file a package uses is read within size bounds, from inside the package only, and
checked against its sha256 in rdf.yaml before use; rdf.yaml itself is parsed with aliases bounded.

``bioimageio.spec`` / ``bioimageio.core`` are an extra (``pip install napari-unet[bioimageio]``),
imported inside the functions: ``import napari_unet.core`` works without them. Nothing here needs a
network: every file of a package is local, and validation only checks local files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from ..network.unet import UNet
from .checkpoint import ModelInfo, load_file

__all__ = [
    "CONFIG_KEY",
    "CodeNotTrusted",
    "INSTALL_HINT",
    "PackageError",
    "PackagedModel",
    "RDF_NAMES",
    "TRUST_FLAG",
    "available",
    "load_package",
    "own_model_bytes",
    "own_model_file",
]

INSTALL_HINT = "pip install 'napari-unet[bioimageio]'"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari_unet"  # our block in the package's `config`


# Bounds read from the zip directory (or the file system) before a byte is read. The largest U-Net the
# model bounds allow is ~120 MB of float32 weights; zoo packages stay far below 512 MiB per file.
MAX_FILE_BYTES = 512 * 2**20  # any one file of a package
MAX_PACKAGE_BYTES = 2 * 2**30  # all files of a zip together (bioimageio.spec may unzip it whole)
MAX_RDF_BYTES = 4 * 2**20  # rdf.yaml: a few KB in practice
MAX_YAML_NODES = 200_000  # rdf.yaml's nodes with every alias expanded (a 'billion laughs' has 10**9)
TRUST_FLAG = "--trust-code"


class PackageError(ValueError):
    """A bioimage.io package napari-unet cannot use, or cannot write; the message says why."""


class CodeNotTrusted(PackageError):
    """A package whose weights need its Python code to be imported, which the caller did not trust.

    :attr:`package` is the package file, :attr:`code_file` the code's name inside it and :attr:`sha256`
    the code's hash (what a confirmation dialog shows).
    """

    def __init__(self, package: Path, code_file: str, sha256: str):
        self.package, self.code_file, self.sha256 = Path(package), code_file, sha256
        super().__init__(
            f"{self.package.name}: its weights need the Python code in {code_file} (sha256 {sha256}), which "
            f"runs with your rights when it is loaded; napari-unet runs a package's code only if you trust it: "
            f"pass {TRUST_FLAG} (napari asks first) if you trust who made this file"
        )


def available() -> bool:
    """Whether the bioimageio extra is installed."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    if not available():
        raise PackageError(f"bioimage.io packages need the bioimageio extra: {INSTALL_HINT}")


@contextlib.contextmanager
def _torchscript_ok():
    """torch >= 2.10 deprecates TorchScript; it is still the format deepImageJ and the zoo read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+. is deprecated", category=DeprecationWarning)
        yield


# ----------------------------------------------------------------------------- reading a package within bounds


def _yaml_loader():
    """A yaml SafeLoader that counts rdf.yaml's nodes with every alias expanded (and refuses a cycle)
    before building anything, so a 'billion laughs' file is refused after reading its few KB."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def construct_document(self, node):
            _count_nodes(node, {}, set())
            return super().construct_document(node)

    return BoundedLoader


def _count_nodes(node, sizes: dict, open_: set) -> int:
    """The node count of ``node`` with aliases expanded (``sizes`` memoises shared nodes)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise PackageError("rdf.yaml refers to itself through an alias (a cycle); not a model description")
    open_.add(key)
    value = node.value if isinstance(node.value, list) else []
    total = 1
    for child in value:
        for sub in child if isinstance(child, tuple) else (child,):
            total += _count_nodes(sub, sizes, open_)
            if total > MAX_YAML_NODES:
                raise PackageError(
                    f"rdf.yaml expands to more than {MAX_YAML_NODES} values through its aliases (a 'billion "
                    "laughs' file); not a model description"
                )
    open_.discard(key)
    sizes[key] = total
    return total


def _parse_rdf(text: bytes, name: str) -> dict:
    """rdf.yaml's mapping; PackageError for YAML that is broken, too large when expanded, or not a mapping."""
    import yaml

    try:
        rdf = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except PackageError as e:
        raise PackageError(f"{name}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise PackageError(f"{name}: its rdf.yaml is not valid YAML ({e})") from None
    if not isinstance(rdf, dict):
        raise PackageError(f"{name}: its rdf.yaml is not a mapping of fields (got {type(rdf).__name__})")
    return rdf


def _inside(path, package: str, what: str) -> str:
    """``path`` from rdf.yaml as a relative POSIX path inside the package; PackageError if it leaves it."""
    if not isinstance(path, str) or not path.strip():
        raise PackageError(f"{package}: {what} is not a file name ({path!r})")
    if "://" in path:
        raise PackageError(f"{package}: {what} {path!r} is a URL; napari-unet reads only files inside the package")
    p = PurePosixPath(path.replace("\\", "/"))
    parts = [s for s in p.parts if s not in ("", ".")]
    if p.is_absolute() or ":" in path.split("/")[0] or ".." in parts or not parts:
        raise PackageError(f"{package}: {what} {path!r} points outside the package; only files inside it are read")
    return "/".join(parts)


class _Package:
    """The files of a package (a zip, or the folder of an rdf.yaml), read within the bounds above, from
    inside the package only, each checked against the sha256 rdf.yaml gives for it."""

    def __init__(self, source: Path):
        self.source, self.name = source, source.name
        self.zip = source.suffix.lower() == ".zip"
        self.root = source.parent.resolve()
        if self.zip:
            self._entries = self._zip_directory()
            rdf = next((n for n in RDF_NAMES if n in self._entries), None)
            if rdf is None:  # not a package: load_package says so (after the extra's install hint)
                self.rdf = None
                return
            text = self._read_entry(rdf, MAX_RDF_BYTES, "rdf.yaml")
        else:
            text = self._read_path(source, MAX_RDF_BYTES, source.name)
        self.rdf = _parse_rdf(text, self.name)

    def _zip_directory(self) -> dict:
        """The zip's entries by name, every size checked against the bounds before any is read."""
        try:
            with zipfile.ZipFile(self.source) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise PackageError(f"{self.name} is not a readable zip file ({e})") from None
        total = 0
        for i in infos:
            limit = MAX_RDF_BYTES if i.filename in RDF_NAMES else MAX_FILE_BYTES
            if i.file_size > limit:
                raise PackageError(
                    f"{self.name}: {i.filename} unpacks to {i.file_size / 2**20:.0f} MiB, more than the "
                    f"{limit / 2**20:.0f} MiB napari-unet reads from a package file (a damaged or crafted zip)"
                )
            total += i.file_size
        if total > MAX_PACKAGE_BYTES:
            raise PackageError(
                f"{self.name} unpacks to {total / 2**30:.1f} GiB, more than {MAX_PACKAGE_BYTES / 2**30:.0f} GiB"
            )
        return {i.filename: i for i in infos}

    def _read_entry(self, name: str, limit: int, what: str) -> bytes:
        try:
            with zipfile.ZipFile(self.source) as z, z.open(self._entries[name]) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise PackageError(f"{self.name}: {what} cannot be read from the zip ({e})") from None
        if len(data) > limit:
            raise PackageError(f"{self.name}: {what} is larger than {limit / 2**20:.0f} MiB")
        return data

    def _read_path(self, f: Path, limit: int, what: str) -> bytes:
        real = f.resolve()
        if not real.is_relative_to(self.root):
            raise PackageError(f"{self.name}: {what} is a link to {real}, outside the package folder")
        if not real.is_file():
            raise PackageError(f"{self.name}: {what} is missing from the package")
        if real.stat().st_size > limit:
            raise PackageError(f"{self.name}: {what} is larger than {limit / 2**20:.0f} MiB")
        return real.read_bytes()

    def read(self, path, sha256, what: str) -> bytes:
        """The bytes of the package's file ``path`` (``what`` names its role), checked against ``sha256``."""
        rel = _inside(path, self.name, what)
        if self.zip:
            if rel not in self._entries:
                raise PackageError(f"{self.name}: {what} {rel} is missing from the zip")
            data = self._read_entry(rel, MAX_FILE_BYTES, rel)
        else:
            data = self._read_path(self.root / rel, MAX_FILE_BYTES, rel)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != str(sha256).lower():
            raise PackageError(
                f"{self.name}: {rel} does not match the sha256 rdf.yaml gives for it (the file was changed or "
                "swapped after the package was made); refusing to use it"
            )
        return data

    def check_paths(self) -> None:
        """PackageError for any file path in rdf.yaml that leaves the package (URLs are left to the fields
        napari-unet never reads)."""
        for what, path in _rdf_paths(self.rdf):
            if not (isinstance(path, str) and "://" in path):
                _inside(path, self.name, what)


def _rdf_paths(rdf: dict):
    """(field, path) of the files rdf.yaml names: weights, architecture, attachments, tensors, covers,
    documentation and our own ``config.napari_unet.file``."""
    weights = _field(rdf, "weights")
    for fmt, w in weights.items() if isinstance(weights, dict) else ():
        yield f"weights.{fmt}.source", _source(w)
        arch = _field(w, "architecture")
        if isinstance(arch, dict) and "source" in arch:
            yield f"weights.{fmt}.architecture.source", _source(arch)
    for key in ("attachments", "covers"):
        for a in _list(_field(rdf, key)):
            yield key, _source(a)
    for key in ("inputs", "outputs"):
        for t in _list(_field(rdf, key)):
            for tensor in ("test_tensor", "sample_tensor"):
                if _field(t, tensor) is not None:
                    yield f"{key}.{tensor}", _source(_field(t, tensor))
    if _field(rdf, "documentation") is not None:
        yield "documentation", _source(_field(rdf, "documentation"))
    entry = _own_entry(rdf)
    if entry is not None:
        yield f"config.{CONFIG_KEY}.file", entry


def _source(entry):
    """A file entry's path: ``{source: ..., sha256: ...}`` or the path itself."""
    return entry.get("source") if isinstance(entry, dict) else entry


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _field(d, key):
    return d.get(key) if isinstance(d, dict) else None


def _own_entry(rdf):
    """Our ``config.napari_unet.file`` (None: not a package napari-unet wrote)."""
    entry = _field(_field(_field(rdf, "config"), CONFIG_KEY), "file")
    return entry if entry not in (None, "") else None


def _listed_sha256(rdf: dict, rel: str) -> str | None:
    """The sha256 rdf.yaml's attachments give for the file ``rel``."""
    for a in _list(_field(rdf, "attachments")):
        src = _source(a)
        if isinstance(src, str) and "://" not in src and PurePosixPath(src.replace("\\", "/")).as_posix() == rel:
            return _field(a, "sha256")
    return None


# ----------------------------------------------------------------------------- import


def load_package(
    source: str | os.PathLike, *, device: str | torch.device = "cpu", trust_code: bool = False
) -> nn.Module:
    """A model from a bioimage.io package (``.zip`` or ``rdf.yaml``); see the module docstring.

    ``trust_code``: import the package's own architecture source when its weights need it; without it
    such a package raises :class:`CodeNotTrusted` before any of its code runs.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no bioimage.io package at {source}")
    package = _Package(source)
    package.check_paths()
    own = _load_own(package, device)  # our own export needs no bioimageio: zip + YAML + the attached file
    if own is not None:
        return own
    _require()
    if package.rdf is None:
        raise PackageError(f"{source.name}: no rdf.yaml in this zip; not a bioimage.io package")
    from bioimageio.spec import InvalidDescr, load_model_description
    from bioimageio.spec.model import v0_4, v0_5

    try:
        descr = load_model_description(source, perform_io_checks=False)
    except Exception as e:
        raise PackageError(f"{source.name}: cannot read this bioimage.io package ({e})") from e
    if isinstance(descr, InvalidDescr):
        raise PackageError(f"{source.name} is not a valid bioimage.io model: {descr.validation_summary}")
    if isinstance(descr, v0_4.ModelDescr):
        raise PackageError(
            f"{source.name} uses the old model spec {descr.format_version}; napari-unet reads spec 0.5 "
            "(update it with `bioimageio update-format`)"
        )
    assert isinstance(descr, v0_5.ModelDescr)
    name = source.stem if source.suffix.lower() == ".zip" else descr.name
    return PackagedModel.from_descr(descr, name=name, source=source, trust_code=trust_code).to(device)


def own_model_bytes(source: str | os.PathLike) -> tuple[str, bytes] | None:
    """Our own export: (file name, bytes) of the attached napari-unet model file; None for a foreign package.

    Reads the package's ``config.napari_unet.file`` entry with plain zip + YAML (no bioimageio needed),
    within the package's bounds, and checks the file against the sha256 rdf.yaml's attachments give.
    """
    return _own_bytes(_Package(Path(source)))


def _own_bytes(package: _Package) -> tuple[str, bytes] | None:
    entry = _own_entry(package.rdf)
    if entry is None:
        return None
    what = f"config.{CONFIG_KEY}.file"
    rel = _inside(entry, package.name, what)
    sha = _listed_sha256(package.rdf, rel)
    if sha is None:
        raise PackageError(
            f"{package.name}: {rel} (its napari-unet model) is not among the attachments with a sha256 in "
            "rdf.yaml, so it cannot be checked; export the model again"
        )
    return PurePosixPath(rel).name, package.read(rel, sha, what)


@contextlib.contextmanager
def own_model_file(source: str | os.PathLike):
    """The napari-unet model file attached to package ``source``, written to a temporary folder for the
    ``with`` block (None: the package has none)."""
    own = own_model_bytes(source)
    if own is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as t:
        f = Path(t) / own[0]
        f.write_bytes(own[1])
        yield f


def _load_own(package: _Package, device) -> UNet | None:
    own = _own_bytes(package)
    if own is None:
        return None
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as t:
        f = Path(t) / own[0]
        f.write_bytes(own[1])
        return load_file(f, device=device)  # reads every tensor: the file may go


@dataclass(frozen=True)
class _PackagedConfig:
    """The part of :class:`~.model.UNetConfig` the tiler reads (base_channels: a guess for the memory budget)."""

    n_classes: int
    depth: int
    in_channels: int = 1
    base_channels: int = 32
    padding: str = "same"


_SUPPORTED_PRE = ("scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_linear")
_SUPPORTED_POST = ("softmax", "sigmoid")


class PackagedModel(nn.Module):
    """A foreign bioimage.io network made to look like a padded U-Net to :func:`~.tiling.iter_predict`.

    ``forward`` takes a (B, 1, Y, X) tile already normalised as the package says (the
    ``normalization`` of :attr:`info`, applied per whole 2D plane, so tiles agree), mirror-pads it to
    a size the package accepts, runs it in the package's axis order, crops back and returns class
    scores (B, C, Y, X) whose softmax is the package's probabilities (a one-channel output becomes
    background / foreground). :attr:`context` is the declared halo (or the margin a valid network
    consumes), which the tiler crops from every tile.
    """

    def __init__(
        self,
        net,
        *,
        in_axes,
        out_axes,
        min_size,
        step,
        offset,
        context,
        post,
        probabilities,
        classes,
    ):
        super().__init__()
        self.net = net
        self.in_axes, self.out_axes = in_axes, out_axes
        self.min_size, self.step, self.offset = min_size, step, offset
        self.context = context
        self.post = post  # None, 'softmax' or 'sigmoid'
        self.probabilities = probabilities  # no postprocessing, and the output's data range is [0, 1]
        # what the tiler reads: a 'same' network on this 2**depth grid, one input channel, these classes
        self.config = _PackagedConfig(n_classes=len(classes), depth=max(0, int(step).bit_length() - 1))
        self.info = None

    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def n_classes(self) -> int:
        return self.config.n_classes

    @property
    def padding(self) -> str:
        return "same"

    def margin(self) -> int:
        return 0

    def output_size(self, size: int) -> int:
        return size

    @classmethod
    def from_descr(cls, descr, *, name: str, source: str | os.PathLike, trust_code: bool = False) -> PackagedModel:
        """The network of the spec 0.5 model description ``descr`` of the package at ``source`` (its files
        read and checked by napari-unet, code only with ``trust_code``); PackageError says what
        napari-unet cannot run."""
        what = f"bioimage.io model {descr.name!r}"
        if len(descr.inputs) != 1 or len(descr.outputs) != 1:
            raise PackageError(
                f"{what} has {len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); napari-unet runs "
                "models with one 2D image in and one map of class scores out"
            )
        inp, out = descr.inputs[0], descr.outputs[0]
        _check_axes(inp, out, what)
        min_size, step = _input_grid(inp, what)
        offset, context = _output_context(out, step, what)
        classes, post = _output_classes(out, what)
        info = ModelInfo(
            model={"depth": max(1, step.bit_length() - 1), "padding": "same", "n_classes": len(classes)},
            classes=classes,
            normalization=_normalization(inp.preprocessing, what),
            name=name,
            description=(descr.description or "")[:300],
            format="bioimageio-foreign",
        )
        m = cls(
            _load_net(_Package(Path(source)), what, trust_code),
            in_axes=[str(a.id) for a in inp.axes],
            out_axes=[str(a.id) for a in out.axes],
            min_size=min_size,
            step=step,
            offset=offset,
            context=context,
            post=post,
            probabilities=tuple(getattr(out.data, "range", (None, None)) or (None, None)) == (0.0, 1.0),
            classes=classes,
        )
        m.info = info
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "batch" not in self.in_axes and x.shape[0] > 1:  # a package without a batch axis: one tile at a time
            return torch.cat([self(x[i : i + 1]) for i in range(x.shape[0])])
        h, w = x.shape[-2:]
        # The smallest input the package accepts whose output covers the tile. The tile stays where it is
        # (the pooling grid keeps its phase, so tiles agree with each other): what a valid network loses
        # is mirrored in before it, the rest of the accepted size after it.
        lead = -self.offset // 2
        pads = []
        for s in (h, w):
            n = max(self.min_size, s - self.offset)
            n = self.min_size + -(-(n - self.min_size) // self.step) * self.step
            pads.append((lead, n - s - lead))
        (t, b), (le, r) = pads
        if t or b or le or r:
            x = nn.functional.pad(x, (le, r, t, b), mode="reflect")
        y = self.net(_to_axes(x, self.in_axes))
        y = _from_axes(y, self.out_axes).float()[..., :h, :w]
        # the network's raw output: logits when the package applies sigmoid / softmax as postprocessing,
        # else probabilities where its data range says [0, 1], else logits
        if self.post is None and self.probabilities:
            p = y.clamp(1e-7, 1 - 1e-7)
            if y.shape[1] == 1:
                return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
            return torch.log(p)
        if y.shape[1] == 1:  # one foreground logit -> background / foreground scores: softmax = sigmoid
            return torch.cat([torch.zeros_like(y), y], dim=1)
        if self.post == "sigmoid":  # independent channels: their sigmoids, renormalised by the softmax
            return nn.functional.logsigmoid(y)
        return y


def _check_axes(inp, out, what: str) -> None:
    """PackageError unless the input is 2D (y, x with optional batch and one channel) and so is the output."""
    in_axes = [str(a.id) for a in inp.axes]
    out_axes = [str(a.id) for a in out.axes]
    spatial = [a for a in inp.axes if a.type == "space"]
    if sorted(str(a.id) for a in spatial) != ["x", "y"] or any(
        a.type not in ("batch", "channel", "space") for a in inp.axes
    ):
        raise PackageError(
            f"{what}: its input axes are {in_axes}; napari-unet runs 2D models (axes y, x with optional "
            "batch and channel), not 3D or time series"
        )
    ch = [a for a in inp.axes if a.type == "channel"]
    if ch and len(ch[0].channel_names) != 1:
        raise PackageError(
            f"{what} takes {len(ch[0].channel_names)} input channels; napari-unet runs single-channel models"
        )
    if sorted(str(a.id) for a in out.axes if a.type == "space") != ["x", "y"] or any(
        a.type not in ("batch", "channel", "space") for a in out.axes
    ):
        raise PackageError(f"{what}: its output axes are {out_axes}; napari-unet needs a 2D (y, x) output")


def _input_grid(inp, what: str) -> tuple[int, int]:
    """(min, step) of the input's y and x sizes: a parameterized size, the same for both, on a 2**n grid."""
    from bioimageio.spec.model import v0_5 as bio

    spatial = [a for a in inp.axes if a.type == "space"]
    ys = next(a for a in spatial if str(a.id) == "y").size
    xs = next(a for a in spatial if str(a.id) == "x").size
    if not (isinstance(ys, bio.ParameterizedSize) and isinstance(xs, bio.ParameterizedSize)):
        raise PackageError(
            f"{what} takes a fixed input size ({ys}, {xs}); napari-unet's overlap-tile prediction needs "
            "a parameterized size (min + k * step)"
        )
    if (ys.min, ys.step) != (xs.min, xs.step):
        raise PackageError(f"{what}: y and x have different valid sizes; napari-unet tiles square grids")
    step = int(ys.step) or 1
    if step & (step - 1):
        raise PackageError(f"{what}: input step {step} is not a power of two; napari-unet tiles on a 2**n grid")
    return int(ys.min), step


def _output_context(out, step: int, what: str) -> tuple[int, int]:
    """(offset, context) of the output's y and x: its size minus the input's (<= 0, even) and the context
    the tiler mirrors and crops (the halo, or what a valid network loses, on the 2**n grid)."""
    from bioimageio.spec.model import v0_5 as bio

    halo, offset = 0, 0
    for a in out.axes:
        if a.type != "space":
            continue
        h = int(getattr(a, "halo", 0) or 0)
        size = a.size
        off = int(getattr(size, "offset", 0) or 0) if isinstance(size, bio.SizeReference) else None
        if off is None:
            raise PackageError(f"{what}: output axis {a.id} is not sized relative to the input; not supported")
        if getattr(a, "scale", 1.0) != 1.0 or getattr(size, "axis_id", a.id) != a.id:
            raise PackageError(f"{what}: output axis {a.id} is rescaled; napari-unet needs output = input grid")
        halo, offset = max(halo, h), off
    if offset > 0 or offset % 2:
        raise PackageError(f"{what}: output is {offset} px larger than its input; not supported")
    need = max(halo, -offset // 2)
    return offset, -(-need // step) * step if need else 0


def _output_classes(out, what: str) -> tuple[list[str], str | None]:
    """The output's class names (one channel: background and it) and its postprocessing (None, 'softmax'
    or 'sigmoid')."""
    n_out = [a for a in out.axes if a.type == "channel"]
    classes = [str(c) for c in n_out[0].channel_names] if n_out else ["foreground"]
    post_ops = [p.id for p in out.postprocessing if p.id != "ensure_dtype"]
    if any(p not in _SUPPORTED_POST for p in post_ops) or len(post_ops) > 1:
        raise PackageError(
            f"{what}: postprocessing {post_ops} is not supported; napari-unet reads class scores "
            f"(no postprocessing, {' or '.join(_SUPPORTED_POST)})"
        )
    if len(classes) == 1:
        classes = ["background", classes[0]]
    return classes, post_ops[0] if post_ops else None


def _to_axes(x: torch.Tensor, axes: list[str]) -> torch.Tensor:
    """(B, C, Y, X) -> the package's input axis order (axes it lacks are dropped)."""
    ours = {"batch": 0, "channel": 1, "y": 2, "x": 3}
    x = x.permute(*[ours[a] for a in axes if a in ours], *[ours[a] for a in ours if a not in axes])
    for _ in range(4 - len(axes)):
        x = x.squeeze(-1)
    return x


def _from_axes(y: torch.Tensor, axes: list[str]) -> torch.Tensor:
    """The package's output axis order -> (B, C, Y, X) (a missing batch or channel axis added)."""
    have = list(axes)
    for a in ("batch", "channel"):
        if a not in have:
            y = y.unsqueeze(-1)
            have.append(a)
    return y.permute(*[have.index(a) for a in ("batch", "channel", "y", "x")])


def _normalization(preprocessing, what: str) -> dict:
    """The package's input preprocessing as napari-unet's per-plane normalisation (core/intensity.py)."""
    ops = [p for p in preprocessing if p.id != "ensure_dtype"]
    if not ops:
        return {"method": "none"}
    if len(ops) > 1 or ops[0].id not in _SUPPORTED_PRE:
        raise PackageError(
            f"{what}: preprocessing {[p.id for p in ops]} is not supported; napari-unet applies one of "
            f"{', '.join(_SUPPORTED_PRE)} (per 2D plane)"
        )
    op = ops[0]
    k = op.kwargs
    axes = getattr(k, "axes", None)
    # per 2D plane: y and x, with or without batch and the one channel (None = all axes jointly)
    if axes is not None and not {"x", "y"} <= {str(a) for a in axes} <= {"batch", "channel", "x", "y"}:
        raise PackageError(f"{what}: {op.id} over axes {[str(a) for a in axes]}; napari-unet normalises 2D planes")
    if op.id == "scale_range":
        return {"method": "percentile", "low": float(k.min_percentile), "high": float(k.max_percentile), "eps": k.eps}
    if op.id == "zero_mean_unit_variance":
        return {"method": "mean_std", "eps": float(k.eps)}
    if op.id == "fixed_zero_mean_unit_variance":
        if not isinstance(k.mean, (int, float)):
            raise PackageError(f"{what}: per-channel fixed mean/std is not supported")
        return {"method": "affine", "lo": float(k.mean), "scale": 1.0 / float(k.std)}
    gain, offset = k.gain, k.offset
    if not isinstance(gain, (int, float)) or not isinstance(offset, (int, float)):
        raise PackageError(f"{what}: per-channel scale_linear is not supported")
    # x * gain + offset == (x - (-offset / gain)) * gain
    return {"method": "affine", "lo": -float(offset) / float(gain), "scale": float(gain)}


def _architecture_code(package: _Package, sd, trust_code: bool) -> tuple[bytes, str, str, dict]:
    """(code, its file, callable, kwargs) of a pytorch_state_dict architecture: a file inside the package,
    matching its sha256, and trusted; PackageError / :class:`CodeNotTrusted` otherwise."""
    arch = _field(sd, "architecture")
    if isinstance(arch, dict) and "import_from" in arch:
        raise PackageError(
            f"{package.name}: its architecture is imported from {str(arch['import_from'])!r}, code outside the "
            f"package; napari-unet runs only code shipped inside a package (with {TRUST_FLAG}), never an "
            "importable module"
        )
    if not isinstance(arch, dict) or not isinstance(arch.get("callable"), str):
        raise PackageError(
            f"{package.name}: its pytorch_state_dict weights name no architecture (a source file and a callable)"
        )
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise PackageError(f"{package.name}: the architecture's kwargs are not a mapping ({kwargs!r})")
    rel = _inside(arch.get("source"), package.name, "the architecture source")
    code = package.read(rel, arch.get("sha256"), "the architecture source")
    if not trust_code:
        raise CodeNotTrusted(package.source, rel, hashlib.sha256(code).hexdigest())
    return code, rel, arch["callable"], kwargs


def _import_callable(code: bytes, rel: str, name: str):
    """``name`` from the package's (trusted, checked) source ``code``: these very bytes are executed."""
    module_name = f"napari_unet_package_{hashlib.sha256(code).hexdigest()[:16]}"
    module = types.ModuleType(module_name)
    module.__file__ = rel
    sys.modules[module_name] = module  # dataclasses and pickling look the module up
    try:
        exec(compile(code, rel, "exec"), module.__dict__)  # noqa: S102 (trusted by the caller)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    c = getattr(module, name, None)
    if not callable(c):
        raise PackageError(f"{rel} has no callable {name!r}")
    return c


def _check_tensors(tensors, targets: dict, what: str) -> None:
    """PackageError for weights that hold NaN / inf, or that are not floats where the network holds
    floats (``targets``: the network's own tensors by name; an int8 or bool tensor would be cast)."""
    for key, t in tensors:
        if not isinstance(t, torch.Tensor):
            raise PackageError(f"{what}: {key} is not a tensor")
        target = targets.get(key, t)
        if target.is_floating_point() and not t.is_floating_point():
            raise PackageError(f"{what}: {key} holds {t.dtype} values where the network needs floats")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PackageError(f"{what}: {key} holds NaN or inf values; the weights are damaged")


def _load_net(package: _Package, what: str, trust_code: bool) -> nn.Module:
    """The package's network: torchscript first (no Python code), else the trusted state dict."""
    w = _field(package.rdf, "weights") if isinstance(_field(package.rdf, "weights"), dict) else {}
    errors = []
    if w.get("torchscript") is not None:
        ts = w["torchscript"]
        data = package.read(_field(ts, "source"), _field(ts, "sha256"), "the torchscript weights")
        try:
            with _torchscript_ok():
                net = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        except Exception as e:  # fall back to the state dict
            errors.append(f"torchscript: {e}")
        else:
            tensors = [*net.named_parameters(), *net.named_buffers()]
            floats = {k: torch.zeros(()) for k, _ in net.named_parameters()}
            _check_tensors(tensors, floats, f"{package.name}: {_source(ts)}")
            return net
    if w.get("pytorch_state_dict") is not None:
        sd = w["pytorch_state_dict"]
        code, rel, name, kwargs = _architecture_code(package, sd, trust_code)
        data = package.read(_field(sd, "source"), _field(sd, "sha256"), "the pytorch_state_dict weights")
        try:  # weights_only: no pickled code
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise PackageError(f"{what}: its pytorch_state_dict weights are not a torch state dict ({e})") from e
        if not isinstance(state, dict):
            raise PackageError(f"{what}: its pytorch_state_dict weights are not a mapping of tensors")
        label = f"{package.name}: {_source(sd)}"
        _check_tensors(state.items(), {}, label)  # NaN / inf: refused before the code runs
        try:
            net = _import_callable(code, rel, name)(**kwargs)
            _check_tensors(state.items(), net.state_dict(), label)
            net.load_state_dict(state, strict=bool(sd.get("strict", True)))
            return net.eval()
        except PackageError:
            raise
        except Exception as e:
            errors.append(f"pytorch_state_dict: {e}")
    if errors:
        raise PackageError(f"{what}: its weights do not load ({'; '.join(errors)})")
    have = [k for k, v in w.items() if v is not None]
    raise PackageError(
        f"{what} has weights {have}; napari-unet runs pytorch_state_dict or torchscript weights "
        "(bioimageio.core can convert some formats: `bioimageio predict` runs the others)"
    )
