"""The npe2 sample-data contributions: the bundled samples (:mod:`napari_unet._sample_data`) as layers.

The ground truth is named apart from the labels a user paints ('EM (ISBI 2012) labels' from Annotate)
and shown in the training colours (:mod:`napari_unet._colors`).
"""

from __future__ import annotations

from ._colors import training_colormap
from ._sample_data import load_em_sample, load_nuclei_sample

EM_TRUTH, NUCLEI_TRUTH = "EM ground truth (do not paint)", "Nuclei ground truth (do not paint)"


def _truth_kwargs(name: str, meanings: list[str]) -> dict:
    """Layer kwargs of a sample's ground truth: its name, the training colours, what 0 and 1 mean on hover."""
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
