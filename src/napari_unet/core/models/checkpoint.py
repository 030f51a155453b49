"""Safe, atomic model files: weights + the full config in one ``.safetensors`` file.

Loading never executes code: safetensors holds only tensors and a string
metadata table (no pickle), and we parse that table as JSON. Saving writes a
temporary file next to the target, fsyncs it and renames it over the target,
so a crash mid-save leaves either the old file or the new one, never a broken
one.

Models shipped with the package (``napari_unet/models/*.safetensors``) load by
name, e.g. ``load_model('em-membrane')``.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.files import atomic_write
from ..data.labels import MODES
from ..data.zoom import check_zoom
from ..network.unet import UNet, UNetConfig, build_model, count_parameters, parameter_shapes

__all__ = [
    "CheckpointError",
    "FORMAT",
    "META_KEY",
    "MODELS_DIR",
    "MAX_PARAMETERS",
    "MODEL_BOUNDS",
    "ModelInfo",
    "WEIGHT_DTYPES",
    "SUFFIX",
    "available_models",
    "is_package",
    "load_file",
    "load_optimizer_state",
    "read_checkpoint",
    "resolve_model_path",
    "save_model",
]

FORMAT = "napari-unet/1"
META_KEY = "napari_unet"
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SUFFIX = ".safetensors"
# The model's zoom is written as "scale": {"input_scale": z} (every model file's JSON header, and the `config`
# of exported packages): the key users' files hold and that installed napari-unet versions read. Those drop
# header keys they do not know, so a file written under "zoom" would load there at zoom 1 without a word,
# its objects at the wrong size; with this key every file stays napari-unet/1 and none needs a rewrite.
_ZOOM_KEY, _INPUT_ZOOM_KEY = "scale", "input_scale"


@dataclass
class ModelInfo:
    """What a checkpoint says about its network (travels with the model as ``model.info``)."""

    model: dict
    classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    label_mode: str = "semantic"
    border_class: bool = False
    normalization: dict = field(default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.8})
    training: dict = field(default_factory=dict)
    name: str = ""
    description: str = ""
    # defaults for turning the network's output into labels, e.g. {"min_size": 30} for instances
    postprocess: dict = field(default_factory=dict)
    # {"input_zoom": z}: the zoom the training images were resampled by (core/data/zoom.py); prediction uses it
    zoom: dict = field(default_factory=dict)
    format: str = FORMAT

    def to_dict(self) -> dict:
        """The fields as a model file's header holds them: ``zoom`` under its file key (``_ZOOM_KEY``)."""
        fields = asdict(self)
        fields[_ZOOM_KEY] = _renamed(fields.pop("zoom"), "input_zoom", _INPUT_ZOOM_KEY)
        return fields

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, header: dict) -> ModelInfo:
        """The info in a model file's ``header`` (:meth:`to_dict`'s form; keys it does not know are dropped)."""
        fields = {k: v for k, v in header.items() if k in cls.__dataclass_fields__ and k != "zoom"}
        if _ZOOM_KEY in header:
            fields["zoom"] = _renamed(header[_ZOOM_KEY], _INPUT_ZOOM_KEY, "input_zoom")
        return cls(**fields)


def _renamed(record, old: str, new: str):
    """``record`` with its key ``old`` named ``new`` (anything but a mapping as it is: a damaged header
    stays damaged, for the check on loading to refuse)."""
    if not isinstance(record, dict):
        return record
    return {new if k == old else k: v for k, v in record.items()}


class CheckpointError(ValueError):
    """A model file that cannot be loaded (corrupt, foreign or incompatible)."""


