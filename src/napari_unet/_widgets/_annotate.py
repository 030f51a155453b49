"""Annotate: a new Labels layer for painting training labels on an image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from .._colors import training_colormap
from ._dock import fit_dock
from ._layers import check_image_layer, follow_layers, layer_picker

if TYPE_CHECKING:
    import napari

CONVENTION = (
    "<b>Label values</b><br>"
    "0 = not annotated (ignored by training)<br>"
    "1 = background<br>"
    "2, 3, ... = objects (instance mode: one value per object, "
    "press M for the next free value) or classes (semantic mode)<br>"
    "Paint on any slice: every painted slice is training data."
)

BRUSH_SIZE = 10  # the largest brush Annotate picks (px)


def brush_size(shape) -> int:
    """A brush for planes of ``shape``: 1/50 of the shorter side, 2 to :data:`BRUSH_SIZE` px.

    5 px on the 256 px EM sample, about a membrane's width there: strokes stay on the membrane and
    inside cells, and a thin structure is painted without covering its neighbours.
    """
    return int(np.clip(round(min(int(v) for v in shape[-2:]) / 50), 2, BRUSH_SIZE))


# what the values of a training labels layer mean, shown on hover (napari's status bar reads 'features')
MEANINGS = {"index": [0, 1], "meaning": ["not annotated", "background"]}


class AnnotateWidget(Container):
    """Create a Labels layer matched to an image (shape, scale, translate) with a painting brush."""

    def __init__(self, viewer: napari.viewer.Viewer):  # npe2 injects the viewer
        super().__init__(labels=False)
        self.viewer = viewer
        self.image = layer_picker(viewer, "image", inputs=True, label="image")
        self.new_labels = PushButton(text="New training labels")
        self.help = Label(value=CONVENTION)
        self.help.native.setWordWrap(True)
        self.extend([self.image, self.new_labels, self.help])
        self.new_labels.changed.connect(self._on_new_labels)
        follow_layers(viewer, self)
        fit_dock(self)  # scrolls in its dock, tabs with the plugin's other docks

    def _on_new_labels(self, *_):
        """Add '<image> labels' (all 0 = not annotated), select it, and pick the brush."""
        from napari.utils.notifications import show_error

        layer = self.image.value
        try:
            check_image_layer(layer)  # an RGB image's colours are channels for a model
        except ValueError as e:
            show_error(str(e))
            return None
        name = f"{layer.name} labels"
        if name in self.viewer.layers:  # never overwrite someone's painting
            k = 2
            while f"{name} {k}" in self.viewer.layers:
                k += 1
            name = f"{name} {k}"
        dtype = np.uint16  # room for thousands of instances, half the memory of int32
        labels = self.viewer.add_labels(
            np.zeros(layer.data.shape[:-1] if layer.rgb else layer.data.shape, dtype=dtype),
            name=name,
            scale=layer.scale,
            translate=layer.translate,
            metadata={"training_labels_for": layer.name},
            colormap=training_colormap(),
            features=MEANINGS,
        )
        labels.brush_size = brush_size(labels.data.shape)
        labels.selected_label = 1  # background first: cheap to paint, and needed by every loss
        labels.mode = "paint"
        self.viewer.layers.selection.active = labels
        return labels
