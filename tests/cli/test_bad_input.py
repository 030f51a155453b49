"""The bad-input matrix (issue "Nothing lost, nothing silently wrong"): one parametrised test per surface.

Every case is something a user plausibly does wrong. Each asserts that the message names the problem
and what to do, that no traceback reaches the user, that nothing is lost (inputs and an existing output
unchanged, no stray temporary files) and that the process stays usable. A few rows are inputs that look
wrong but are valid (a constant image, a bool mask as image): they must work, or warn, not crash.

The widgets' matrix is in tests/widgets/test_bad_input_widget.py.
"""

from __future__ import annotations

import hashlib
import re
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main

# ----------------------------------------------------------------------------- shared data

PREVIOUS = b"a previous result the user keeps"


@pytest.fixture(scope="module")
def data(em_sample, nuclei_sample, tmp_path_factory):
    """Small real crops (the bundled ISBI 2012 EM and DSB 2018 nuclei samples) and a tiny model's bytes, made once."""
    from napari_unet.core.data.labels import isbi_to_instances
    from napari_unet.core.models.checkpoint import save_model
    from napari_unet.core.network.unet import UNet

    img, lab, _ = em_sample
    em_crop = np.s_[:3, 192:256, 176:256]  # 64 x 80 px holding 11-13 cells per slice
    em = np.ascontiguousarray(img[em_crop])
    em_labels = isbi_to_instances(lab[em_crop]).astype(np.uint16)
    em_labels[2] = 0  # slice 2 not annotated, as a user paints
    nuclei_crop = np.s_[:2, :64, 64:128]  # 64 x 64 px holding 2 and 4 nuclei
    nuclei, nuclei_truth = (np.ascontiguousarray(a[nuclei_crop]) for a in nuclei_sample)
    torch.manual_seed(0)
    net = UNet(depth=2, base_channels=4, n_classes=2)
    model = save_model(tmp_path_factory.mktemp("model") / "tiny", net, label_mode="instance")
    return {
        "em": em,
        "em_labels": em_labels,
        "nuclei": nuclei,
        "nuclei_truth": nuclei_truth,
        "model": model.read_bytes(),
        "net": net,
    }


def tif(path: Path, array) -> str:
    with warnings.catch_warnings():  # tifffile warns that a 0-size array makes a nonconformant TIFF: wanted here
        warnings.simplefilter("ignore", UserWarning)
        tifffile.imwrite(path, np.asarray(array), photometric="minisblack")
    return str(path)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class Files:
    """The files of one case in its own folder: the crops, the tiny model and outputs that already exist."""

    def __init__(self, tmp: Path, data: dict):
        self.tmp, self.data = tmp, data
        self.em = tif(tmp / "em.tif", data["em"])
        self.em_labels = tif(tmp / "em-labels.tif", data["em_labels"])
        self.nuclei = tif(tmp / "nuclei.tif", data["nuclei"])
        self.nuclei_truth = tif(tmp / "nuclei-truth.tif", data["nuclei_truth"])
        (tmp / "tiny.safetensors").write_bytes(data["model"])
        self.model = str(tmp / "tiny.safetensors")
        for name in ("out.tif", "out.safetensors", "report.json"):
            (tmp / name).write_bytes(PREVIOUS)  # earlier results: a failed run must not touch them
        self.out_tif, self.out_model, self.report = (
            str(tmp / n) for n in ("out.tif", "out.safetensors", "report.json")
        )

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def image(self, name: str, array) -> str:
        return tif(self.tmp / name, array)

    def raw(self, name: str, content: bytes) -> str:
        (self.tmp / name).write_bytes(content)
        return str(self.tmp / name)

    def folder(self, name: str, slices=(), extra: dict[str, bytes] | None = None) -> str:
        """A folder of TIFF slices s00.tif, s01.tif, ... plus ``extra`` files (name -> bytes)."""
        (self.tmp / name).mkdir()
        for i, s in enumerate(slices):
            tif(self.tmp / name / f"s{i:02d}.tif", s)
        for fname, content in (extra or {}).items():
            (self.tmp / name / fname).write_bytes(content)
        return str(self.tmp / name)

    def model_file(self, name: str, net=None, **info) -> str:
        from napari_unet.core.models.checkpoint import save_model

        return str(save_model(self.tmp / name, net if net is not None else self.data["net"], **info))


# bad files, as users make them: a copy cut short, a download that failed, a renamed file
def corrupt16(f: Files, name="corrupt.tif") -> str:
    return f.raw(name, b"II*\x00" + bytes(range(12)))  # a TIFF signature, then nothing that makes sense


