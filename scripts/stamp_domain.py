"""Add the domain signature (core/start.py) of their training images to the shipped models.

Models trained with this version carry it already (``iter_train`` stores the
signature of its training slices in ``info.training['domain']``); the shipped
ones were trained before, so it is computed here from the same images they were
trained on (em-membrane: ISBI 2012 slices 0-24; nuclei: DSB 2018 images 0-79),
normalised as in training. The weights are not touched (re-saved as float16,
exactly as they were).

    python scripts/stamp_domain.py
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_models import EM_TRAIN, MODELS, NUC_TRAIN, load_dsb, load_isbi  # noqa: E402

from napari_unet.core.data.intensity import percentiles, scale_intensity
from napari_unet.core.models.checkpoint import save_model
from napari_unet.core.models.load import load_model
from napari_unet.core.train.start import domain_signature


def signature(images, low: float, high: float) -> dict:
    planes = (scale_intensity(im, *percentiles(im, low, high)) for im in images.astype(np.float32))
    return domain_signature(planes)


def main():
    for name, images in (("em-membrane", load_isbi()[0][EM_TRAIN]), ("nuclei", load_dsb()[0][NUC_TRAIN])):
        path = MODELS / f"{name}.safetensors"
        model = load_model(path)
        norm = model.info.normalization
        training = dict(model.info.training, domain=signature(images, norm["low"], norm["high"]))
        save_model(path, model, info=replace(model.info, training=training), half=True)
        print(f"{name}: domain signature of {len(images)} training images stored in {path}")


if __name__ == "__main__":
    main()
