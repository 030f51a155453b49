"""What the core generators yield, and the synchronous drain :func:`run`.

Long work in core/ is a generator: :func:`~napari_unet.core.tiling.iter_predict`
yields a :class:`TileEvent` per tile, :func:`~napari_unet.core.train.iter_train`
a :class:`TrainEvent` per step, and both *return* their result. A widget runs
them in a thread; the CLI, scripts, benchmarks and tests drain them with
:func:`run`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .model import UNet
    from .train import TrainResult


class TrainState(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    DONE = "done"
    STOPPED = "stopped"
    CRASHED = "crashed"


@dataclass(frozen=True)
class TileEvent:
    """Progress of :func:`~napari_unet.core.tiling.iter_predict`.

    ``kind='tile'``: the output ``region`` (y slice, x slice) of slice ``z`` was
    written; ``kind='slice'``: slice ``z`` is complete (instances are labelled
    only then, so the whole plane may change).
    """

    done: int
    total: int
    z: int
    region: tuple[slice, slice]
    kind: Literal["tile", "slice"] = "tile"


@dataclass(frozen=True)
class BlockEvent:
    """Progress of :func:`~napari_unet.core.blocks.iter_predict_blocks`.

    ``kind='start'``: the plan is made; ``done`` = ``skipped`` blocks were already on disk (a resumed
    run). ``kind='block'``: ``block`` (a :class:`~napari_unet.core.blocks.Block`) is written.
    """

    done: int
    total: int
    skipped: int
    block: object | None
    kind: Literal["start", "block"] = "block"
    message: str = ""  # 'start': e.g. the automatic precision choice and why


@dataclass(frozen=True)
class TrainEvent:
    """One step (or validation / preview pass) of :func:`~napari_unet.core.train.iter_train`."""

    # 'start': init='auto' chose where to start (``message`` says which and why), before any step
    # 'live': strokes painted during the run reached the training data (``message`` says how many slices)
    kind: Literal["start", "step", "validation", "preview", "live", "finished", "crashed"]
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


def run(gen: Generator, callback: Callable | None = None):
    """Drain a core generator synchronously (no threads) and return its result.

    ``callback(event)`` sees every event; the generator is paused meanwhile, so a
    callback may read the event's snapshot or set a cancel flag.
    """
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(ev)
