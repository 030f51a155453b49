"""Annotate: a new Labels layer for painting training labels on an image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, Label, PushButton

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

BRUSH_SIZE = 10


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
        )
        labels.brush_size = BRUSH_SIZE
        labels.selected_label = 1  # background first: cheap to paint, and needed by every loss
        labels.mode = "paint"
        self.viewer.layers.selection.active = labels
        return labels
