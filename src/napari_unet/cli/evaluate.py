"""``napari-unet evaluate``: score a model against ground truth (JSON on stdout)."""

from __future__ import annotations

import json
from pathlib import Path

from ._images import _read, _read_image
from ._options import add_channels, add_common, add_scale, add_trust
from ._outputs import _check_output, _model_inputs, _refuse_inputs
from ._progress import _TileBar
from ._slices import _n_slices, _parse_slices, _select


def add_parser(subparsers) -> None:
    """The ``evaluate`` subcommand and its arguments."""
    ev = subparsers.add_parser("evaluate", help="score a model against ground truth")
    ev.add_argument("--model", required=True, help="model file, shipped model name or bioimage.io package")
    ev.add_argument("--images", required=True)
    ev.add_argument(
        "--labels",
        required=True,
        help="ground truth: ISBI style (0 membrane, 255 cell) or instances (0 background, 1..N)",
    )
    ev.add_argument("--kind", choices=["auto", "membranes", "instances"], default="auto")
    ev.add_argument("--slices")
    ev.add_argument("--tta", action="store_true")
    ev.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="PX",
        help="instances: drop predicted objects smaller than PX pixels (default: the model's own)",
    )
    ev.add_argument("--json", help="also write the report to this file")
    add_common(ev)
    add_trust(ev)
    add_channels(ev)
    add_scale(ev, "the model's own")
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    """Predict ``args.images`` with ``args.model`` and score it against ``args.labels``."""
    import numpy as np

    from ..core.data.labels import check_shapes
    from ..core.evaluate.score import evaluate_arrays
    from ..core.models.load import load_model

    if args.json:  # found after the evaluation, a bad --json cost its run (or overwrote an input)
        inputs = [(args.images, "input"), (args.labels, "input"), *_model_inputs(args.model)]
        _refuse_inputs(args.json, inputs, opt="--json")
        _check_output(args.json, opt="--json")
    model = load_model(args.model, trust_code=args.trust_code)
    image, ch, _ = _read_image(args.images, args)
    truth = np.asarray(_read(args.labels, "labels"))
    # before --slices, which would hide a mismatch
    check_shapes(image, truth, channel_axis=ch, name=f"the ground truth {args.labels} on {args.images}")
    slices = _parse_slices(args.slices, _n_slices(image, ch))
    image, truth = _select(image, slices, ch), _select(truth, slices)
    bar = _TileBar(args.quiet)
    try:
        report = evaluate_arrays(
            model,
            image,
            truth,
            kind=args.kind,
            tta=args.tta,
            device=args.device,
            min_size=args.min_size,
            progress=bar,
            channel_axis=ch,
            zoom=args.zoom,
        )
    finally:
        bar.close()
    report["model"] = str(args.model)
    report["slices"] = args.slices or "all"
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
