"""The trust rule and the bounds of bioimage.io packages (core/models/packages.py), as an attacker tries them.

Every package here is crafted in the test: a model.py that writes a marker file when imported (sha256
correct), an ``import_from: subprocess`` architecture, a swapped attachment, paths leaving the package,
zip bombs, a 'billion laughs' rdf.yaml, NaN and int8 weights. No marker is ever written without
trust; every refusal is a PackageError naming the file (exit 2 through the CLI, no traceback); a
subprocess loading every crafted file stays under 1 GB of memory. With trust the honest package runs.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

pytest.importorskip("bioimageio.core")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from package_files import FOREIGN_NET, foreign_package  # noqa: E402

from napari_unet.cli import main  # noqa: E402
from napari_unet.core.models.checkpoint import CheckpointError, available_models  # noqa: E402
from napari_unet.core.models.load import load_model  # noqa: E402
from napari_unet.core.models.packages import CodeNotTrusted, PackageError  # noqa: E402
from napari_unet.core.predict.tiles import predict  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(autouse=True)
def _collect_package_readers():
    """bioimageio.spec leaves package readers open; collect them inside this module's warning filters, not later
    in an unrelated test."""
    yield
    gc.collect()


CODE = "tiny_unet.py"  # the foreign package's architecture source


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """The files of an honest foreign package (rdf.yaml parsed), built once with bioimageio.spec."""
    pkg, _ = foreign_package(tmp_path_factory.mktemp("honest"))
    with zipfile.ZipFile(pkg) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return files, yaml.safe_load(files["rdf.yaml"])


def write_zip(path: Path, files: dict, rdf=None) -> Path:
    """A package zip of ``files`` (bytes by name) with ``rdf`` (a dict, or rdf.yaml's text) as rdf.yaml."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in files.items():
            if n != "rdf.yaml":
                z.writestr(n, data)
        text = files["rdf.yaml"] if rdf is None else rdf if isinstance(rdf, (str, bytes)) else yaml.safe_dump(rdf)
        z.writestr("rdf.yaml", text)
    return path


def marker_package(tmp_path: Path, honest) -> tuple[Path, Path, bytes]:
    """The honest package whose model.py also writes a marker file when imported (its sha256 updated)."""
    files, rdf = dict(honest[0]), json.loads(json.dumps(honest[1]))
    marker = tmp_path / "MARKER"
    code = f"open({str(marker)!r}, 'w').write('the package code ran')\n{FOREIGN_NET}".encode()
    files[CODE] = code
    rdf["weights"]["pytorch_state_dict"]["architecture"]["sha256"] = sha(code)
    return write_zip(tmp_path / "colleague.zip", files, rdf), marker, code


def popen_package(tmp_path: Path, honest) -> tuple[Path, Path]:
    files, rdf = dict(honest[0]), json.loads(json.dumps(honest[1]))
    marker = tmp_path / "POPEN_MARKER"
    rdf["weights"]["pytorch_state_dict"]["architecture"] = {
        "import_from": "subprocess",
        "callable": "Popen",
        "kwargs": {"args": ["touch", str(marker)]},
    }
    del files[CODE]
    return write_zip(tmp_path / "popen.zip", files, rdf), marker


def own_package(tmp_path: Path, name: str = "own.zip", *, data: bytes | None = None, file="m.safetensors") -> Path:
    """A package as napari-unet exports it, reduced to what loading it reads: rdf.yaml naming the attached
    model file in config.napari_unet.file and in the attachments with its sha256."""
    real = available_models()["em-membrane"].read_bytes()
    rdf = {
        "format_version": "0.5.4",
        "type": "model",
        "attachments": [{"source": "m.safetensors", "sha256": sha(real)}],
        "config": {"napari_unet": {"file": file}},
    }
    return write_zip(tmp_path / name, {"m.safetensors": real if data is None else data}, rdf)


def refused(path, match: str, **kw) -> PackageError:
    with pytest.raises(PackageError, match=match) as e:
        load_model(path, **kw)
    return e.value


# ----------------------------------------------------------------------------- code needs trust


def test_code_carrying_package_needs_trust(tmp_path, honest, nuclei_sample):
    pkg, marker, code = marker_package(tmp_path, honest)
    e = refused(pkg, "--trust-code")
    assert isinstance(e, CodeNotTrusted) and (e.code_file, e.sha256) == (CODE, sha(code))
    assert pkg.name in str(e) and CODE in str(e) and sha(code) in str(e)
    assert not marker.exists()
    model = load_model(pkg, trust_code=True)  # trusted: its code runs, and it predicts
    assert marker.exists()
    labels = predict(model, nuclei_sample[0][0, :64, :64])
    assert labels.shape == (64, 64)


def test_import_from_is_never_trusted(tmp_path, honest):
    pkg, marker = popen_package(tmp_path, honest)
    for trust in (False, True):
        e = refused(pkg, "outside the package", trust_code=trust)
        assert "subprocess" in str(e) and pkg.name in str(e)
    assert not marker.exists()


def test_cli_refuses_code_without_trust_code(tmp_path, honest, nuclei_sample, capsys):
    """predict, evaluate, export and train --init auto --candidates: exit 2, one line, no code run."""
    pkg, marker, _ = marker_package(tmp_path, honest)
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, nuclei_sample[0][0, :64, :64])
    lab = tmp_path / "lab.tif"
    tifffile.imwrite(lab, (nuclei_sample[1][0, :64, :64] > 0).astype(np.uint8) + 1)
    runs = {
        "predict": ["predict", str(img), "-o", str(tmp_path / "o.tif"), "--model", str(pkg), "-q"],
        "evaluate": ["evaluate", "--model", str(pkg), "--images", str(img), "--labels", str(lab), "-q"],
        "export": ["export", str(pkg), "-o", str(tmp_path / "e.zip"), "--sample", str(img)],
        "train": f"train --images {img} --labels {lab} --steps 1 --init auto --candidates {pkg} "
        f"-o {tmp_path / 'm'} -q --device cpu".split(),
    }
    for name, argv in runs.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert pkg.name in err and "Traceback" not in err, (name, err)
        assert not marker.exists(), name
    assert main([*runs["predict"], "--trust-code"]) == 0
    assert marker.exists() and tifffile.imread(tmp_path / "o.tif").shape == (64, 64)


