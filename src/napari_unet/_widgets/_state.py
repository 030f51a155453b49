"""What the dock widgets share inside one napari session (GUI thread only).

``TRAINED_MODELS`` holds models trained in this session by name, so the Predict
widget can offer "just trained" without a file, and Train's 'auto' start can
weigh them against the shipped models (:func:`model_file`). ``RUNNING`` names the jobs in
flight ('train', 'predict') so one widget can refuse to start while another
runs (two jobs on one CPU/GPU would only slow both and double the memory).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from psygnal import Signal

JUST_TRAINED = "just trained"

TRAINED_MODELS: dict[str, Any] = {}
RUNNING: dict[str, Any] = {}
_FILES: dict[str, tuple[int, Path]] = {}  # name -> (id of the model saved, its file)
_DIR: list[Path] = []


class _Events:
    models_changed = Signal()
    weights_changed = Signal(float, float)  # the weight-map preview's (w0, sigma), for Train


events = _Events()


def register_model(name: str, model) -> None:
    TRAINED_MODELS[name] = model
    events.models_changed.emit()


def model_file(name: str) -> Path:
    """A file holding session model ``name`` (written once per model, in a temporary folder), so it can be
    a start candidate like any model file."""
    from napari_unet.core.models.checkpoint import save_model

    model = TRAINED_MODELS[name]
    kept = _FILES.get(name)
    if kept is not None and kept[0] == id(model) and kept[1].is_file():
        return kept[1]
    if not _DIR:
        _DIR.append(Path(tempfile.mkdtemp(prefix="napari-unet-session-")))
    path = save_model(_DIR[0] / f"{name.replace(' ', '-')}.safetensors", model)
    _FILES[name] = (id(model), path)
    return path


def clear() -> None:
    """Forget everything (tests, and a fresh viewer)."""
    TRAINED_MODELS.clear()
    RUNNING.clear()
    _FILES.clear()
    events.models_changed.emit()
