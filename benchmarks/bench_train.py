"""Training throughput on the CPU (issue 2): steps/s of ``iter_train`` with its FLOP bound.

Paper setting scaled to 16 channels: depth 4, valid convolutions, one 572 x 572 tile per
step (388 x 388 output), SGD with momentum, eq. 2 weights, elastic deformation + flips +
intensity jitter, instance-mode ISBI 2012 labels. The FLOP bound is the FLOPs of one
forward + backward pass (counted with ``torch.utils.flop_counter``, about 3x the forward)
at the best dense throughput of the padded twin measured in the same run. The time spent
sampling (crop + augmentation, ``sampling.sample_batch``) is measured by wrapping that
function from here; nothing in the library changes.

Run: ``python benchmarks/bench_train.py`` (writes benchmarks/results/train.json and, from it, the
``train`` section of docs/benchmarks.md; ``--reuse`` rewrites the section from the stored file).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine_line, run, table, write_section
from bench_predict import DATA, dense_throughput, flops, nets

from napari_unet.core.data.labels import isbi_to_instances
from napari_unet.core.network.unet import output_size
from napari_unet.core.train import sampling
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.loop import iter_train

STEPS = int(os.environ.get("BENCH_STEPS", "16"))
SKIP = 3  # first steps warm up oneDNN and the allocator
N_SLICES = 6  # weight maps are computed once per slice before the first step; keep setup short


def measure() -> dict:
    """Wall time of every step and of its sampling (s), the step's FLOPs and the padded twin's dense GFLOP/s."""
    vol = tifffile.imread(DATA / "isbi2012" / "train-volume.tif")[:N_SLICES]
    lab = isbi_to_instances(tifffile.imread(DATA / "isbi2012" / "train-labels.tif")[:N_SLICES])
    tile = 572
    cfg = TrainConfig(
        depth=4,
        base_channels=16,
        label_mode="instance",
        tile_in=tile,
        batch_size=1,
        steps=STEPS,
        device="cpu",
        seed=0,
        log_every=1,
    )

    sample_times: list[float] = []
    orig = sampling.sample_batch

    def timed_sample(*a, **kw):
        t0 = time.perf_counter()
        r = orig(*a, **kw)
        sample_times.append(time.perf_counter() - t0)
        return r

    sampling.sample_batch = timed_sample
    stamps: list[float] = []
    try:
        gen = iter_train(cfg, vol, lab)
        for ev in gen:
            if ev.kind == "step":
                stamps.append(time.perf_counter())
    finally:
        sampling.sample_batch = orig

    # the bound, measured right after on the same machine
    valid, same = nets()
    return {
        "tile_in": tile,
        "tile_out": output_size(tile, 4),
        "steps": STEPS,
        "skip": SKIP,
        "slices": N_SLICES,
        "threads": torch.get_num_threads(),
        "step_times": np.diff(stamps).tolist(),  # step k's time = stamp k - stamp k-1, from step 2 on
        "sample_times": sample_times,
        "flops_forward": flops(valid.train(), tile),
        "flops_step": flops(valid.train(), tile, backward=True),
        "dense_gflops": {str(k): v for k, v in dense_throughput(same).items()},
    }


def report(res: dict) -> None:
    skip, tile, t_out = res["skip"], res["tile_in"], res["tile_out"]
    step_times = np.array(res["step_times"][skip - 1 :])
    samp = np.array(res["sample_times"][skip : skip + len(step_times)])
    t_step = float(np.median(step_times))
    t_samp = float(np.median(samp))
    fl_fwd, fl_step = res["flops_forward"], res["flops_step"]
    dense = {int(k): v for k, v in res["dense_gflops"].items()}
    best = max(dense, key=dense.get)
    bound_s = fl_step / (dense[best] * 1e9)
    # what an ideal (sampling-free) step would be at the measured throughput
    rows = [
        [
            "`iter_train` step (sample + augment + forward + backward + SGD)",
            t_step * 1e3,
            1 / t_step,
            t_out * t_out / t_step / 1e6,
            100 * bound_s / t_step,
        ],
        ["  of which sampling + augmentation (`_sample_batch`)", t_samp * 1e3, "", "", ""],
        [
            "  of which forward + backward + optimizer (rest)",
            (t_step - t_samp) * 1e3,
            1 / (t_step - t_samp),
            t_out * t_out / (t_step - t_samp) / 1e6,
            100 * bound_s / (t_step - t_samp),
        ],
        [
            f"FLOP bound ({fl_step / 1e9:.1f} GFLOP per step at {dense[best]:.1f} GFLOP/s)",
            bound_s * 1e3,
            1 / bound_s,
            t_out * t_out / bound_s / 1e6,
            100.0,
        ],
    ]
    body = f"""U-Net depth 4, 16 base channels, valid convolutions, paper tile {tile} -> {t_out}, batch 1, SGD momentum 0.99,
instance-mode ISBI 2012 labels (first {res["slices"]} slices), elastic deformation + flips + intensity jitter, fp32, CPU,
{res["threads"]} torch threads. Median of steps {skip + 1}..{res["steps"]} of one run (every step's time in
`benchmarks/results/train.json`). Forward = {fl_fwd / 1e9:.1f} GFLOP,
forward + backward = {fl_step / 1e9:.1f} GFLOP ({fl_step / fl_fwd:.2f}x) per step; the bound divides it by the best dense
throughput of the padded twin measured in the same run ({dense[best]:.1f} GFLOP/s at {best}^2, forward, inference).
Sampling is {100 * t_samp / t_step:.0f} % of a step.

{table(["part", "ms / step", "steps/s", "output Mpx/s", "% of FLOP bound"], rows)}
"""
    write_section("train", "Training throughput, CPU (issue 2)", body, machine_line(res))
    print(
        "sampling times (ms):",
        [round(1e3 * s) for s in samp],
        "step times (ms):",
        [round(1e3 * s) for s in step_times],
        statistics.median(step_times),
    )


def main() -> None:
    run("train", measure, report)


if __name__ == "__main__":
    main()
