"""Multichannel images in the widgets: a file's channel layers (napari's channel_axis split) or an RGB
layer train a model with that many input channels, and Predict feeds it the same channels."""

import numpy as np
import pytest
from scipy import ndimage
from widget_helpers import dock

from napari_unet._widgets import _state
from napari_unet.core.predict.tiles import predict

pytestmark = pytest.mark.gui


@pytest.fixture
def two_channel_viewer(viewer, nuclei_sample):
    """DSB nuclei (2 bundled slices) plus a second channel made from them, opened as napari opens a
    2-channel file."""
    images, labels = nuclei_sample
    grey = images[:2, :96, :112]
    other = (255 - ndimage.gaussian_filter(grey.astype(np.float32), (0, 3, 3))).astype(np.uint8)
    viewer.add_image(np.stack([grey, other]), channel_axis=0, name=["nuclei", "other"])
    lab = np.zeros(grey.shape, np.uint16)  # strokes: background 1, nuclei 2.. on slice 0
    truth = labels[0, :96, :112]
    lab[0][truth > 0] = truth[truth > 0] + 1
    lab[0][:8] = 1
    viewer.add_labels(lab, name="strokes")
    return viewer


def tiny(w):
    w.start.value = "scratch"
    w.device.value = "cpu"
    w.depth.value, w.base_channels.value, w.tile_in.value = 2, 4, 92
    w.steps.value, w.preview_every.value = 3, 0


def test_channel_layers_train_and_predict_a_two_channel_model(two_channel_viewer, qtbot, errors):
    viewer = two_channel_viewer
    w = dock(viewer, "Train")
    tiny(w)
    row = w.pairs[0]
    assert row.channels.native.isVisibleTo(w.native)  # two grey layers of one shape: a multichannel file
    row.image.value, row.labels.value = viewer.layers["nuclei"], viewer.layers["strokes"]
    row.channels.value = [viewer.layers["other"]]
    job = w._on_train()
    assert job is not None, errors
    qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=60_000)
    assert w.result.model.config.in_channels == 2

    p = dock(viewer, "Predict")
    qtbot.waitUntil(lambda: _state.latest() is not None, timeout=10_000)
    p.model.value = _state.latest()
    p.image.value = viewer.layers["nuclei"]
    p.channels.value = []
    assert p._on_predict() is None  # one channel for a two-channel model: says what to add
    assert "expects 2 input channel(s), 'nuclei' gives 1" in errors[-1] and "+ channels" in errors[-1]
    p.channels.value = [viewer.layers["other"]]
    p.output.value = "probability map"
    job = p._on_predict()
    assert job is not None, errors
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert p.layer.data.shape == (2, 96, 112)
    z = p.predicted_slices[0]
    both = np.stack([viewer.layers["nuclei"].data[z], viewer.layers["other"].data[z]], axis=-1)
    expect = predict(w.result.model, both, channel_axis=-1, output="probabilities")
    np.testing.assert_allclose(p.probabilities[:, z], expect, atol=1e-5)


def test_rgb_layer_is_three_channels(viewer, nuclei_sample, qtbot, errors):
    images, labels = nuclei_sample
    rgb = np.stack([images[0, :96, :112]] * 3, axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    lab = np.where(labels[0, :96, :112] > 0, 2, 1).astype(np.uint16)
    viewer.add_labels(lab, name="strokes")
    w = dock(viewer, "Train")
    tiny(w)
    w.pairs[0].image.value, w.pairs[0].labels.value = viewer.layers["colour"], viewer.layers["strokes"]
    assert not w.pairs[0].channels.native.isVisibleTo(w.native)  # no two grey layers of one shape: nothing to combine
    job = w._on_train()
    assert job is not None, errors
    qtbot.waitUntil(lambda: w.result is not None and not job.running, timeout=60_000)
    assert w.result.model.config.in_channels == 3
    p = dock(viewer, "Predict")
    p.model.value = "nuclei"  # a grey model on colour: told to split the layer
    p.image.value = viewer.layers["colour"]
    assert p._on_predict() is None
    assert "expects 1 input channel(s), 'colour' gives 3" in errors[-1] and "Split RGB" in errors[-1]
