"""npe2 writer: a Labels layer -> zlib-compressed ImageJ TIFF, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_unet.core.data.files import TIFF_SUFFIXES
from napari_unet.core.data.files import write_labels as _write_labels


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write one Labels layer to ``path`` (``.tif`` appended when missing); returns ``[path]``.

    The layer's scale becomes the TIFF calibration: the last two entries are the
    pixel size (y, x) and, for a stack, the third-to-last the slice spacing. A
    scale of all ones (napari's default) writes no calibration.
    """
    p = Path(path)
    if p.suffix.lower() not in TIFF_SUFFIXES:
        p = p.with_name(p.name + ".tif")
    data = np.asarray(data)
    scale = tuple(float(s) for s in (meta or {}).get("scale", ()) or ())
    pixel_size = z = None
    if len(scale) == data.ndim and any(s != 1.0 for s in scale):
        pixel_size = scale[-2:]
        if data.ndim == 3:
            z = scale[0]
    unit = ((meta or {}).get("metadata") or {}).get("unit") or "µm"
    _write_labels(p, data, pixel_size=pixel_size, z_spacing=z, unit=unit)
    return [str(p)]
