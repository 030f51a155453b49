"""Where to paint next: strokes placed by the uncertainty ranking vs strokes placed at random.

A simulated user paints in rounds on the training images: a few strokes to start, then after each round
of training (a fixed number of steps, the same seed for both arms, continuing from the previous round's
model) ``--per-round`` more
strokes, drawn from the ground truth:

``guided``  at the most uncertain unpainted places (``core.guidance.rank_regions`` on the model's
            ``output='uncertainty'``; one stroke in each of the top squares, at its most uncertain pixel)
``random``  at random unpainted places

A stroke is a short brushed line along the true object (or background) under that pixel, as
``bench_finetune`` draws them.

``--user look`` simulates a user who looks before painting, as the widget's *paint next* list asks: jumped to
a square (``guided``: the ranking's, 128 px as in the Predict widget; ``random``: a random one of the same
grid), they paint over the largest mistake of the current prediction in it (the middle of the largest wrong
region); where it has none, at the most uncertain pixel (``guided``) or a random one (``random``). Both arms
then differ only by which squares are looked at. The default ``--user blind`` is the user above. The score is IoU (and instance F1 for nuclei) on held-out images
after every round: the curve IoU vs strokes. Results: ``benchmarks/results/guidance_<set>_<arm>.json``.

    python benchmarks/bench_guidance.py nuclei --arms guided,random --rounds 5 --per-round 6
    python benchmarks/bench_guidance.py vnc-mito --init em-membrane --arms guided --rounds 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_finetune import RESULTS, SETS, _strokes, load, log, mistakes, score, set_up, unet_predict
from scipy import ndimage as ndi

from napari_unet.core.drain import drain
from napari_unet.core.predict.guidance import rank_regions
from napari_unet.core.predict.tiles import predict
from napari_unet.core.train.config import TrainConfig, resolve_settings
from napari_unet.core.train.loop import iter_train


def stroke_at(lab: np.ndarray, y: int, x: int, rng) -> np.ndarray:
    """A short stroke of the true label under (y, x): along its region, within 12 px of the pixel."""
    value = lab[y, x]
    yy, xx = np.ogrid[: lab.shape[0], : lab.shape[1]]
    near = (yy - y) ** 2 + (xx - x) ** 2 <= 12**2
    region = (lab == value) & near
    comp, _ = ndi.label(region)
    region = comp == comp[y, x]
    s = _strokes(region, rng, n=1, length=16, erode=1, brush=3)
    if not s.any():
        s = np.zeros(lab.shape, bool)
        s[y, x] = True
    return s, value


LOOK_SIZE = 128  # the Predict widget's squares (rank_regions' default)


def largest_mistake(pred: np.ndarray, truth_lab: np.ndarray, free: np.ndarray) -> tuple[int, int] | None:
    """The middle (the pixel farthest inside) of the largest unpainted region where ``pred`` (classes) has the
    wrong object/background, or None."""
    wrong = mistakes(pred, truth_lab) & free
    comp, n = ndi.label(wrong)
    if not n:
        return None
    sizes = ndi.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
    biggest = comp == 1 + int(np.argmax(sizes))
    inside = ndi.distance_transform_edt(biggest)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(inside)), inside.shape))


def place_looking(arm: str, model, images, painted, truth_lab, k: int, rng) -> int:
    """``--user look``: ``k`` squares (ranked or random), a stroke over the largest mistake in each."""
    preds = [predict(model, im, output="labels") for im in images]
    size = LOOK_SIZE
    if arm == "guided":
        unc = np.stack([predict(model, im, output="uncertainty") for im in images])
        squares = [(r.z, r.y, r.x) for r in rank_regions(unc, painted=painted, size=size, k=k)]
    else:
        grid = [
            (z, y, x)
            for z in range(len(images))
            for y in range(0, images.shape[1], size)
            for x in range(0, images.shape[2], size)
        ]
        grid = [(z, y, x) for z, y, x in grid if not painted[z, y : y + size, x : x + size].all()]
        squares = [grid[i] for i in rng.permutation(len(grid))[:k]]
    for z, y, x in squares:
        win = (slice(y, y + size), slice(x, x + size))
        free = painted[z][win] == 0
        at = largest_mistake(preds[z][win], truth_lab[z][win], free)
        if at is None:  # nothing wrong here: where the model is least sure (guided) or anywhere (random)
            if arm == "guided":
                block = np.where(free, unc[z][win], -1)
                at = np.unravel_index(int(np.argmax(block)), block.shape)
            else:
                ys, xs = np.nonzero(free)
                i = int(rng.integers(len(ys)))
                at = (ys[i], xs[i])
        st, v = stroke_at(truth_lab[z], y + int(at[0]), x + int(at[1]), rng)
        painted[z][st] = v
    return len(squares)


def place(arm: str, model, images, painted, truth_lab, k: int, rng) -> int:
    """Paint ``k`` strokes into ``painted`` (in place); returns how many were painted."""
    n = 0
    if arm == "guided":
        unc = np.stack([predict(model, im, output="uncertainty") for im in images])
        regions = rank_regions(unc, painted=painted, size=32, k=k)
        for r in regions:
            z = r.z
            block = unc[z, r.y : r.y + r.size, r.x : r.x + r.size].copy()
            block[painted[z, r.y : r.y + r.size, r.x : r.x + r.size] > 0] = -1
            dy, dx = np.unravel_index(int(np.argmax(block)), block.shape)
            s, v = stroke_at(truth_lab[z], r.y + dy, r.x + dx, rng)
            painted[z][s] = v
            n += 1
    else:
        while n < k:
            z = int(rng.integers(len(images)))
            y, x = int(rng.integers(images.shape[1])), int(rng.integers(images.shape[2]))
            if painted[z, y, x]:
                continue
            s, v = stroke_at(truth_lab[z], y, x, rng)
            painted[z][s] = v
            n += 1
    return n


def train_round(which: str, images, painted, init, steps: int, seed: int):
    rec = {k: s.value for k, s in resolve_settings("cpu", init).items()}
    cfg = TrainConfig(
        depth=4,
        base_channels=16,
        label_mode="instance",
        w0=SETS[which]["w0"],
        optimizer="adam",
        lr=rec["lr"],
        steps=steps,
        tile_in=rec["tile_in"],
        init=init,
        keep_prior=None if init else 0.0,
        seed=seed,
        device="cpu",
        val_fraction=0.0,
    )
    return drain(iter_train(cfg, images, painted))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=sorted(SETS))
    ap.add_argument(
        "--init",
        default=None,
        help="round 0 starts from this model (keep_prior by agreement, as the defaults); default: scratch",
    )
    ap.add_argument("--arms", default="guided,random")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=6)
    ap.add_argument(
        "--steps", type=int, default=150, help="training steps per round (a step budget: both arms train alike)"
    )
    ap.add_argument("--user", choices=["blind", "look"], default="blind", help="see the module's docstring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    set_up(args)
    s = SETS[args.which]
    img, lab, truth = load(args.which)
    images, truth_lab = img[s["train"]], lab[s["train"]]
    test_img, test_truth = img[s["test"]], truth[s["test"]]
    tag = "_look" if args.user == "look" else ""
    for arm in args.arms.split(","):
        rng = np.random.default_rng(args.seed)
        painted = np.zeros(truth_lab.shape, np.int32)
        # the start: one background and one object stroke per image, the same for both arms
        for z in range(len(images)):
            for value in (1, int(rng.choice(np.unique(truth_lab[z][truth_lab[z] >= 2])))):
                ys, xs = np.nonzero(truth_lab[z] == value)
                i = int(rng.integers(len(ys)))
                st, v = stroke_at(truth_lab[z], int(ys[i]), int(xs[i]), rng)
                painted[z][st] = v
        strokes, rows, init, model_path = (
            2 * len(images),
            [],
            args.init,
            args.dir / f"guidance_{args.which}_{arm}{tag}.safetensors",
        )
        for rnd in range(args.rounds + 1):
            result = train_round(args.which, images, painted, init, args.steps, args.seed)
            model = result.best_model()
            model.eval()
            r = {
                "round": rnd,
                "strokes": strokes,
                "painted_fraction": float((painted > 0).mean()),
                **score(unet_predict(model, test_img), test_truth, args.which, model.n_classes),
            }
            log(f"{args.which}/{arm}: {r}")
            rows.append(r)
            if rnd == args.rounds:
                break
            result.save(model_path)
            init = str(model_path)
            strokes += (place_looking if args.user == "look" else place)(
                arm, model, images, painted, truth_lab, args.per_round, rng
            )
        out = args.dir / f"guidance_{args.which}_{arm}{tag}.json"
        out.write_text(
            json.dumps(
                {"dataset": args.which, "arm": arm, "args": vars(args) | {"dir": str(args.dir)}, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
