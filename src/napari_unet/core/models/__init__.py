"""Model files: safe .safetensors checkpoints (checkpoint), bioimage.io packages (packages), and one load_model for names, files and packages (load)."""

from __future__ import annotations

from .checkpoint import (
    FORMAT,
    META_KEY,
    MODEL_BOUNDS,
    MODELS_DIR,
    SUFFIX,
    CheckpointError,
    ModelInfo,
    available_models,
    is_package,
    load_file,
    load_optimizer_state,
    read_checkpoint,
    resolve_model_path,
    save_model,
)
from .load import load_model, read_info
from .packages import (
    CONFIG_KEY,
    INSTALL_HINT,
    RDF_NAMES,
    TRUST_FLAG,
    CodeNotTrusted,
    PackagedModel,
    PackageError,
    available,
    load_package,
    own_model_bytes,
    own_model_file,
)

__all__ = [
    "CheckpointError",
    "FORMAT",
    "META_KEY",
    "MODELS_DIR",
    "MODEL_BOUNDS",
    "ModelInfo",
    "SUFFIX",
    "available_models",
    "is_package",
    "load_file",
    "load_optimizer_state",
    "read_checkpoint",
    "resolve_model_path",
    "save_model",
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
    "load_model",
    "read_info",
]
