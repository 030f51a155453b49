"""``napari-unet predict``: overlap-tile prediction of an image into a TIFF, or block by block into an OME-Zarr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._errors import INTERRUPTED
from ._images import _read_image
from ._options import _TileSize, add_channels, add_common, add_scale, add_trust
from ._outputs import _check_output, _model_inputs, _refuse_inputs
from ._slices import _n_slices, _parse_slices, _select
from ._tiles import _predict_tiles
from .predict_zarr import _predict_zarr


class _OutputPath(argparse.Action):
    """predict's -o/--output: the file to write. Older commands used --output for the kind of output,
    so a kind name, or the option given twice, is refused instead of silently writing the wrong thing."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(
                f"{option_string} given twice ({getattr(namespace, self.dest)!r} and {values!r}): -o/--output "
                "is the TIFF to write; choose the kind of output with --kind labels|instances|probabilities"
            )
        if values in ("labels", "instances", "probabilities"):
            parser.error(
                f"{option_string} {values}: -o/--output is the TIFF to write; the kind of output is now "
                f"--kind {values} (e.g. -o result.tif --kind {values})"
            )
        setattr(namespace, self.dest, values)


def add_parser(subparsers) -> None:
    """The ``predict`` subcommand and its arguments."""
    pr = subparsers.add_parser("predict", help="overlap-tile prediction of a TIFF or OME-Zarr image or stack")
    _add_input_and_output(pr)
    _add_tiling(pr)
    _add_zarr_and_dask(pr)
    add_common(pr)
    add_trust(pr)
    add_channels(pr)
    add_scale(pr, "the model's own (recorded when it was trained; 1 for the shipped models)")
    pr.set_defaults(func=cmd_predict)


def _add_input_and_output(pr) -> None:
    """The image, the file to write, the model and the kind of output."""
    pr.add_argument("image", help="image TIFF (2D or stack), folder of slices, or OME-Zarr image (image.zarr)")
    pr.add_argument(
        "-o",
        "--output",
        "--output-path",
        dest="output",
        default=None,
        action=_OutputPath,
        help="TIFF to write, or a .zarr folder (an OME-Zarr image, written block by block; a rerun resumes). "
        "Default for an OME-Zarr input: labels/<--name> inside it (the NGFF labels layout)",
    )
    pr.add_argument(
        "--model",
        required=True,
        help="model file, shipped model name (em-membrane, nuclei; see `napari-unet models`) or bioimage.io "
        "package (model.zip or rdf.yaml; needs napari-unet[bioimageio])",
    )
    pr.add_argument(
        "--kind",
        choices=["labels", "instances", "probabilities", "uncertainty"],
        default="labels",
        help="labels: class per pixel (0 = background); instances: one id per object; "
        "probabilities: one float map per class; uncertainty: where the model is unsure (0..1; the most "
        "uncertain regions, where a stroke helps most, are listed)",
    )


def _add_tiling(pr) -> None:
    """Which slices, the tile size, test-time augmentation, small objects, precision."""
    pr.add_argument("--slices", help="only these slices, e.g. 25-29")
    pr.add_argument(
        "--tile-out", type=int, default=None, help="OUTPUT tile side in px (default: automatic from free memory)"
    )
    pr.add_argument("--tile-size", dest="tile_out", type=int, action=_TileSize, help=argparse.SUPPRESS)
    pr.add_argument("--tta", action="store_true", help="average 8 flips/rotations")
    pr.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="PX",
        help="--kind instances: drop objects smaller than PX pixels (default: the model's own, "
        "see `napari-unet models`)",
    )
    pr.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto (default): bf16 on CUDA GPUs that support it; on a CPU with native bf16 (avx512_bf16, "
        "amx_bf16) a one-tile trial picks bf16 when it is faster and its labels agree >= 99.5 %% with fp32 "
        "(2.4-2.7x on an AMD EPYC; docs/benchmarks.md); else fp32. The choice and why are printed",
    )


def _add_zarr_and_dask(pr) -> None:
    """OME-Zarr output (the labels image's name, the probabilities' dtype) and prediction on a dask cluster."""
    pr.add_argument(
        "--name",
        default=None,
        help="OME-Zarr input without -o: the labels image's name (default unet-<kind>, e.g. image.zarr/labels/unet-labels)",
    )
    pr.add_argument(
        "--prob-dtype",
        choices=["float16", "uint8", "float32"],
        default="float16",
        help=".zarr output of --kind probabilities: float16 (default) or uint8 (p * 255, rounded)",
    )
    pr.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="predict on a dask LocalCluster of N worker processes (needs a .zarr output); same result as one process",
    )
    pr.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="predict on an existing dask cluster, e.g. tcp://host:8786 (input and output on storage all workers see)",
    )
    pr.add_argument(
        "--worker-memory",
        default="2GiB",
        help="--workers: memory limit per worker (dask's; default 2GiB)",
    )


