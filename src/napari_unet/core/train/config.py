"""What defines a training run: :class:`TrainConfig` (every field checked once, stored in the model
file), the choices and ranges the widgets offer (:data:`CHOICES`, :data:`LIMITS`), and the settings a
run's options leave to the device and the start (:func:`resolve_settings`, the CLI's and the Train
widget's defaults alike).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from ..data.labels import MODES
from ..data.zoom import check_zoom
from ..models.checkpoint import MAX_PARAMETERS, MODEL_BOUNDS, resolve_model_path
from ..models.load import read_info
from ..network.device import PRECISIONS
from ..network.unet import UNetConfig, check_tile_in, count_parameters
from .weights import SIGMA, W0

__all__ = [
    "AUTO",
    "CHOICES",
    "FINE_TUNE_LR",
    "LIMITS",
    "RECOMMENDED",
    "SCRATCH_LR",
    "Setting",
    "TrainConfig",
    "resolve_settings",
]

AUTO = "auto"
FINE_TUNE_LR = 1e-4  # 10x below the from-scratch rate: docs/accuracy.md measures why
SCRATCH_LR = 1e-3


# the settings a run's options leave to the device and the start (the CLI's and the Train widget's)
RECOMMENDED = ("depth", "base_channels", "tile_in", "optimizer", "lr", "steps", "batch_size", "keep_prior", "schedule")
# CUDA: the paper (depth 4, 64 channels, 572 px tiles, SGD with momentum 0.99). CPU / MPS: the same depth-4
# valid architecture (it keeps the paper's context and can be fine-tuned later on a GPU) but 16 base
# channels (~16x fewer FLOPs), 316 px input tiles (132 px output: the 184 px of context a depth-4 valid net
# needs make smaller tiles mostly context; measured ~0.12 s per step on 2 CPU cores) and Adam, which
# converges in a few hundred steps where SGD at batch 1 needs thousands.
_BY_DEVICE = {
    "cuda": (
        dict(depth=4, base_channels=64, tile_in=572, optimizer="sgd", steps=1000, batch_size=1),
        "CUDA: the paper's network, tile and optimizer",
    ),
    "other": (
        dict(depth=4, base_channels=16, tile_in=316, optimizer="adam", steps=500, batch_size=1),
        "CPU / MPS: the paper's depth with 16 channels, 316 px tiles and Adam, to finish in minutes",
    ),
}


@dataclass(frozen=True)
class Setting:
    """One resolved setting: its value, the rule that gave it, and what a box that cannot be empty shows."""

    value: object  # None: decided when training starts (the rate and keep_prior under init='auto')
    rule: str
    shown: object  # the value, or for a value decided at the start the one it takes from a model


def resolve_settings(
    device: str, start: str | None = None, given: Mapping[str, object] | None = None, *, resume: str | None = None
) -> dict[str, Setting]:
    """The :data:`RECOMMENDED` settings of a run: the CLI's and the Train widget's defaults.

    Each is, first that applies: the value ``given`` (None = not given); with ``resume`` (a model file
    saved with its run), that run's own; else the rule for the device and the start:

    * by ``device`` (a device type, ``resolve_device(...).type``): depth, base channels, tile, optimizer,
      steps, batch size (the comments at ``_BY_DEVICE`` say why);
    * by ``start``: None or 'scratch' = from scratch: ``SCRATCH_LR``, keep_prior 0. A model (name or file):
      ``FINE_TUNE_LR``, and keep_prior None, set by how well the start model agrees with the strokes
      (:func:`.start.prior_weight`, by its worst painted class), so sparse strokes correct a model that
      knows the task without it forgetting, and teach one that does not. 'auto': the start is chosen
      when training begins, and so are the rate and keep_prior (both None);
    * the schedule: constant (the paper's).
    """
    by_device, device_rule = _BY_DEVICE["cuda" if device == "cuda" else "other"]
    if start == AUTO:
        lr = Setting(None, "chosen with the start: FINE_TUNE_LR from a model, SCRATCH_LR from scratch", FINE_TUNE_LR)
        keep = Setting(None, "set by the start model's agreement with the strokes; 0 from scratch", None)
    elif start and start != "scratch":
        lr = Setting(FINE_TUNE_LR, "fine-tuning: 10x below the from-scratch rate", FINE_TUNE_LR)
        keep = Setting(None, "set by the start model's agreement with the strokes", None)
    else:
        lr = Setting(SCRATCH_LR, "from scratch", SCRATCH_LR)
        keep = Setting(0.0, "from scratch: no start model to keep", 0.0)
    out = {k: Setting(v, device_rule, v) for k, v in by_device.items()}
    out.update(lr=lr, keep_prior=keep, schedule=Setting("constant", "the paper's constant rate", "constant"))
    if resume:
        saved = TrainConfig.saved_settings((read_info(resolve_model_path(resume)).training or {}).get("config", {}))
        out.update({k: Setting(saved[k], "the resumed run's", saved[k]) for k in RECOMMENDED if k in saved})
    given = {k: v for k, v in (given or {}).items() if v is not None}
    out.update({k: Setting(v, "given", v) for k, v in given.items() if k in RECOMMENDED})
    return {k: out[k] for k in RECOMMENDED}


CHOICES = {
    "padding": ("valid", "same"),
    "label_mode": MODES,
    "optimizer": ("sgd", "adam"),
    "schedule": ("constant", "cosine"),
    "precision": (None, *PRECISIONS),
}

# (lowest, upper bound or None, what the message says); the widgets' spin boxes use LIMITS below
_CHECKS = {
    "depth": (1, None, "an integer >= 1"),
    "base_channels": (1, None, "an integer >= 1"),
    "dropout": (0.0, 1.0, "in [0, 1)"),
    "w0": (0.0, None, ">= 0"),
    "sigma": (1e-9, None, "> 0 px"),
    "momentum": (0.0, 1.0, "in [0, 1)"),
    "weight_decay": (0.0, None, ">= 0"),
    "tile_in": (1, None, "an integer >= 1 px"),
    "keep_prior": (0.0, None, ">= 0"),
    "elastic_grid": (2, None, ">= 2 control points per side"),
    "elastic_sigma": (0.0, None, ">= 0 px"),
    "val_fraction": (0.0, 1.0, "in [0, 1)"),
    "val_every": (1, None, ">= 1 step"),
    "preview_every": (0, None, ">= 0 steps (0 = never)"),
    "log_every": (1, None, ">= 1 step"),
    "seed": (0, None, ">= 0"),
}

# The ranges the Train widget offers (a subset of what TrainConfig accepts; the CLI may go beyond).
LIMITS = {
    "steps": (1, 100_000),
    "lr": (1e-6, 1.0),
    "tile_in": (44, 2044),
    "batch_size": (1, 64),
    "w0": (0.0, 100.0),
    "sigma": (0.5, 50.0),
    "elastic_grid": (2, 10),
    "elastic_sigma": (0.0, 50.0),
    "depth": (1, 6),
    "base_channels": (2, 256),
    "val_fraction": (0.0, 0.9),
    "val_every": (1, 100_000),
    "preview_every": (0, 100_000),
    "seed": (0, 2**31 - 1),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in the model file).

    Defaults follow the paper: depth 4, 64 channels, valid convolutions, SGD
    with momentum 0.99, batch 1 of a large (572 px) tile, elastic deformation
    on a 3x3 grid with sigma 10 px, eq. 2 weights with w0 = 10, sigma = 5 px.
    """

    # network (ignored when starting from a checkpoint, whose architecture wins)
    depth: int = 4
    base_channels: int = 64
    padding: Literal["valid", "same"] = "valid"
    dropout: float = 0.5
    # labels (see core/data/labels.py)
    label_mode: Literal["semantic", "instance"] = "instance"  # the CLI's and the widget's default too
    n_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    zero_is_background: bool = False
    # instance mode: learn a third 'border' class. None = as the starting model (init/resume) has it, else
    # False, so fine-tuning the shipped 'nuclei' model keeps its 3-class head without anyone asking.
    border_class: bool | None = None
    # with a border class: an object painted only in part teaches "object, interior or border"
    # (labels.ANY_OBJECT), not "interior" (False; bench_finetune.py's arm autowhole, compared in docs/accuracy.md)
    partial_objects: bool = True
    # loss weights, eq. 2
    w0: float = W0
    sigma: float = SIGMA
    # None = as the start needs: on from scratch (the paper) and from a start that contradicts the strokes;
    # off when fine-tuning a model kept where nobody painted (keep_prior > 0): its classes are already
    # balanced and its decision boundary calibrated, and reweighting moves it (two correction rounds
    # thickened em-membrane's membranes from 19.8 % to 26.5 % of the image; docs/accuracy.md)
    class_balance: bool | None = None
    border_weights: bool | None = None
    # optimisation
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float | None = SCRATCH_LR  # None: FINE_TUNE_LR from a model, SCRATCH_LR from scratch (for init='auto')
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    steps: int = 1000
    batch_size: int = 1
    tile_in: int = 572  # INPUT tile side (valid sizes only for 'valid' nets; prediction's tile_out is the output side)
    # augmentation
    augment: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    flips: bool = True
    intensity: bool = True
    # normalisation: percentiles of each image
    norm_low: float = 1.0
    norm_high: float = 99.8
    # validation / preview
    val_fraction: float = 0.0
    val_every: int = 50
    preview_every: int = 0
    log_every: int = 1
    # start
    # None = scratch; a model file or shipped model name = fine-tune; 'auto' = the best start for the
    # strokes among the shipped models, ``candidates`` and scratch (core/train/start.py)
    init: str | None = None
    candidates: tuple[str, ...] = ()  # init='auto': the user's own model files to consider too
    # fine-tuning: weight of a loss that keeps the starting model's prediction on the pixels nobody
    # annotated (knowledge distillation). 0 = off (the paper); None = from the start model's agreement
    # with the strokes (1 when it agrees, 0 when it contradicts them); see losses.kept_start_loss and core/train/start.py.
    keep_prior: float | None = 0.0
    resume: str | None = None  # a model file saved with optimizer state
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    # zoom applied to the images for the network (core/data/zoom.py): None = the start's (the zoom at which
    # the auto start agrees best with the strokes, a model file's recorded one; 1 from scratch)
    zoom: float | None = None

    def __post_init__(self):
        """Every field checked once, here: the CLI, the widgets and scripts all build a TrainConfig."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.lr is not None and (self.lr <= 0 or not math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        for name, (lo, hi, what) in _CHECKS.items():
            v = getattr(self, name)
            if v is None and name == "keep_prior":  # None = set from the start model's agreement
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v and (hi is None or v < hi)):
                raise ValueError(f"{name} must be {what}, got {v!r}")
        if self.n_classes is not None and self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (background and at least one class), got {self.n_classes}")
        for name in ("depth", "base_channels", "n_classes"):  # a bigger network could not be loaded again
            hi, v = MODEL_BOUNDS[name][1], getattr(self, name)
            if v is not None and v > hi:
                raise ValueError(f"{name} must be at most {hi} (what a model file can hold), got {v}")
        if not 0 <= self.norm_low < self.norm_high <= 100:
            raise ValueError(
                f"norm percentiles must satisfy 0 <= norm_low < norm_high <= 100, got "
                f"{self.norm_low} and {self.norm_high}"
            )
        if self.zoom is not None:
            check_zoom(self.zoom)
        if self.init == AUTO and self.resume is not None:
            raise ValueError("init='auto' chooses a start for a new run; resume continues a saved one: give one")
        if self.init in (None, AUTO) and self.resume is None:  # scratch possible: the architecture is this config's
            check_tile_in(self.tile_in, self.depth, self.padding)
            self._check_network_size()

    def _check_network_size(self) -> None:
        """A network from scratch within what a model file may hold (:data:`MAX_PARAMETERS`): it could not be
        loaded again otherwise."""
        net = UNetConfig(n_classes=self.n_classes or 2, depth=self.depth, base_channels=self.base_channels)
        n = count_parameters(net)
        if n > MAX_PARAMETERS:
            raise ValueError(
                f"depth {self.depth} with {self.base_channels} base channels makes a network of {n / 1e6:,.0f} M "
                f"parameters ({n * 4 / 2**30:.1f} GiB), more than a model file may hold "
                f"({MAX_PARAMETERS * 4 / 2**30:.0f} GiB): give fewer base channels or a smaller depth"
            )

    def settled(self) -> TrainConfig:
        """This config with ``border_class`` decided (reads the starting model's file when it is None)."""
        if self.resume:  # a resumed run keeps its classes: its head and optimizer state depend on them
            info = read_info(resolve_model_path(self.resume))
            saved = bool(info.border_class)
            if self.border_class is not None and self.border_class != saved:
                raise ValueError(
                    f"the run in {self.resume} was trained {'with' if saved else 'without'} a border "
                    "class; resume it as it was, or start a new run from it with init instead"
                )
            return replace(self, border_class=saved)
        if self.border_class is not None:
            return self
        border = False
        if self.init and self.label_mode == "instance":
            info = read_info(resolve_model_path(self.init))
            border = bool(info.border_class) and info.label_mode == "instance"
        return replace(self, border_class=border)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names else None
        d["candidates"] = list(self.candidates)
        return d

    @classmethod
    def saved_settings(cls, d: dict) -> dict:
        """The fields of a config dict stored in a model file (older files name tile_in 'tile_size', and
        zoom 'scale')."""
        d = dict(d)
        for old, new in (("tile_size", "tile_in"), ("scale", "zoom")):
            if old in d and new not in d:
                d[new] = d.pop(old)
        names = {f.name for f in fields(cls)}
        out = {k: v for k, v in d.items() if k in names}
        if "candidates" in out:
            out["candidates"] = tuple(out["candidates"] or ())
        return out

    @staticmethod
    def default(name: str):
        """The default value of field ``name`` (the widgets' initial values)."""
        return TrainConfig.__dataclass_fields__[name].default
