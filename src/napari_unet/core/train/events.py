"""What training yields and returns: :class:`TrainEvent` per step of
:func:`~napari_unet.core.train.loop.iter_train`, its :class:`TrainState`, and the :class:`TrainResult`
it returns (CPU copies of the best and last weights)."""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..models.checkpoint import ModelInfo, save_model
from ..network.unet import UNet

__all__ = ["TrainEvent", "TrainResult", "TrainState"]


class TrainState(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    DONE = "done"
    STOPPED = "stopped"
    CRASHED = "crashed"


@dataclass(frozen=True)
class TrainEvent:
    """One step (or validation / preview pass) of :func:`~napari_unet.core.train.loop.iter_train`."""

    # 'start': init='auto' chose where to start (``message`` says which and why), before any step
    # 'scoring': init='auto' is scoring candidate ``step + 1`` of ``total`` (``message`` names it), before 'start'
    # 'live': strokes painted during the run reached the training data (``message`` says how many slices)
    kind: Literal["scoring", "start", "step", "validation", "preview", "live", "finished", "crashed"]
    step: int
    total: int
    loss: float
    lr: float
    elapsed: float
    eta: float
    val_metric: float | None = None
    preview: np.ndarray | None = None
    preview_where: tuple[int, int] | None = None  # (pair index, slice)
    state: TrainState = TrainState.TRAINING
    device: str = "cpu"
    # running balanced accuracy of the model on the painted pixels of recent batches (1 = all right)
    agreement: float | None = None
    # kind 'start': where training starts and why; ``warning``: the start model contradicts the strokes
    message: str = ""
    warning: str = ""
    # kind 'crashed': the exception (raised again by the next ``next()``) and the weights trained until
    # then (best and last, None when no step finished), so a crash at step 900 of 1000 loses nothing
    error: BaseException | None = None
    result: TrainResult | None = None
    # step / validation / preview events: a CPU copy of the live model on demand (nothing is copied
    # unless a caller asks, and only while the generator is paused at this event)
    snapshot_model: Callable[[], UNet] | None = None

    def snapshot(self) -> dict:
        """A CPU copy of the weights as they are at this event (a ``state_dict``)."""
        if self.snapshot_model is None:
            raise ValueError(f"a {self.kind!r} event carries no weights; snapshot a 'step' event")
        return self.snapshot_model().state_dict()


@dataclass
class TrainResult:
    """What a run leaves behind; CPU copies of the weights, so GPU memory is free."""

    model: UNet
    best_state: dict
    last_state: dict
    info: ModelInfo
    state: TrainState
    steps_done: int
    history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    best_metric: float | None = None
    optimizer_state: dict | None = None

    def best_model(self) -> UNet:
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.best_state)
        m.info = self.info
        return m

    def last_model(self) -> UNet:
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.last_state)
        m.info = self.info
        return m

    def save(self, path, *, which: Literal["best", "last"] = "best", half: bool = False):
        model = self.best_model() if which == "best" else self.last_model()
        opt = None
        if which == "last" and self.optimizer_state is not None:
            opt = _OptimizerShim(self.optimizer_state)
        return save_model(path, model, info=self.info, optimizer=opt, half=half)


class _OptimizerShim:
    """Lets save_model store an optimizer state_dict captured earlier."""

    def __init__(self, sd):
        self._sd = sd

    def state_dict(self):
        return self._sd
