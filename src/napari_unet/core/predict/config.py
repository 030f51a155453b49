"""What decides a prediction: one frozen :class:`PredictConfig`, checked when it is made.

:func:`~napari_unet.core.predict.tiles.iter_predict` (whole planes, overlap-tile) and
:func:`~napari_unet.core.predict.blocks.iter_predict_blocks` (block-wise into OME-Zarr) both take it; it
pickles, so dask workers get the same settings as this process. What is not about the result (which slices,
where to write, which cluster) stays a keyword of those functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..data.intensity import fixed_range
from ..data.zoom import check_zoom, model_zoom
from ..network.device import PRECISIONS

if TYPE_CHECKING:
    import torch

__all__ = ["BLOCK_OUTPUTS", "OUTPUTS", "PROB_DTYPES", "Output", "PredictConfig"]

Output = Literal["labels", "probabilities", "instances", "uncertainty"]
OUTPUTS = ("labels", "probabilities", "instances", "uncertainty")
BLOCK_OUTPUTS = ("labels", "probabilities")  # what a block can be predicted into without its whole plane
PROB_DTYPES = ("float16", "uint8", "float32")


@dataclass(frozen=True)
class PredictConfig:
    """How to predict an image (frozen and picklable; checked in ``__post_init__``).

    Parameters
    ----------
    output : {'labels', 'probabilities', 'instances', 'uncertainty'}
        Class indices (0 = background), per-class probabilities (class axis first), instance ids
        (0 = background, unique over the stack), or the uncertainty of each pixel
        (:func:`~napari_unet.core.predict.tiles.entropy` of its probabilities, 0..1; with ``tta``, of the
        8 views' mean: where they disagree it is high): where to paint next.
    channel_axis : int, optional
        The image's channel axis, for a multichannel model.
    normalize : bool or (lo, hi)
        True = percentile range (the model's, default 1-99.8) of each 2D plane, as in training;
        (lo, hi) = that fixed intensity range; False = image already scaled.
    zoom : float, optional
        Zoom each plane by this factor for the network and resample the result back
        (:mod:`~napari_unet.core.data.zoom`); None = the zoom the model was trained at (1 for most models).
    tile_out : int or (int, int), optional
        Output tile side in px; None = automatic from the memory budget and image size.
    batch_size : int, optional
        Tiles per forward pass; None = automatic (memory, and 1 off CUDA).
    memory_budget : int, optional
        Bytes the tiles may use; None = the device's free memory.
    tta : bool
        Average the 8 flips/rotations (test-time augmentation).
    device : str or torch.device, optional
        'auto'/None (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:N', 'mps'. Block-wise prediction runs on CPU
        for None, and for 'auto' on a dask cluster (the workers' devices are not this process's).
    precision : {'fp32', 'bf16', 'fp16', 'auto'}, optional
        Autocast dtype; None (:func:`~napari_unet.core.network.device.default_precision`, as in
        training): bf16 on CUDA GPUs that support it, fp32 elsewhere. 'auto': as None, except on a CPU
        with native bf16, where a one-tile trial picks bf16 when it is faster and agrees with fp32
        (:func:`~napari_unet.core.predict.tiles.choose_precision`).
    min_size : int, optional
        ``output='instances'``: drop objects smaller than this many pixels of the image. None = the
        model's own default (``model.info.postprocess``, in the model's pixels; 0 if unset).
    prob_dtype : {'float16', 'uint8', 'float32'}
        How block-wise prediction stores probabilities (uint8: p * 255, rounded).
    threads : int, optional
        Block-wise prediction: torch threads per block task (per dask worker); None = torch's default.
    """

    output: Output = "labels"
    channel_axis: int | None = None
    normalize: bool | tuple[float, float] = True
    zoom: float | None = None
    tile_out: int | tuple[int, int] | None = None
    batch_size: int | None = None
    memory_budget: int | None = None
    tta: bool = False
    device: str | torch.device | None = None
    precision: Literal["fp32", "bf16", "fp16", "auto"] | None = None
    min_size: int | None = None
    prob_dtype: str = "float16"
    threads: int | None = None

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if self.batch_size is not None and self.batch_size < 1:  # else range(..., 0): 'arg 3 must not be zero'
            raise ValueError(f"batch_size must be >= 1 tiles, or None for automatic; got {self.batch_size}")
        if self.tile_out is not None and min(np.atleast_1d(self.tile_out)) < 1:
            raise ValueError(
                f"tile_out (the output tile side) must be >= 1 px, or None for automatic; got {self.tile_out}"
            )
        if self.min_size is not None and self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 pixels, got {self.min_size}")
        if self.precision not in (None, "auto", *PRECISIONS):
            raise ValueError(f"precision must be one of {PRECISIONS} or 'auto', got {self.precision!r}")
        if self.prob_dtype not in PROB_DTYPES:
            raise ValueError(f"prob_dtype must be one of {PROB_DTYPES}, got {self.prob_dtype!r}")
        fixed_range(self.normalize)  # a (lo, hi) that is not finite is refused here
        if self.zoom is not None:
            object.__setattr__(self, "zoom", check_zoom(self.zoom))

    def zoom_for(self, model) -> float:
        """The zoom ``model`` predicts at: this config's, else the model's own (:func:`~.zoom.model_zoom`)."""
        return model_zoom(model) if self.zoom is None else self.zoom

    def check_blocks(self, model) -> None:
        """ValueError, saying what to do instead, unless ``model`` can predict block-wise with this config.

        Blocks are cut on the image's own grid and each block sees only its part of a plane: instances
        (ids over whole planes) and a zoom other than 1 (the network sees a resampled plane) need whole planes.
        """
        if self.output not in BLOCK_OUTPUTS:
            raise ValueError(
                f"block-wise prediction writes {' or '.join(BLOCK_OUTPUTS)}, not {self.output!r}: instances need "
                "whole planes; predict labels, then make instances per slice (docs/scaling.md)"
            )
        zoom = self.zoom_for(model)
        if zoom != 1.0:
            which = f"this model zooms images x{zoom:.2f}" if self.zoom is None else f"the zoom is x{zoom:.2f}"
            raise ValueError(
                f"{which}, and block-wise prediction (into an OME-Zarr) needs zoom 1: predict whole planes "
                "instead (in memory, or into a TIFF), or at zoom 1 (the image as it is)"
            )
