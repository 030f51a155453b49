"""bioimage.io model packages (spec 0.5): export our models, import ours and other 2D U-Nets.

Export (:func:`export_package`) writes a zip that bioimageio.core, deepImageJ, ilastik and the
BioImage Model Zoo run without napari-unet:

* the network is :class:`~.model.MirroredUNet` (the U-Net that mirrors its margin of context in,
  so its output is as large as its input), as ``pytorch_state_dict`` with ``model.py`` itself as the
  architecture source (it imports only torch) and as ``torchscript``;
* input axes ``batch, channel, y, x`` with the valid sizes (minimum + step of the ``2**depth`` grid);
  output axes with ``halo`` = the mirrored context, the part of a tile a tiling tool crops;
* preprocessing ``scale_range`` at the model's percentiles per 2D plane (core/intensity.py),
  postprocessing ``softmax`` over the classes;
* a test input cropped from real data and the output napari-unet predicts for it (the reference
  ``bioimageio test`` checks), a cover (image | prediction overlay), the model card with the training
  recipe, the U-Net paper and the data's citations;
* the model's own ``.safetensors`` file as an attachment: importing our own package loads it, so the
  round trip is exact (same weights, same header, same labels).

Import (:func:`load_package`): our own packages give back the :class:`~.model.UNet` of that
attachment. Other packages with ``pytorch_state_dict`` or ``torchscript`` weights, one 2D input of
one channel and one output of class scores are wrapped as a :class:`PackagedModel` that
:func:`~.tiling.iter_predict` tiles with the package's declared halo and pre/post-processing.
Anything else raises :class:`PackageError` saying what is not supported.

``bioimageio.spec`` / ``bioimageio.core`` are an extra (``pip install napari-unet[bioimageio]``),
imported inside the functions: ``import napari_unet.core`` works without them. Nothing here needs a
network: every file of a package is local, and validation only checks local files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import SUFFIX, ModelInfo, is_package, load_model, save_model
from .intensity import DEFAULT_HIGH, DEFAULT_LOW, plane_range
from .model import MirroredUNet, UNet, nearest_valid_sizes
from .tiling import mirror_pad, predict_whole, tile_context

INSTALL_HINT = "pip install 'napari-unet[bioimageio]'"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari_unet"  # our block in the package's `config`

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


class PackageError(ValueError):
    """A bioimage.io package napari-unet cannot use, or cannot write; the message says why."""


def available() -> bool:
    """Whether the bioimageio extra is installed."""
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    if not available():
        raise PackageError(f"bioimage.io packages need the bioimageio extra: {INSTALL_HINT}")


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
    from .scale import model_scale

    z = model_scale(model)
    if z == 1.0:
        return ""
    return (
        f"* **scale**: this model was trained on images zoomed x{z:.3g}. napari-unet (loading this zip) zooms for "
        f"you; in other tools, resample your images by x{z:.3g} before the model and the result back by "
        f"x{1 / z:.3g}, else objects are at the wrong size for it\n"
    )


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
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    src_path = None
    if not isinstance(model, nn.Module):
        from .checkpoint import resolve_model_path

        src_path = resolve_model_path(model)
        model = load_model(src_path)
    if not isinstance(model, UNet):
        raise PackageError("only napari-unet U-Nets can be exported (this model came from another package)")
    info: ModelInfo = getattr(model, "info", None) or ModelInfo(model=model.config.to_dict())
    model = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
    model.info = info
    name = name or info.name or "napari-unet model"
    if model.config.in_channels != 1:
        raise PackageError(f"export supports one input channel; this model has {model.config.in_channels}")
    output = Path(output)
    if output.suffix != ".zip":
        output = output.with_name(output.name + ".zip")
    lo, step = valid_package_sizes(model)
    halo = mirror_of(model)

    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        d = Path(tmp)
        # the architecture: model.py itself (torch only), so the package runs without napari-unet
        arch = d / "model.py"
        shutil.copyfile(Path(__file__).with_name("model.py"), arch)
        net = mirrored(model)
        torch.save(net.state_dict(), d / "weights.pt")
        with _torchscript_ok():
            torch.jit.script(net).save(str(d / "weights_torchscript.pt"))
        # our own file, attached: the exact round trip
        attached = d / f"{_safe_name(name)}{SUFFIX}"
        if src_path is not None and src_path.suffix == SUFFIX:
            shutil.copyfile(src_path, attached)
        else:
            save_model(attached, model, info=info)

        crop = sample_crop(model, sample).astype(np.float32)
        expected = expected_output(model, crop)
        np.save(d / "test_input.npy", crop[None, None])
        np.save(d / "test_output.npy", expected)
        from PIL import Image

        Image.fromarray(cover_image(crop, expected[0].argmax(0), model.n_classes)).save(d / "cover.png")
        if card is None and src_path is not None and src_path.with_suffix(".md").is_file():
            card = src_path.with_suffix(".md").read_text(encoding="utf-8")  # a shipped model's card
        doc = (card if card is not None else model_card(info, model, data=data)).rstrip()
        doc += _package_notes(model, lo, step, halo) + _validation_section(info)
        (d / "README.md").write_text(doc, encoding="utf-8")

        in_id, ax_y, ax_x = bio.TensorId("raw"), bio.AxisId("y"), bio.AxisId("x")
        low, high = _percentiles(info)
        inputs = [
            bio.InputTensorDescr(
                id=in_id,
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
        outputs = [
            bio.OutputTensorDescr(
                id=bio.TensorId("probabilities"),
                description=f"class probabilities: {', '.join(info.classes)}; labels = argmax over the channels",
                axes=[
                    bio.BatchAxis(),
                    bio.ChannelAxis(channel_names=[bio.Identifier(_identifier(c)) for c in info.classes]),
                    bio.SpaceOutputAxisWithHalo(
                        id=ax_y, size=bio.SizeReference(tensor_id=in_id, axis_id=ax_y), halo=halo
                    ),
                    bio.SpaceOutputAxisWithHalo(
                        id=ax_x, size=bio.SizeReference(tensor_id=in_id, axis_id=ax_x), halo=halo
                    ),
                ],
                test_tensor=bio.FileDescr(source=d / "test_output.npy"),
                data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                postprocessing=[bio.SoftmaxDescr(kwargs=bio.SoftmaxKwargs(axis=bio.AxisId("channel")))],
            )
        ]
        torch_version = bio.Version(torch.__version__.split("+")[0])
        kwargs = {"mirror": halo, **model.config.to_dict()}
        weights = bio.WeightsDescr(
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=d / "weights.pt",
                architecture=bio.ArchitectureFromFileDescr(source=arch, callable="MirroredUNet", kwargs=kwargs),
                pytorch_version=torch_version,
            ),
            torchscript=bio.TorchscriptWeightsDescr(
                source=d / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
            ),
        )
        citations = [UNET_PAPER, *(cite if cite is not None else DATA_CITATIONS.get(info.name, []))]
        try:
            with ValidationContext(root=d, perform_io_checks=True):
                descr = bio.ModelDescr(
                    name=_display_name(name),
                    description=(
                        info.description or f"U-Net (Ronneberger et al. 2015) trained with napari-unet: {name}"
                    )[:1000],
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
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp_zip = output.with_name(f".{output.name}.part")
        try:
            save_bioimageio_package(descr, output_path=tmp_zip)
            os.replace(tmp_zip, output)
        finally:
            tmp_zip.unlink(missing_ok=True)
    return output


@contextlib.contextmanager
def _torchscript_ok():
    """torch >= 2.10 deprecates TorchScript; it is still the format deepImageJ and the zoo read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+. is deprecated", category=DeprecationWarning)
        yield


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


