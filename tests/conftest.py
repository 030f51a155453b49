"""Shared fixtures: the real data sets beside the repository (../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# Property tests (tests/core/*/test_properties_*.py): the same examples on every run and machine
# (derandomize), no example database written into the worktree, no per-example deadline (a
# shared 2-core CI box has slow moments). Each test sets its own modest max_examples.
settings.register_profile("napari-unet", derandomize=True, database=None, deadline=None)
settings.load_profile("napari-unet")

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path | None:
    for cand in (os.environ.get("NAPARI_UNET_SHARED"), REPO.parent / "shared", REPO / "shared"):
        if cand and (Path(cand) / "data").is_dir():
            return Path(cand) / "data"
    return None


SHARED = _shared()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if SHARED is None:
        pytest.skip("../shared/data is not available")
    return SHARED


@pytest.fixture(scope="session")
def isbi(shared_data):
    """ISBI 2012: (image uint8 (30,512,512), labels 0 membrane / 255 cell, instances 0 membrane / 1..N)."""
    import tifffile

    d = shared_data / "isbi2012"
    return (
        tifffile.imread(d / "train-volume.tif"),
        tifffile.imread(d / "train-labels.tif"),
        tifffile.imread(d / "train-labels-instances-derived.tif"),
    )


@pytest.fixture(scope="session")
def dsb(shared_data):
    """DSB 2018 nuclei: (images uint8 (100,256,256), instance labels 0 bg / 1..N)."""
    import tifffile

    d = shared_data / "dsb2018_nuclei_256"
    return tifffile.imread(d / "images.tif"), tifffile.imread(d / "labels_instance.tif")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (hypothesis runs many small predictions), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
