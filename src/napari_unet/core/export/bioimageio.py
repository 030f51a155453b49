"""bioimage.io model packages (spec 0.5) written from our models.

Export (:func:`export_package`) writes a zip that bioimageio.core, deepImageJ, ilastik and the
BioImage Model Zoo run without napari-unet:

* the network is :class:`~napari_unet.core.network.unet.MirroredUNet` (the U-Net that mirrors its margin of context in,
  so its output is as large as its input), as ``pytorch_state_dict`` with ``model.py`` itself as the
  architecture source (it imports only torch) and as ``torchscript``;
* input axes ``batch, channel, y, x`` with the valid sizes (minimum + step of the ``2**depth`` grid);
  output axes with ``halo`` = the mirrored context, the part of a tile a tiling tool crops;
* preprocessing ``scale_range`` at the model's percentiles per 2D plane (core/data/intensity.py),
  postprocessing ``softmax`` over the classes;
* a test input cropped from real data and the output napari-unet predicts for it (the reference
  ``bioimageio test`` checks), a cover (image | prediction overlay), the model card with the training
  recipe, the U-Net paper and the data's citations;
* the model's own ``.safetensors`` file as an attachment: importing our own package loads it, so the
  round trip is exact (same weights, same header, same labels).

Reading packages back (ours exactly, other 2D U-Nets wrapped) and the trust rule for code inside them:
:mod:`napari_unet.core.models.packages`.

``bioimageio.spec`` / ``bioimageio.core`` are an extra (``pip install napari-unet[bioimageio]``),
imported inside the functions: ``import napari_unet.core`` works without them. Nothing here needs a
network: every file of a package is local, and validation only checks local files.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.intensity import DEFAULT_HIGH, DEFAULT_LOW, plane_range
from ..data.zoom import model_zoom
from ..models.checkpoint import SUFFIX, ModelInfo, is_package, resolve_model_path, save_model
from ..models.load import load_model
from ..models.packages import (
    CONFIG_KEY,
    INSTALL_HINT,
    PackageError,
    _require,
    _torchscript_ok,
    available,
    own_model_bytes,
)
from ..network.unet import MirroredUNet, UNet, nearest_valid_sizes
from ..predict.tiles import mirror_pad, predict_whole, tile_context

__all__ = [
    "INSTALL_HINT",
    "available",
    "DATA_CITATIONS",
    "UNET_PAPER",
    "parse_citation",
    "cover_image",
    "expected_output",
    "export_package",
    "mirror_of",
    "mirrored",
    "model_card",
    "sample_crop",
    "valid_package_sizes",
]

UNET_PAPER = {
    "text": "Ronneberger O, Fischer P, Brox T (2015). U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351: 234-241",
    "doi": "10.1007/978-3-319-24574-4_28",
}
# the data of the shipped models (sample_data/README.md, ../shared/data/*/README.txt); models trained on
# other data name theirs with `cite=`
DATA_CITATIONS = {
    "em-membrane": [
        {
            "text": "Cardona A et al. (2010). An integrated micro- and macroarchitectural analysis of the Drosophila "
            "brain by computer-assisted serial section electron microscopy. PLoS Biol 8:e1000502 (ISBI 2012 data)",
            "doi": "10.1371/journal.pbio.1000502",
        },
        {
            "text": "Arganda-Carreras I et al. (2015). Crowdsourcing the creation of image segmentation algorithms "
            "for connectomics. Front Neuroanat 9:142 (ISBI 2012 challenge)",
            "doi": "10.3389/fnana.2015.00142",
        },
    ],
    "nuclei": [
        {
            "text": "Caicedo JC et al. (2019). Nucleus segmentation across imaging experiments: the 2018 Data "
            "Science Bowl. Nat Methods 16:1247-1253 (BBBC038v1, CC0)",
            "doi": "10.1038/s41592-019-0612-7",
        }
    ],
}


# ----------------------------------------------------------------------------- export


def mirror_of(model: UNet) -> int:
    """Context mirrored in by the exported network = the halo a tiling tool crops."""
    return tile_context(model)


def valid_package_sizes(model: UNet) -> tuple[int, int]:
    """(min, step) of the exported network's input side: ``size + 2 * mirror`` is a valid U-Net input,
    and a tile keeps at least one pixel after its halo is cropped."""
    m = mirror_of(model)
    # the smallest valid input above 4 * mirror: a package input of it keeps a pixel after its halo is cropped
    return nearest_valid_sizes(4 * m + 1, model.depth, model.padding)[1] - 2 * m, 2**model.depth


def sample_crop(model: UNet, image: np.ndarray, max_side: int = 212) -> np.ndarray:
    """The package's test input: a centred crop of a 2D ``image`` at a valid package size, at most
    ``max_side`` where the sizes allow (bioimageio.core runs it several times); an image smaller than
    the minimum is mirror-padded up to it."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"the test image must be one 2D plane (Y, X), got shape {image.shape}")
    lo, step = valid_package_sizes(model)
    side = []
    for s in image.shape:
        n = lo + max(0, (min(s, max_side) - lo) // step) * step
        side.append(n)
    out = image
    pads = [(0, max(0, n - s)) for n, s in zip(side, image.shape)]
    if any(p[1] for p in pads):
        out = mirror_pad(out, tuple(pads))
    y0, x0 = ((out.shape[0] - side[0]) // 2, (out.shape[1] - side[1]) // 2)
    return np.ascontiguousarray(out[y0 : y0 + side[0], x0 : x0 + side[1]])


def mirrored(model: UNet) -> MirroredUNet:
    """The exported network: ``model``'s weights inside a :class:`~.model.MirroredUNet` (CPU, eval)."""
    net = MirroredUNet(mirror_of(model), **model.config.to_dict())
    net.unet.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    return net.eval()


def expected_output(model: UNet, crop: np.ndarray) -> np.ndarray:
    """What napari-unet predicts for ``crop`` (class probabilities, (1, C, Y, X) float32): the package's
    test output. Its preprocessing is napari-unet's: the model's percentiles of the whole crop."""
    norm = (model.info.normalization if getattr(model, "info", None) else None) or {}
    prob = predict_whole(model.cpu(), crop, normalize=plane_range(crop, norm))
    return prob[None].astype(np.float32)


def cover_image(image: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """RGB uint8, 2:1: the image (percentile-scaled) beside it with the predicted classes over it."""
    lo, hi = plane_range(image)
    grey = np.clip((np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colours = np.array([[0, 0, 0], [255, 200, 0], [0, 160, 255], [255, 60, 160], [60, 220, 60]], np.float32) / 255
    over = rgb.copy()
    for c in range(1, n_classes):
        mask = labels == c
        over[mask] = 0.5 * over[mask] + 0.5 * colours[1 + (c - 1) % (len(colours) - 1)]
    return (np.concatenate([rgb, over], axis=1) * 255).round().astype(np.uint8)


def _percentiles(info: ModelInfo) -> tuple[float, float]:
    """The (low, high) percentiles each plane is normalised to (napari-unet's defaults unless the file says)."""
    norm = info.normalization or {}
    return norm.get("low", DEFAULT_LOW), norm.get("high", DEFAULT_HIGH)


def model_card(info: ModelInfo, model: UNet, data: str | None = None) -> str:
    """A model card for a model without one (a model trained in napari / the CLI): what the file records."""
    cfg = model.config
    low, high = _percentiles(info)
    tr = info.training or {}
    tc = tr.get("config", {})
    lines = [
        f"# Model card: `{info.name or 'napari-unet model'}`",
        "",
        info.description or "A U-Net (Ronneberger et al. 2015) trained with napari-unet.",
        "",
        "| | |",
        "|---|---|",
        f"| network | U-Net, depth {cfg.depth}, {cfg.base_channels} base channels, {cfg.padding} 3x3 convolutions, "
        f"dropout {cfg.dropout}; {model.margin()} px context margin per side |",
        f"| input | {cfg.in_channels} channel(s); each 2D plane normalised to its {low} / {high} percentiles |",
        f"| output | classes {', '.join(f'{i} = {c}' for i, c in enumerate(info.classes))} |",
        f"| label mode | {info.label_mode}{' (with a border class)' if info.border_class else ''} |",
        "",
        "## Training recipe",
        "",
    ]
    if tc:
        recipe = [
            ("steps", tr.get("steps_done", tc.get("steps"))),
            ("optimizer", f"{tc.get('optimizer')} (lr {tc.get('lr')}, {tc.get('schedule', 'constant')} schedule)"),
            ("loss weights (eq. 2)", f"w0 = {tc.get('w0')}, sigma = {tc.get('sigma')} px"),
            (
                "elastic deformation",
                f"{tc.get('elastic_grid')} x {tc.get('elastic_grid')} grid, sigma {tc.get('elastic_sigma')} px"
                if tc.get("augment", True)
                else "off",
            ),
            ("training tile (input)", tc.get("tile_in", tc.get("tile_size"))),
            ("batch size", tc.get("batch_size")),
            ("start", tc.get("init") or "scratch"),
            ("keep_prior", tc.get("keep_prior")),
            ("seed", tc.get("seed")),
            ("device", tr.get("device", tc.get("device"))),
        ]
        lines += [f"* {k}: {v}" for k, v in recipe if v is not None]
    else:
        lines.append("Not recorded in the model file.")
    lines += [
        "",
        "## Data",
        "",
        data
        or tr.get("data")
        or "Not recorded in the model file: what the model was trained on, and under which licence, is for its "
        "authors to add here (`napari-unet export --data`).",
        "",
    ]
    return "\n".join(lines)


def _validation_section(info: ModelInfo) -> str:
    tr = info.training or {}
    val = tr.get("val_history") or []
    lines = ["## Validation", ""]
    if val:
        best = max(val, key=lambda sv: sv[1])
        lines.append(
            f"Held-out IoU during training (validation slices, `val_fraction`): best {best[1]:.4f} at step "
            f"{best[0]}, last {val[-1][1]:.4f} at step {val[-1][0]}."
        )
    else:
        lines.append(
            "See the held-out numbers in the model card above (where recorded). To score the model on your own "
            "annotated images: `napari-unet evaluate --model <this package>.zip --images image.tif --labels truth.tif`."
        )
    return "\n".join(lines) + "\n"


def _package_notes(model: UNet, lo: int, step: int, halo: int) -> str:
    info = model.info
    low, high = _percentiles(info)
    return (
        "\n\n## This bioimage.io package\n\n"
        "Written by napari-unet (`napari-unet export`). The network is `MirroredUNet` from the shipped "
        "`model.py` (torch only; no napari-unet needed): it mirrors its own context in, so its output is as "
        f"large as its input. Inputs must be {lo} + k x {step} px per side (k >= 0). A tool that tiles an "
        f"image crops the halo of {halo} px per side from every tile; one pass over a whole image gives "
        "exactly napari-unet's overlap-tile prediction.\n\n"
        f"* preprocessing: `scale_range` at the {low} / {high} percentiles of each 2D plane (napari-unet's "
        "normalisation)\n"
        f"* output: class probabilities (`softmax`), channels {', '.join(info.classes)}; the labels are the "
        "argmax over the channels"
        + (
            "; instances: interior components grown over the border class (napari-unet does it)"
            if info.border_class
            else ""
        )
        + "\n* weights: `pytorch_state_dict` and `torchscript`; the napari-unet model file is attached "
        "(`napari-unet predict image.tif -o out.tif --model this.zip` loads it as it was)\n" + _zoom_note(model) + "\n"
    )


def _zoom_note(model: UNet) -> str:
    """A zoomed model (core/scale.py) expects its images resampled: napari-unet does it, other tools do not."""
    z = model_zoom(model)
    if z == 1.0:
        return ""
    return (
        f"* **scale**: this model was trained on images zoomed x{z:.3g}. napari-unet (loading this zip) zooms for "
        f"you; in other tools, resample your images by x{z:.3g} before the model and the result back by "
        f"x{1 / z:.3g}, else objects are at the wrong size for it\n"
    )


def parse_citation(text: str, what: str = "citation") -> dict:
    """'Author et al. (2020) Title. doi:10.1/x' or '... https://...' -> a bioimage.io citation
    (the CLI's --cite and the Train widget's export citation)."""
    import re

    m = re.search(r"(?:doi:\s*|https?://(?:dx\.)?doi\.org/)(10\.\S+)\s*$", text)
    if m:
        return {"text": text[: m.start()].strip().rstrip(".,;") or text, "doi": m.group(1).rstrip(".")}
    m = re.search(r"(https?://\S+)\s*$", text)
    if m:
        return {"text": text[: m.start()].strip().rstrip(".,;") or text, "url": m.group(1)}
    raise ValueError(f"{what} {text!r}: end it with doi:10.xxx/... or a https:// address (bioimage.io needs one)")


def export_package(
    model: UNet | str | os.PathLike,
    output: str | os.PathLike,
    *,
    sample: np.ndarray,
    card: str | None = None,
    authors: list[str] | None = None,
    cite: list[dict] | None = None,
    license: str = "CC-BY-4.0",
    name: str | None = None,
    data: str | None = None,
) -> Path:
    """Write ``model`` (a model, file or shipped name) as a bioimage.io model package (spec 0.5) zip.

    Parameters
    ----------
    sample : array (Y, X)
        Real data: a centred crop at a valid size becomes the package's test input and cover.
    card : str, optional
        The documentation (markdown); default: the card beside the model file (``<name>.md``, as the
        shipped models have), else one made from what the file records (:func:`model_card`).
    authors : list of str
        Who made the model (default: napari-unet developers).
    cite : list of {'text': ..., 'doi' or 'url': ...}
        The data's citations; the U-Net paper is always cited.
    license : str
        SPDX licence id of the package (weights and files).
    data : str, optional
        What the model was trained on and under which licence: the generated card's "Data" section.

    Returns
    -------
    The zip's path. Raises :class:`PackageError` when the extra is missing or bioimageio.spec refuses
    the description (its message included).
    """
    _require()
    model, src_path = _exportable(model)
    name = name or model.info.name or "napari-unet model"
    output = Path(output)
    if output.suffix != ".zip":
        output = output.with_name(output.name + ".zip")
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        d = Path(tmp)
        _write_network(model, d)
        attached = _write_own_file(model, src_path, d / f"{_safe_name(name)}{SUFFIX}")
        _write_test_files(model, sample, d)
        _write_documentation(model, d, card=_shipped_card(src_path) if card is None else card, data=data)
        descr = _model_descr(model, d, name=name, attached=attached, authors=authors, cite=cite, license=license)
        _save_zip(descr, output)
    return output


def _exportable(model: UNet | str | os.PathLike) -> tuple[UNet, Path | None]:
    """A CPU, eval-mode copy of ``model`` (a model, file or shipped name) with its ``info``, and the file
    it was read from (None for a model in memory); PackageError for a model export cannot write."""
    src_path = None
    if not isinstance(model, nn.Module):
        src_path = resolve_model_path(model)
        if is_package(src_path) and own_model_bytes(src_path) is None:  # refused before any of it loads
            raise PackageError(
                f"{src_path.name} is a bioimage.io package napari-unet did not write; only napari-unet U-Nets "
                "can be exported"
            )
        model = load_model(src_path)
    if not isinstance(model, UNet):
        raise PackageError("only napari-unet U-Nets can be exported (this model came from another package)")
    info: ModelInfo = getattr(model, "info", None) or ModelInfo(model=model.config.to_dict())
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
    model.info = info
    if model.config.in_channels != 1:
        raise PackageError(f"export supports one input channel; this model has {model.config.in_channels}")
    return model, src_path


def _write_network(model: UNet, d: Path) -> None:
    """``model.py`` (the architecture, torch only, so the package runs without napari-unet), the
    :class:`~.model.MirroredUNet`'s state dict ``weights.pt`` and its TorchScript ``weights_torchscript.pt``."""
    shutil.copyfile(inspect.getsourcefile(MirroredUNet), d / "model.py")
    net = mirrored(model)
    torch.save(net.state_dict(), d / "weights.pt")
    with _torchscript_ok():
        torch.jit.script(net).save(str(d / "weights_torchscript.pt"))


def _write_own_file(model: UNet, src_path: Path | None, attached: Path) -> Path:
    """Our own model file at ``attached``, for the exact round trip: the file itself where the model came
    from one, else the model saved."""
    if src_path is not None and src_path.suffix == SUFFIX:
        shutil.copyfile(src_path, attached)
    else:
        save_model(attached, model, info=model.info)
    return attached


def _write_test_files(model: UNet, sample: np.ndarray, d: Path) -> None:
    """``test_input.npy`` (a crop of ``sample``), ``test_output.npy`` (napari-unet's prediction for it)
    and ``cover.png`` (the crop | the predicted classes over it)."""
    from PIL import Image

    crop = sample_crop(model, sample).astype(np.float32)
    expected = expected_output(model, crop)
    np.save(d / "test_input.npy", crop[None, None])
    np.save(d / "test_output.npy", expected)
    Image.fromarray(cover_image(crop, expected[0].argmax(0), model.n_classes)).save(d / "cover.png")


def _shipped_card(src_path: Path | None) -> str | None:
    """The model card beside a model file (``<name>.md``, as the shipped models have), None without one."""
    if src_path is not None and src_path.with_suffix(".md").is_file():
        return src_path.with_suffix(".md").read_text(encoding="utf-8")
    return None


def _write_documentation(model: UNet, d: Path, *, card: str | None, data: str | None) -> None:
    """``README.md``: the model card (``card``, else one made from the file), the package notes and the
    validation numbers."""
    info = model.info
    lo, step = valid_package_sizes(model)
    doc = (card if card is not None else model_card(info, model, data=data)).rstrip()
    doc += _package_notes(model, lo, step, mirror_of(model)) + _validation_section(info)
    (d / "README.md").write_text(doc, encoding="utf-8")


_IN_ID = "raw"  # the input tensor's id, which the output's sizes refer to


def _input_descrs(model: UNet, d: Path) -> list:
    """The one input: batch, one grey channel, y and x on the valid sizes, normalised per plane at the
    model's percentiles (``scale_range``)."""
    from bioimageio.spec.model import v0_5 as bio

    lo, step = valid_package_sizes(model)
    ax_y, ax_x = bio.AxisId("y"), bio.AxisId("x")
    low, high = _percentiles(model.info)
    return [
        bio.InputTensorDescr(
            id=bio.TensorId(_IN_ID),
            description="one grey channel, raw intensities (any range: the preprocessing normalises them)",
            axes=[
                bio.BatchAxis(),
                bio.ChannelAxis(channel_names=[bio.Identifier("grey")]),
                bio.SpaceInputAxis(id=ax_y, size=bio.ParameterizedSize(min=lo, step=step)),
                bio.SpaceInputAxis(id=ax_x, size=bio.ParameterizedSize(min=lo, step=step)),
            ],
            test_tensor=bio.FileDescr(source=d / "test_input.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                bio.ScaleRangeDescr(
                    kwargs=bio.ScaleRangeKwargs(
                        axes=[ax_y, ax_x],
                        min_percentile=float(low),
                        max_percentile=float(high),
                    )
                )
            ],
        )
    ]


def _output_descrs(model: UNet, d: Path) -> list:
    """The one output: class probabilities (``softmax``) on the input's grid, with the mirrored context as
    the halo a tiling tool crops."""
    from bioimageio.spec.model import v0_5 as bio

    classes, halo = model.info.classes, mirror_of(model)
    in_id = bio.TensorId(_IN_ID)
    space = [
        bio.SpaceOutputAxisWithHalo(id=ax, size=bio.SizeReference(tensor_id=in_id, axis_id=ax), halo=halo)
        for ax in (bio.AxisId("y"), bio.AxisId("x"))
    ]
    return [
        bio.OutputTensorDescr(
            id=bio.TensorId("probabilities"),
            description=f"class probabilities: {', '.join(classes)}; labels = argmax over the channels",
            axes=[
                bio.BatchAxis(),
                bio.ChannelAxis(channel_names=[bio.Identifier(_identifier(c)) for c in classes]),
                *space,
            ],
            test_tensor=bio.FileDescr(source=d / "test_output.npy"),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[bio.SoftmaxDescr(kwargs=bio.SoftmaxKwargs(axis=bio.AxisId("channel")))],
        )
    ]


def _weights_descr(model: UNet, d: Path):
    """``pytorch_state_dict`` (``MirroredUNet`` from ``model.py`` with the model's config) and
    ``torchscript`` converted from it."""
    from bioimageio.spec.model import v0_5 as bio

    torch_version = bio.Version(torch.__version__.split("+")[0])
    kwargs = {"mirror": mirror_of(model), **model.config.to_dict()}
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=d / "weights.pt",
            architecture=bio.ArchitectureFromFileDescr(source=d / "model.py", callable="MirroredUNet", kwargs=kwargs),
            pytorch_version=torch_version,
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=d / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
        ),
    )


def _model_descr(
    model: UNet,
    d: Path,
    *,
    name: str,
    attached: Path,
    authors: list[str] | None,
    cite: list[dict] | None,
    license: str,
):
    """The package's rdf: its name, authors, citations, the files in ``d``, the input, output and weights
    descriptions and our ``config`` block (the model's info and its attached file), checked by
    bioimageio.spec against the files."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as bio

    info = model.info
    inputs, outputs, weights = _input_descrs(model, d), _output_descrs(model, d), _weights_descr(model, d)
    citations = [UNET_PAPER, *(cite if cite is not None else DATA_CITATIONS.get(info.name, []))]
    description = info.description or f"U-Net (Ronneberger et al. 2015) trained with napari-unet: {name}"
    try:
        with ValidationContext(root=d, perform_io_checks=True):
            return bio.ModelDescr(
                name=_display_name(name),
                description=description[:1000],
                authors=[bio.Author(name=a) for a in (authors or ["napari-unet developers"])],
                cite=[bio.CiteEntry(**c) for c in citations],
                license=bio.LicenseId(license),
                documentation=bio.FileDescr(source=d / "README.md"),
                covers=[bio.FileDescr(source=d / "cover.png")],
                attachments=[bio.FileDescr(source=attached)],
                tags=["unet", "2d", "segmentation", "napari-unet", "pytorch"],
                inputs=inputs,
                outputs=outputs,
                weights=weights,
                config=bio.Config(**{CONFIG_KEY: {"info": json.loads(info.to_json()), "file": attached.name}}),
            )
    except Exception as e:  # pydantic's ValidationError lists every field at fault
        raise PackageError(f"bioimageio.spec refused the package description: {e}") from e


def _save_zip(descr, output: Path) -> None:
    """The package zip at ``output``, written beside it and renamed over it (no half-written zip)."""
    from bioimageio.spec import save_bioimageio_package

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_zip = output.with_name(f".{output.name}.part")
    try:
        save_bioimageio_package(descr, output_path=tmp_zip)
        os.replace(tmp_zip, output)
    finally:
        tmp_zip.unlink(missing_ok=True)


def _safe_name(name: str) -> str:
    s = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-")
    return s or "model"


def _display_name(name: str) -> str:
    # bioimage.io names: letters, digits and a few separators, at most 128 characters
    s = "".join(ch if ch.isalnum() or ch in " -_()" else " " for ch in name).strip() or "napari-unet model"
    return (s if len(s) >= 5 else f"{s} U-Net")[:128]  # 5 to 128 characters


def _identifier(name: str) -> str:
    s = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(name))
    return s if s and not s[0].isdigit() else f"c_{s}"
