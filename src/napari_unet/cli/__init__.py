"""``napari-unet``: train, predict and evaluate without napari.

Examples
--------
Segment EM membranes with the shipped model::

    napari-unet predict stack.tif -o membranes.tif --model em-membrane

Fine-tune on your own painted labels (0 = not annotated, 1 = background, 2.. = objects)::

    napari-unet train --images stack.tif --labels painted.tif --mode instance \
        --init em-membrane --steps 500 -o my-model.safetensors

Share a model as a bioimage.io package (Fiji/deepImageJ, ilastik, QuPath, bioimageio.core), and use one::

    napari-unet export my-model.safetensors -o my-model.zip --sample stack.tif
    napari-unet predict stack.tif -o labels.tif --model my-model.zip

Score a model on held-out slices::

    napari-unet evaluate --model my-model.safetensors --images stack.tif --labels truth.tif --slices 25-29
"""

from __future__ import annotations

import argparse

from . import evaluate, export, models, predict, train
from ._errors import run_command, run_process
from ._options import LABEL_HELP
from ._slices import _n_slices as _n_slices
from ._slices import _parse_slices as _parse_slices
from ._slices import _select as _select

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-unet`` parser: one subcommand per module of this package, each adding its own arguments."""
    p = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net Segment: train, predict and evaluate U-Nets (Ronneberger et al. 2015) on TIFF images.",
        epilog=LABEL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in (train, predict, evaluate, export, models):
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    """Run ``napari-unet`` with ``argv``; the exit code: 0 done, 1 a device or disk failure, 2 bad input, 130
    Ctrl-C (cli/_errors.py). Without ``argv`` (the process's own command line: the console script, ``python -m
    napari_unet.cli``) it ends the process itself, so that a refusal exits 2 and a late Ctrl-C 130
    (``run_process``); with ``argv`` (a caller in Python) it returns, and refusals raise SystemExit."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:
        run_process(args)
    return run_command(args)
