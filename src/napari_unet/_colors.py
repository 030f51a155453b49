"""One colour per meaning, on every Labels layer the plugin makes (the widgets and the sample data).

Training labels (Annotate, 'Correct it', the samples' ground truth, the deformed labels) use the training
convention: 0 = not annotated (transparent), 1 = background (a faint grey), 2, 3, ... = objects or classes,
each in napari's colour for that value. Predictions and their previews count from 0 = background
(transparent): their value v is shown in the colour of training value v + 1, so class 1 of a semantic
prediction has the colour of training class 2, and 'Correct it' (which adds 1) keeps every colour.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = (0.6, 0.6, 0.6, 0.35)  # training value 1: visible where painted, never hiding the image


def training_colormap():
    """The colormap of layers in the training convention (1 = background, grey)."""
    from napari.utils.colormaps import label_colormap
    from napari.utils.colormaps.colormap import CyclicLabelColormap

    base = label_colormap()
    colors = np.array(base.colors, dtype=np.float32, copy=True)
    colors[1] = BACKGROUND
    return CyclicLabelColormap(colors=colors, name="u-net training labels", seed=base.seed)


def output_colormap():
    """The colormap of predictions (0 = background, transparent): value v in the colour of training value v + 1."""
    from napari.utils.colormaps.colormap import CyclicLabelColormap

    train = training_colormap()
    t = np.asarray(train.colors)
    colors = np.concatenate([t[:1], np.roll(t[1:], -1, axis=0)])
    return CyclicLabelColormap(colors=colors, name="u-net predictions", seed=train.seed)
