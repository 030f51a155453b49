"""Model files: safe .safetensors checkpoints (checkpoint), bioimage.io packages (packages), and one load_model for names, files and packages (load)."""

from __future__ import annotations

from .checkpoint import CheckpointError, ModelInfo, available_models, load_file, resolve_model_path, save_model
from .load import load_model, read_info
from .packages import CodeNotTrusted, PackagedModel, PackageError, load_package

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = [
    "ModelInfo",
    "CheckpointError",
    "save_model",
    "load_file",
    "available_models",
    "resolve_model_path",
    "PackageError",
    "CodeNotTrusted",
    "PackagedModel",
    "load_package",
    "load_model",
    "read_info",
]