# ----------------------------------------------------------------------------- import


def load_package(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """A model from a bioimage.io package (``.zip`` or ``rdf.yaml``); see the module docstring."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no bioimage.io package at {source}")
    own = _load_own(source, device)  # our own export needs no bioimageio: zip + YAML + the attached file
    if own is not None:
        return own
    _require()
    from bioimageio.spec import InvalidDescr, load_model_description
    from bioimageio.spec.model import v0_4, v0_5

    try:
        descr = load_model_description(source, perform_io_checks=False)
    except Exception as e:
        raise PackageError(f"{source.name}: cannot read this bioimage.io package ({e})") from e
    if isinstance(descr, InvalidDescr):
        raise PackageError(f"{source.name} is not a valid bioimage.io model: {descr.validation_summary}")
    if isinstance(descr, v0_4.ModelDescr):
        raise PackageError(
            f"{source.name} uses the old model spec {descr.format_version}; napari-unet reads spec 0.5 "
            "(update it with `bioimageio update-format`)"
        )
    assert isinstance(descr, v0_5.ModelDescr)
    return PackagedModel.from_descr(descr, name=source.stem if source.suffix == ".zip" else descr.name).to(device)


def own_model_bytes(source: str | os.PathLike) -> tuple[str, bytes] | None:
    """Our own export: (file name, bytes) of the attached napari-unet model file; None for a foreign package.

    Reads the package's ``config.napari_unet.file`` entry with plain zip + YAML: no bioimageio needed.
    """
    import yaml

    source = Path(source)
    try:
        if source.suffix.lower() == ".zip":
            with zipfile.ZipFile(source) as z:
                names = z.namelist()
                rdf = next((n for n in RDF_NAMES if n in names), None)
                if rdf is None:
                    return None
                entry = _config_file(yaml.safe_load(z.read(rdf)))
                return (Path(entry).name, z.read(entry)) if entry in names else None
        entry = _config_file(yaml.safe_load(source.read_text(encoding="utf-8")))
        f = source.parent / entry if entry else None
        return (f.name, f.read_bytes()) if f is not None and f.is_file() else None
    except zipfile.BadZipFile as e:
        raise PackageError(f"{source.name} is not a zip file ({e})") from e
    except yaml.YAMLError as e:
        raise PackageError(f"{source.name}: its rdf.yaml is not valid YAML ({e})") from e


def _config_file(rdf) -> str | None:
    cfg = (rdf or {}).get("config") if isinstance(rdf, dict) else None
    entry = (cfg or {}).get(CONFIG_KEY) if isinstance(cfg, dict) else None
    f = entry.get("file") if isinstance(entry, dict) else None
    return str(f) if f else None


@contextlib.contextmanager
def own_model_file(source: str | os.PathLike):
    """The napari-unet model file attached to package ``source``, written to a temporary folder for the
    ``with`` block (None: the package has none)."""
    own = own_model_bytes(source)
    if own is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as t:
        f = Path(t) / own[0]
        f.write_bytes(own[1])
        yield f


def _load_own(source: Path, device) -> UNet | None:
    with own_model_file(source) as f:
        return None if f is None else load_model(f, device=device)  # reads every tensor: the file may go


@dataclass(frozen=True)
class _PackagedConfig:
    """The part of :class:`~.model.UNetConfig` the tiler reads (base_channels: a guess for the memory budget)."""

    n_classes: int
    depth: int
    in_channels: int = 1
    base_channels: int = 32
    padding: str = "same"


_SUPPORTED_PRE = ("scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_linear")
_SUPPORTED_POST = ("softmax", "sigmoid")


class PackagedModel(nn.Module):
    """A foreign bioimage.io network made to look like a padded U-Net to :func:`~.tiling.iter_predict`.

    ``forward`` takes a (B, 1, Y, X) tile already normalised as the package says (the
    ``normalization`` of :attr:`info`, applied per whole 2D plane, so tiles agree), mirror-pads it to
    a size the package accepts, runs it in the package's axis order, crops back and returns class
    scores (B, C, Y, X) whose softmax is the package's probabilities (a one-channel output becomes
    background / foreground). :attr:`context` is the declared halo (or the margin a valid network
    consumes), which the tiler crops from every tile.
    """

    def __init__(
        self,
        net,
        *,
        in_axes,
        out_axes,
        min_size,
        step,
        offset,
        context,
        post,
        probabilities,
        classes,
    ):
        super().__init__()
        self.net = net
        self.in_axes, self.out_axes = in_axes, out_axes
        self.min_size, self.step, self.offset = min_size, step, offset
        self.context = context
        self.post = post  # None, 'softmax' or 'sigmoid'
        self.probabilities = probabilities  # no postprocessing, and the output's data range is [0, 1]
        # what the tiler reads: a 'same' network on this 2**depth grid, one input channel, these classes
        self.config = _PackagedConfig(n_classes=len(classes), depth=max(0, int(step).bit_length() - 1))
        self.info = None

    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def n_classes(self) -> int:
        return self.config.n_classes

    @property
    def padding(self) -> str:
        return "same"

    def margin(self) -> int:
        return 0

    def output_size(self, size: int) -> int:
        return size

    @classmethod
    def from_descr(cls, descr, *, name: str) -> PackagedModel:
        from bioimageio.spec.model import v0_5 as bio

        what = f"bioimage.io model {descr.name!r}"
        if len(descr.inputs) != 1 or len(descr.outputs) != 1:
            raise PackageError(
                f"{what} has {len(descr.inputs)} input(s) and {len(descr.outputs)} output(s); napari-unet runs "
                "models with one 2D image in and one map of class scores out"
            )
        inp, out = descr.inputs[0], descr.outputs[0]
        in_axes = [str(a.id) for a in inp.axes]
        out_axes = [str(a.id) for a in out.axes]
        spatial = [a for a in inp.axes if a.type == "space"]
        if sorted(str(a.id) for a in spatial) != ["x", "y"] or any(
            a.type not in ("batch", "channel", "space") for a in inp.axes
        ):
            raise PackageError(
                f"{what}: its input axes are {in_axes}; napari-unet runs 2D models (axes y, x with optional "
                "batch and channel), not 3D or time series"
            )
        ch = [a for a in inp.axes if a.type == "channel"]
        if ch and len(ch[0].channel_names) != 1:
            raise PackageError(
                f"{what} takes {len(ch[0].channel_names)} input channels; napari-unet runs single-channel models"
            )
        if sorted(str(a.id) for a in out.axes if a.type == "space") != ["x", "y"] or any(
            a.type not in ("batch", "channel", "space") for a in out.axes
        ):
            raise PackageError(f"{what}: its output axes are {out_axes}; napari-unet needs a 2D (y, x) output")
        ys = next(a for a in spatial if str(a.id) == "y").size
        xs = next(a for a in spatial if str(a.id) == "x").size
        if not (isinstance(ys, bio.ParameterizedSize) and isinstance(xs, bio.ParameterizedSize)):
            raise PackageError(
                f"{what} takes a fixed input size ({ys}, {xs}); napari-unet's overlap-tile prediction needs "
                "a parameterized size (min + k * step)"
            )
        if (ys.min, ys.step) != (xs.min, xs.step):
            raise PackageError(f"{what}: y and x have different valid sizes; napari-unet tiles square grids")
        step = int(ys.step) or 1
        if step & (step - 1):
            raise PackageError(f"{what}: input step {step} is not a power of two; napari-unet tiles on a 2**n grid")
        halo, offset = 0, 0
        for a in out.axes:
            if a.type != "space":
                continue
            h = int(getattr(a, "halo", 0) or 0)
            size = a.size
            off = int(getattr(size, "offset", 0) or 0) if isinstance(size, bio.SizeReference) else None
            if off is None:
                raise PackageError(f"{what}: output axis {a.id} is not sized relative to the input; not supported")
            if getattr(a, "scale", 1.0) != 1.0 or getattr(size, "axis_id", a.id) != a.id:
                raise PackageError(f"{what}: output axis {a.id} is rescaled; napari-unet needs output = input grid")
            halo, offset = max(halo, h), off
        if offset > 0 or offset % 2:
            raise PackageError(f"{what}: output is {offset} px larger than its input; not supported")
        # context the tiler mirrors and crops: the halo, or what a valid network loses, on the 2**n grid
        need = max(halo, -offset // 2)
        context = -(-need // step) * step if need else 0

        n_out = [a for a in out.axes if a.type == "channel"]
        classes = [str(c) for c in n_out[0].channel_names] if n_out else ["foreground"]
        post_ops = [p.id for p in out.postprocessing if p.id != "ensure_dtype"]
        if any(p not in _SUPPORTED_POST for p in post_ops) or len(post_ops) > 1:
            raise PackageError(
                f"{what}: postprocessing {post_ops} is not supported; napari-unet reads class scores "
                f"(no postprocessing, {' or '.join(_SUPPORTED_POST)})"
            )
        post = post_ops[0] if post_ops else None
        if len(classes) == 1:
            classes = ["background", classes[0]]
        info = ModelInfo(
            model={"depth": max(1, step.bit_length() - 1), "padding": "same", "n_classes": len(classes)},
            classes=classes,
            normalization=_normalization(inp.preprocessing, what),
            name=name,
            description=(descr.description or "")[:300],
            format="bioimageio-foreign",
        )
        net = _load_net(descr, what)
        m = cls(
            net,
            in_axes=in_axes,
            out_axes=out_axes,
            min_size=int(ys.min),
            step=step,
            offset=offset,
            context=context,
            post=post,
            probabilities=tuple(getattr(out.data, "range", (None, None)) or (None, None)) == (0.0, 1.0),
            classes=classes,
        )
        m.info = info
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "batch" not in self.in_axes and x.shape[0] > 1:  # a package without a batch axis: one tile at a time
            return torch.cat([self(x[i : i + 1]) for i in range(x.shape[0])])
        h, w = x.shape[-2:]
        # The smallest input the package accepts whose output covers the tile. The tile stays where it is
        # (the pooling grid keeps its phase, so tiles agree with each other): what a valid network loses
        # is mirrored in before it, the rest of the accepted size after it.
        lead = -self.offset // 2
        pads = []
        for s in (h, w):
            n = max(self.min_size, s - self.offset)
            n = self.min_size + -(-(n - self.min_size) // self.step) * self.step
            pads.append((lead, n - s - lead))
        (t, b), (le, r) = pads
        if t or b or le or r:
            x = nn.functional.pad(x, (le, r, t, b), mode="reflect")
        y = self.net(_to_axes(x, self.in_axes))
        y = _from_axes(y, self.out_axes).float()[..., :h, :w]
        # the network's raw output: logits when the package applies sigmoid / softmax as postprocessing,
        # else probabilities where its data range says [0, 1], else logits
        if self.post is None and self.probabilities:
            p = y.clamp(1e-7, 1 - 1e-7)
            if y.shape[1] == 1:
                return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)
            return torch.log(p)
        if y.shape[1] == 1:  # one foreground logit -> background / foreground scores: softmax = sigmoid
            return torch.cat([torch.zeros_like(y), y], dim=1)
        if self.post == "sigmoid":  # independent channels: their sigmoids, renormalised by the softmax
            return nn.functional.logsigmoid(y)
        return y


def _to_axes(x: torch.Tensor, axes: list[str]) -> torch.Tensor:
    """(B, C, Y, X) -> the package's input axis order (axes it lacks are dropped)."""
    ours = {"batch": 0, "channel": 1, "y": 2, "x": 3}
    x = x.permute(*[ours[a] for a in axes if a in ours], *[ours[a] for a in ours if a not in axes])
    for _ in range(4 - len(axes)):
        x = x.squeeze(-1)
    return x


