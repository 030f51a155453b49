"""Big volumes: block-wise prediction of an OME-Zarr EM volume on dask.distributed, vs MONAI over dask.

The volume is built from the ISBI 2012 slices, tiled 4 x 4 and mirrored (every other tile flipped) into
2048 x 2048 planes, stored as an OME-Zarr (zarr v3) with 1 x 1024 x 1024 chunks. The shipped
``em-membrane`` model (depth 4, 16 channels, valid) predicts it with ``blocks.iter_predict_blocks``
on a LocalCluster of 1 and 2 worker processes, each limited to 2 GiB (dask's memory limit), writing
the labels into the same container (``labels/``). Measured: wall time (cluster start excluded),
throughput, peak resident memory of every worker process during the run (VmHWM, reset after a warm-up block
and read on the worker after the run) and its resident memory before any block (torch and dask loaded), for a volume and one 4x smaller: the peak
must not grow with the volume. The peer: MONAI's ``sliding_window_inference`` (roi 512, overlap 0.25,
the padded twin with the same weights) inside ``dask.array.map_overlap`` (halo 92 px, mirrored) on the
same cluster, writing with ``to_zarr``.

Precision: 'auto' (the CLI's default); the choice and its trial are in the table. Volumes: BENCH_SCALE_Z
planes (default 960: 4.03 GB, the issue's ">= 4 GB") with 2 workers, and a 4x smaller one with 1 and 2
(scaling; a 4 GB run takes most of an hour on this 2-core machine, so 1 worker runs there only with
``--arms big/1``); the
one-process reference and the MONAI peer run on BENCH_SCALE_PEER_Z planes (default 8: 34 MB), where a
whole-volume numpy output and MONAI's full-block buffers fit, next to ours on the same volume. Every run's numbers
go to benchmarks/results/scale.json as soon as it ends (``--reuse`` rewrites the docs section from it).

Run: ``python benchmarks/bench_scale.py`` (writes the ``scale`` section of docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import load_results, machine, machine_line, results_path, table, write_section

from napari_unet.core.data import ngff
from napari_unet.core.drain import drain
from napari_unet.core.models.load import load_model
from napari_unet.core.network.unet import UNet, margin
from napari_unet.core.predict.blocks import create_prediction, default_threads, iter_predict_blocks, local_cluster
from napari_unet.core.predict.config import PredictConfig
from napari_unet.core.predict.tiles import TRIAL_ROUNDS, choose_precision

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 2048
CHUNK = (1, 1024, 1024)
Z_BIG = int(os.environ.get("BENCH_SCALE_Z", "960"))
Z_PEER = int(os.environ.get("BENCH_SCALE_PEER_Z", "8"))
RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
MIB = 1 << 20


def build_volume(path: Path, nz: int) -> None:
    """``nz`` planes of 2048^2: ISBI slices tiled 4 x 4, every other tile mirrored, a different mix per plane."""
    vol = tifffile.imread(DATA / "isbi2012" / "train-volume.tif")
    arr = ngff.create_output(
        path,
        shape=(nz, SIZE, SIZE),
        dtype="uint8",
        chunks=CHUNK,
        axes="ZYX",
        scale=(0.05, 0.004, 0.004),
        unit="µm",
        labels=False,
    )
    n = SIZE // vol.shape[1]
    for z in range(nz):
        rows = []
        for r in range(n):
            tiles = []
            for c in range(n):
                t = vol[(z + r * n + c) % len(vol)]
                tiles.append(t[:, ::-1] if (r + c + z) % 2 else t)
            rows.append(np.concatenate(tiles, axis=1))
        arr[z] = np.concatenate(rows, axis=0)


def _rss() -> int:
    """Peak resident memory of this process since :func:`_reset_peak` (VmHWM; ru_maxrss is inherited over fork)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Start the peak over from the current resident memory (Linux >= 4.0: '5' > clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _current_rss():
    import psutil

    return psutil.Process().memory_info().rss


def _warm_up(precision: str, threads: int) -> None:
    """One interior block's worth of tiles on a worker, so that oneDNN's kernel set-up is not timed."""
    from napari_unet.core.predict.blocks import Block, predict_block

    zeros = np.zeros((1, *CHUNK[1:]), np.uint8)
    block = Block((0, 0, 0), (0, 1), (0, CHUNK[1]), (0, CHUNK[2]))
    config = PredictConfig(device="cpu", precision=precision, threads=threads)
    predict_block(load_model("em-membrane"), zeros, block, {0: (0.0, 255.0)}, config)


def ours(image_path: Path, workers: int, precision: str) -> dict:
    model = load_model("em-membrane")
    view, _ = ngff.read_ome_zarr(image_path)
    target = image_path / "labels" / f"unet-{workers}w"
    create_prediction(target, model, view.shape, chunks=CHUNK, pixel_size=(0.004, 0.004), z_spacing=0.05)
    client = local_cluster(workers, memory_limit="2GiB")
    try:
        start = client.run(_current_rss)
        client.run(_warm_up, precision, default_threads(workers))
        client.run(_reset_peak)
        t0 = time.perf_counter()
        config = PredictConfig(precision=precision, threads=default_threads(workers))
        drain(iter_predict_blocks(model, view, str(target), config, client=client))
        secs = time.perf_counter() - t0
        peak = client.run(_rss)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    return {"s": secs, "peak": max(peak.values()), "start": max(start.values()), "px": int(np.prod(view.shape))}


def one_process(image_path: Path, precision: str) -> dict:
    """The reference: ``tiles.predict`` in this process, whole planes, into a numpy array (no dask, no zarr)."""
    from napari_unet.core.predict.tiles import predict

    model = load_model("em-membrane")
    view, _ = ngff.read_ome_zarr(image_path)
    predict(model, view[:1, :1024, :1024], precision=precision, device="cpu")  # warm-up
    _reset_peak()
    t0 = time.perf_counter()
    predict(model, view, precision=precision, device="cpu")
    return {"s": time.perf_counter() - t0, "peak": _rss(), "start": 0, "px": int(np.prod(view.shape))}


def monai_peer(image_path: Path, workers: int, precision: str) -> dict:
    import dask.array as da

    model = load_model("em-membrane")
    same = UNet(depth=4, base_channels=16, padding="same", dropout=0.0).eval()
    same.load_state_dict(model.state_dict())
    m = margin(4)
    view, _ = ngff.read_ome_zarr(image_path)
    threads = default_threads(workers)

    def predict_block(block):
        import torch
        from monai.inferers import sliding_window_inference

        torch.set_num_threads(threads)
        x = torch.from_numpy(block.astype(np.float32) / 255.0)[:, None]
        bf16 = precision == "bf16"  # the same precision as ours
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = sliding_window_inference(x, roi_size=(512, 512), sw_batch_size=1, predictor=same, overlap=0.25)
        return y.argmax(1).to(torch.uint8).numpy()

    arr = da.from_zarr(view.array)
    out = da.map_overlap(predict_block, arr, depth=(0, m, m), boundary="reflect", dtype=np.uint8)
    target = Path(tempfile.mkdtemp(dir=image_path.parent)) / "monai.zarr"
    client = local_cluster(workers, memory_limit="2GiB")
    try:
        start = client.run(_current_rss)
        # warm-up: one block on every worker (torch, MONAI and oneDNN's kernels set up, as for ours)
        warm = da.zeros((workers, *CHUNK[1:]), dtype=np.uint8, chunks=CHUNK)
        da.map_overlap(predict_block, warm, depth=(0, m, m), boundary="reflect", dtype=np.uint8).compute()
        client.run(_reset_peak)
        t0 = time.perf_counter()
        out.to_zarr(str(target), compute=True)
        secs = time.perf_counter() - t0
        peak = client.run(_rss)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    return {"s": secs, "peak": max(peak.values()), "start": max(start.values()), "px": int(np.prod(view.shape))}


ARMS = ("peer/one", "peer/2", "peer/monai", "quarter/1", "quarter/2", "big/2")


def measure(arms, res: dict | None = None) -> dict:
    """Run ``arms`` ('volume/workers', 'peer/one', 'peer/monai'); each result lands in RESULTS as soon as it
    ends (a 4 GB run takes most of an hour here). Given ``res``, its precision is kept and its runs merged."""
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    vols = {
        "big": (root / "big.zarr", Z_BIG),
        "quarter": (root / "quarter.zarr", max(1, Z_BIG // 4)),
        "peer": (root / "peer.zarr", Z_PEER),
    }
    try:
        for name in dict.fromkeys(a.split("/")[0] for a in arms):
            path, nz = vols[name]
            t0 = time.perf_counter()
            build_volume(path, nz)
            print(f"built {path.name}: {nz} planes in {time.perf_counter() - t0:.0f} s", flush=True)
        if res is None:
            model = load_model("em-membrane")
            precision, why = choose_precision(model, ngff.read_ome_zarr(vols["peer"][0])[0])
            res = {"machine": machine(), "precision": precision, "why": why, "runs": {}}
        precision = res["precision"]
        print(f"precision {precision}: {res['why']}", flush=True)
        for key in arms:
            vol, arm = key.split("/")
            path = vols[vol][0]
            load0 = os.getloadavg()[0]
            try:
                if arm == "one":
                    r = one_process(path, precision)
                elif arm == "monai":
                    r = monai_peer(path, 2, precision)
                else:
                    r = ours(path, int(arm), precision)
            except ImportError as e:  # MONAI is in the 'bench' extra
                print(f"{key} skipped: {e}", flush=True)
                continue
            r["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
            res["runs"][key] = r
            print(key, r, flush=True)
            RESULTS.write_text(json.dumps(res, indent=1) + "\n")
        return res
    finally:
        shutil.rmtree(root, ignore_errors=True)


def precision_note() -> str:
    """Why the precision trial takes several rounds, and bench_predict's bf16 / fp32 ratio from its result file."""
    text = (
        f"\nThe automatic precision trial (one 444 px tile) alternates fp32 and bf16 in {TRIAL_ROUNDS} rounds and "
        "keeps the best time of each: on this shared machine a single back-to-back pair was decided by a burst of "
        "another job's load."
    )
    if results_path("predict").exists():
        times = load_results("predict")["times"]
        ratio = statistics.median(times["ours_labels"]) / statistics.median(times["ours_bf16"])
        text += (
            f" bench_predict measured bf16 at {ratio:.2f}x the speed of fp32 on the 2048 x 2048 image "
            '(section "Prediction" above, `benchmarks/results/predict.json`).'
        )
    return text + "\n"


def report(res: dict) -> None:
    runs = res["runs"]

    def row(label, key, workers):
        r = runs[key]
        return [
            label,
            f"{r['px'] / 1e6:.0f} MB",
            workers,
            round(r["s"], 1),
            round(r["px"] / r["s"] / 1e6, 2),
            round(r["start"] / MIB) if r["start"] else "-",
            round(r["peak"] / MIB),
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f}",
        ]

    header = [
        "run",
        "volume (uint8)",
        "workers",
        "s",
        "Mpx/s",
        "worker RSS before (MiB)",
        "worker peak RSS (MiB)",
        "load average at start / end",
    ]
    rows = []  # "before": after the cluster started, torch imported, before the warm-up
    if "peer/one" in runs:
        rows.append(
            row("napari-unet `tiles.predict`, one process, whole planes, no dask (peak: this process)", "peer/one", 0)
        )
    labels = {
        1: "napari-unet blocks",
        2: "napari-unet blocks",
        "monai": "MONAI sliding_window_inference in dask map_overlap",
    }
    for vol in ("peer", "quarter", "big"):
        for arm in (1, 2, "monai"):
            if f"{vol}/{arm}" in runs:
                rows.append(row(labels[arm], f"{vol}/{arm}", 2 if arm == "monai" else arm))
    big, q2 = runs["big/2"], runs["quarter/2"]
    vol = "big" if "big/1" in runs else "quarter"  # scaling where both worker counts ran
    one, two = runs[f"{vol}/1"], runs[f"{vol}/2"]
    peaks = [r["peak"] / MIB for k, r in runs.items() if k.split("/")[0] in ("quarter", "big")]
    text = (
        f"ISBI 2012 slices tiled 4 x 4 and mirrored into 2048 x 2048 planes, OME-Zarr (zarr v3) with "
        f"{CHUNK[1]} x {CHUNK[2]} chunks; the shipped em-membrane model (depth 4, 16 channels, valid); a dask "
        f"LocalCluster of worker processes, 2 GiB memory limit each, {default_threads(1)} torch threads shared out "
        f"(1 worker: {default_threads(1)} threads, 2 workers: {default_threads(2)} each). Precision "
        f"'{res['precision']}' (auto: {res['why']}). One run each. The last column is the machine's 1-minute "
        "load average at the start and the end of the run (2 cores: above ~2, other jobs shared them, and the "
        "rate is lower than the machine can do). The one-process row and the MONAI peer use a small volume (a "
        "whole-volume numpy output, MONAI's full-block buffers), next to ours on the same volume.\n\n"
        + table(header, rows)
        + f"\n\nThe {big['px'] / 1e9:.2f} GB volume with 2 workers: {big['s'] / 3600:.2f} h, "
        f"{big['px'] / big['s'] / 1e6:.2f} Mpx/s, with other jobs on the cores for part of the run (load "
        f"{big['load'][0]:.1f} at its start); the same 2 workers ran the 4x smaller volume at "
        f"{q2['px'] / q2['s'] / 1e6:.2f} Mpx/s (load {q2['load'][0]:.1f} at its start), which would be "
        f"{big['px'] / (q2['px'] / q2['s']) / 3600:.2f} h for the big one. From 1 to 2 workers on the {one['px'] / 1e9:.2f} GB volume: "
        f"{one['s'] / two['s']:.2f}x (this machine has 2 cores, so 2 workers of 1 thread compete for the cores "
        "1 worker of 2 threads uses, and ~1x is what to expect here; blocks are independent, so on N machines "
        "or GPUs the time divides by N up to the storage's bandwidth).\n"
        f"Peak memory per worker: {min(peaks):.0f}-{max(peaks):.0f} MiB on the {big['px'] / 1e9:.2f} GB volume "
        f"and the 4x smaller one ({q2['px'] / 1e9:.2f} GB): it does not grow with the volume (one block at a "
        "time, results written to disk, at most 3 blocks per worker in flight).\n"
    )
    if "peer/monai" in runs:
        mo, us = runs["peer/monai"], runs["peer/2"]
        text += (
            f"Against the peer on the same 2-worker cluster and volume: MONAI took {mo['s']:.1f} s, napari-unet "
            f"{us['s']:.1f} s ({mo['s'] / us['s']:.2f}x); peak per worker {mo['peak'] / MIB:.0f} vs "
            f"{us['peak'] / MIB:.0f} MiB (not the same prediction: a padded net, gaussian blending; ours equals the "
            "one-process result). MONAI was not run on the big volumes: at its rate it would take hours more, "
            "and the comparison is per block.\n"
        )
    text += "docs/scaling.md has the cluster command and the GPU estimate.\n" + precision_note()
    write_section("scale", "Big volumes: OME-Zarr, block-wise prediction on dask.distributed", text, machine_line(res))


def main() -> None:
    """``--reuse``: rewrite the docs from RESULTS; ``--arms a,b``: run these arms and merge them into RESULTS."""
    args = sys.argv[1:]
    if "--reuse" in args:
        res = json.loads(RESULTS.read_text())
    elif "--arms" in args:
        res = measure(args[args.index("--arms") + 1].split(","), json.loads(RESULTS.read_text()))
    else:
        res = measure(ARMS)
    report(res)


if __name__ == "__main__":
    main()
