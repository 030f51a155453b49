"""Export: bioimage.io packages written from a trained model."""

from __future__ import annotations

from .bioimageio import INSTALL_HINT, available, export_package

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = ["export_package", "available", "INSTALL_HINT"]