def available_models() -> dict[str, Path]:
    """Models shipped inside the package, by name."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.name[: -len(SUFFIX)]: p for p in sorted(MODELS_DIR.glob(f"*{SUFFIX}"))}


def is_package(path: str | os.PathLike) -> bool:
    """A bioimage.io model package (``.zip``, ``rdf.yaml``, ``*.bioimageio.yaml``): loaded by core/bioimageio.py."""
    name = Path(path).name.lower()
    return name.endswith((".zip", ".yaml", ".yml"))


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    shipped = available_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    names = ", ".join(shipped) or "none installed"
    raise FileNotFoundError(f"no model file or shipped model named {str(name_or_path)!r} (shipped models: {names})")


def save_model(
    path: str | os.PathLike,
    model: UNet,
    *,
    info: ModelInfo | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    half: bool = False,
    **info_fields,
) -> Path:
    """Write ``model`` (+ config, + optional optimizer state for resuming) atomically.

    ``half=True`` stores the weights as float16 (half the size; they are cast
    back to float32 on load).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    if info is None:
        info = getattr(model, "info", None) or ModelInfo(model=model.config.to_dict())
    info = ModelInfo(**{**asdict(info), "model": model.config.to_dict(), **info_fields})
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if half and v.is_floating_point():
            v = v.half()
        tensors[f"model.{k}"] = v.contiguous()
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # a file that predicts nothing: refused before anything is written (the old file stays)
        why = " (too large for float16: save without half)" if half else " (a diverged run?)"
        raise CheckpointError(f"cannot save {path.name}: weights {bad[:3]} hold NaN or inf values{why}")
    meta = {META_KEY: info.to_json(), "format": FORMAT, "dtype": "float16" if half else "float32"}
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
        meta["optimizer"] = json.dumps(opt_meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(save(tensors, metadata=meta))
    return path


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                entry[k] = v
        state_meta[str(pid)] = entry
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta, "type": type(optimizer).__name__}


def read_checkpoint(path: Path, weights: bool = True):
    """``(info, tensors, optimizer metadata)`` of napari-unet model file ``path`` (no tensors unless ``weights``).

    Everything the header says is checked before a tensor is read: the network it describes is within
    :data:`MODEL_BOUNDS` and :data:`MAX_PARAMETERS`, and the file holds exactly that network's tensors, in
    its shapes, as floating-point numbers. Raises :class:`CheckpointError` naming the file otherwise.
    """
    _refuse_other_files(path)
    with _opened(path) as f:
        meta = f.metadata() or {}
        info = _read_info(path, meta)
        layout = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
        _check_layout(path, _header_network(path, info.model), layout)
        opt = _read_optimizer(path, meta)
        tensors = {k: f.get_tensor(k) for k in layout if k.startswith(("model.", "optim."))} if weights else {}
    return info, tensors, opt


def _refuse_other_files(path: Path) -> None:
    """A folder, a missing file or a pickle: refused with what to choose instead."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; choose the model file (.safetensors) inside it")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # a safetensors file: an 8-byte header length, then its JSON header; only then look for a pickle's
    # marks (a header length whose low byte is 0x80 looks like a pickle's first byte)
    safetensors = len(head) == 9 and head[8:9] == b"{"
    if not safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path.name} is a PyTorch pickle file; napari-unet only loads .safetensors model files, because "
            "unpickling can run arbitrary code. Re-save it with napari_unet.core.models.checkpoint.save_model"
        )


@contextmanager
def _opened(path: Path):
    """The safetensors file ``path``, open; what the safetensors reader refuses becomes a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            yield f
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(
            f"cannot read {path.name}: the file is damaged, truncated or not a model file ({e})"
        ) from e


def _json(path: Path, text: str, what: str):
    """``text`` parsed as JSON; a CheckpointError naming the file and ``what`` when it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: brackets nested thousands deep
        raise CheckpointError(f"{path.name}: its {what} is damaged ({type(e).__name__}: {str(e)[:80]})") from None


def _read_info(path: Path, meta: dict) -> ModelInfo:
    """The :class:`ModelInfo` of the file's string metadata ``meta``, its format and fields checked."""
    if META_KEY not in meta:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a napari-unet model (no '{META_KEY}' metadata)"
        )
    raw = _json(path, meta[META_KEY], "napari-unet metadata")
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{path.name}: its napari-unet metadata is damaged (not a JSON object with a model)")
    fmt = str(raw.get("format", ""))
    name, _, version = fmt.rpartition("/")
    if name != FORMAT.split("/")[0] or not version.isdigit() or int(version) > int(FORMAT.split("/")[-1]):
        raise CheckpointError(
            f"{path.name} was written by an incompatible version ({fmt[:40]!r}); this napari-unet reads {FORMAT!r}"
        )
    info = ModelInfo.from_dict(raw)
    _check_fields(path, info)
    _check_zoom_record(path, info.zoom)
    _check_normalization(path, info.normalization)
    return info


