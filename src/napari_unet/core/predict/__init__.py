"""Prediction: its settings (config), overlap-tile prediction of images and stacks (tiles), block-wise prediction
into OME-Zarr (blocks) and the OME-Zarr output set-up (zarr), where to paint next (guidance), and the events they
yield."""

from __future__ import annotations

from .blocks import iter_predict_blocks
from .config import PredictConfig
from .events import BlockEvent, TileEvent
from .guidance import rank_regions
from .tiles import iter_predict, predict
from .zarr import prepare_zarr_prediction

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = [
    "PredictConfig",
    "TileEvent",
    "BlockEvent",
    "predict",
    "iter_predict",
    "iter_predict_blocks",
    "prepare_zarr_prediction",
    "rank_regions",
]
