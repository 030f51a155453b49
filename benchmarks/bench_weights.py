"""Weight map (paper eq. 2) on ISBI 2012 label slices: napari-unet vs the naive per-object EDT.

Run: ``python benchmarks/bench_weights.py`` (writes benchmarks/results/weights.json and, from it, the
``weights`` section of docs/benchmarks.md; ``--reuse`` rewrites the section from the stored file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, median, run, table, times, write_section

from napari_unet.core.train.weights import weight_map, weight_map_reference

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(slices=(0, 10, 20)) -> dict:
    """Per label slice: its cells, the wall times (s) of ours and of the reference, and their max |difference|."""
    inst = tifffile.imread(DATA / "isbi2012" / "train-labels-instances-derived.tif")
    runs = []
    for z in slices:
        lab = inst[z].astype(np.int32) + 1  # membrane -> background (1), cells -> objects
        ours = times(lambda lab=lab: weight_map(lab), repeat=15, warmup=2)
        ref = times(lambda lab=lab: weight_map_reference(lab), repeat=1, warmup=0)
        diff = float(np.abs(weight_map(lab) - weight_map_reference(lab)).max())
        runs.append(
            {"slice": z, "cells": int(inst[z].max()), "weight_map": ours, "reference": ref, "max_abs_diff": diff}
        )
    return {"slices": runs}


def report(res: dict) -> None:
    rows = []
    for r in res["slices"]:
        ours, ref = median(r["weight_map"]), median(r["reference"])
        rows.append(
            [f"ISBI slice {r['slice']} ({r['cells']} cells)", ours * 1e3, ref * 1e3, ref / ours, r["max_abs_diff"]]
        )
    body = (
        "`weight_map(labels)` (w0 = 10, sigma = 5, class balance + border term) on 512 x 512 ISBI 2012 label "
        "slices versus `weight_map_reference` (one scipy Euclidean distance transform per cell, two smallest per "
        "pixel). Both truncate the border term below 1e-6 * w0, so they must agree exactly (max |diff| = 0). "
        "Medians of the repetitions in `benchmarks/results/weights.json`.\n\n"
        + table(["labels", "napari-unet ms", "naive per-cell EDT ms", "ratio", "max abs diff"], rows)
    )
    write_section("weights", "Weight map (paper eq. 2)", body, machine_line(res))


def main() -> None:
    run("weights", measure, report)


if __name__ == "__main__":
    main()
