"""Model files for the bad-input tests (imported by name: tests/ is not a package)."""

from __future__ import annotations


def save_diverged(path, net, key: str = "model.head.bias"):
    """A model file whose weights hold NaN, as a diverged run (or an older version) wrote them:
    save_model refuses NaN, so a finite model is saved and one tensor poisoned in the file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_unet.core.models.checkpoint import save_model

    path = save_model(path, net)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors[key] = tensors[key].clone().fill_(float("nan"))
    save_file(tensors, str(path), metadata=meta)
    return path