# ----------------------------------------------------------------------------- integrity and paths


def test_swapped_files_are_refused(tmp_path, honest):
    other = available_models()["nuclei"].read_bytes()
    refused(own_package(tmp_path, data=other), "m.safetensors does not match the sha256")
    files = dict(honest[0])
    w = honest[1]["weights"]["pytorch_state_dict"]["source"]
    state = torch.load(io.BytesIO(files[w]), weights_only=True)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    files[w] = buf.getvalue()
    refused(write_zip(tmp_path / "swapped.zip", files), f"{w} does not match the sha256", trust_code=True)
    assert load_model(own_package(tmp_path)).info.name == "em-membrane"  # the honest one loads, no trust needed


@pytest.mark.parametrize("path", ["../m.safetensors", "/etc/passwd", "a/../../m.safetensors", "C:/m.safetensors"])
def test_paths_leaving_the_package_are_refused(tmp_path, path):
    refused(own_package(tmp_path, file=path), "outside the package")


def test_symlink_out_of_a_package_folder_is_refused(tmp_path):
    pkg = own_package(tmp_path)
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(pkg) as z:
        z.extractall(folder)
    outside = tmp_path / "outside.safetensors"
    (folder / "m.safetensors").rename(outside)
    (folder / "m.safetensors").symlink_to(outside)
    refused(folder / "rdf.yaml", "outside the package folder")


# ----------------------------------------------------------------------------- bounds


def zip_bomb(path: Path, big: str, size: int) -> Path:
    """A package whose entry ``big`` unpacks to ``size`` bytes of zeros (a few MB on disk)."""
    rdf = {"format_version": "0.5.4", "type": "model", "config": {"napari_unet": {"file": "m.safetensors"}}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        if big != "rdf.yaml":
            z.writestr("rdf.yaml", yaml.safe_dump(rdf))
        with z.open(big, "w", force_zip64=True) as f:
            chunk = bytes(64 * 2**20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, honest):
    """Every crafted file of this module under 10 MB, by what it tries."""
    d = tmp_path_factory.mktemp("crafted")
    files, rdf = dict(honest[0]), json.loads(json.dumps(honest[1]))
    w = rdf["weights"]["pytorch_state_dict"]["source"]
    state = torch.load(io.BytesIO(files[w]), weights_only=True)
    out = {
        "attachment bomb": zip_bomb(d / "bomb.zip", "m.safetensors", 3 * 2**30),
        "rdf.yaml bomb": zip_bomb(d / "rdf-bomb.zip", "rdf.yaml", 2 * 2**30),
        "billion laughs": write_zip(d / "laughs.zip", {}, BILLION_LAUGHS),
        "import_from": popen_package(d, honest)[0],
        "model.py": marker_package(d, honest)[0],
    }
    for name, bad in (("nan", float("nan")), ("int8", None)):
        s = {k: v.clone() for k, v in state.items()}
        k = next(k for k, v in s.items() if v.is_floating_point())
        s[k] = s[k].to(torch.int8) if bad is None else s[k].fill_(bad)
        buf = io.BytesIO()
        torch.save(s, buf)
        r = json.loads(json.dumps(rdf))
        r["weights"]["pytorch_state_dict"]["sha256"] = sha(buf.getvalue())
        out[f"{name} weights"] = write_zip(d / f"{name}.zip", {**files, w: buf.getvalue()}, r)
    out["nan torchscript"] = nan_torchscript(d, files, rdf)
    assert all(p.stat().st_size < 10 * 2**20 for p in out.values())
    return out


def nan_torchscript(d: Path, files: dict, rdf: dict) -> Path:
    """The package with torchscript weights only (no code needed), one of whose tensors is NaN."""
    import importlib.util

    src = d / "ts_net.py"  # the test's own copy of the package's net (torch.jit.script reads its source)
    src.write_text(FOREIGN_NET)
    spec = importlib.util.spec_from_file_location("ts_net", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.TinyPaddedUNet().eval()
    with torch.no_grad():
        net.out.bias.fill_(float("nan"))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), buf)
    r = json.loads(json.dumps(rdf))
    r["weights"] = {"torchscript": {"source": "w.ts", "sha256": sha(buf.getvalue()), "pytorch_version": "2.1"}}
    return write_zip(d / "nan-torchscript.zip", {**files, "w.ts": buf.getvalue()}, r)


