"""Training: the config and its recommended settings (config), where to start (start), training data (sampling), eq. 2 weights (weights), augmentation (augment), losses, and the loop (loop) with its events."""

from __future__ import annotations

from .augment import elastic_deform
from .config import TrainConfig, resolve_settings
from .events import TrainEvent, TrainResult, TrainState
from .loop import iter_train, train
from .start import choose, settle
from .weights import weight_map

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = [
    "TrainConfig",
    "resolve_settings",
    "TrainEvent",
    "TrainState",
    "TrainResult",
    "choose",
    "settle",
    "weight_map",
    "elastic_deform",
    "iter_train",
    "train",
]
