"""Real sample data shipped in the package (see ``sample_data/README.md``).

``load_*`` return plain numpy arrays and work without napari (the CLI uses them); the npe2 sample-data
contributions, lists of layer data tuples, are in :mod:`napari_unet._sample_layers`. Labels use the
training convention of :mod:`napari_unet.core.labels` in instance mode:
1 = background, each value >= 2 = one object; slices are independent 2D images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

SAMPLE_DIR = Path(__file__).parent / "sample_data"
EM_FILES = ("em_isbi2012.tif", "em_isbi2012_labels.tif")
NUCLEI_FILES = ("nuclei_dsb2018.tif", "nuclei_dsb2018_labels.tif")


def _load(files: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    image, labels = (tifffile.imread(SAMPLE_DIR / f) for f in files)
    return image, labels


def load_em_sample() -> tuple[np.ndarray, np.ndarray]:
    """ISBI 2012 EM: (8, 256, 256) uint8 image and uint16 labels (1 = membrane, >= 2 = cells)."""
    return _load(EM_FILES)


def load_nuclei_sample() -> tuple[np.ndarray, np.ndarray]:
    """DSB 2018 nuclei: (6, 256, 256) uint8 image and uint16 labels (1 = background, >= 2 = nuclei)."""
    return _load(NUCLEI_FILES)
