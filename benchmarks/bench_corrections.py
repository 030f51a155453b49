"""Corrections that count: a simulated user paints strokes where the prediction is wrong, two or three rounds.

The loop a user runs in napari: paint a few strokes, train (the defaults: start
'auto'), look at the prediction on the painted images, paint strokes over the
mistakes, train again, ... Here the user is simulated from the ground truth:

* round 0: the strokes of ``bench_finetune.scribbles`` (a few % of the pixels);
* round r >= 1, ``--mode dense`` (the Predict widget's "Correct it: to training
  labels"): predict instances on the painted images with the model of round
  r-1, turn them into training labels (every pixel: 1 = background, one value
  per object), lay the user's earlier strokes over them, and paint over the
  mistakes: find the connected regions where the prediction is wrong
  (>= ``--min-error`` px) and paint one stroke (``--brush`` px wide,
  ~``--length`` px long, along the region's skeleton) with the true label in each
  of the ``--per-image`` largest ones (objects get a new label value, as napari's
  label picker offers);
* ``--confident P`` (dense): pixels the model predicts with less than probability P
  are left unpainted in the corrected labels (they then learn from the kept start's
  soft prediction, not from its hard guess);
* ``--mode strokes``: the same correction strokes added to the sparse strokes
  (no dense labels);
* ``--user region`` (dense; Cellpose 2.0's loop): instead of one stroke in each of
  the largest wrong regions, the user corrects *every* mistake in one
  ``--square`` px square per image and round, the square holding the most wrong
  pixels; an object completed there keeps the value of the predicted object it
  overlaps most (napari's label picker), a missed one gets a new value.
  ``--user all``: every pixel corrected, i.e. the training images' full truth
  from round 1 on: the ceiling of any correction for the recipe and budget;
* every round trains with the widget's and the CLI's defaults (``init='auto'``,
  keep_prior by agreement) for ``--budget`` CPU minutes; the candidates are the
  shipped models and the model of the previous round (the user's own), as in
  the Train widget, which offers the model it just trained.

Printed and written (``benchmarks/results/adapt/corrections_<set>.json``):
held-out IoU (and instance F1 for nuclei) after each round, the start model as
it is, how many pixels were painted, and which start 'auto' chose.

    python benchmarks/bench_corrections.py em --rounds 2 --budget 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_finetune import RESULTS, SETS, _strokes, load, log, mistakes, score, scribbles, set_up, unet_predict
from scipy import ndimage as ndi

from napari_unet.core.data.labels import instances_from_semantic
from napari_unet.core.drain import drain
from napari_unet.core.models.checkpoint import save_model
from napari_unet.core.models.load import load_model
from napari_unet.core.predict.tiles import predict
from napari_unet.core.train.config import TrainConfig, resolve_settings
from napari_unet.core.train.loop import iter_train


def correction_strokes(pred: np.ndarray, lab: np.ndarray, fixed: np.ndarray, rng, args) -> np.ndarray:
    """Strokes (instance-mode values, 0 elsewhere) over the largest regions where ``pred`` (classes) is wrong,
    outside the pixels ``fixed`` already holds."""
    pred_obj = pred >= 1
    true_obj = lab >= 2
    out = np.zeros_like(lab)
    regions = []
    for wrong in (pred_obj & ~true_obj, ~pred_obj & true_obj):  # false objects, missed objects
        comp, n = ndi.label(wrong & ~fixed)
        if n:
            sizes = ndi.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
            regions += [(s, comp == i + 1) for i, s in enumerate(sizes) if s >= args.min_error]
    regions.sort(key=lambda r: -r[0])
    for _, mask in regions[: args.per_image]:
        s = _strokes(mask, rng, n=1, length=args.length, erode=0, brush=args.brush)
        out[s] = lab[s]  # the true label: 1 = background, the object's own id otherwise
    return out


def correction_square(pred: np.ndarray, lab: np.ndarray, fixed: np.ndarray, size: int) -> np.ndarray:
    """The true label (instance-mode values, 0 elsewhere) on the pixels of the ``size`` px square holding
    the most pixels where ``pred`` (classes) is wrong, outside the pixels ``fixed`` already holds."""
    wrong = mistakes(pred, lab) & ~fixed
    count = ndi.uniform_filter(wrong.astype(np.float32), size, mode="constant")
    cy, cx = np.unravel_index(int(np.argmax(count)), count.shape)
    y0 = int(np.clip(cy - size // 2, 0, max(lab.shape[0] - size, 0)))
    x0 = int(np.clip(cx - size // 2, 0, max(lab.shape[1] - size, 0)))
    out = np.zeros_like(lab)
    sq = (slice(y0, y0 + size), slice(x0, x0 + size))
    out[sq] = np.where(fixed[sq], 0, lab[sq])
    return out


def picked_values(user: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """The user's object values (>= 2) renamed as napari's label picker would: each takes the value of the
    dense label's object it overlaps most, unless another user object took it already; a new value otherwise."""
    out = user.copy()
    taken: set[int] = set()
    new = int(dense.max()) + 1
    ids, sizes = np.unique(user[user >= 2], return_counts=True)
    for t in ids[np.argsort(-sizes)]:
        m = user == t
        under, n = np.unique(dense[m & (dense >= 2)], return_counts=True)
        pick = next((int(v) for v in under[np.argsort(-n)] if int(v) not in taken), None)
        if pick is None:
            pick, new = new, new + 1
        taken.add(pick)
        out[m] = pick
    return out


