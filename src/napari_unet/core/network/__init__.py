"""The U-Net (unet: the paper's network and its valid-size arithmetic) and where it runs (device: device, memory budget, precision)."""

from __future__ import annotations

from .device import default_precision, resolve_device
from .unet import (
    MirroredUNet,
    UNet,
    UNetConfig,
    build_model,
    margin,
    nearest_valid_sizes,
    output_size,
    parameter_shapes,
    valid_input_sizes,
)

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = [
    "UNet",
    "UNetConfig",
    "MirroredUNet",
    "build_model",
    "margin",
    "output_size",
    "parameter_shapes",
    "valid_input_sizes",
    "nearest_valid_sizes",
    "resolve_device",
    "default_precision",
]