def _read_optimizer(path: Path, meta: dict) -> dict | None:
    """The optimizer state's metadata (None when the file has none), as :func:`_flatten_optimizer` wrote it."""
    if "optimizer" not in meta:
        return None
    opt = _json(path, meta["optimizer"], "optimizer state")
    if not (
        isinstance(opt, dict)
        and isinstance(opt.get("param_groups"), list)
        and isinstance(opt.get("state"), dict)
        and all(isinstance(v, dict) for v in opt["state"].values())
    ):
        raise CheckpointError(f"{path.name}: its optimizer state is damaged (not what napari-unet writes)")
    return opt


def load_file(path: Path, *, device: str | torch.device = "cpu") -> UNet:
    """The U-Net in napari-unet model file ``path`` (``.safetensors``), with ``model.info``; see :func:`load_model`.

    :func:`read_checkpoint` checks the header and the tensors' shapes and types before anything is read;
    only then are the weights checked for NaN and inf and the network built.
    """
    info, tensors, _ = read_checkpoint(path)
    sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    bad = [f"model.{k}" for k, v in sd.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{path.name}: weights {bad[:3]} hold NaN or inf values (a diverged run?); it would predict "
            "nothing. Use an earlier save of this model"
        )
    model = build_model(UNetConfig(**info.model))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model.info = info
    if not info.name:
        info.name = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    return model.to(device)


# what a real network of this package can have; a header beyond them is refused before anything is allocated,
# and training refuses to make a network beyond them (it could not be loaded again)
MODEL_BOUNDS = {"depth": (1, 8), "base_channels": (1, 1024), "in_channels": (1, 64), "n_classes": (2, 1024)}
# ... and the whole network: 2**29 parameters, 2 GiB as float32. The paper's U-Net has 31 M (0.12 GiB); depth 5
# with 128 base channels, 497 M (1.85 GiB), fits; depth 3 with 1024 base channels (1969 M, 7.3 GiB) does not
MAX_PARAMETERS = 2**29
# the tensor types a model file's weights may have (save_model writes F32, or F16 with half=True); integer or
# bool weights are no trained network
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")
_OPTIMIZER_DTYPES = (*WEIGHT_DTYPES, "I64", "I32")  # an optimizer's step counts may be integers


def _header_network(path: Path, model: dict) -> UNetConfig:
    """The network header ``model`` describes (file ``path``), within :data:`MODEL_BOUNDS` and
    :data:`MAX_PARAMETERS`, sized by arithmetic (:func:`parameter_shapes`): nothing is built."""
    unknown = sorted(str(k)[:40] for k in model if k not in UNetConfig.__dataclass_fields__)
    if unknown:
        raise CheckpointError(
            f"{path.name}: its header's network has unknown fields {unknown[:3]}; the file is damaged"
        )
    for key, (lo, hi) in MODEL_BOUNDS.items():
        v = model.get(key, lo)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise CheckpointError(
                f"{path.name}: its header says {key}={repr(v)[:40]}, outside {lo}..{hi}; the file is damaged or "
                "not a napari-unet model"
            )
    dropout = model.get("dropout", 0.0)
    ok_dropout = isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0
    if model.get("padding", "valid") not in ("valid", "same") or not ok_dropout:
        raise CheckpointError(
            f"{path.name}: its header's padding ({repr(model.get('padding'))[:20]}, 'valid' or 'same') or dropout "
            f"({repr(dropout)[:20]}, in [0, 1)) is unusable; the file is damaged"
        )
    config = UNetConfig(**model)
    n = count_parameters(config)
    if n > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path.name}: its header describes a network of {n / 1e6:,.0f} M parameters ({n * 4 / 2**30:.1f} GiB), "
            f"more than a model file may hold ({MAX_PARAMETERS * 4 / 2**30:.0f} GiB); the file is damaged or not a "
            "napari-unet model. Nothing was loaded"
        )
    return config


