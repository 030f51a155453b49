"""Shared fixtures: the plugin's bundled sample data, and the real data sets beside the repository.

Two tiers of data:

* ``em_sample`` / ``nuclei_sample``: crops of ISBI 2012 and DSB 2018 shipped in the package
  (src/napari_unet/sample_data/, 8 and 6 slices of 256 x 256). Every clone has them; unit, bad-input
  and GUI tests use them (or arrays made in the test).
* ``shared_data`` and the fixtures built on it (``isbi``, ``dsb``, the 3D and VNC sets): the full data
  sets in ``$NAPARI_UNET_SHARED/data``, ``../shared/data`` or ``./shared/data``. A test that needs them
  (held-out accuracy, the slices or sizes the samples do not have, the other data sets) is marked
  ``data`` automatically and skips with the reason when they are missing; the session ends with one
  line that counts those skips. ``NAPARI_UNET_SHARED=none`` hides the data sets, as on a fresh clone.
"""

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
NO_DATA = "none"  # NAPARI_UNET_SHARED=none: no data sets, as on a fresh clone


def _shared() -> Path | None:
    env = os.environ.get("NAPARI_UNET_SHARED")
    if env is not None and env.strip().lower() == NO_DATA:
        return None
    for cand in (env, REPO.parent / "shared", REPO / "shared"):
        if cand and (Path(cand) / "data").is_dir():
            return Path(cand) / "data"
    return None


SHARED = _shared()
MISSING = (
    "the real data sets are hidden (NAPARI_UNET_SHARED=none)"
    if os.environ.get("NAPARI_UNET_SHARED", "").strip().lower() == NO_DATA
    else "the real data sets are not here (no ../shared/data, ./shared/data or $NAPARI_UNET_SHARED/data)"
)


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses the real data sets (through ``shared_data``) with ``data``."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line: how many ``data`` tests skipped, why, and how to run them."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "data" in r.keywords]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) marked 'data' skipped: {MISSING}; put the data sets in ../shared/data "
            "or point NAPARI_UNET_SHARED at the folder that holds data/ to run them",
            yellow=True,
        )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets' folder (``.../shared/data``); skips the test when they are missing."""
    if SHARED is None:
        pytest.skip(MISSING)
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


@pytest.fixture(scope="session")
def em_sample():
    """The bundled ISBI 2012 crop (training slices 0-7, rows and columns 128:384) in ``isbi``'s layout:
    (image uint8 (8,256,256), labels 0 membrane / 255 cell, instances 0 membrane / 1..N per slice).

    The instances are derived as the real set's are, from the crop: each slice's 4-connected cells (a
    cell cut in two by the crop's edge is two cells, as the bundled labels' ids do not say)."""
    from scipy import ndimage

    from napari_unet._sample_data import load_em_sample

    image, labels = load_em_sample()  # 1 = membrane, >= 2 = cells
    cells = labels >= 2
    instances = np.stack([ndimage.label(c)[0] for c in cells]).astype(np.int32)
    return image, np.where(cells, 255, 0).astype(np.uint8), instances


@pytest.fixture(scope="session")
def em_planes(em_sample):
    """Four ISBI-sized EM planes (4, 512, 512) uint8, each a 2 x 2 mosaic of four different slices of the
    bundled crop: real texture, no two quarters alike, for grids that must not divide the plane."""
    e = em_sample[0]
    n = len(e)
    return np.stack([np.block([[e[z], e[(z + 3) % n]], [e[(z + 5) % n], e[(z + 6) % n]]]) for z in range(4)])


@pytest.fixture(scope="session")
def nuclei_sample():
    """The bundled DSB 2018 images (6 of the training images 0-79) in ``dsb``'s layout:
    (images uint8 (6,256,256), instance labels 0 bg / 1..N per image)."""
    from napari_unet._sample_data import load_nuclei_sample

    image, labels = load_nuclei_sample()  # 1 = background, >= 2 = nuclei
    return image, np.where(labels >= 2, labels - 1, 0).astype(np.int32)


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
