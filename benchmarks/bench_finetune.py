"""Sparse scribbles: fine-tuned U-Net vs U-Net from scratch vs an ilastik-style random forest.

A user paints a few strokes (drawn here from the ground truth: thin strokes
*inside* objects and inside the background, a few % of the pixels, never whole
masks) on a handful of images, trains for a fixed budget of CPU time, and
looks at held-out images.

* EM (ISBI 2012): scribbles on slices 25-27, evaluated on 28-29. None of these
  slices was used to train the shipped ``em-membrane`` (0-24).
* nuclei (DSB 2018): scribbles on images 80-84, evaluated on 85-99 (the shipped
  ``nuclei`` model saw 0-79).

Arms (``--arms``):

``scratch``   U-Net depth 4 / 16 channels / valid, Adam 1e-3, class balance over
              the annotated pixels, eq. 2 border weights, elastic + flip + intensity
              augmentation (the package defaults for sparse labels).
``plain``     the same net with none of these: no class balance, no border weights,
              no augmentation (the prior probe).
``noaug``     ``scratch`` without augmentation; ``nobal`` without class balance/border weights;
              ``noelastic`` without the elastic deformation, ``nointensity`` without the intensity jitter.
``ft``        fine-tune the shipped model of the same kind (Adam 1e-4).
``ftlow``     the same with Adam 2e-5.
``ftnobal``   ``ft`` without class balance / border weights (plain cross-entropy on the strokes).
``ftkeep``    ``ft`` plus ``keep_prior=1``: unannotated pixels keep the starting model's
              prediction (distillation, ``train.prior_loss``); the widget's default.
``ftkeepsgd`` ``ftkeep`` with the CUDA recipe's optimizer (SGD, momentum 0.99) at the same rate.
``ftx``       fine-tune the shipped model of the *other* kind (a pretrained start
              from a different domain: EM -> nuclei, nuclei -> EM).
``auto``      the defaults: start, keep_prior and scale chosen on the strokes (``core/start.py``).
``autonoscale`` ``auto`` with the images at their own scale (``zoom=1``).
``autowhole`` ``auto`` with partly painted objects taught as interior (``partial_objects=False``, the
              recipe before ANY_OBJECT).
``asis``      ``auto``'s start (model and zoom) with no training: what choosing alone gives.
``rf``        ``skimage.feature.multiscale_basic_features`` + ``RandomForestClassifier``
              (100 trees) on the scribbled pixels: the ilastik pixel-classification recipe.

Budgets count *CPU time of the training process* (``time.process_time``, one
torch thread), so the curves do not depend on what else runs on a shared
machine. Snapshots of the weights are taken when the CPU clock crosses each
budget and evaluated after training, so evaluation never eats the budget.

Metric: foreground IoU on the held-out images (EM: membrane; nuclei: nucleus),
plus instance F1 at IoU 0.5 for nuclei.

    python benchmarks/bench_finetune.py em --arms rf,scratch,ft,ftx --budgets 0.5,1,2,3,5
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from napari_unet.core.data.labels import instances_from_semantic, isbi_to_instances
from napari_unet.core.data.zoom import zoom_labels, zoom_plane
from napari_unet.core.drain import drain
from napari_unet.core.evaluate import metrics
from napari_unet.core.models.load import load_model
from napari_unet.core.predict.tiles import predict
from napari_unet.core.train.config import TrainConfig, resolve_settings
from napari_unet.core.train.loop import iter_train
from napari_unet.core.train.weights import SIGMA, W0

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

SETS = {
    # train (scribbled) images, held-out test images; scored: 'membrane' (IoU of predicted class 0, the
    # background of instance labels) or 'objects' (IoU of classes >= 1); f1: count instances too
    "em": {"train": [25, 26, 27], "test": [28, 29], "fg": "membrane", "w0": 3.0, "ft": "em-membrane", "ftx": "nuclei"},
    "nuclei": {
        "train": [80, 81, 82, 83, 84],
        "test": list(range(85, 100)),
        "fg": "objects",
        "f1": True,
        "w0": W0,
        "ft": "nuclei",
        "ftx": "em-membrane",
    },
    # a new task for the EM model: mitochondria in another ssTEM stack (VNC, another preparation and
    # resolution); 'ft' starts from em-membrane, which calls mitochondria membrane
    "vnc-mito": {
        "train": [0, 4, 8, 12, 16],
        "test": [2, 10, 18, 19],
        "fg": "objects",
        "w0": W0,
        "ft": "em-membrane",
        "ftx": "nuclei",
    },
    # nuclei at another magnification: the DSB images zoomed 3x (objects 3x larger than the nuclei model knows)
    "nuclei-3x": {
        "train": [80, 81, 82, 83, 84],
        "test": list(range(85, 95)),
        "fg": "objects",
        "f1": True,
        "w0": W0,
        "ft": "nuclei",
        "ftx": "em-membrane",
        "zoom": 3.0,
    },
    # the EM model's own task in a new domain: membranes of the VNC stack
    "vnc-mem": {
        "train": [0, 4, 8, 12, 16],
        "test": [2, 10, 18, 19],
        "fg": "membrane",
        "w0": 3.0,
        "ft": "em-membrane",
        "ftx": "nuclei",
    },
}


# ----------------------------------------------------------------------------- data + scribbles


def load(which: str):
    """Image stack and instance-mode labels (1 = background/membrane, >= 2 objects), plus the truth."""
    if which.startswith("vnc"):
        img = tifffile.imread(DATA / "drosophila_vnc_sstem" / "raw.tif")
        raw = tifffile.imread(DATA / "drosophila_vnc_sstem" / "labels.tif")
        # objects: mitochondria (191) / cells (everything but membranes, <= 128), one id per component
        fg = raw == 191 if which == "vnc-mito" else raw > 128
        inst = np.stack([ndi.label(f)[0] for f in fg]).astype(np.int32)
        return img, np.where(inst > 0, inst + 1, 1).astype(np.int32), inst
    if which == "em":
        img = tifffile.imread(DATA / "isbi2012" / "train-volume.tif")
        raw = tifffile.imread(DATA / "isbi2012" / "train-labels.tif")
        return img, isbi_to_instances(raw), raw
    img = tifffile.imread(DATA / "dsb2018_nuclei_256" / "images.tif")
    inst = tifffile.imread(DATA / "dsb2018_nuclei_256" / "labels_instance.tif").astype(np.int32)
    zoom = SETS[which].get("zoom", 1.0)
    if zoom != 1.0:  # the images used (train + test) at another magnification: linear pixels, nearest labels
        keep = sorted(SETS[which]["train"] + SETS[which]["test"])
        big = np.zeros((len(img), *(round(n * zoom) for n in img.shape[1:])), np.uint8)
        big_inst = np.zeros(big.shape, np.int32)
        for i in keep:
            big[i] = np.clip(np.round(zoom_plane(img[i][None], zoom)[0]), 0, 255)
            big_inst[i] = zoom_labels(inst[i], zoom)
        img, inst = big, big_inst
    return img, np.where(inst > 0, inst + 1, 1).astype(np.int32), inst


def mistakes(pred: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Where a prediction (classes, >= 1 object) has the wrong object/background for instance labels
    (1 background, >= 2 objects): what a simulated user corrects."""
    return (pred >= 1) != (lab >= 2)


