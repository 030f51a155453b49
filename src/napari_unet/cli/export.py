"""``napari-unet export``: write a model as a bioimage.io package."""

from __future__ import annotations

import sys
from pathlib import Path

from ._images import _read_image
from ._options import add_channels, add_trust
from ._outputs import _check_output, _model_inputs, _refuse_inputs

# the real data that goes into a shipped model's package (test input, cover): the plugin's sample crops
_SHIPPED_SAMPLES = {"em-membrane": "load_em_sample", "nuclei": "load_nuclei_sample"}


def _parse_cite(text: str) -> dict:
    """A --cite value as a bioimage.io citation (core's parser, which the Train widget uses too)."""
    from ..core.export.bioimageio import parse_citation

    return parse_citation(text, what="--cite")


def add_parser(subparsers) -> None:
    """The ``export`` subcommand and its arguments."""
    ex = subparsers.add_parser(
        "export",
        help="write a model as a bioimage.io package (runs in Fiji/deepImageJ, ilastik, QuPath, bioimageio.core)",
    )
    ex.add_argument("model", help="model file or shipped model name")
    ex.add_argument("-o", "--output", required=True, help="package to write (.zip)")
    ex.add_argument(
        "--sample",
        help="image TIFF: a crop of it becomes the test input and cover (default for shipped models: their "
        "sample data). It ships inside the package: use data you may share",
    )
    ex.add_argument("--sample-slice", type=int, default=0, help="slice of a --sample stack (default 0)")
    add_channels(ex)  # which channel of a multichannel --sample, as predict reads it
    ex.add_argument("--card", help="model card (markdown) for the documentation (default: the model's own .md)")
    ex.add_argument("--author", action="append", help="an author's name (repeat for more; default: your user name)")
    ex.add_argument(
        "--cite",
        action="append",
        help="the training data's citation ending in doi:10... or a https:// address (repeat for more); "
        "the U-Net paper is always cited",
    )
    ex.add_argument("--license", help="SPDX licence id (default: CC-BY-4.0; BSD-3-Clause for shipped models)")
    ex.add_argument("--name", help="the package's name (default: the model's)")
    ex.add_argument(
        "--data",
        help="what the model was trained on and its licence, for the card's Data section (models without a card)",
    )
    add_trust(
        ex, "; export writes napari-unet models only: a package napari-unet did not write is refused before loading"
    )
    ex.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    """Write ``args.model`` as a bioimage.io package to ``args.output``."""
    import getpass

    from ..core.export import bioimageio
    from ..core.models.checkpoint import available_models, resolve_model_path
    from ..core.models.load import load_model

    if not bioimageio.available():
        raise SystemExit(
            f"error: exporting a bioimage.io package needs the bioimageio extra: {bioimageio.INSTALL_HINT}"
        )
    src = resolve_model_path(args.model)
    inputs = [*_model_inputs(src), (args.sample, "sample image"), (args.card, "model card")]
    _refuse_inputs(args.output, inputs, suffix=".zip")
    _check_output(args.output, ".zip")
    model = load_model(src, trust_code=args.trust_code)
    shipped = src in available_models().values()
    sample = _sample(args, model, shipped)
    card = Path(args.card).read_text(encoding="utf-8") if args.card else None  # default: the model's own .md
    out = bioimageio.export_package(
        src,  # the file itself: its card (<name>.md) goes in, and it is attached byte for byte
        args.output,
        sample=sample,
        card=card,
        authors=args.author or (None if shipped else [getpass.getuser() or "napari-unet user"]),
        cite=[_parse_cite(c) for c in args.cite] if args.cite else None,
        license=args.license or ("BSD-3-Clause" if shipped else "CC-BY-4.0"),
        name=args.name,
        data=args.data,
    )
    print(f"wrote {out} (bioimage.io model package, spec 0.5; check it with `bioimageio test {out}`)")
    from ..core.data.zoom import model_zoom

    if model_zoom(model) != 1.0:
        print(
            f"note: this model expects images zoomed x{model_zoom(model):.3g} (it was trained so); napari-unet "
            "zooms for you when it loads the zip, other tools do not: the model card says so",
            file=sys.stderr,
        )
    return 0


def _sample(args, model, shipped: bool):
    """The 2D image a crop of which becomes the package's test input and cover: --sample (slice --sample-slice
    of a stack), or a shipped model's sample data.

    --sample is read as predict reads an image (the file's channel axis, --channel-axis, --channel) and checked
    as predict checks it: an RGB or multichannel sample for a grey model is refused with what to pick.
    """
    from ..core.data.planes import as_stack

    if args.sample:
        image, ch, _ = _read_image(args.sample, args)
        try:
            get, n, _, is_stack = as_stack(image, ch, model.config.in_channels)
        except ValueError as e:
            raise ValueError(f"--sample {args.sample}: {e}") from None
        if is_stack and not 0 <= args.sample_slice < n:
            raise ValueError(f"--sample-slice {args.sample_slice} is out of range for {n} slices")
        return get(args.sample_slice if is_stack else 0)[0]
    if shipped and model.info.name in _SHIPPED_SAMPLES:
        from .. import _sample_data

        return getattr(_sample_data, _SHIPPED_SAMPLES[model.info.name])()[0][args.sample_slice]
    raise ValueError(
        "--sample IMAGE is needed: a TIFF of the kind of data the model segments (a crop of it becomes the "
        "package's test input and cover image; give data you may share)"
    )
