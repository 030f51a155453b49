"""Training throughput on the CPU (issue 2): steps/s of ``iter_train`` with its FLOP bound.

Paper setting scaled to 16 channels: depth 4, valid convolutions, one 572 x 572 tile per
step (388 x 388 output), SGD with momentum, eq. 2 weights, elastic deformation + flips +
intensity jitter, instance-mode ISBI 2012 labels. The FLOP bound is the FLOPs of one
forward + backward pass (counted with ``torch.utils.flop_counter``, about 3x the forward)
at the best dense throughput of the padded twin measured in the same run. The time spent
sampling (crop + augmentation, ``sampling.sample_batch``) is measured by wrapping that
function from here; nothing in the library changes.

Run: ``python benchmarks/bench_train.py`` (writes the ``train`` section of docs/benchmarks.md).
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
from _report import table, write_section
from bench_predict import DATA, dense_throughput, flops, nets

from napari_unet.core.data.labels import isbi_to_instances
from napari_unet.core.network.unet import output_size
from napari_unet.core.train import sampling
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.loop import iter_train

STEPS = int(os.environ.get("BENCH_STEPS", "16"))
SKIP = 3  # first steps warm up oneDNN and the allocator
N_SLICES = 6  # weight maps are computed once per slice before the first step; keep setup short


def main() -> None:
    vol = tifffile.imread(DATA / "isbi2012" / "train-volume.tif")[:N_SLICES]
    lab = isbi_to_instances(tifffile.imread(DATA / "isbi2012" / "train-labels.tif")[:N_SLICES])
    tile = 572
    t_out = output_size(tile, 4)
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
    step_times = np.diff(stamps)[SKIP - 1 :]  # step k's time = stamp k - stamp k-1
    samp = np.array(sample_times[SKIP : SKIP + len(step_times)])
    t_step = float(np.median(step_times))
    t_samp = float(np.median(samp))

    # the bound, measured right after on the same machine
    valid, same = nets()
    fl_fwd = flops(valid.train(), tile)
    fl_step = flops(valid.train(), tile, backward=True)
    dense = dense_throughput(same)
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
instance-mode ISBI 2012 labels (first {N_SLICES} slices), elastic deformation + flips + intensity jitter, fp32, CPU,
{torch.get_num_threads()} torch threads. Median of steps {SKIP + 1}..{STEPS} of one run. Forward = {fl_fwd / 1e9:.1f} GFLOP,
forward + backward = {fl_step / 1e9:.1f} GFLOP ({fl_step / fl_fwd:.2f}x) per step; the bound divides it by the best dense
throughput of the padded twin measured in the same run ({dense[best]:.1f} GFLOP/s at {best}^2, forward, inference).
Sampling is {100 * t_samp / t_step:.0f} % of a step.

{table(["part", "ms / step", "steps/s", "output Mpx/s", "% of FLOP bound"], rows)}
"""
    write_section("train", "Training throughput, CPU (issue 2)", body)
    print(
        "sampling times (ms):",
        [round(1e3 * s) for s in samp],
        "step times (ms):",
        [round(1e3 * s) for s in step_times],
        statistics.median(step_times),
    )


if __name__ == "__main__":
    main()