def _check_layout(path: Path, config: UNetConfig, layout: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """The file's tensors (``layout``: name -> (safetensors dtype, shape), from its header) are exactly the
    weights of network ``config``, in its shapes and a floating-point type, plus optimizer state."""
    want = {f"model.{k}": s for k, s in parameter_shapes(config).items()}
    missing = sorted(set(want) - set(layout))
    extra = sorted(k[:60] for k in layout if k.startswith("model.") and k not in want)
    wrong = [
        f"{k} {str(list(layout[k][1]))[:60]} where the header's network has {list(s)}"
        for k, s in want.items()
        if k in layout and layout[k][1] != s
    ]
    if missing or extra or wrong:
        found = (("missing", missing), ("unexpected", extra), ("shaped", wrong))
        what = "; ".join(f"{label} {', '.join(names[:3])}" for label, names in found if names)
        raise CheckpointError(
            f"{path.name}: weights do not match the stored architecture ({what}); the file is damaged"
        )
    odd = [
        f"{k[:60]} ({dtype})"
        for k, (dtype, _) in layout.items()
        if (k.startswith("model.") and dtype not in WEIGHT_DTYPES)
        or (k.startswith("optim.") and dtype not in _OPTIMIZER_DTYPES)
    ]
    if odd:
        raise CheckpointError(
            f"{path.name}: tensors {odd[:3]} are not floating-point numbers, as a model's weights are (float32 "
            "or float16); the file is damaged or not a napari-unet model"
        )


# the type of each field of a header (the model and the zoom are checked on their own)
_FIELD_TYPES = {
    "classes": list,
    "label_mode": str,
    "border_class": bool,
    "normalization": dict,
    "training": dict,
    "name": str,
    "description": str,
    "postprocess": dict,
}


def _check_fields(path: Path, info: ModelInfo) -> None:
    """Each field of the header as napari-unet writes it (class names, a known label mode, mappings)."""
    odd = [name for name, kind in _FIELD_TYPES.items() if not isinstance(getattr(info, name), kind)]
    if not odd and not all(isinstance(c, str) for c in info.classes):
        odd.append("classes")
    if not odd and info.label_mode not in MODES:
        odd.append("label_mode")
    if odd:
        raise CheckpointError(
            f"{path.name}: its header's {', '.join(odd)} {'is' if len(odd) == 1 else 'are'} not what napari-unet "
            "writes (class names, 'semantic' or 'instance', mappings); the file is damaged"
        )


def _check_zoom_record(path: Path, zoom) -> None:
    # the messages name the header's key for the zoom ("scale", see _ZOOM_KEY): what the file holds
    if not isinstance(zoom, dict):
        raise CheckpointError(f"{path.name}: its header's scale is not a mapping; the file is damaged")
    if "input_zoom" in zoom:
        try:
            check_zoom(zoom["input_zoom"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path.name}: its header's input scale is unusable ({e}); the file is damaged"
            ) from None


# the normalisations core/data/intensity.py applies, and the numbers each needs
_NORMALIZATIONS = {"percentile": ("low", "high"), "mean_std": (), "affine": ("lo", "scale"), "none": ()}


def _check_normalization(path: Path, norm) -> None:
    """CheckpointError for a header normalisation intensity.py cannot apply (not a mapping, an unknown
    method, a missing or non-finite number)."""
    if not isinstance(norm, dict):
        raise CheckpointError(
            f"{path.name}: its normalisation is {norm!r}, not a mapping like {{'method': 'percentile', 'low': 1, "
            "'high': 99.8}; the file is damaged"
        )
    method = norm.get("method", "percentile")
    if not isinstance(method, str) or method not in _NORMALIZATIONS:
        raise CheckpointError(
            f"{path.name}: unknown normalisation {method!r}; napari-unet applies {', '.join(_NORMALIZATIONS)}"
        )
    for key in (*_NORMALIZATIONS[method], "eps"):
        value = norm.get(key, 0.0 if key == "eps" else None)
        if method == "percentile" and value is None:
            continue  # the defaults (1, 99.8)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{path.name}: its {method} normalisation has {key} = {value!r}, not a number")


def load_optimizer_state(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> bool:
    """Restore optimizer state saved with the model; False when the file has none (a package never has)."""
    file = resolve_model_path(path)
    if is_package(file):
        return False
    info, tensors, opt = read_checkpoint(file)
    if opt is None:
        return False
    state = {}
    for pid, entry in opt["state"].items():
        st = dict(entry)
        prefix = f"optim.{pid}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                st[k[len(prefix) :]] = v
        state[int(pid)] = st
    try:
        optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"optimizer state in {Path(path).name} does not fit this optimizer ({e})") from e
    return True
