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


def write_safetensors(path, tensors: dict, metadata: dict | None = None, pad: int = 0):
    """A safetensors file written by hand, as a crafted one is: the 8-byte header length, the JSON header
    and the bytes. ``tensors``: name -> (dtype, shape, data bytes) or (dtype, shape, (start, end)) for
    offsets that need not fit the data; ``pad`` zero bytes after the data."""
    import json
    import struct

    header, data = {}, b""
    for name, (dtype, shape, content) in tensors.items():
        if isinstance(content, bytes):
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(content)]}
            data += content
        else:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": list(content)}
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)) + text + data + bytes(pad))
    return path


def model_header(info: dict | None = None, **model) -> dict:
    """A napari-unet model file's string metadata, its network ``model`` fields over a tiny default's."""
    import json

    net = {"in_channels": 1, "n_classes": 2, "depth": 2, "base_channels": 4, "padding": "valid", "dropout": 0.5}
    fields = {"model": {**net, **model}, "format": "napari-unet/1", **(info or {})}
    return {"napari_unet": json.dumps(fields), "format": "napari-unet/1", "dtype": "float32"}


def crafted_model(path, dtype: str = "F32", fill: bytes = b"\x00", shapes_of: dict | None = None, **model):
    """A model file whose header describes network ``model`` (over a tiny default) and whose tensors are the
    tiny network's, or those ``shapes_of`` gives: name -> shape, each ``fill`` repeated to its size."""
    import math

    from napari_unet.core.network.unet import UNetConfig, parameter_shapes

    size = {"F32": 4, "F16": 2, "I8": 1, "BOOL": 1, "I64": 8, "U8": 1}[dtype]
    tiny = shapes_of or parameter_shapes(UNetConfig(depth=2, base_channels=4))
    tensors = {f"model.{k}": (dtype, s, fill * (size * math.prod(s) // len(fill))) for k, s in tiny.items()}
    return write_safetensors(path, tensors, model_header(**model))
