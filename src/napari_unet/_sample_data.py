"""Real sample data shipped in the package (see ``sample_data/README.md``).

``load_*`` return plain numpy arrays and work without napari; ``make_*`` are the
npe2 sample-data contributions (lists of layer data tuples). Labels use the
training convention of :mod:`napari_unet.core.labels` in instance mode:
1 = background, each value >= 2 = one object; slices are independent 2D images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

SAMPLE_DIR = Path(__file__).parent / "sample_data"
EM_FILES = ("em_isbi2012.tif", "em_isbi2012_labels.tif")
# the full ground truth, named apart from the labels a user paints ('EM (ISBI 2012) labels' from Annotate)
EM_TRUTH, NUCLEI_TRUTH = "EM ground truth (do not paint)", "Nuclei ground truth (do not paint)"
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


def _truth_kwargs(name: str, meanings: list[str]) -> dict:
    """Layer kwargs of a sample's ground truth: its name, the training colours, what 0 and 1 mean on hover."""
    from napari_unet._colors import training_colormap

    return {
        "name": name,
        "colormap": training_colormap(),
        "features": {"index": [0, 1], "meaning": meanings},
        "metadata": {"ground_truth": True},
    }


def make_em_sample():
    """npe2 sample data: the EM crop with its instance-mode ground truth (1 = membrane, >= 2 = cells)."""
    image, labels = load_em_sample()
    return [
        (image, {"name": "EM (ISBI 2012)"}, "image"),
        (labels, _truth_kwargs(EM_TRUTH, ["not annotated", "membrane (background)"]), "labels"),
    ]


def make_nuclei_sample():
    """npe2 sample data: six DSB 2018 nuclei images with instance-mode ground truth (1 = background)."""
    image, labels = load_nuclei_sample()
    return [
        (image, {"name": "Nuclei (DSB 2018)"}, "image"),
        (labels, _truth_kwargs(NUCLEI_TRUTH, ["not annotated", "background"]), "labels"),
    ]
