"""Arguments several commands share: --device and --quiet, --scale, the channel options, the old --tile-size,
and the labels convention the help ends with."""

from __future__ import annotations

import argparse
import sys

LABEL_HELP = (
    "Labels: 0 = not annotated (ignored), then with --mode semantic value k>=1 is class k-1; "
    "with --mode instance 1 = background and every value >= 2 is its own object."
)


class _TileSize(argparse.Action):
    """The old --tile-size: train's input side, predict's output side. Still accepted, with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--tile-in" if self.dest == "tile_in" else "--tile-out"
        side = "input" if self.dest == "tile_in" else "output"
        print(
            f"warning: --tile-size is deprecated; it is the {side} tile side here: use {new} {values}", file=sys.stderr
        )
        setattr(namespace, self.dest, values)


def _channel_axis_arg(text: str):
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an axis number (0, 1, -1 ...) or 'none'") from None


def _scale(text: str):
    """--zoom (--scale): 'auto' (None) or a zoom factor (core/data/zoom.py)."""
    if text == "auto":
        return None
    from ..core.data.zoom import check_zoom

    try:
        return check_zoom(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def add_common(sp) -> None:
    """--device and -q/--quiet."""
    sp.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_scale(sp, default_help: str) -> None:
    """--zoom (and its other name --scale), whose default ``default_help`` describes."""
    sp.add_argument(
        "--zoom",
        type=_scale,
        default=None,
        metavar="S",
        help="zoom the images by S for the network (0.5: objects twice as large as the model's, e.g. another "
        f"objective) and the result back to the image's grid, or 'auto'; default: {default_help}",
    )
    sp.add_argument("--scale", dest="zoom", type=_scale, help=argparse.SUPPRESS)  # --zoom's other name


def add_channels(sp) -> None:
    """--channel-axis and --channel (read by ``_images._read_image``)."""
    sp.add_argument(
        "--channel-axis",
        type=_channel_axis_arg,
        metavar="AXIS",
        help="the image axis that holds channels (default: the file's own, from OME/ImageJ metadata or "
        "RGB; 'none': read a file's channels as slices)",
    )
    sp.add_argument(
        "--channel",
        type=int,
        metavar="K",
        help="use only channel K of a multichannel image (e.g. the nuclei channel for a grey model)",
    )


def add_trust(sp, note: str = "") -> None:
    """--trust-code: run the Python code a bioimage.io package's weights need (core/models/packages.py)."""
    sp.add_argument(
        "--trust-code",
        action="store_true",
        help="run the Python code (e.g. model.py) that a bioimage.io package's pytorch_state_dict weights need: "
        "only for a package from someone you trust; without it such a package is refused, naming the file and "
        "its sha256 (napari-unet models and torchscript weights need no code)" + note,
    )