def _is_zarr_path(path) -> bool:
    from ..core.data.ngff import ZARR_SUFFIXES, is_ome_zarr

    return str(path).rstrip("/").lower().endswith(ZARR_SUFFIXES) or is_ome_zarr(path)


def _zarr_target(args, image_is_zarr: bool) -> Path | None:
    """Where a zarr prediction goes: -o out.zarr, or (no -o) labels/<name> inside the input container."""
    if args.output is not None:
        return Path(args.output) if _is_zarr_path(args.output) else None
    if not image_is_zarr:
        raise SystemExit("error: -o is required (a TIFF, or a .zarr folder), unless the image is an OME-Zarr")
    if args.kind == "probabilities":
        raise SystemExit(
            "error: probabilities are no labels image: give -o probabilities.zarr (an OME-Zarr image of its own)"
        )
    return Path(args.image) / "labels" / (args.name or f"unet-{args.kind}")


def cmd_predict(args) -> int:
    """Predict ``args.kind`` of ``args.image`` with ``args.model`` into a TIFF or an OME-Zarr."""
    from ..core.data.ngff import is_ome_zarr
    from ..core.models.load import load_model

    target = _output_target(args, is_ome_zarr(args.image))
    model = load_model(args.model, trust_code=args.trust_code)
    image, ch, meta = _read_image(args.image, args)
    if target is not None:
        return _predict_zarr(args, model, image, meta, ch, target)
    slices = _parse_slices(args.slices, _n_slices(image, ch))
    if slices is not None:
        image = _select(image, slices, ch)
    if args.precision == "auto":
        from ..core.predict.tiles import choose_precision

        args.precision, why = choose_precision(model, image, device=args.device, channel_axis=ch)
        if not args.quiet:
            print(f"precision {args.precision}: {why}", file=sys.stderr)
    try:
        result = _predict_tiles(args, model, image, ch)
    except KeyboardInterrupt:
        print("\ncancelled: nothing was written", file=sys.stderr)
        return INTERRUPTED
    _write_result(args, result)
    return 0


def _output_target(args, image_is_zarr: bool) -> Path | None:
    """Check -o before any work; the OME-Zarr to write into, or None for a TIFF (-o)."""
    target = _zarr_target(args, image_is_zarr)
    # onto or inside the image or the model: a slice, a chunk or a package file replaced (labels/ takes labels)
    _refuse_inputs(args.output if target is None else target, [(args.image, "input image"), *_model_inputs(args.model)])
    if target is None:
        _check_output(args.output)
    else:
        parent = target.parent if target.parent.name != "labels" else target.parent.parent
        if not parent.is_dir():
            raise SystemExit(f"error: -o {target}: the folder {parent} does not exist; create it first")
    if target is None:
        from ..core.data.files import TIFF_SUFFIXES

        suffix = Path(args.output).suffix.lower()
        if suffix and suffix not in TIFF_SUFFIXES:  # a TIFF named result.png: a viewer would fail to open it
            raise SystemExit(
                f"error: -o {args.output}: predict writes TIFF files (.tif, .tiff) or OME-Zarr (.zarr); rename it"
            )
    if (args.workers or args.scheduler) and target is None:
        raise SystemExit("error: --workers/--scheduler write an OME-Zarr: give -o out.zarr (or an OME-Zarr input)")
    return target


def _write_result(args, result) -> None:
    """Write the prediction to the TIFF -o; for --kind uncertainty, also list where to paint next."""
    import numpy as np

    from ..core.data.files import write_labels

    out = Path(args.output)
    if args.kind in ("probabilities", "uncertainty"):
        import tifffile

        from ..core.data.files import atomic_write

        with atomic_write(out) as fh:
            # minisblack: a class axis of 3 must not be stored as RGB
            tifffile.imwrite(fh, np.asarray(result, dtype=np.float32), compression="zlib", photometric="minisblack")
    else:
        write_labels(out, result)
    print(f"wrote {out} ({args.kind}, shape {tuple(result.shape)})")
    if args.kind == "uncertainty":
        from ..core.predict.guidance import rank_regions

        where = rank_regions(result, k=5)
        print("paint next (most uncertain first): " + "; ".join(r.describe() for r in where))
