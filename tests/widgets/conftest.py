"""GUI test fixtures: a viewer with the plugin's own sample data, and widgets docked through the manifest."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fresh_state(tmp_path):
    """Forget the session's models; trained runs are saved to a folder of the test's, never the user's
    (its own MonkeyPatch: a test's ``monkeypatch.undo()`` leaves it set)."""
    from napari_unet._widgets import _state

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(_state.MODELS_ENV, str(tmp_path / "unet-models"))
        _state.clear()
        yield
        _state.clear()


@pytest.fixture
def errors(monkeypatch):
    """The error notifications a widget shows (collected instead of shown)."""
    got = []
    monkeypatch.setattr("napari.utils.notifications.show_error", got.append)
    return got


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def em_viewer(viewer):
    """A viewer with the EM sample (image + instance labels) opened through the manifest."""
    viewer.open_sample("napari-unet", "em")
    return viewer


@pytest.fixture
def tiny_em():
    """A small crop of the EM sample with sparse labels (2 slices annotated)."""
    from napari_unet._sample_data import load_em_sample

    image, labels = load_em_sample()
    return np.ascontiguousarray(image[:3, :128, :128]), np.ascontiguousarray(labels[:3, :128, :128])
