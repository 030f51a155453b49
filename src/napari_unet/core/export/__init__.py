"""Export: bioimage.io packages written from a trained model."""

from __future__ import annotations

from .bioimageio import (
    DATA_CITATIONS,
    UNET_PAPER,
    cover_image,
    expected_output,
    export_package,
    mirror_of,
    mirrored,
    model_card,
    sample_crop,
    valid_package_sizes,
)

__all__ = [
    "DATA_CITATIONS",
    "UNET_PAPER",
    "cover_image",
    "expected_output",
    "export_package",
    "mirror_of",
    "mirrored",
    "model_card",
    "sample_crop",
    "valid_package_sizes",
]
