"""`make demo`: U-Net Segment on the embedded sample EM stack (ISBI 2012 crop).

With a display, opens napari with the sample loaded and the plugin docked.
Without one (or with --headless), runs the main job end to end on the CPU:
fine-tune (or, without a shipped model, train) a U-Net on the painted sample
labels, predict the stack with overlap-tile prediction, and write
out/em_prediction.tif, out/em_overlay.png and out/demo_report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "out"


def headless(steps: int, seed: int = 0) -> dict:
    import numpy as np

    from napari_unet._sample_data import load_em_sample
    from napari_unet.core.data.files import write_labels
    from napari_unet.core.drain import drain
    from napari_unet.core.evaluate import metrics
    from napari_unet.core.models.checkpoint import available_models
    from napari_unet.core.predict.config import PredictConfig
    from napari_unet.core.predict.tiles import iter_predict
    from napari_unet.core.train.config import TrainConfig, resolve_settings
    from napari_unet.core.train.loop import iter_train

    image, labels = load_em_sample()  # (8, 256, 256) EM, instance labels: 1 = membrane, >= 2 cells
    train_z, test_z = list(range(0, 6)), [6, 7]
    shipped = "em-membrane" in available_models()
    # the Train widget's and the CLI's defaults: start auto (the shipped model that fits the strokes, or
    # scratch), keep_prior and learning rate following that start
    rec = {k: s.value for k, s in resolve_settings("cpu", "auto").items()}
    cfg = TrainConfig(label_mode="instance", **{**rec, "steps": steps}, init="auto", seed=seed, device="cpu")
    print(f"training on slices {train_z} of the sample EM stack (start: auto), {steps} steps", flush=True)
    t0 = time.perf_counter()

    def show(ev):
        if ev.kind == "start":
            print(f"  {ev.message}", flush=True)
        if ev.kind == "step" and (ev.step % 10 == 0 or ev.step == ev.total):
            print(f"  step {ev.step:4d}/{ev.total}  loss {ev.loss:.4f}  eta {ev.eta:5.0f} s", flush=True)

    result = drain(iter_train(cfg, image[train_z], labels[train_z]), show)
    t_train = time.perf_counter() - t0
    model = result.best_model()
    OUT.mkdir(exist_ok=True)
    model_path = result.save(OUT / "demo-model.safetensors")
    t0 = time.perf_counter()
    pred = drain(iter_predict(model, image, PredictConfig(output="labels")))
    t_pred = time.perf_counter() - t0
    write_labels(OUT / "em_prediction.tif", pred)
    truth_cells = labels[test_z] >= 2
    pred_cells = pred[test_z] == 1
    report = {
        "started_from": result.info.training["config"]["init"] or "scratch",
        "steps": result.steps_done,
        "train_seconds": round(t_train, 1),
        "predict_seconds_8_slices": round(t_pred, 2),
        "scored_slices": test_z,
        "note": (
            "slices 6-7 were not used for this training run; the sample is a crop of ISBI 2012 slices 0-7, "
            "which the shipped em-membrane model was trained on, so this is a demo, not an accuracy "
            "figure (see docs/accuracy.md for held-out numbers)"
        )
        if shipped
        else "slices 6-7 were not used for training",
        "pixel_error": round(float(np.mean([metrics.pixel_error(p, t) for p, t in zip(pred_cells, truth_cells)])), 4),
        "v_rand": round(
            float(
                np.mean(
                    [
                        metrics.vrand(metrics.segmentation_from_membranes(p), metrics.segmentation_from_membranes(t))
                        for p, t in zip(pred_cells, truth_cells)
                    ]
                )
            ),
            4,
        ),
        "model": str(model_path),
    }
    _overlay(image[test_z[0]], pred[test_z[0]], labels[test_z[0]], OUT / "em_overlay.png")
    (OUT / "demo_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'em_prediction.tif'}, {OUT / 'em_overlay.png'}")
    return report


def _overlay(image, pred, labels, path: Path) -> None:
    """Side by side: EM, ground-truth membranes, predicted membranes (red overlay)."""
    import numpy as np

    def rgb(img, mask):
        g = (img.astype(np.float32) - img.min()) / max(float(img.max() - img.min()), 1.0)
        out = np.stack([g, g, g], -1)
        out[mask] = 0.5 * out[mask] + 0.5 * np.array([1.0, 0.1, 0.1])
        return (out * 255).astype(np.uint8)

    panel = np.concatenate(
        [rgb(image, np.zeros_like(pred, bool)), rgb(image, labels == 1), rgb(image, pred == 0)], axis=1
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.imsave(path, panel)
    except ImportError:
        import tifffile

        tifffile.imwrite(path.with_suffix(".tif"), panel)


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--headless", action="store_true", help="no napari window: train, predict, write files")
    p.add_argument("--steps", type=int, default=int(os.environ.get("DEMO_STEPS", 150)))
    args = p.parse_args(argv)
    if not args.headless and has_display():
        try:
            from napari_unet._demo import launch
        except ImportError as e:
            print(f"napari is not available ({e}); running the headless demo", file=sys.stderr)
        else:
            launch()
            return 0
    elif not args.headless:
        print("no display found: running the headless demo (use `make demo` on a desktop for the napari window)")
    headless(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