def _strokes(mask: np.ndarray, rng, *, n: int, length: int, erode: int, brush: int) -> np.ndarray:
    """``n`` strokes of about ``length`` px along the skeleton of ``mask`` (eroded), ``brush`` px wide."""
    inner = ndi.binary_erosion(mask, iterations=erode) if erode else mask
    if not inner.any():
        inner = mask
    skel = skeletonize(inner)
    pts = np.argwhere(skel)
    out = np.zeros(mask.shape, bool)
    if len(pts) == 0:
        return out
    lab, _ = ndi.label(skel, structure=np.ones((3, 3)))
    for _ in range(n):
        y, x = pts[rng.integers(len(pts))]
        # the part of this skeleton branch within length/2 of the seed: a stroke, not a mask
        yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
        near = ((yy - y) ** 2 + (xx - x) ** 2) <= (length / 2) ** 2
        seg = (lab == lab[y, x]) & near
        seg_l, _ = ndi.label(seg, structure=np.ones((3, 3)))
        out |= seg_l == seg_l[y, x]
    if brush > 1:
        out = ndi.binary_dilation(out, iterations=brush // 2) & mask
    return out


def scribbles(labels: np.ndarray, which: str, seed: int = 0) -> np.ndarray:
    """Sparse strokes from instance-mode ground truth; 0 = not annotated elsewhere."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for z in range(labels.shape[0]):
        lab = labels[z]
        bg = lab == 1
        if which == "vnc-mito":
            # wide background strokes away from mitochondria, two strokes along each mitochondrion >= 100 px
            s = _strokes(bg, rng, n=30, length=100, erode=4, brush=5)
            out[z][s] = 1
            ids, sizes = np.unique(lab[lab >= 2], return_counts=True)
            for i in ids[sizes >= 100]:
                s = _strokes(lab == i, rng, n=2, length=40, erode=2, brush=7)
                out[z][s] = i
        elif which in ("em", "vnc-mem"):
            # thin strokes along membranes (1 px brush, they are 3-6 px wide) ...
            s = _strokes(bg, rng, n=60, length=60, erode=0, brush=1)
            out[z][s] = 1
            # ... and one short stroke in each of 40 random cells
            ids = rng.permutation(np.unique(lab[lab >= 2]))[:40]
            for i in ids:
                s = _strokes(lab == i, rng, n=1, length=30, erode=3, brush=3)
                out[z][s] = i
        else:
            k = SETS[which].get("zoom", 1.0)  # at another magnification a user's strokes are as much longer
            s = _strokes(bg, rng, n=8, length=round(50 * k), erode=round(4 * k), brush=round(3 * k))
            out[z][s] = 1
            ids = np.unique(lab[lab >= 2])
            ids = rng.permutation(ids)[: max(3, int(0.6 * len(ids)))]
            for i in ids:
                s = _strokes(lab == i, rng, n=1, length=round(20 * k), erode=round(2 * k), brush=round(3 * k))
                out[z][s] = i
    return out


# ----------------------------------------------------------------------------- scoring


def score(pred_labels: list[np.ndarray], truth: np.ndarray, which: str, n_classes: int = 2) -> dict:
    """Foreground IoU (pooled over the test images), predicted / true foreground fraction, nuclei instance F1.

    Predictions are class indices: 0 = background (EM: membrane), 1 = object (cell, nucleus,
    mitochondrion), 2 = object border for a 3-class model. Truth: instances, 0 = background.
    """
    membrane = SETS[which]["fg"] == "membrane"
    p = np.stack([(pl == 0) if membrane else (pl >= 1) for pl in pred_labels])
    t = (truth == 0) if membrane else (truth > 0)
    inter, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
    out = {"iou": float(inter / max(union, 1)), "fg_fraction": float(p.mean()), "fg_truth": float(t.mean())}
    if SETS[which].get("f1"):
        inst = [instances_from_semantic(pl.astype(np.int64), n_classes) for pl in pred_labels]
        out["f1"] = float(np.mean([metrics.instance_f1(i, tr, 0.5)["f1"] for i, tr in zip(inst, truth)]))
    return out


def unet_predict(model, images) -> list[np.ndarray]:
    return [predict(model, im, output="labels") for im in images]


# ----------------------------------------------------------------------------- arms


def unet_arm(arm: str, which: str, img, scrib, test_img, test_truth, budgets_min, seed, log):
    s = SETS[which]
    init = {
        "ft": s["ft"],
        "ftlow": s["ft"],
        "ftnobal": s["ft"],
        "ftkeep": s["ft"],
        "ftkeepsgd": s["ft"],
        "ftx": s["ftx"],
        "auto": "auto",
        "autonoscale": "auto",
        "autowhole": "auto",
        "asis": "auto",
    }.get(arm)
    rec = {k: s.value for k, s in resolve_settings("cpu", init).items()}  # the widget's and the CLI's defaults
    keep_prior = {
        "ftkeep": 1.0,
        "ftkeepsgd": 1.0,
        "auto": None,
        "autonoscale": None,
        "autowhole": None,
        "asis": None,
    }.get(arm, 0.0)
    cfg = TrainConfig(
        depth=4,
        base_channels=16,
        padding="valid",
        dropout=0.5,
        label_mode="instance",
        border_class=None,  # as the start model has it (the default)
        w0=s["w0"],
        sigma=SIGMA,
        # None: the default (on from scratch or a contradicting start, off from a start that is kept)
        class_balance=False if arm in ("plain", "nobal", "ftnobal") else None,
        border_weights=False if arm in ("plain", "nobal", "ftnobal") else None,
        optimizer="sgd" if arm == "ftkeepsgd" else "adam",
        lr=2e-5 if arm == "ftlow" else rec["lr"],
        schedule="constant",
        steps=100_000,
        batch_size=1,
        tile_in=rec["tile_in"],
        augment=arm not in ("plain", "noaug"),
        elastic_sigma=0.0 if arm == "noelastic" else TrainConfig.elastic_sigma,
        intensity=arm != "nointensity",
        init=init,
        seed=seed,
        device="cpu",
        keep_prior=keep_prior,
        zoom=1.0 if arm == "autonoscale" else None,  # None: the start's (auto: the zoom it agrees best at)
        partial_objects=arm != "autowhole",
    )
    budgets = sorted(budgets_min)
    snaps = []
    cancel = threading.Event()
    if arm == "asis":  # the auto start's choice (model, zoom) used as it is: no step of training
        cancel.set()
        result = drain(iter_train(cfg, img, scrib, cancel=cancel), lambda ev: None)
        net = result.model.eval()
        r = {"minutes": 0.0, "steps": 0, "scale": result.info.zoom.get("input_zoom", 1.0)}
        r.update(score(unet_predict(net, test_img), test_truth, which, net.n_classes))
        log(f"{which}/{arm}: {r}")
        return [r], result.info.training["start"]
    c0 = time.process_time()  # includes data preparation (weight maps), as a user would wait for it

    def watch(ev):
        if ev.kind == "start":
            log(f"{which}/{arm}: {ev.message}")
            return
        cpu = time.process_time() - c0
        while len(snaps) < len(budgets) and cpu >= budgets[len(snaps)] * 60:
            # the weights at each CPU budget, from the event's snapshot: one run gives the whole curve
            snaps.append((budgets[len(snaps)], ev.step, ev.snapshot_model()))
            log(f"{which}/{arm}: {budgets[len(snaps) - 1]} min CPU at step {ev.step} (wall {ev.elapsed:.0f}s)")
        if len(snaps) == len(budgets):
            cancel.set()

    result = drain(iter_train(cfg, img, scrib, cancel=cancel), watch)
    rows = []
    if init and arm in ("ft", "ftlow", "ftnobal", "ftkeep"):  # the shipped model as it is, before any fine-tuning
        m0 = load_model(init)
        rows.append({"minutes": 0.0, "steps": 0, **score(unet_predict(m0, test_img), test_truth, which, m0.n_classes)})
    for minutes, step, net in snaps:
        net.eval()
        r = {
            "minutes": minutes,
            "steps": step,
            **score(unet_predict(net, test_img), test_truth, which, net.n_classes),
        }
        log(f"{which}/{arm}: {r}")
        rows.append(r)
    return rows, result.info.training["start"]


def rf_arm(which: str, img, scrib, test_img, test_truth, seed, log):
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    def feats(im):
        im = im.astype(np.float32)
        lo, hi = np.percentile(im, (1, 99.8))
        im = (im - lo) / (hi - lo if hi > lo else 1)
        return multiscale_basic_features(im, intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16)

    c0 = time.process_time()
    X, y = [], []
    for im, sc in zip(img, scrib):
        f = feats(im)
        ann = sc > 0
        X.append(f[ann])
        y.append((sc[ann] >= 2).astype(np.int64))  # 1 = object (cell / nucleus), 0 = background / membrane
    X, y = np.concatenate(X), np.concatenate(y)
    rf = RandomForestClassifier(n_estimators=100, max_depth=None, n_jobs=1, random_state=seed)
    rf.fit(X, y)
    fit_cpu = time.process_time() - c0
    preds = []
    for im in test_img:
        f = feats(im)
        preds.append(rf.predict(f.reshape(-1, f.shape[-1])).reshape(im.shape))
    r = {"minutes": round(fit_cpu / 60, 3), "steps": 0, **score(preds, test_truth, which)}
    log(f"{which}/rf: {r} ({len(y)} scribbled pixels)")
    return [r]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def set_up(args) -> None:
    """What every fine-tuning benchmark does first: its torch threads, its results folder."""
    torch.set_num_threads(args.threads)
    args.dir.mkdir(parents=True, exist_ok=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=list(SETS))
    ap.add_argument("--arms", default="rf,scratch,ft,ftx")
    ap.add_argument("--budgets", default="0.5,1,2,3,5", help="CPU minutes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="result file (one arm); default: DIR/ft_<set>_<arm>.json")
    ap.add_argument("--dir", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = ap.parse_args(argv)
    set_up(args)
    s = SETS[args.which]
    img, lab, truth = load(args.which)
    scrib = scribbles(lab[s["train"]], args.which, seed=args.seed)
    frac = float((scrib > 0).mean())
    log(
        f"{args.which}: scribbles cover {100 * frac:.2f}% of {len(s['train'])} images "
        f"({int((scrib == 1).sum())} background px, {int((scrib >= 2).sum())} object px)"
    )
    tag = "" if args.seed == 0 else f"_seed{args.seed}"  # other seeds draw other scribbles: keep both
    tifffile.imwrite(
        args.dir / f"scribbles_{args.which}{tag}.tif",
        scrib.astype(np.uint16),
        compression="zlib",
        photometric="minisblack",
    )
    test_img, test_truth = img[s["test"]], truth[s["test"]]
    budgets = [float(b) for b in args.budgets.split(",")]
    for arm in args.arms.split(","):
        out = args.out or args.dir / f"ft_{args.which}_{arm}.json"
        if arm == "rf":
            rows, start = rf_arm(args.which, img[s["train"]], scrib, test_img, test_truth, args.seed, log), ""
        else:
            rows, start = unet_arm(
                arm, args.which, img[s["train"]], scrib, test_img, test_truth, budgets, args.seed, log
            )
        out.write_text(
            json.dumps(
                {
                    "dataset": args.which,
                    "arm": arm,
                    "scribble_fraction": frac,
                    "train": s["train"],
                    "test": s["test"],
                    "start": start,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
