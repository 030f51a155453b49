"""What prediction yields: :class:`TileEvent` per tile of :func:`~napari_unet.core.predict.tiles.iter_predict`,
:class:`BlockEvent` per block of :func:`~napari_unet.core.predict.blocks.iter_predict_blocks`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BlockEvent", "TileEvent"]


@dataclass(frozen=True)
class TileEvent:
    """Progress of :func:`~napari_unet.core.predict.tiles.iter_predict`.

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
    """Progress of :func:`~napari_unet.core.predict.blocks.iter_predict_blocks`.

    ``kind='start'``: the plan is made; ``done`` = ``skipped`` blocks were already on disk (a resumed
    run). ``kind='block'``: ``block`` (a :class:`~napari_unet.core.predict.blocks.Block`) is written.
    """

    done: int
    total: int
    skipped: int
    block: object | None
    kind: Literal["start", "block"] = "block"
    message: str = ""  # 'start': e.g. the automatic precision choice and why