def truncated(f: Files, name="truncated.tif") -> str:
    return f.raw(name, Path(f.em).read_bytes()[: Path(f.em).stat().st_size // 2])


def random_bytes(f: Files, name="random.tif") -> str:
    return f.raw(name, np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def png(f: Files, name="image.png") -> str:
    return f.raw(name, b"\x89PNG\r\n\x1a\n" + bytes(64))


def strip_of_wrong_size(f: Files, name="strip.tif") -> str:
    """A zlib TIFF whose header says 64 px wide over strips of 32 px rows: the strip decodes to the wrong size."""
    import struct

    tifffile.imwrite(f.tmp / name, np.zeros((16, 32), np.uint8), photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(f.tmp / name) as t:
        offset = t.pages[0].tags["ImageWidth"].valueoffset
    raw = bytearray((f.tmp / name).read_bytes())
    raw[offset : offset + 2] = struct.pack("<H", 64)
    return f.raw(name, bytes(raw))


def damaged_slice(f: Files) -> str:
    """A folder of slices whose second slice is a copy cut short."""
    folder = f.folder("cut", [f.data["em"][0]])
    truncated(f, "cut/s01.tif")
    return folder


def one_d(f: Files, name="1d.tif") -> str:
    """A 1D TIFF (tifffile writes none, but its 'shaped' description can say (100,))."""
    tifffile.imwrite(f.tmp / name, np.arange(100, dtype=np.uint8)[None], description='{"shape": [100]}', metadata=None)
    return f.path(name)


def nan_weights(f: Files) -> str:
    from model_files import save_diverged

    from napari_unet.core.network.unet import UNet

    return str(save_diverged(f.tmp / "diverged.safetensors", UNet(depth=2, base_channels=4, n_classes=2)))


def pickle_model(f: Files) -> str:
    torch.save(f.data["net"].state_dict(), f.tmp / "model.safetensors")  # a .pt renamed
    return f.path("model.safetensors")


def foreign_safetensors(f: Files) -> str:
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, f.tmp / "other.safetensors")
    return f.path("other.safetensors")


def crafted(f: Files, name: str, **kw) -> str:
    """A model file written by hand (tests/model_files.py): a tiny network's tensors under a header ``kw``
    bends (a 7.3 GiB network in 32 KB with depth=3, base_channels=1024; dtype='I8' for integer weights)."""
    from model_files import crafted_model

    return str(crafted_model(f.tmp / f"{name}.safetensors", **kw))


def truncated_model(f: Files) -> str:
    return f.raw("cut.safetensors", f.data["model"][: len(f.data["model"]) // 2])


def newer_model(f: Files) -> str:
    return f.model_file("newer", format="napari-unet/99")


def slices(f: Files, stack=None) -> str:
    """The EM crop (or ``stack``) as a folder of slices ``slices/s00.tif, s01.tif, ...``."""
    return f.folder("slices", list(f.data["em"] if stack is None else stack))


def symlink(f: Files, target: str, name: str) -> Path:
    (f.tmp / name).symlink_to(f.tmp / target, target_is_directory=True)
    return f.tmp / name


def ome_zarr(f: Files) -> str:
    """The EM crop as an OME-Zarr image ``in.zarr`` (one chunk per slice)."""
    from napari_unet.core.data import ngff

    pytest.importorskip("zarr")
    em = f.data["em"]
    arr = ngff.create_output(
        f.tmp / "in.zarr", shape=em.shape, dtype="uint8", chunks=(1, *em.shape[1:]), axes="ZYX", labels=False
    )
    arr[:] = em
    return f.path("in.zarr")


def package_folder(f: Files) -> str:
    """A model package given by its rdf.yaml, the tiny model beside it (refused before it is read)."""
    (f.tmp / "package").mkdir()
    (f.tmp / "package" / "weights.safetensors").write_bytes(f.data["model"])
    return f.raw("package/rdf.yaml", b"type: model\nformat_version: 0.5.3\n")


# ----------------------------------------------------------------------------- CLI

NET = ["--depth", "2", "--channels", "4", "--tile-in", "92", "--steps", "2"]


def train(f: Files, *extra, images=None, labels=None, out=None, init="scratch") -> list[str]:
    images = [f.em] if images is None else images
    labels = [f.em_labels] if labels is None else labels
    argv = ["train", "--images", *images, "--labels", *labels, "--init", init, *NET, "--device", "cpu", "-q"]
    return [*argv, "-o", out or f.out_model, *extra]


def predict(f: Files, *extra, image=None, model=None, out=None) -> list[str]:
    argv = ["predict", image or f.em, "--model", model or f.model, "--device", "cpu", "-q"]
    return [*argv, "-o", out or f.out_tif, *extra]


def evaluate(f: Files, *extra, image=None, labels=None, model=None, out=None) -> list[str]:
    argv = ["evaluate", "--images", image or f.nuclei, "--labels", labels or f.nuclei_truth]
    return [*argv, "--model", model or f.model, "--device", "cpu", "-q", "--json", out or f.report, *extra]


CLI = {
    # wrong dimensions and content of images
    "predict-1d": (lambda f: predict(f, image=one_d(f)), r"2D image \(Y, X\) or a stack"),
    "train-1d": (lambda f: train(f, images=[one_d(f)], labels=[one_d(f, "1dl.tif")]), r"\(Z, Y, X\)"),
    "predict-4d": (lambda f: predict(f, image=f.image("4d.tif", np.zeros((2, 2, 32, 32), np.uint8))), r"\(Z, Y, X\)"),
    "predict-5d": (
        lambda f: predict(f, image=f.image("5d.tif", np.zeros((2, 2, 2, 32, 32), np.uint8))),
        r"\(Z, Y, X\)",
    ),
    "predict-empty-array": (lambda f: predict(f, image=f.image("empty.tif", np.zeros((0, 32), np.uint8))), "empty"),
    "predict-nan": (lambda f: predict(f, image=f.image("nan.tif", np.full((32, 32), np.nan, np.float32))), "NaN"),
    "predict-inf": (
        lambda f: predict(f, image=f.image("inf.tif", np.where(np.eye(32) > 0, np.inf, 1).astype(np.float32))),
        "NaN or inf",
    ),
    "predict-complex": (lambda f: predict(f, image=f.image("c.tif", np.ones((32, 32), np.complex64))), "complex"),
    "train-nan-image": (
        lambda f: train(f, images=[f.image("nan.tif", np.where(f.data["em"] > 200, np.nan, f.data["em"]))]),
        "NaN",
    ),
    "train-4d-image": (
        lambda f: train(
            f,
            images=[f.image("4d.tif", np.zeros((2, 3, 64, 80), np.uint8))],
            labels=[f.image("4dl.tif", np.ones((2, 3, 64, 80), np.uint8))],
        ),
        r"\(Z, Y, X\)",
    ),
    # labels
    "train-labels-all-zero": (
        lambda f: train(f, labels=[f.image("zero.tif", np.zeros((3, 64, 80), np.uint8))]),
        "nothing is annotated",
    ),
    "train-labels-negative": (
        lambda f: train(f, labels=[f.image("neg.tif", f.data["em_labels"].astype(np.int16) - 2)]),
        ">= 0",
    ),
    "train-labels-float-fractions": (
        lambda f: train(f, labels=[f.image("frac.tif", f.data["em_labels"] * np.float32(0.5))]),
        "whole numbers",
    ),
    "train-labels-nan": (
        lambda f: train(f, labels=[f.image("nanl.tif", np.full((3, 64, 80), np.nan, np.float32))]),
        "NaN",
    ),
    "train-semantic-nan-labels": (
        lambda f: train(
            f, "--mode", "semantic", labels=[f.image("nanl.tif", np.full((3, 64, 80), np.nan, np.float32))]
        ),
        "NaN",
    ),
    "train-labels-other-shape": (
        lambda f: train(f, labels=[f.image("small.tif", f.data["em_labels"][:, :32])]),
        "has shape",
    ),
    "train-labels-fewer-slices": (
        lambda f: train(f, "--slices", "0", labels=[f.image("two.tif", f.data["em_labels"][:2])]),
        "has shape",
    ),
    "train-more-images-than-labels": (lambda f: train(f, images=[f.em, f.nuclei]), "one labels file per image"),
    "train-semantic-instance-ids": (
        lambda f: train(
            f, "--mode", "semantic", labels=[f.image("ids.tif", f.data["em_labels"].astype(np.uint16) * 200)]
        ),
        "--mode instance",
    ),
    # files
    "predict-corrupt-16-bytes": (lambda f: predict(f, image=corrupt16(f)), "damaged or truncated"),
    "predict-truncated-tiff": (lambda f: predict(f, image=truncated(f)), "damaged or truncated"),
    "predict-tiff-strip-wrong-size": (
        lambda f: predict(f, image=strip_of_wrong_size(f)),
        r"cannot read .*strip\.tif: the file is damaged or truncated \(.*reshape",
    ),
    "predict-random-bytes-tif": (lambda f: predict(f, image=random_bytes(f)), "not a TIFF"),
    "predict-png": (lambda f: predict(f, image=png(f)), "convert other formats to TIFF"),
    "predict-missing-image": (lambda f: predict(f, image=f.path("missing.tif")), "does not exist"),
    "predict-empty-folder": (lambda f: predict(f, image=f.folder("empty")), "holds no TIFF files"),
    "predict-folder-mixed-sizes": (
        lambda f: predict(f, image=f.folder("mixed", [np.zeros((32, 32), np.uint8), np.zeros((32, 40), np.uint8)])),
        "same shape",
    ),
    "train-missing-labels": (lambda f: train(f, labels=[f.path("nope.tif")]), "labels .*does not exist"),
    "train-corrupt-labels": (lambda f: train(f, labels=[corrupt16(f)]), "damaged or truncated"),
    "evaluate-missing-truth": (lambda f: evaluate(f, labels=f.path("nope.tif")), "does not exist"),
    "evaluate-truth-other-shape": (
        lambda f: evaluate(f, labels=f.image("t.tif", f.data["nuclei_truth"][:1])),
        "has shape",
    ),
    "train-empty-folder": (lambda f: train(f, images=[f.folder("slices")]), "holds no TIFF files"),
    "predict-output-png": (lambda f: predict(f, out=f.path("result.png")), r"predict writes TIFF files \(\.tif"),
    "evaluate-training-labels-as-truth": (
        lambda f: evaluate(f, labels=f.image("painted.tif", f.data["nuclei_truth"].astype(np.uint16) + 1)),
        "subtract 1",
    ),
    # model files
    "predict-model-missing": (lambda f: predict(f, model=f.path("gone.safetensors")), "no model file"),
    "predict-model-corrupt": (lambda f: predict(f, model=f.raw("bad.safetensors", bytes(200))), "damaged"),
    "predict-model-pickle": (lambda f: predict(f, model=pickle_model(f)), "pickle"),
    "predict-model-foreign": (lambda f: predict(f, model=foreign_safetensors(f)), "not a napari-unet model"),
    "predict-model-nan-weights": (lambda f: predict(f, model=nan_weights(f)), "NaN"),
    "predict-model-truncated": (lambda f: predict(f, model=truncated_model(f)), "damaged, truncated"),
    "predict-model-newer-format": (lambda f: predict(f, model=newer_model(f)), "incompatible version"),
    "predict-model-empty-file": (lambda f: predict(f, model=f.raw("empty.safetensors", b"")), "damaged"),
    "predict-model-is-image": (lambda f: predict(f, model=f.em), "not a model file"),
    "predict-model-is-folder": (lambda f: predict(f, model=f.folder("models")), "is a folder"),
    "train-init-pickle": (lambda f: train(f, init=pickle_model(f)), "pickle"),
    "train-init-nan-weights": (lambda f: train(f, init=nan_weights(f)), "NaN"),
    "train-candidate-corrupt": (
        lambda f: train(f, "--candidates", f.raw("junk.safetensors", b"junk" * 10), init="auto"),
        "junk.safetensors: the file is damaged",
    ),
    "train-init-shipped-tile-too-small": (
        lambda f: train(f, init="em-membrane"),
        "depth 4; nearest valid sizes are 188",
    ),
    "predict-model-huge-network": (
        lambda f: predict(f, model=crafted(f, "huge", depth=3, base_channels=1024)),
        r"huge\.safetensors: its header describes a network of 1,969 M parameters \(7\.3 GiB\)",
    ),
    "train-init-huge-network": (
        lambda f: train(f, init=crafted(f, "huge", depth=3, base_channels=1024)),
        r"huge\.safetensors: .*7\.3 GiB",
    ),
    "train-candidate-huge-network": (
        lambda f: train(f, "--candidates", crafted(f, "huge", depth=3, base_channels=1024), init="auto"),
        r"huge\.safetensors: .*7\.3 GiB",
    ),
    "evaluate-model-huge-network": (
        lambda f: evaluate(f, model=crafted(f, "huge", depth=3, base_channels=1024)),
        r"huge\.safetensors: .*7\.3 GiB",
    ),
    "predict-model-int8-weights": (
        lambda f: predict(f, model=crafted(f, "int8", dtype="I8")),
        r"int8\.safetensors: tensors .*\(I8\).* not floating-point",
    ),
    "train-init-bool-weights": (
        lambda f: train(f, init=crafted(f, "bool", dtype="BOOL", fill=b"\x01")),
        r"bool\.safetensors: tensors .*\(BOOL\).* not floating-point",
    ),
    "predict-model-other-shapes": (
        lambda f: predict(f, model=crafted(f, "shapes", depth=2, base_channels=8)),
        r"shapes\.safetensors: weights do not match",
    ),
    "train-resume-missing": (lambda f: train(f, "--resume", f.path("run.safetensors")), "no model file"),
    "evaluate-model-truncated": (lambda f: evaluate(f, model=truncated_model(f)), "damaged, truncated"),
    # numbers
    "train-steps-0": (lambda f: train(f, "--steps", "0"), "steps .*>= 1"),
    "train-tile-in-3": (lambda f: train(f, "--tile-in", "3"), "nearest valid sizes"),
    "train-batch-size-0": (lambda f: train(f, "--batch-size", "0"), "batch_size must be an integer >= 1"),
    "train-lr-negative": (lambda f: train(f, "--lr", "-1"), "learning rate must be > 0"),
    "train-lr-nan": (lambda f: train(f, "--lr", "nan"), "learning rate must be > 0"),
    "train-val-every-0": (lambda f: train(f, "--val-every", "0"), "val_every must be >= 1"),
    "train-val-fraction-2": (lambda f: train(f, "--val-fraction", "2"), r"val_fraction must be in \[0, 1\)"),
    "train-depth-too-deep": (lambda f: train(f, "--depth", "12", "--tile-in", "188"), "depth must be at most"),
    "train-channels-too-many": (lambda f: train(f, "--channels", "5000"), "base_channels must be at most"),
    "train-w0-negative": (lambda f: train(f, "--w0", "-1"), "w0 must be >= 0"),
    "train-sigma-0": (lambda f: train(f, "--sigma", "0"), "sigma must be > 0"),
    "train-elastic-grid-1": (lambda f: train(f, "--elastic-grid", "1"), "elastic_grid must be >= 2"),
    "train-seed-negative": (lambda f: train(f, "--seed", "-1"), "seed must be >= 0"),
    "train-steps-not-a-number": (lambda f: train(f, "--steps", "ten"), "invalid int value"),
    "train-slices-out-of-range": (lambda f: train(f, "--slices", "0-7"), "out of range"),
    "predict-slices-comma": (lambda f: predict(f, "--slices", ","), r"names no slice; use e\.g\. 3, 0-24"),
    "train-slices-garbage": (lambda f: train(f, "--slices", "first"), "not a slice number"),
    "predict-slices-on-2d": (
        lambda f: predict(f, "--slices", "0", image=f.image("2d.tif", f.data["em"][0])),
        r"needs a stack",
    ),
    "predict-tile-out-0": (lambda f: predict(f, "--tile-out", "0"), "tile"),
    "predict-min-size-negative": (lambda f: predict(f, "--kind", "instances", "--min-size", "-1"), "min_size"),
    "predict-slices-out-of-range": (lambda f: predict(f, "--slices", "5"), "out of range"),
    "evaluate-slices-out-of-range": (lambda f: evaluate(f, "--slices", "2-3"), "out of range"),
    "evaluate-min-size-negative": (lambda f: evaluate(f, "--min-size", "-1"), "min_size"),
    "predict-device-nonsense": (lambda f: predict(f, "--device", "gpu0"), "unknown device"),
    "train-device-nonsense": (lambda f: train(f, "--device", "quantum"), "unknown device"),
    "predict-unknown-kind": (lambda f: predict(f, "--kind", "masks"), "invalid choice"),
    # outputs
    "predict-output-onto-input": (lambda f: predict(f, out=f.em), "would destroy it"),
    "predict-output-onto-model": (lambda f: predict(f, out=f.model), "is the model"),
    "train-output-onto-labels": (lambda f: train(f, out=f.em_labels), "would destroy it"),
    "predict-output-missing-folder": (lambda f: predict(f, out=f.path("no/such/dir/p.tif")), "create it first"),
    "train-output-missing-folder": (lambda f: train(f, out=f.path("no/such/m.safetensors")), "create it first"),
    "predict-output-is-folder": (lambda f: predict(f, out=f.folder("results")), "is a folder"),
    "predict-output-trailing-slash": (lambda f: predict(f, out=f.path("results") + "/"), "names a folder"),
    "train-output-trailing-slash": (lambda f: train(f, out=f.path("models") + "/"), "names a folder"),
    "evaluate-json-missing-folder": (
        lambda f: [*evaluate(f)[:-2], "--json", f.path("no/dir/r.json")],
        "create it first",
    ),
    "evaluate-json-onto-image": (lambda f: [*evaluate(f)[:-2], "--json", f.nuclei], "would destroy it"),
    # outputs inside an input: a folder of slices, an OME-Zarr container, a model package
    "predict-output-onto-a-slice": (
        lambda f: predict(f, image=slices(f), out=f.path("slices/s00.tif")),
        "lies inside the input image .*slices; .*a TIFF there becomes one more",
    ),
    "predict-output-new-file-in-slices-folder": (
        lambda f: predict(f, image=slices(f), out=f.path("slices/result.tif")),
        "lies inside the input image",
    ),
    "predict-output-in-slices-folder-through-dotdot": (
        lambda f: predict(f, image=slices(f), out=f.path("slices/../slices/s01.tif")),
        "lies inside the input image",
    ),
    "predict-output-in-slices-folder-through-symlink": (
        lambda f: predict(f, image=slices(f), out=str(symlink(f, "slices", "link") / "s01.tif")),
        "lies inside the input image",
    ),
    "predict-output-onto-a-zarr-chunk": (
        lambda f: predict(f, image=ome_zarr(f), out=f.path("in.zarr/0/c/0/0/0")),
        "lies inside the input image .*in.zarr; writing there would replace a chunk",
    ),
    "predict-zarr-output-inside-zarr-input": (
        lambda f: predict(f, image=ome_zarr(f), out=f.path("in.zarr/0/more.zarr")),
        r"labels group \(-o .*in.zarr/labels/NAME\)",
    ),
    "predict-zarr-output-onto-zarr-input": (
        lambda f: predict(f, image=ome_zarr(f), out=f.path("in.zarr")),
        "is the input image .*would destroy it",
    ),
    "predict-output-onto-labels-group": (
        lambda f: predict(f, image=ome_zarr(f), out=f.path("in.zarr/labels")),
        "lies inside the input image",
    ),
    "evaluate-json-onto-a-slice": (
        lambda f: evaluate(f, image=slices(f, f.data["nuclei"]), out=f.path("slices/s01.tif")),
        "--json .*lies inside the input .*slices",
    ),
    "predict-output-in-model-package-folder": (
        lambda f: predict(f, model=package_folder(f), out=f.path("package/weights.safetensors")),
        "lies inside the model package folder .*could replace a file the package uses",
    ),
    "predict-output-inside-model-zip": (
        lambda f: predict(f, model=f.raw("model.zip", b"PK\x05\x06" + bytes(18)), out=f.path("model.zip/p.tif")),
        "lies inside the model .*model.zip is a file, not a folder",
    ),
    "evaluate-json-onto-model": (lambda f: evaluate(f, out=f.model), "--json .*is the model"),
    "train-output-onto-init-model": (lambda f: train(f, init=f.model, out=f.model), "is the model"),
    "train-output-onto-resumed-run-without-suffix": (
        lambda f: train(f, "--resume", f.model, out=f.path("tiny")),
        "is the model .*tiny.safetensors",
    ),
    "train-output-onto-candidate": (
        lambda f: train(f, "--candidates", f.model, init="auto", out=f.model),
        "is the model",
    ),
    "train-output-inside-images-folder": (
        lambda f: train(f, images=[slices(f)], out=f.path("slices/model.safetensors")),
        "lies inside the training data",
    ),
    "export-output-onto-sample": (
        lambda f: ["export", f.model, "--sample", f.em, "-o", f.em],
        "is the sample image",
    ),
    "export-output-onto-model-without-suffix": (
        lambda f: ["export", f.raw("m.zip", b"PK\x05\x06" + bytes(18)), "-o", f.path("m")],
        "is the model",
    ),
}

# inputs that look wrong but are valid: they must work (or warn) without a traceback
CLI_OK = {
    "predict-one-row-image": (lambda f: predict(f, image=f.image("row.tif", f.data["em"][0, :1])), None),
    "predict-constant-image": (lambda f: predict(f, image=f.image("const.tif", np.full((40, 48), 7, np.uint16))), None),
    "predict-bool-image": (lambda f: predict(f, image=f.image("mask.tif", f.data["em"][0] > 100)), None),
    "train-constant-image": (lambda f: train(f, images=[f.image("const.tif", np.zeros((3, 64, 80), np.uint8))]), None),
    "train-only-background": (
        lambda f: train(f, labels=[f.image("bg.tif", np.where(f.data["em_labels"] > 0, 1, 0).astype(np.uint8))]),
        "only background is painted",
    ),
    "train-only-objects": (
        lambda f: train(f, labels=[f.image("obj.tif", np.where(f.data["em_labels"] > 1, 2, 0).astype(np.uint8))]),
        "some background",
    ),
    "train-float-whole-labels": (
        lambda f: train(f, labels=[f.image("fl.tif", f.data["em_labels"].astype(np.float32))]),
        None,
    ),
    "train-val-fraction-all-slices": (lambda f: train(f, "--val-fraction", "0.9"), None),
    "train-val-fraction-one-slice": (
        lambda f: train(f, "--val-fraction", "0.5", "--slices", "0"),
        "annotate a second slice to validate",
    ),
    "train-isbi-labels-as-ours": (
        lambda f: train(f, labels=[f.image("isbi.tif", np.where(f.data["em_labels"] > 1, 255, 0).astype(np.uint8))]),
        "some background",
    ),
}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """main() in-process as the console script runs it: SystemExit(message) prints it and exits 2 (bad input;
    cli/_errors.py run_process)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors (code 2) and the up-front checks (a message)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            rc = 2
        else:
            rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("make", "expect", "ok"),
    [pytest.param(m, e, False, id=k) for k, (m, e) in CLI.items()]
    + [pytest.param(m, e, True, id=k) for k, (m, e) in CLI_OK.items()],
)
def test_cli_bad_input(make, expect, ok, tmp_path, data, capsys):
    f = Files(tmp_path, data)
    argv = make(f)
    before = snapshot(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    rc, out, err = run_cli(argv, capsys)
    assert "Traceback" not in err + out
    if ok:
        assert rc == 0, err
        if expect:
            assert re.search(expect, err + out), err + out
        written = (set(snapshot(tmp_path)) - set(before)) | {
            k for k, v in snapshot(tmp_path).items() if before.get(k) != v
        }
        assert written == {Path(argv[argv.index("-o") + 1]).name}  # the output, and nothing else
    else:
        assert rc == 2, (rc, err, out)  # bad input
        assert "error:" in err, err
        assert re.search(expect, err), err
        assert snapshot(tmp_path) == before  # inputs and earlier outputs untouched, no stray files
    assert signal.getsignal(signal.SIGINT) is handler
    assert main(["models"]) == 0  # the process goes on
    capsys.readouterr()


def _disk_with(monkeypatch, free: int) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))


def test_train_refuses_a_disk_too_full_for_its_model(tmp_path, data, capsys, monkeypatch):
    """Free space for the model file (parameters x bytes + header) is checked before any step, with the numbers."""
    import napari_unet.core.train.loop as core_train

    f = Files(tmp_path, data)
    steps = []
    monkeypatch.setattr(core_train._Run, "train_step", lambda run, lr: steps.append(lr))
    _disk_with(monkeypatch, 1000)
    before = snapshot(tmp_path)
    rc, out, err = run_cli(train(f, "--save-last", "--optimizer", "adam"), capsys)
    assert rc == 2 and "Traceback" not in err + out
    assert re.search(r"the model file needs about 1\.\d MiB \([\d,]+ parameters x 4 bytes \+ the adam optimizer's", err)
    assert "has 0.0 MiB free; free some space or choose another folder" in err, err
    assert not steps and snapshot(tmp_path) == before


def test_train_free_space_estimate_is_the_model_file_size(tmp_path, data, capsys, monkeypatch):
    """The estimate is the file's size plus at most the header margin (adam's state saved with --save-last)."""
    from napari_unet.cli import train as cli_train

    f = Files(tmp_path, data)
    needs = []
    real = cli_train._check_free_space
    monkeypatch.setattr(
        cli_train,
        "_check_free_space",
        lambda args, cfg, ch: needs.append(cli_train._n_parameters(cfg, ch)) or real(args, cfg, ch),
    )
    out = f.path("fresh.safetensors")
    rc, _, err = run_cli(train(f, "--save-last", "--optimizer", "adam", out=out), capsys)
    assert rc == 0, err
    size = Path(out).stat().st_size
    estimate = needs[0] * 4 * 3  # the weights, adam's two moments
    assert estimate <= size <= estimate + cli_train._HEADER_MARGIN


@pytest.mark.parametrize("failing", [1, 2, 3])
def test_train_failed_save_keeps_the_weights(failing, tmp_path, data, capsys, monkeypatch):
    """Saving -o fails (a full disk: OSError 28): the weights go beside it, or to the temp dir when that fails
    too, and the message says where (exit 1); when every place fails, the message says so, no traceback."""
    import errno

    import napari_unet.core.train.events as events
    from napari_unet.core.models.load import read_info

    f = Files(tmp_path, data)
    (tmp_path / "temp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temp"))
    real, tried = events.save_model, []

    def full_disk(path, *args, **kwargs):
        tried.append(Path(path))
        if len(tried) <= failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(events, "save_model", full_disk)
    before = snapshot(tmp_path)
    rc, out, err = run_cli(train(f, out=f.path("new.safetensors")), capsys)
    assert rc == 1 and "Traceback" not in err + out and "No space left on device" in err
    assert tried[0] == Path(f.path("new.safetensors")) and not Path(tried[0]).exists()
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # the inputs and the files the user keeps
    if failing == 3:
        assert "so did saving its weights beside it and in the temp folder" in err, err
        return
    kept = tried[failing]
    assert kept.parent == (tmp_path if failing == 1 else tmp_path / "temp") and kept.name == "new-rescued.safetensors"
    assert f"the trained weights are in {kept} instead" in err and read_info(kept).training["steps_done"] == 2


# ----------------------------------------------------------------------------- API (napari_unet.core)


class Api:
    """One API case: its files (as for the CLI) and the arrays it passes, to check none is modified.

    The calls return the call to make, not its result, so that the test sees the files the case made
    before the call runs (and can tell them from what the call writes).
    """

    def __init__(self, tmp: Path, data: dict):
        self.f = Files(tmp, data)
        self.data = data
        self.given: list[tuple[np.ndarray, np.ndarray]] = []

    def arr(self, a) -> np.ndarray:
        a = np.asarray(a)
        self.given.append((a, a.copy()))
        return a

    @property
    def em(self):
        return self.arr(self.data["em"])

    @property
    def labels(self):
        return self.arr(self.data["em_labels"])

    def predict(self, image, **kw):
        from napari_unet.core.predict.tiles import predict

        image = self.arr(image)
        return lambda: predict(self.data["net"], image, **{"device": "cpu", **kw})

    def config(self, **kw):
        from napari_unet.core.train.config import TrainConfig

        return lambda: TrainConfig(**{**dict(depth=2, base_channels=4, tile_in=92, steps=2, device="cpu"), **kw})

    def train(self, images=None, labels=None, **cfg):
        """The call returns (TrainResult, the start event's warning)."""
        from napari_unet.core.drain import drain
        from napari_unet.core.train.loop import iter_train

        images = self.em if images is None else images
        labels = self.labels if labels is None else labels
        config = self.config(**cfg)

        def call():
            warnings = []
            result = drain(
                iter_train(config(), images, labels),
                lambda ev: warnings.append(ev.warning) if ev.kind == "start" and ev.warning else None,
            )
            return result, "; ".join(warnings)

        return call

    def read(self, path):
        from napari_unet.core.data.files import read_image

        return lambda: read_image(path)

    def load(self, path):
        from napari_unet.core.models.load import load_model

        return lambda: load_model(path)

    def write(self, path, labels, **kw):
        from napari_unet.core.data.files import write_labels

        labels = self.arr(labels)
        return lambda: write_labels(path, labels, **kw)

    def evaluate(self, image, truth, **kw):
        from napari_unet.core.evaluate.score import evaluate_arrays

        image, truth = self.arr(image), self.arr(truth)
        return lambda: evaluate_arrays(self.data["net"], image, truth, device="cpu", **kw)


def nan_where(a, mask):
    return np.where(mask, np.nan, a).astype(np.float32)


API = {
    # read_image
    "read-corrupt-16-bytes": (lambda a: a.read(corrupt16(a.f)), "damaged or truncated"),
    "read-truncated": (lambda a: a.read(truncated(a.f)), "damaged or truncated"),
    "read-random-bytes": (lambda a: a.read(random_bytes(a.f)), "not a TIFF file"),
    "read-png": (lambda a: a.read(png(a.f)), "convert other formats to TIFF"),
    "read-missing": (lambda a: a.read(a.f.path("missing.tif")), "no such file"),
    "read-empty-tiff": (lambda a: a.read(a.f.image("e.tif", np.zeros((0, 32), np.uint8))), "the image is empty"),
    "read-empty-folder": (lambda a: a.read(a.f.folder("empty")), "holds no TIFF files"),
    "read-mixed-folder": (
        lambda a: a.read(a.f.folder("mixed", [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint16)])),
        "same shape and dtype",
    ),
    "read-folder-damaged-slice": (
        lambda a: a.read(damaged_slice(a.f)),
        "damaged or truncated",
    ),
    "read-empty-list": (lambda a: a.read([]), "empty list"),
    # predict
    "predict-1d": (lambda a: a.predict(np.arange(100, dtype=np.uint8)), r"2D image \(Y, X\) or a stack"),
    "predict-4d": (lambda a: a.predict(np.zeros((2, 2, 32, 32), np.uint8)), r"\(Z, Y, X\)"),
    "predict-5d": (lambda a: a.predict(np.zeros((1, 2, 2, 32, 32), np.uint8)), r"\(Z, Y, X\)"),
    "predict-0-size": (lambda a: a.predict(np.zeros((0, 32), np.uint8)), "empty"),
    "predict-0-width-stack": (lambda a: a.predict(np.zeros((3, 0, 32), np.uint8)), "empty"),
    "predict-0-slices": (lambda a: a.predict(np.zeros((0, 32, 32), np.uint8)), "empty"),
    "predict-nan": (lambda a: a.predict(nan_where(a.data["em"][0], a.data["em"][0] > 200)), "NaN"),
    "predict-inf": (lambda a: a.predict(np.full((32, 32), np.inf, np.float32)), "NaN or inf"),
    "predict-complex": (lambda a: a.predict(a.data["em"][0].astype(np.complex64)), "complex"),
    "predict-complex-unnormalised": (
        lambda a: a.predict(a.data["em"][0].astype(np.complex64), normalize=False),
        "complex",
    ),
    "predict-strings": (lambda a: a.predict(np.full((8, 8), "x")), "numbers"),
    "predict-nan-range": (lambda a: a.predict(a.data["em"][0], normalize=(0, np.nan)), "finite"),
    "predict-tile-out-0": (lambda a: a.predict(a.data["em"][0], tile_out=0), "tile_out"),
    "predict-min-size-negative": (lambda a: a.predict(a.data["em"][0], output="instances", min_size=-1), "min_size"),
    "predict-slice-out-of-range": (lambda a: a.predict(a.data["em"], slices=[3]), "out of range"),
    "predict-unknown-output": (lambda a: a.predict(a.data["em"][0], output="masks"), "output must be one of"),
    "predict-unknown-device": (lambda a: a.predict(a.data["em"][0], device="quantum"), "unknown device"),
    "predict-batch-size-0": (lambda a: a.predict(a.data["em"][0], batch_size=0), "batch_size must be >= 1"),
    "predict-precision-typo": (lambda a: a.predict(a.data["em"][0], precision="fp8"), "precision must be one of"),
    "predict-out-wrong-shape": (
        lambda a: a.predict(a.data["em"][0], out=np.zeros((10, 10), np.uint8)),
        "out has shape",
    ),
    # TrainConfig
    "config-steps-0": (lambda a: a.config(steps=0), "steps must be an integer >= 1"),
    "config-batch-size-0": (lambda a: a.config(batch_size=0), "batch_size must be an integer >= 1"),
    "config-lr-negative": (lambda a: a.config(lr=-1.0), "learning rate must be > 0"),
    "config-lr-nan": (lambda a: a.config(lr=float("nan")), "learning rate must be > 0"),
    "config-val-every-0": (lambda a: a.config(val_every=0), "val_every must be >= 1"),
    "config-val-fraction-2": (lambda a: a.config(val_fraction=2.0), "val_fraction must be in"),
    "config-tile-in-3": (lambda a: a.config(tile_in=3), "nearest valid sizes are 44"),
    "config-depth-0": (lambda a: a.config(depth=0), "depth must be an integer >= 1"),
    "config-depth-20": (lambda a: a.config(depth=20), "depth must be at most 8"),
    "config-optimizer-typo": (lambda a: a.config(optimizer="adamw"), "optimizer must be one of"),
    "config-label-mode-typo": (lambda a: a.config(label_mode="instances"), "label_mode must be one of"),
    "config-n-classes-1": (lambda a: a.config(n_classes=1), "n_classes must be >= 2"),
    "config-keep-prior-negative": (lambda a: a.config(keep_prior=-1.0), "keep_prior must be >= 0"),
    "config-sigma-0": (lambda a: a.config(sigma=0.0), "sigma must be > 0"),
    # iter_train
    "train-labels-negative": (lambda a: a.train(labels=a.arr(a.data["em_labels"].astype(np.int16) - 2)), ">= 0"),
    "train-labels-fractions": (lambda a: a.train(labels=a.arr(a.data["em_labels"] / 3)), "whole numbers"),
    "train-labels-nan": (
        lambda a: a.train(labels=a.arr(nan_where(a.data["em_labels"], a.data["em_labels"] == 1))),
        "NaN",
    ),
    "train-labels-other-shape": (lambda a: a.train(labels=a.arr(a.data["em_labels"][:, :, :40])), "has shape"),
    "train-labels-all-zero": (lambda a: a.train(labels=a.arr(np.zeros((3, 64, 80), np.uint8))), "nothing is annotated"),
    "train-list-lengths": (lambda a: a.train(images=[a.em, a.em], labels=[a.labels]), "one labels array per image"),
    "train-list-and-array": (lambda a: a.train(images=[a.em], labels=a.labels), "both as arrays or both as lists"),
    "train-no-pairs": (lambda a: a.train(images=[], labels=[]), "no training data"),
    "train-1d": (
        lambda a: a.train(images=a.arr(np.arange(100, dtype=np.uint8)), labels=a.arr(np.ones(100, np.uint8))),
        r"\(Z, Y, X\)",
    ),
    "train-0-size": (
        lambda a: a.train(images=a.arr(np.zeros((0, 64), np.uint8)), labels=a.arr(np.zeros((0, 64), np.uint8))),
        "empty",
    ),
    "train-nan-image": (lambda a: a.train(images=a.arr(nan_where(a.data["em"], a.data["em"] > 200))), "NaN"),
    "train-complex-image": (lambda a: a.train(images=a.arr(a.data["em"].astype(np.complex64))), "complex"),
    "train-semantic-object-ids": (
        lambda a: a.train(labels=a.arr(a.data["em_labels"].astype(np.int32) * 200), label_mode="semantic"),
        "instance mode",
    ),
    "train-semantic-more-classes-than-n": (
        lambda a: a.train(labels=a.labels, label_mode="semantic", n_classes=2),
        "use values 1..2",
    ),
    "train-init-missing": (lambda a: a.train(init=a.f.path("gone.safetensors")), "no model file"),
    "train-resume-nan-weights": (lambda a: a.train(resume=nan_weights(a.f)), "NaN"),
    # load_model
    "load-missing": (lambda a: a.load(a.f.path("gone.safetensors")), "no model file"),
    "load-corrupt": (lambda a: a.load(a.f.raw("bad.safetensors", bytes(range(256)))), "damaged"),
    "load-empty-file": (lambda a: a.load(a.f.raw("empty.safetensors", b"")), "damaged"),
    "load-pickle": (lambda a: a.load(pickle_model(a.f)), "pickle"),
    "load-foreign": (lambda a: a.load(foreign_safetensors(a.f)), "not a napari-unet model"),
    "load-nan-weights": (lambda a: a.load(nan_weights(a.f)), "NaN"),
    "load-truncated": (lambda a: a.load(truncated_model(a.f)), "damaged, truncated"),
    "load-newer-format": (lambda a: a.load(newer_model(a.f)), "incompatible version"),
    "load-folder": (lambda a: a.load(a.f.folder("models")), "is a folder"),
    # write_labels (onto an existing file: it must stay as it was)
    "write-negative": (lambda a: a.write(a.f.out_tif, np.full((8, 8), -1, np.int16)), ">= 0"),
    "write-fractions": (lambda a: a.write(a.f.out_tif, np.full((8, 8), 0.5, np.float32)), "whole numbers"),
    "write-nan": (lambda a: a.write(a.f.out_tif, np.full((8, 8), np.nan, np.float32)), "NaN"),
    "write-complex": (lambda a: a.write(a.f.out_tif, np.ones((8, 8), np.complex64)), "integer array"),
    "write-4d": (lambda a: a.write(a.f.out_tif, np.ones((2, 2, 8, 8), np.uint8)), r"\(Z, Y, X\)"),
    "write-empty": (lambda a: a.write(a.f.out_tif, np.ones((0, 8), np.uint8)), "empty"),
    "write-negative-pixel-size": (
        lambda a: a.write(a.f.out_tif, np.ones((8, 8), np.uint8), pixel_size=-1),
        "pixel_size must be > 0",
    ),
    "write-missing-folder": (lambda a: a.write(a.f.path("no/dir/x.tif"), np.ones((8, 8), np.uint8)), "create it first"),
    # evaluate_arrays
    "evaluate-truth-fewer-slices": (
        lambda a: a.evaluate(a.data["nuclei"], a.data["nuclei_truth"][:1]),
        "ground truth has shape",
    ),
    "evaluate-truth-2d-for-stack": (
        lambda a: a.evaluate(a.data["nuclei"], a.data["nuclei_truth"][0]),
        "ground truth has shape",
    ),
    "evaluate-training-labels-as-truth": (
        lambda a: a.evaluate(a.data["nuclei"], a.data["nuclei_truth"] + 1),
        "no background",
    ),
    "evaluate-unknown-kind": (
        lambda a: a.evaluate(a.data["nuclei"], a.data["nuclei_truth"], kind="dice"),
        "kind must be",
    ),
}


def _constant_prediction(a):
    out = a.predict(np.full((40, 48), 7, np.uint16), output="probabilities")()
    assert np.isfinite(out).all()


def _bool_image(a):
    assert a.predict(a.data["em"][0] > 100)().shape == (64, 80)


def _only_background(a):
    _, warning = a.train(labels=a.arr((a.data["em_labels"] > 0).astype(np.uint8)))()
    assert "only background is painted" in warning


def _one_slice_validation(a):
    labels = a.data["em_labels"].copy()
    labels[1] = 0
    result, warning = a.train(labels=a.arr(labels), val_fraction=0.5)()
    assert "annotate a second slice to validate" in warning and result.steps_done == 2


def _all_slices_held_out(a):
    result, _ = a.train(val_fraction=0.9)()  # 2 annotated slices: one trains, one validates
    assert result.info.training["n_train_slices"] == 1 and result.info.training["n_val_slices"] == 1


def _constant_training_image(a):
    result, _ = a.train(images=a.arr(np.zeros((3, 64, 80), np.uint8)))()
    assert np.isfinite(result.history[-1][1])


def _list_of_slices(a):
    from napari_unet.core.predict.tiles import predict

    slices = [a.arr(a.data["em"][0, :32, :32]), a.arr(a.data["em"][1, :32, :32])]
    assert predict(a.data["net"], slices, device="cpu").shape == (2, 32, 32)


def _huge_semantic_values(a):
    """The weight map of labels holding values up to 2**31 - 1 (object ids, in semantic mode): its class
    table is as long as the number of values, not as the largest one (16 GB and 11 s before)."""
    from unittest import mock

    from napari_unet.core.train import weights

    labels = np.full((16, 16), 2**31 - 1, np.int32)
    labels[0] = 0
    labels = a.arr(labels)
    real, longest = np.bincount, []
    with mock.patch.object(
        weights.np, "bincount", lambda x, *args, **kw: longest.append(int(x.max()) + 1) or real(x, *args, **kw)
    ):
        w = weights.weight_map(labels, mode="semantic")
    assert np.isfinite(w).all() and max(longest) <= labels.size


API_OK = {
    "predict-list-of-slices": _list_of_slices,
    "weight-map-huge-semantic-values": _huge_semantic_values,
    "predict-constant-image": _constant_prediction,
    "predict-bool-image": _bool_image,
    "train-only-background": _only_background,
    "train-val-fraction-one-slice": _one_slice_validation,
    "train-val-fraction-all-slices": _all_slices_held_out,
    "train-constant-image": _constant_training_image,
}


@pytest.mark.parametrize(
    ("call", "expect"),
    [pytest.param(c, e, id=k) for k, (c, e) in API.items()] + [pytest.param(c, None, id=k) for k, c in API_OK.items()],
)
def test_api_bad_input(call, expect, tmp_path, data):
    """Core functions raise ValueError (FileNotFoundError for a missing file) with the message; nothing else."""
    a = Api(tmp_path, data)
    net = data["net"]
    training, grad = net.training, torch.is_grad_enabled()
    if expect is None:
        call(a)
    else:
        todo = call(a)
        before = snapshot(tmp_path)
        with pytest.raises((ValueError, FileNotFoundError), match=expect):
            todo()
        assert snapshot(tmp_path) == before  # no file written, replaced or left behind
    for given, copy in a.given:
        np.testing.assert_array_equal(given, copy)  # inputs are never modified
    assert net.training == training and torch.is_grad_enabled() == grad
    assert a.predict(data["em"][0, :8, :8])().shape == (8, 8)  # the same model goes on predicting


# ----------------------------------------------------------------------------- reader (napari's File > Open)

DECLINED = None  # napari_get_reader returns None: napari offers the other readers


def _stale_temp(f: Files):
    folder = f.folder("slices", [f.data["em"][0], f.data["em"][1]])
    (Path(folder) / ".s00.tif.999999.abc.tmp").write_bytes(b"II*\x00 half a write")  # a killed save's leftover
    return folder


READER = {
    "corrupt-16-bytes": (corrupt16, "damaged or truncated"),
    "truncated": (truncated, "damaged or truncated"),
    "random-bytes-tif": (random_bytes, DECLINED),
    "png": (png, DECLINED),
    "text-named-tif": (lambda f: f.raw("notes.tif", b"not a tiff"), DECLINED),
    "missing": (lambda f: f.path("missing.tif"), DECLINED),
    "empty-folder": (lambda f: f.folder("empty"), DECLINED),
    "folder-without-tiffs": (
        lambda f: f.folder("docs", extra={"readme.txt": b"x"}),
        DECLINED,
    ),
    "folder-mixed-sizes": (
        lambda f: f.folder("mixed", [np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8)]),
        "same shape and dtype",
    ),
    "folder-mixed-dtypes": (
        lambda f: f.folder("mixed", [np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.float32)]),
        "same shape and dtype",
    ),
    "folder-damaged-slice": (
        damaged_slice,
        "damaged or truncated",
    ),
    "folder-non-tiff-slice": (
        lambda f: f.folder("odd", [f.data["em"][0]], extra={"s01.tif": b"\x89PNG\r\n\x1a\n" + bytes(64)}),
        "not a TIFF file",
    ),
    "empty-tiff": (lambda f: f.image("e.tif", np.zeros((0, 16), np.uint8)), "the image is empty"),
    "1d-tiff": (one_d, "1D"),
    "complex-tiff": (lambda f: f.image("c.tif", np.ones((8, 8), np.complex64)), "complex"),
    "list-with-missing-file": (lambda f: [f.em, f.path("gone.tif")], DECLINED),
    "list-with-folder": (lambda f: [f.em, f.folder("sub", [f.data["em"][0]])], DECLINED),
    "list-mixed-shapes": (lambda f: [f.em, f.image("2d.tif", f.data["em"][0])], "same shape and dtype"),
    "empty-list": (lambda f: [], DECLINED),
    "not-a-path": (lambda f: 42, DECLINED),
}

# valid, if unusual: napari must be able to show what the reader returns
READER_OK = {
    "nan-tiff": lambda f: f.image("nan.tif", np.where(f.data["em"] > 200, np.nan, f.data["em"]).astype(np.float32)),
    "bool-tiff": lambda f: f.image("mask.tif", f.data["em"] > 100),
    "5d-tiff": lambda f: f.image("5d.tif", np.zeros((2, 2, 2, 8, 8), np.uint8)),
    "constant-tiff": lambda f: f.image("zero.tif", np.zeros((8, 8), np.uint16)),
    "upper-case-suffix": lambda f: f.image("EM.TIF", f.data["em"]),
    "folder-with-stale-temp-file": _stale_temp,
}


@pytest.mark.parametrize(
    ("make", "expect"),
    [pytest.param(m, e, id=k) for k, (m, e) in READER.items()]
    + [pytest.param(m, "ok", id=k) for k, m in READER_OK.items()],
)
def test_reader_bad_input(make, expect, tmp_path, data):
    """npe2's contract: get_reader returns None for what it cannot read (quickly), and a reader that
    fails raises; napari then shows 'Original error from plugin "napari-unet": ValueError: <message>'."""
    from napari.components import ViewerModel

    from napari_unet import _reader

    f = Files(tmp_path, data)
    path = make(f)
    before = snapshot(tmp_path)
    reader = _reader.napari_get_reader(path)
    if expect is DECLINED:
        assert reader is None
    elif expect == "ok":
        [(layer_data, kwargs, kind)] = reader(path)
        viewer = ViewerModel()
        viewer._add_layer_from_data(np.asarray(layer_data), kwargs, kind)  # napari accepts what we return
        assert len(viewer.layers) == 1
    else:
        assert callable(reader)
        with pytest.raises(ValueError, match=expect):
            reader(path)
        # ... and through napari, by the manifest: the same message (napari wraps it in a ReaderPluginError
        # when it picked the reader itself), and no layer added
        from npe2 import PluginManager

        if "napari-unet" not in PluginManager.instance():  # what napari does at start-up (not yet in this process)
            PluginManager.instance().discover(include_npe1=False)
        viewer = ViewerModel()
        with pytest.raises(ValueError, match=expect):
            viewer.open(path, plugin="napari-unet", stack=isinstance(path, list))
        assert len(viewer.layers) == 0
    assert snapshot(tmp_path) == before  # reading never writes
