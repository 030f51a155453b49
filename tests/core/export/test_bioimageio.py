"""bioimage.io packages: export passes bioimageio.core's own model test offline, our packages come back
exactly, and a package napari-unet did not write predicts through the CLI."""

from __future__ import annotations

import socket
import textwrap

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("bioimageio.core")  # a guard for users' machines; CI installs the extra (.[testing])

from package_files import HALO
from package_files import foreign_package as _foreign_package

from napari_unet._sample_data import load_em_sample, load_nuclei_sample  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.core.export import bioimageio as bio
from napari_unet.core.models.checkpoint import CheckpointError
from napari_unet.core.models.load import load_model, read_info
from napari_unet.core.models.packages import PackagedModel, PackageError
from napari_unet.core.predict.tiles import predict

# bioimageio.spec leaves the readers of package files open (ResourceWarning when collected): theirs, not ours
pytestmark = [
    pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    # torch >= 2.10 deprecates TorchScript, which bioimageio.core loads for the torchscript weights
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection but a local socket fails (CI has none either)."""
    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"test is offline: connection to {address} refused")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def em_package(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "em-membrane.zip"
    return bio.export_package("em-membrane", out, sample=load_em_sample()[0][0])


def _passed(summary) -> bool:
    failed = [(d.name, [e.msg[:300] for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    return True


@pytest.mark.parametrize("name, weights", [("em-membrane", "torchscript"), ("nuclei", "pytorch_state_dict")])
def test_shipped_models_pass_bioimageio_test_offline(name, weights, em_package, tmp_path, offline):
    """The exported shipped models pass `bioimageio test` (one weight format each, to stay fast; the
    fresh model below runs both)."""
    from bioimageio.core import test_model

    if name == "em-membrane":
        pkg = em_package
    else:  # through the CLI, as a user would: the shipped card and the file itself go in
        pkg = tmp_path / f"{name}.zip"
        assert main(["export", name, "-o", str(pkg)]) == 0
        import zipfile

        from napari_unet.core.models.checkpoint import available_models

        with zipfile.ZipFile(pkg) as z:
            assert z.read(f"{name}.safetensors") == available_models()[name].read_bytes()
            readme = z.read("README.md").decode()
        assert "Training recipe" in readme and "CC0" in readme and "## Validation" in readme
    assert _passed(test_model(pkg, weight_format=weights))


def test_package_contents_say_what_the_issue_asks(em_package):
    """Halo, valid sizes, percentiles, softmax, citations, the card with the recipe, the attachment."""
    import zipfile

    import yaml

    with zipfile.ZipFile(em_package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        names = set(z.namelist())
        readme = z.read(rdf["documentation"]["source"]).decode()
    assert rdf["format_version"].startswith("0.5")
    assert {"model.py", "weights.pt", "weights_torchscript.pt", "cover.png", "em-membrane.safetensors"} <= names
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["axes"][2]["size"] == {"min": 196, "step": 16}  # 196 + 2 * 92 = 380, a valid depth-4 input
    assert out["axes"][2]["halo"] == 92  # the margin: what a tiling tool crops
    pre = next(p for p in inp["preprocessing"] if p["id"] != "ensure_dtype")
    assert pre["id"] == "scale_range" and pre["kwargs"]["min_percentile"] == 1.0
    assert pre["kwargs"]["max_percentile"] == 99.8
    assert out["postprocessing"][0]["id"] == "softmax"
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "MirroredUNet"
    assert {c.get("doi") for c in rdf["cite"]} >= {"10.1007/978-3-319-24574-4_28", "10.1371/journal.pbio.1000502"}
    for words in ("Training recipe", "w0", "sigma", "Held-out", "Validation", "Licence"):
        assert words in readme, words


def test_architecture_file_needs_only_torch():
    """model.py ships inside packages as the architecture: it must import nothing of napari-unet."""
    from pathlib import Path

    import napari_unet.core.network.unet as m

    src = Path(m.__file__).read_text()
    imports = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert all(("napari" not in ln and not ln.startswith("from .")) for ln in imports), imports
    # a tool may exec it without registering a module (dataclasses with postponed annotations then fail)
    import importlib.util

    spec = importlib.util.spec_from_file_location("some_tools_name", m.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.MirroredUNet(20, depth=2, base_channels=4)(torch.zeros(1, 1, 44, 44)).shape == (1, 2, 44, 44)


def test_own_package_round_trip_same_labels(em_package, em_sample):
    """Importing our export predicts the same labels as the safetensors model on EM slices (the bundled
    crop), through its attached model file and through the generic bioimage.io path alike."""
    from bioimageio.spec import load_model_description

    img = em_sample[0][:2, 32:224, 32:224]
    ref = predict(load_model("em-membrane"), img)
    back = load_model(em_package)
    assert back.info.name == "em-membrane" and read_info(em_package).training == load_model("em-membrane").info.training
    np.testing.assert_array_equal(predict(back, img), ref)
    descr = load_model_description(em_package, perform_io_checks=False)
    generic = PackagedModel.from_descr(descr, name="em", source=em_package)
    # tiled in 4 (one slice, to stay fast): the declared halo keeps the tiles seamless
    # batch_size 4: the tiles go through together, as on a GPU
    np.testing.assert_array_equal(predict(generic, img[1], tile_out=96, batch_size=4), ref[1])


def test_freshly_trained_model_exports_and_passes(tmp_path, offline):
    """A model trained with the CLI exports with the CLI, passes bioimageio's test with both weight
    formats, and fine-tunes from its package (--init)."""
    from bioimageio.core import test_model

    img, lab = load_nuclei_sample()
    ip, lp = tmp_path / "im.tif", tmp_path / "lab.tif"
    tifffile.imwrite(ip, img[:2, :128, :128])
    tifffile.imwrite(lp, lab[:2, :128, :128])
    m = tmp_path / "mine.safetensors"
    assert (
        main(
            f"train --images {ip} --labels {lp} --steps 2 --depth 2 --channels 4 --tile-in 92 --init scratch -o {m} -q".split()
        )
        == 0
    )
    pkg = tmp_path / "mine.zip"
    argv = ["export", str(m), "-o", str(pkg), "--sample", str(ip), "--author", "A. Biologist"]
    argv += ["--cite", "Caicedo JC et al. (2019) Nat Methods 16:1247 doi:10.1038/s41592-019-0612-7"]
    argv += ["--data", "two DSB 2018 nuclei images (BBBC038v1, CC0)"]
    assert main(argv) == 0
    assert _passed(test_model(pkg))
    import zipfile

    with zipfile.ZipFile(pkg) as z:
        readme = z.read("README.md").decode()
    assert "w0 = 10.0" in readme and "BBBC038v1, CC0" in readme and "elastic deformation" in readme
    assert "Training recipe" in bio.model_card(load_model(m).info, load_model(m))
    ft = tmp_path / "ft.safetensors"
    assert main(f"train --images {ip} --labels {lp} --steps 1 --tile-in 92 --init {pkg} -o {ft} -q".split()) == 0


# ----------------------------------------------------------------------------- a foreign package


def test_foreign_package_predicts_through_cli(tmp_path, offline, capsys):
    """predict --model foreign.zip tiles the package's net with its halo, preprocessing and sigmoid:
    small tiles give the same labels as one pass over the whole (mirrored) image."""
    pkg, net = _foreign_package(tmp_path)
    img = load_nuclei_sample()[0][2, :150, :130]
    ip, out = tmp_path / "img.tif", tmp_path / "labels.tif"
    tifffile.imwrite(ip, img)
    assert (
        main(["predict", str(ip), "-o", str(out), "--model", str(pkg), "--tile-out", "32", "-q", "--trust-code"]) == 0
    )
    labels = tifffile.imread(out)
    # the reference: the package's recipe by hand, one pass over the image mirrored by the halo
    x = img.astype(np.float64)
    xn = ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)
    h, w = img.shape
    ph, pw = (-(h + 2 * HALO) % 4), (-(w + 2 * HALO) % 4)
    padded = np.pad(xn, ((HALO, HALO + ph), (HALO, HALO + pw)), mode="reflect")
    with torch.no_grad():
        p = torch.sigmoid(net(torch.from_numpy(padded)[None, None]))[0, 0, HALO : HALO + h, HALO : HALO + w].numpy()
    ref = (p > 0.5).astype(labels.dtype)
    assert 0.05 < ref.mean() < 0.95  # a real two-class answer, not a constant
    assert (labels == ref).mean() > 0.999
    assert main(["evaluate", "--model", str(pkg), "--images", str(ip), "--labels", str(out), "-q", "--trust-code"]) == 0
    # fine-tuning needs a napari-unet U-Net: said before any work
    assert main(f"train --images {ip} --labels {out} --steps 1 --init {pkg} -o {tmp_path / 'x'} -q".split()) == 2
    assert "did not write" in capsys.readouterr().err


def test_unsupported_packages_say_why(tmp_path):
    """A 3-channel input is refused with a message naming what is supported."""
    pkg, _ = _foreign_package(tmp_path)
    import zipfile

    import yaml

    with zipfile.ZipFile(pkg) as z:
        files = {n: z.read(n) for n in z.namelist()}
    rdf = yaml.safe_load(files["rdf.yaml"])
    rdf["inputs"][0]["axes"][1]["channel_names"] = ["r", "g", "b"]
    for n, data in files.items():
        (tmp_path / "unz").mkdir(exist_ok=True)
        (tmp_path / "unz" / n).write_bytes(data)
    (tmp_path / "unz" / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises((PackageError, CheckpointError)) as e:
        load_model(tmp_path / "unz" / "rdf.yaml")
    assert "takes 3 input channels; napari-unet runs single-channel models" in str(e.value)
    # weights napari-unet cannot run: named, with what it runs
    rdf = yaml.safe_load(files["rdf.yaml"])
    w = rdf["weights"].pop("pytorch_state_dict")
    rdf["weights"]["onnx"] = {"source": w["source"], "sha256": w["sha256"], "opset_version": 17}
    (tmp_path / "unz" / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(PackageError, match=r"weights \['onnx'\]; napari-unet runs pytorch_state_dict or torchscript"):
        load_model(tmp_path / "unz" / "rdf.yaml")


def test_foreign_valid_channel_last_package(tmp_path, offline):
    """Another layout: a valid (unpadded) net whose output is smaller (size offset, no halo), axes
    (batch, y, x, channel), scale_linear, raw logits: tiled prediction equals the net's own."""
    import importlib.util
    import shutil

    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as b

    import napari_unet.core.network.unet as m

    src = tmp_path / "arch.py"
    shutil.copyfile(m.__file__, src)
    src.write_text(
        src.read_text()
        + textwrap.dedent(
            """

            class ChannelLast(nn.Module):
                def __init__(self, **kw):
                    super().__init__()
                    self.unet = UNet(**kw)

                def forward(self, x):
                    return self.unet(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            """
        )
    )
    spec = importlib.util.spec_from_file_location("arch", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(1)
    net = mod.ChannelLast(depth=2, base_channels=4).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    lost, lo = m.margin(2), m.min_input_size(2)
    img = load_em_sample()[0][0]
    x = img[:lo, :lo].astype(np.float32)
    gain, off = 1 / 255, -0.5
    with torch.no_grad():
        y = net(torch.from_numpy(x * gain + off)[None, :, :, None]).numpy()
    np.save(tmp_path / "in.npy", x[None, :, :, None])
    np.save(tmp_path / "out.npy", y)
    (tmp_path / "README.md").write_text("# valid net\n\n## Validation\n\nnone: a test fixture\n")
    ax = [b.AxisId("y"), b.AxisId("x")]
    raw = b.TensorId("raw")
    with ValidationContext(root=tmp_path):
        descr = b.ModelDescr(
            name="valid channel-last unet",
            description="a foreign package for the tests",
            authors=[b.Author(name="someone else")],
            cite=[b.CiteEntry(text="test", doi="10.1007/978-3-319-24574-4_28")],
            license=b.LicenseId("MIT"),
            documentation=b.FileDescr(source=tmp_path / "README.md"),
            inputs=[
                b.InputTensorDescr(
                    id=raw,
                    axes=[b.BatchAxis()]
                    + [b.SpaceInputAxis(id=a, size=b.ParameterizedSize(min=lo, step=4)) for a in ax]
                    + [b.ChannelAxis(channel_names=[b.Identifier("c")])],
                    test_tensor=b.FileDescr(source=tmp_path / "in.npy"),
                    preprocessing=[b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=gain, offset=off))],
                )
            ],
            outputs=[
                b.OutputTensorDescr(
                    id=b.TensorId("logits"),
                    axes=[b.BatchAxis()]
                    + [
                        b.SpaceOutputAxis(id=a, size=b.SizeReference(tensor_id=raw, axis_id=a, offset=-2 * lost))
                        for a in ax
                    ]
                    + [b.ChannelAxis(channel_names=[b.Identifier("bg"), b.Identifier("fg")])],
                    test_tensor=b.FileDescr(source=tmp_path / "out.npy"),
                )
            ],
            weights=b.WeightsDescr(
                pytorch_state_dict=b.PytorchStateDictWeightsDescr(
                    source=tmp_path / "w.pt",
                    architecture=b.ArchitectureFromFileDescr(
                        source=src, callable="ChannelLast", kwargs={"depth": 2, "base_channels": 4}
                    ),
                    pytorch_version=b.Version("2.1"),
                )
            ),
        )
    pkg = save_bioimageio_package(descr, output_path=tmp_path / "valid.zip")
    model = load_model(pkg, trust_code=True)
    assert isinstance(model, PackagedModel) and model.context == lost
    ref = predict(net.unet, img, normalize=(-off / gain, -off / gain + 1 / gain))
    np.testing.assert_array_equal(predict(model, img, tile_out=40, batch_size=3), ref)
