"""Elastic deformation of a 512 x 512 image + labels: napari-unet vs elasticdeform vs scipy.

Run: ``python benchmarks/bench_elastic.py`` (writes the ``elastic`` section of docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import table, timeit, write_section

from napari_unet.core.train.augment import (
    coarse_displacements,
    dense_displacement,
    elastic_deform,
    elastic_deform_torch,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def scipy_deform(img, lab, rng):
    disp = dense_displacement(coarse_displacements(rng, 3, 10.0), img.shape)
    coords = np.mgrid[: img.shape[0], : img.shape[1]].astype(np.float32) + disp
    return (
        ndi.map_coordinates(img.astype(np.float32), coords, order=3, mode="mirror"),
        ndi.map_coordinates(lab, coords, order=0, mode="mirror"),
    )


def main() -> None:
    # elasticdeform and scipy are single-threaded C: compare on one thread (also the robust choice on a
    # shared machine, where oversubscribed OpenMP threads make torch timings meaningless)
    torch.set_num_threads(1)
    img = tifffile.imread(DATA / "isbi2012" / "train-volume.tif", key=0).astype(np.float32)
    lab = tifffile.imread(DATA / "isbi2012" / "train-labels-instances-derived.tif", key=0).astype(np.int32) + 1
    rng = np.random.default_rng(0)
    rows = []
    ours = timeit(lambda: elastic_deform(img, lab, rng=rng), repeat=21, warmup=2)
    rows.append(["napari-unet `elastic_deform` (torch grid_sample, bicubic + nearest)", ours * 1e3, 1.0])
    try:
        import elasticdeform

        ed = timeit(lambda: elasticdeform.deform_random_grid([img, lab], sigma=10, points=3, order=[3, 0]), repeat=7)
        rows.append(["elasticdeform 0.5 `deform_random_grid` (C, cubic B-spline + nearest)", ed * 1e3, ed / ours])
    except ImportError:
        rows.append(["elasticdeform (not installed)", float("nan"), float("nan")])
    sp = timeit(lambda: scipy_deform(img, lab, rng), repeat=5)
    rows.append(["scipy `map_coordinates` (order 3 with prefilter + order 0)", sp * 1e3, sp / ours])
    b = 8
    ti = torch.from_numpy(np.stack([img] * b)[:, None])
    tl = torch.from_numpy(np.stack([lab.astype(np.int64)] * b))
    g = torch.Generator().manual_seed(0)
    tb = timeit(lambda: elastic_deform_torch(ti, tl, generator=g), repeat=7)
    rows.append([f"napari-unet `elastic_deform_torch`, batch of {b}, per image (CPU)", tb / b * 1e3, ours / (tb / b)])
    body = (
        "One 512 x 512 ISBI image (float32) + instance labels, 3 x 3 control grid, sigma = 10 px, image cubic, "
        "labels nearest, mirror boundary; everything on one CPU thread. ratio = peer time / napari-unet time (for the batched row: "
        "`elastic_deform` time / per-image batched time).\n\n" + table(["method", "ms", "ratio"], rows)
    )
    write_section("elastic", "Elastic deformation (paper section 3.1)", body)


if __name__ == "__main__":
    main()
