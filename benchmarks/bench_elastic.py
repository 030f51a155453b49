"""Elastic deformation of a 512 x 512 image + labels: napari-unet vs elasticdeform vs scipy.

Run: ``python benchmarks/bench_elastic.py`` (writes benchmarks/results/elastic.json and, from it, the
``elastic`` section of docs/benchmarks.md; ``--reuse`` rewrites the section from the stored file).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, median, run, table, times, write_section

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


def measure() -> dict:
    """Wall times (s) of every repetition: ours, elasticdeform (None when not installed), scipy, ours batched."""
    # elasticdeform and scipy are single-threaded C: compare on one thread (also the robust choice on a
    # shared machine, where oversubscribed OpenMP threads make torch timings meaningless)
    torch.set_num_threads(1)
    img = tifffile.imread(DATA / "isbi2012" / "train-volume.tif", key=0).astype(np.float32)
    lab = tifffile.imread(DATA / "isbi2012" / "train-labels-instances-derived.tif", key=0).astype(np.int32) + 1
    rng = np.random.default_rng(0)
    res: dict = {"elastic_deform": times(lambda: elastic_deform(img, lab, rng=rng), repeat=21, warmup=2)}
    try:
        import elasticdeform

        res["elasticdeform"] = times(
            lambda: elasticdeform.deform_random_grid([img, lab], sigma=10, points=3, order=[3, 0]), repeat=7
        )
        res["elasticdeform_version"] = version("elasticdeform")
    except ImportError:
        res["elasticdeform"] = None
    res["scipy"] = times(lambda: scipy_deform(img, lab, rng), repeat=5)
    b = 8
    ti = torch.from_numpy(np.stack([img] * b)[:, None])
    tl = torch.from_numpy(np.stack([lab.astype(np.int64)] * b))
    g = torch.Generator().manual_seed(0)
    res["batch"] = b
    res["elastic_deform_torch_batch"] = times(lambda: elastic_deform_torch(ti, tl, generator=g), repeat=7)
    return res


def report(res: dict) -> None:
    ours = median(res["elastic_deform"])
    rows = [["napari-unet `elastic_deform` (torch grid_sample, bicubic + nearest)", ours * 1e3, 1.0]]
    if res["elasticdeform"] is None:
        rows.append(["elasticdeform (not installed)", float("nan"), float("nan")])
    else:
        ed = median(res["elasticdeform"])
        name = f"elasticdeform {res['elasticdeform_version']}"
        rows.append([f"{name} `deform_random_grid` (C, cubic B-spline + nearest)", ed * 1e3, ed / ours])
    sp = median(res["scipy"])
    rows.append(["scipy `map_coordinates` (order 3 with prefilter + order 0)", sp * 1e3, sp / ours])
    b = res["batch"]
    tb = median(res["elastic_deform_torch_batch"]) / b
    rows.append([f"napari-unet `elastic_deform_torch`, batch of {b}, per image (CPU)", tb * 1e3, ours / tb])
    body = (
        "One 512 x 512 ISBI image (float32) + instance labels, 3 x 3 control grid, sigma = 10 px, image cubic, "
        "labels nearest, mirror boundary; everything on one CPU thread. ratio = peer time / napari-unet time (for the batched row: "
        "`elastic_deform` time / per-image batched time). Medians of the repetitions in "
        "`benchmarks/results/elastic.json`.\n\n" + table(["method", "ms", "ratio"], rows)
    )
    write_section("elastic", "Elastic deformation (paper section 3.1)", body, machine_line(res))


def main() -> None:
    run("elastic", measure, report)


if __name__ == "__main__":
    main()
