"""The synchronous drain of a core generator.

Long work in core/ is a generator: :func:`~napari_unet.core.predict.tiles.iter_predict` yields a
:class:`~napari_unet.core.predict.events.TileEvent` per tile, :func:`~napari_unet.core.train.loop.iter_train`
a :class:`~napari_unet.core.train.events.TrainEvent` per step, and both *return* their result. A widget runs
them in a thread; the CLI, scripts, benchmarks and tests drain them with :func:`drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

__all__ = ["drain"]


def drain(gen: Generator, callback: Callable | None = None):
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
