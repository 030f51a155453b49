"""One way in for every model: a shipped model's name, a napari-unet model file, or a bioimage.io package.

Loading executes no code unless the caller trusts it: a napari-unet model file holds tensors and JSON
only (:mod:`.checkpoint`); a bioimage.io package whose weights need its Python code is refused without
``trust_code`` (:mod:`.packages`, :class:`~.packages.CodeNotTrusted`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..network.unet import UNet
from .checkpoint import CheckpointError, ModelInfo, is_package, load_file, read_checkpoint, resolve_model_path
from .packages import load_package, own_model_file

__all__ = ["load_model", "read_info"]


def read_info(path: str | os.PathLike) -> ModelInfo:
    """The metadata of a model file (or of a bioimage.io package napari-unet wrote), without its weights."""
    if is_package(path):
        return _read_package_info(Path(path))
    return read_checkpoint(Path(path), weights=False)[0]


def _read_package_info(path: Path) -> ModelInfo:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with own_model_file(path) as f:
        if f is None:
            raise CheckpointError(
                f"{path.name} is a bioimage.io package napari-unet did not write: predict and evaluate run it, but "
                "training (--init, --resume, fine-tuning) needs a napari-unet U-Net (a .safetensors file or a "
                "package exported by napari-unet)"
            )
        return read_checkpoint(f, weights=False)[0]


def load_model(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", trust_code: bool = False
) -> UNet:
    """Load a model file (or a shipped model by name). The model carries ``model.info``.

    A bioimage.io package (``.zip`` / ``rdf.yaml``, core/models/packages.py) loads too: a package
    napari-unet exported gives back its U-Net exactly; another package is wrapped for prediction.
    ``trust_code``: run a package's own Python code when its weights need it (see the trust rule in
    :mod:`.packages`); without it such a package raises :class:`~.packages.CodeNotTrusted`.

    Raises
    ------
    FileNotFoundError
        No such file or shipped model.
    CheckpointError
        A damaged, foreign (not napari-unet) or incompatible file.
    PackageError
        A package napari-unet cannot run, or whose files do not match its rdf.yaml (CodeNotTrusted: its
        code was not trusted).
    """
    path = resolve_model_path(name_or_path)
    if is_package(path):
        return load_package(path, device=device, trust_code=trust_code)
    return load_file(path, device=device)