def _from_axes(y: torch.Tensor, axes: list[str]) -> torch.Tensor:
    """The package's output axis order -> (B, C, Y, X) (a missing batch or channel axis added)."""
    have = list(axes)
    for a in ("batch", "channel"):
        if a not in have:
            y = y.unsqueeze(-1)
            have.append(a)
    return y.permute(*[have.index(a) for a in ("batch", "channel", "y", "x")])


def _normalization(preprocessing, what: str) -> dict:
    """The package's input preprocessing as napari-unet's per-plane normalisation (core/intensity.py)."""
    ops = [p for p in preprocessing if p.id != "ensure_dtype"]
    if not ops:
        return {"method": "none"}
    if len(ops) > 1 or ops[0].id not in _SUPPORTED_PRE:
        raise PackageError(
            f"{what}: preprocessing {[p.id for p in ops]} is not supported; napari-unet applies one of "
            f"{', '.join(_SUPPORTED_PRE)} (per 2D plane)"
        )
    op = ops[0]
    k = op.kwargs
    axes = getattr(k, "axes", None)
    # per 2D plane: y and x, with or without batch and the one channel (None = all axes jointly)
    if axes is not None and not {"x", "y"} <= {str(a) for a in axes} <= {"batch", "channel", "x", "y"}:
        raise PackageError(f"{what}: {op.id} over axes {[str(a) for a in axes]}; napari-unet normalises 2D planes")
    if op.id == "scale_range":
        return {"method": "percentile", "low": float(k.min_percentile), "high": float(k.max_percentile), "eps": k.eps}
    if op.id == "zero_mean_unit_variance":
        return {"method": "mean_std", "eps": float(k.eps)}
    if op.id == "fixed_zero_mean_unit_variance":
        if not isinstance(k.mean, (int, float)):
            raise PackageError(f"{what}: per-channel fixed mean/std is not supported")
        return {"method": "affine", "lo": float(k.mean), "scale": 1.0 / float(k.std)}
    gain, offset = k.gain, k.offset
    if not isinstance(gain, (int, float)) or not isinstance(offset, (int, float)):
        raise PackageError(f"{what}: per-channel scale_linear is not supported")
    # x * gain + offset == (x - (-offset / gain)) * gain
    return {"method": "affine", "lo": -float(offset) / float(gain), "scale": float(gain)}


