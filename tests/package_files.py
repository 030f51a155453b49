"""A bioimage.io package napari-unet did not write (a tiny padded U-Net with its model.py), built with
bioimageio.spec, for the package tests (tests/core/export, tests/core/models)."""

from __future__ import annotations

import textwrap

import numpy as np
import torch

from napari_unet._sample_data import load_nuclei_sample

FOREIGN_NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU())


    class TinyPaddedUNet(nn.Module):
        # another layout: zero-padded convs, two levels, one output channel (a logit)
        def __init__(self, c=4):
            super().__init__()
            self.enc1, self.enc2, self.bottom = block(1, c), block(c, 2 * c), block(2 * c, 4 * c)
            self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), block(4 * c, 2 * c)
            self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, 2), block(2 * c, c)
            self.out = nn.Conv2d(c, 1, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            b = self.bottom(nn.functional.max_pool2d(e2, 2))
            d2 = self.dec2(torch.cat([e2, self.up2(b)], 1))
            return self.out(self.dec1(torch.cat([e1, self.up1(d2)], 1)))
    """
)
HALO = 24  # > the receptive field radius of the net above (~22 px)


def foreign_package(tmp_path):
    """A bioimage.io package napari-unet did not write, built with bioimageio.spec."""
    import importlib.util

    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as b

    src = tmp_path / "tiny_unet.py"
    src.write_text(FOREIGN_NET)
    spec = importlib.util.spec_from_file_location("tiny_unet", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.TinyPaddedUNet().eval()
    with torch.no_grad():  # random weights; centre the logits so the labels have two classes
        x = load_nuclei_sample()[0][2].astype(np.float32)
        net.out.bias -= net(torch.from_numpy((x - x.mean()) / x.std())[None, None]).median()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    x = load_nuclei_sample()[0][1, :64, :64].astype(np.float32)
    xn = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy(xn)[None, None])).numpy()
    np.save(tmp_path / "in.npy", x[None, None])
    np.save(tmp_path / "out.npy", y)
    (tmp_path / "README.md").write_text("# tiny padded U-Net\n\n## Validation\n\nnone: a test fixture\n")
    ax = [b.AxisId("y"), b.AxisId("x")]
    with ValidationContext(root=tmp_path):
        descr = b.ModelDescr(
            name="tiny padded unet",
            description="a foreign package for the tests",
            authors=[b.Author(name="someone else")],
            cite=[b.CiteEntry(text="test", doi="10.1007/978-3-319-24574-4_28")],
            license=b.LicenseId("MIT"),
            documentation=b.FileDescr(source=tmp_path / "README.md"),
            inputs=[
                b.InputTensorDescr(
                    id=b.TensorId("input0"),
                    axes=[b.BatchAxis(), b.ChannelAxis(channel_names=[b.Identifier("c0")])]
                    + [b.SpaceInputAxis(id=a, size=b.ParameterizedSize(min=64, step=4)) for a in ax],
                    test_tensor=b.FileDescr(source=tmp_path / "in.npy"),
                    preprocessing=[b.ZeroMeanUnitVarianceDescr(kwargs=b.ZeroMeanUnitVarianceKwargs(axes=ax))],
                )
            ],
            outputs=[
                b.OutputTensorDescr(
                    id=b.TensorId("output0"),
                    axes=[b.BatchAxis(), b.ChannelAxis(channel_names=[b.Identifier("cells")])]
                    + [
                        b.SpaceOutputAxisWithHalo(
                            id=a, size=b.SizeReference(tensor_id=b.TensorId("input0"), axis_id=a), halo=HALO
                        )
                        for a in ax
                    ],
                    test_tensor=b.FileDescr(source=tmp_path / "out.npy"),
                    postprocessing=[b.SigmoidDescr()],
                )
            ],
            weights=b.WeightsDescr(
                pytorch_state_dict=b.PytorchStateDictWeightsDescr(
                    source=tmp_path / "w.pt",
                    architecture=b.ArchitectureFromFileDescr(source=src, callable="TinyPaddedUNet", kwargs={"c": 4}),
                    pytorch_version=b.Version("2.1"),
                )
            ),
        )
    return save_bioimageio_package(descr, output_path=tmp_path / "foreign.zip"), net


def colleague_package(tmp_path):
    """(package, marker, code): :func:`foreign_package` whose architecture source also writes ``marker`` when it is
    imported, its sha256 in rdf.yaml updated, so only the trust rule stands between it and running."""
    import hashlib
    import zipfile

    import yaml

    pkg, _ = foreign_package(tmp_path)
    marker = tmp_path / "MARKER"
    code = f"open({str(marker)!r}, 'w').write('ran')\n{FOREIGN_NET}".encode()
    with zipfile.ZipFile(pkg) as z:
        files = {n: z.read(n) for n in z.namelist()}
    rdf = yaml.safe_load(files["rdf.yaml"])
    rdf["weights"]["pytorch_state_dict"]["architecture"]["sha256"] = hashlib.sha256(code).hexdigest()
    files.update({"tiny_unet.py": code, "rdf.yaml": yaml.safe_dump(rdf).encode()})
    colleague = tmp_path / "colleague.zip"
    with zipfile.ZipFile(colleague, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return colleague, marker, code
