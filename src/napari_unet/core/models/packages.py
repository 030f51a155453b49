"""bioimage.io model packages (spec 0.5): export our models, import ours and other 2D U-Nets.

Export (:func:`export_package`) writes a zip that bioimageio.core, deepImageJ, ilastik and the
BioImage Model Zoo run without napari-unet:

* the network is :class:`~.model.MirroredUNet` (the U-Net that mirrors its margin of context in,
  so its output is as large as its input), as ``pytorch_state_dict`` with ``model.py`` itself as the
  architecture source (it imports only torch) and as ``torchscript``;
* input axes ``batch, channel, y, x`` with the valid sizes (minimum + step of the ``2**depth`` grid);
  output axes with ``halo`` = the mirrored context, the part of a tile a tiling tool crops;
* preprocessing ``scale_range`` at the model's percentiles per 2D plane (core/intensity.py),
  postprocessing ``softmax`` over the classes;
* a test input cropped from real data and the output napari-unet predicts for it (the reference
  ``bioimageio test`` checks), a cover (image | prediction overlay), the model card with the training
  recipe, the U-Net paper and the data's citations;
* the model's own ``.safetensors`` file as an attachment: importing our own package loads it, so the
  round trip is exact (same weights, same header, same labels).

Import (:func:`load_package`): our own packages give back the :class:`~.model.UNet` of that
attachment. Other packages with ``pytorch_state_dict`` or ``torchscript`` weights, one 2D input of
one channel and one output of class scores are wrapped as a :class:`PackagedModel` that
:func:`~.tiling.iter_predict` tiles with the package's declared halo and pre/post-processing.
Anything else raises :class:`PackageError` saying what is not supported.

``bioimageio.spec`` / ``bioimageio.core`` are an extra (``pip install napari-unet[bioimageio]``),
imported inside the functions: ``import napari_unet.core`` works without them. Nothing here needs a
network: every file of a package is local, and validation only checks local files.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..network.unet import UNet
from .checkpoint import ModelInfo, load_file

__all__ = [
    "CONFIG_KEY",
    "INSTALL_HINT",
    "PackageError",
    "PackagedModel",
    "RDF_NAMES",
    "available",
    "load_package",
    "own_model_bytes",
    "own_model_file",
]

INSTALL_HINT = "pip install 'napari-unet[bioimageio]'"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari_unet"  # our block in the package's `config`


class PackageError(ValueError):
    """A bioimage.io package napari-unet cannot use, or cannot write; the message says why."""


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


# ----------------------------------------------------------------------------- import


def load_package(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """A model from a bioimage.io package (``.zip`` or ``rdf.yaml``); see the module docstring."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no bioimage.io package at {source}")
    own = _load_own(source, device)  # our own export needs no bioimageio: zip + YAML + the attached file
    if own is not None:
        return own
    _require()
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
    return PackagedModel.from_descr(descr, name=source.stem if source.suffix == ".zip" else descr.name).to(device)


def own_model_bytes(source: str | os.PathLike) -> tuple[str, bytes] | None:
    """Our own export: (file name, bytes) of the attached napari-unet model file; None for a foreign package.

    Reads the package's ``config.napari_unet.file`` entry with plain zip + YAML: no bioimageio needed.
    """
    import yaml

    source = Path(source)
    try:
        if source.suffix.lower() == ".zip":
            with zipfile.ZipFile(source) as z:
                names = z.namelist()
                rdf = next((n for n in RDF_NAMES if n in names), None)
                if rdf is None:
                    return None
                entry = _config_file(yaml.safe_load(z.read(rdf)))
                return (Path(entry).name, z.read(entry)) if entry in names else None
        entry = _config_file(yaml.safe_load(source.read_text(encoding="utf-8")))
        f = source.parent / entry if entry else None
        return (f.name, f.read_bytes()) if f is not None and f.is_file() else None
    except zipfile.BadZipFile as e:
        raise PackageError(f"{source.name} is not a zip file ({e})") from e
    except yaml.YAMLError as e:
        raise PackageError(f"{source.name}: its rdf.yaml is not valid YAML ({e})") from e


def _config_file(rdf) -> str | None:
    cfg = (rdf or {}).get("config") if isinstance(rdf, dict) else None
    entry = (cfg or {}).get(CONFIG_KEY) if isinstance(cfg, dict) else None
    f = entry.get("file") if isinstance(entry, dict) else None
    return str(f) if f else None


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


def _load_own(source: Path, device) -> UNet | None:
    with own_model_file(source) as f:
        return None if f is None else load_file(f, device=device)  # reads every tensor: the file may go


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
    def from_descr(cls, descr, *, name: str) -> PackagedModel:
        """The network of a spec 0.5 model description ``descr``; PackageError says what napari-unet cannot run."""
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
            _load_net(descr, what),
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


def _load_net(descr, what: str) -> nn.Module:
    w = descr.weights
    errors = []
    if w.torchscript is not None:
        try:
            with _torchscript_ok():
                return torch.jit.load(io.BytesIO(w.torchscript.get_reader().read()), map_location="cpu").eval()
        except Exception as e:  # fall back to the state dict
            errors.append(f"torchscript: {e}")
    if w.pytorch_state_dict is not None:
        try:
            from bioimageio.core.digest_spec import import_callable

            sd = w.pytorch_state_dict
            net = import_callable(sd.architecture)(**sd.architecture.kwargs)
            # no pickled code
            state = torch.load(io.BytesIO(sd.get_reader().read()), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=sd.strict)
            return net.eval()
        except Exception as e:
            errors.append(f"pytorch_state_dict: {e}")
    if errors:
        raise PackageError(f"{what}: its weights do not load ({'; '.join(errors)})")
    have = [k for k, v in w if v is not None]
    raise PackageError(
        f"{what} has weights {have}; napari-unet runs pytorch_state_dict or torchscript weights "
        "(bioimageio.core can convert some formats: `bioimageio predict` runs the others)"
    )