def _load_net(descr, what: str) -> nn.Module:
    w = descr.weights
    errors = []
    if w.torchscript is not None:
        try:
            with _torchscript_ok():
                return torch.jit.load(io.BytesIO(w.torchscript.get_reader().read()), map_location="cpu").eval()
        except Exception as e:  # fall back to the state dict
            errors.append(f"torchscript: {e}")
    if w.pytorch_state_dict is not None:
        try:
            from bioimageio.core.digest_spec import import_callable

            sd = w.pytorch_state_dict
            net = import_callable(sd.architecture)(**sd.architecture.kwargs)
            # no pickled code
            state = torch.load(io.BytesIO(sd.get_reader().read()), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=sd.strict)
            return net.eval()
        except Exception as e:
            errors.append(f"pytorch_state_dict: {e}")
    if errors:
        raise PackageError(f"{what}: its weights do not load ({'; '.join(errors)})")
    have = [k for k, v in w if v is not None]
    raise PackageError(
        f"{what} has weights {have}; napari-unet runs pytorch_state_dict or torchscript weights "
        "(bioimageio.core can convert some formats: `bioimageio predict` runs the others)"
    )


__all__ = [
    "PackageError",
    "PackagedModel",
    "available",
    "export_package",
    "is_package",
    "load_package",
]
