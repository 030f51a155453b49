"""What the dock widgets share inside one napari session (GUI thread only).

``TRAINED_MODELS`` holds models trained in this session by name, so the Predict
widget can offer "just trained" without a file. ``RUNNING`` names the jobs in
flight ('train', 'predict') so one widget can refuse to start while another
runs (two jobs on one CPU/GPU would only slow both and double the memory).
"""

from __future__ import annotations

from typing import Any

from psygnal import Signal

JUST_TRAINED = "just trained"

TRAINED_MODELS: dict[str, Any] = {}
RUNNING: dict[str, Any] = {}


class _Events:
    models_changed = Signal()
    weights_changed = Signal(float, float)  # the weight-map preview's (w0, sigma), for Train


events = _Events()


def register_model(name: str, model) -> None:
    TRAINED_MODELS[name] = model
    events.models_changed.emit()


def clear() -> None:
    """Forget everything (tests, and a fresh viewer)."""
    TRAINED_MODELS.clear()
    RUNNING.clear()
    events.models_changed.emit()
