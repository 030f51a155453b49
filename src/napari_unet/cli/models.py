"""``napari-unet models``: list the models shipped with napari-unet."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """The ``models`` subcommand (no arguments)."""
    mo = subparsers.add_parser("models", help="list the models shipped with napari-unet")
    mo.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    """Print one line per shipped model: its description, label mode, classes and architecture."""
    from ..core.models.checkpoint import available_models
    from ..core.models.load import read_info

    shipped = available_models()
    if not shipped:
        print("no models are shipped with this installation")
    for name, path in shipped.items():
        info = read_info(path)
        m = info.model
        print(
            f"{name}: {info.description or ''} [{info.label_mode}, classes {info.classes}, depth {m['depth']}, "
            f"{m['base_channels']} channels, {m['padding']}"
            + (f", post-processing {info.postprocess}" if info.postprocess else "")
            + "]"
        )
    return 0