@pytest.mark.parametrize(
    "case, match",
    [
        ("attachment bomb", "m.safetensors unpacks to 3072 MiB"),
        ("rdf.yaml bomb", "rdf.yaml unpacks to 2048 MiB"),
        ("billion laughs", "billion laughs"),
        ("nan weights", "NaN or inf"),
        ("nan torchscript", "w.ts: out.bias holds NaN or inf"),
        ("int8 weights", "int8 values where the network needs floats"),
    ],
)
def test_crafted_files_are_refused(crafted, case, match):
    e = refused(crafted[case], match, trust_code=True)  # trust changes none of these
    assert crafted[case].name in str(e)


def test_crafted_files_stay_within_memory(crafted, tmp_path):
    """One process loads every crafted file: each refused, and the process stays under 1 GB (its own VmHWM: its
    ru_maxrss also counts this pytest process's RSS at the fork).
    The times are printed (`pytest -s`), not asserted."""
    script = (
        "import resource, sys, time\n"
        "from napari_unet.core.models.load import load_model\n"
        "from napari_unet.core.models.packages import PackageError\n"
        "for path in sys.argv[1:]:\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        load_model(path)\n"
        "        print('LOADED', path)\n"
        "    except PackageError as e:\n"
        "        print(f'{time.perf_counter() - t:.2f} s', path, str(e)[:80])\n"
        "import re\n"
        "print('MAXRSS_KB', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", script, *map(str, crafted.values())], capture_output=True, text=True, env=env
    )
    print(run.stdout, run.stderr[-2000:])
    assert run.returncode == 0 and "LOADED" not in run.stdout
    assert run.stdout.count(" s ") == len(crafted)
    assert int(run.stdout.split("MAXRSS_KB")[1]) < 2**20  # KiB: under 1 GiB


def test_own_normalisation_damaged_is_refused(tmp_path):
    """A model whose header normalisation is a string or an unknown method: a message, not a KeyError."""
    from napari_unet.core.models.checkpoint import save_model
    from napari_unet.core.network.unet import UNet

    net = UNet(depth=2, base_channels=4, n_classes=2)
    for norm, match in (
        ("percentile", "normalization is not what napari-unet writes|not a mapping"),
        ({"method": "zscore"}, "unknown normalisation 'zscore'"),
    ):
        f = save_model(tmp_path / "m", net)
        from safetensors.torch import load_file, save_file

        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            meta = json.loads(fh.read(n))["__metadata__"]
        info = json.loads(meta["napari_unet"])
        info["normalization"] = norm
        meta["napari_unet"] = json.dumps(info)
        save_file(load_file(f), f, metadata=meta)
        with pytest.raises(CheckpointError, match=match):
            load_model(f)


# ----------------------------------------------------------------------------- fuzz


ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["../x", "/etc/passwd", "http://example.com/w.pt", "tiny_unet.py", "w.pt", ""]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(d, prefix=()):
    """Every key path of a nested rdf."""
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_rdf_fields_are_refused_cleanly(honest, tmp_path, data):
    """Any field of a valid rdf.yaml replaced by an odd value or removed: a clean refusal (or a load)."""
    files, rdf = honest[0], json.loads(json.dumps(honest[1]))
    paths = sorted(_paths(rdf), key=str)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = rdf
        try:
            for k in path[:-1]:
                parent = parent[k]
            if data.draw(st.booleans()):
                parent[path[-1]] = data.draw(ODD)
            elif isinstance(parent, dict):
                parent.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this path
    pkg = write_zip(tmp_path / "fuzz.zip", files, rdf)
    try:
        load_model(pkg, trust_code=data.draw(st.booleans()))
    except (PackageError, CheckpointError) as e:
        assert str(e)