def train_round(which, images, labels, candidates, budget_min, seed, log, plain=False):
    rec = {k: s.value for k, s in resolve_settings("cpu", "auto").items()}
    cfg = TrainConfig(
        label_mode="instance",
        w0=SETS[which]["w0"],
        optimizer=rec["optimizer"],
        lr=rec["lr"],
        steps=100_000,
        tile_in=rec["tile_in"],
        init="auto",
        candidates=tuple(candidates),
        keep_prior=rec["keep_prior"],
        seed=seed,
        device="cpu",
        **(dict(class_balance=False, border_weights=False) if plain else {}),
    )
    cancel = threading.Event()
    c0 = time.process_time()
    start = {}

    def watch(ev):
        if ev.kind == "start":
            start["message"] = ev.message
            log(f"{which}: {ev.message}")
        elif time.process_time() - c0 >= budget_min * 60:
            cancel.set()

    result = drain(iter_train(cfg, images, labels, cancel=cancel), watch)
    return result.last_model(), start.get("message", ""), result.steps_done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=list(SETS))
    ap.add_argument("--rounds", type=int, default=2, help="correction rounds after the first training")
    ap.add_argument("--mode", choices=["dense", "strokes"], default="dense")
    ap.add_argument("--user", choices=["largest", "region", "all"], default="largest", help="who corrects what")
    ap.add_argument("--square", type=int, default=128, help="--user region: the square's side (px)")
    ap.add_argument("--plain", action="store_true", help="no class balance, no border weights (plain CE)")
    ap.add_argument(
        "--confident", type=float, default=0.0, help="dense: leave pixels predicted with less than this unpainted"
    )
    ap.add_argument("--tag", default="", help="suffix of the result file")
    ap.add_argument("--budget", type=float, default=2.0, help="CPU minutes of training per round")
    ap.add_argument("--per-image", type=int, default=15, help="correction strokes per image and round")
    ap.add_argument("--min-error", type=int, default=30, help="smallest wrong region a user corrects (px)")
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--brush", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=RESULTS / "adapt")
    args = ap.parse_args(argv)
    if args.user != "largest" and args.mode != "dense":
        ap.error("--user region/all corrects a dense prediction: use --mode dense")
    set_up(args)
    s = SETS[args.which]
    img, lab, truth = load(args.which)
    train_img, train_lab = img[s["train"]], lab[s["train"]]
    test_img, test_truth = img[s["test"]], truth[s["test"]]
    rng = np.random.default_rng(args.seed + 1)
    painted = scribbles(train_lab, args.which, seed=args.seed)

    m0 = load_model(s["ft"])
    rows = [
        {"round": "as is", "model": s["ft"], **score(unet_predict(m0, test_img), test_truth, args.which, m0.n_classes)}
    ]
    log(f"{args.which}: {s['ft']} as it is: {rows[0]}")
    candidates: list[str] = []
    model = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):
            labels = painted
            if r:
                labels = np.zeros_like(painted)
                for z, im in enumerate(train_img):
                    probs = predict(model, im, output="probabilities")  # the previous round's model
                    classes = probs.argmax(0)
                    fixed = painted[z] > 0
                    if args.user == "all":
                        add = train_lab[z]
                    elif args.user == "region":
                        add = correction_square(classes, train_lab[z], fixed, args.square)
                    else:
                        add = correction_strokes(classes, train_lab[z], fixed, rng, args)
                    painted[z] = np.where(add > 0, add, painted[z])
                    if args.mode == "dense":
                        inst = instances_from_semantic(classes.astype(np.int64), model.n_classes)
                        dense = np.where(inst > 0, inst + 1, 1).astype(painted.dtype)
                        dense[probs.max(0) < args.confident] = 0  # unsure pixels left unpainted
                        if args.user == "largest":  # objects the user paints get new values (above every predicted one)
                            offset = int(dense.max())
                            user = np.where(painted[z] >= 2, painted[z] + offset, painted[z])
                        else:
                            user = picked_values(painted[z], dense)
                        labels[z] = np.where(painted[z] > 0, user, dense)
                    else:
                        labels[z] = painted[z]
            frac = float((painted > 0).mean())
            model, start, steps = train_round(
                args.which, train_img, labels, candidates, args.budget, args.seed, log, args.plain
            )
            own = Path(tmp) / f"round{r}.safetensors"
            save_model(own, model)
            candidates = [str(own)]  # the widget offers the model it just trained
            row = {
                "round": r,
                "painted_fraction": frac,
                "steps": steps,
                "start": start,
                **score(unet_predict(model, test_img), test_truth, args.which, model.n_classes),
            }
            log(f"{args.which}: round {r}: {row}")
            rows.append(row)
    out = args.dir / f"corrections_{args.which}_{args.mode}{args.tag}.json"
    out.write_text(
        json.dumps(
            {
                "dataset": args.which,
                "budget_min": args.budget,
                "args": vars(args) | {"dir": str(args.dir)},
                "rows": rows,
            },
            indent=2,
        )
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
