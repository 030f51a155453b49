"""The CLI and the napari reader on OME-Zarr: labels inside the container, -o out.zarr, worker processes,
a run killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

pytest.importorskip("zarr")

from napari_unet import _reader  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.core.data import ngff
from napari_unet.core.models.checkpoint import save_model
from napari_unet.core.network.unet import UNet


@pytest.fixture(scope="module")
def em(tmp_path_factory, em_planes):
    """(tiny model, a 3 x 512 x 512 EM TIFF, the same as OME-Zarr with odd chunks, the TIFF prediction)."""
    d = tmp_path_factory.mktemp("zarr-cli")
    torch.manual_seed(0)
    model = save_model(d / "m.safetensors", UNet(depth=2, base_channels=4))
    vol = em_planes[:3]
    tif = d / "em.tif"
    tifffile.imwrite(tif, vol, photometric="minisblack")
    ref = d / "ref.tif"
    assert main(["predict", str(tif), "-o", str(ref), "--model", str(model), "-q"]) == 0
    return model, tif, vol, tifffile.imread(ref)


def _zarr(tmp_path, vol, version="0.5"):
    path = tmp_path / "em.zarr"
    arr = ngff.create_output(
        path,
        shape=vol.shape,
        dtype="uint8",
        chunks=(1, 200, 173),
        axes="ZYX",
        scale=(0.05, 0.004, 0.004),
        unit="µm",
        labels=False,
        version=version,
    )
    arr[:] = vol
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_predict_writes_labels_into_the_container_and_the_reader_shows_them(tmp_path, em, capsys, version):
    model, _, vol, ref = em
    path = _zarr(tmp_path, vol, version)
    assert main(["predict", str(path), "--model", str(model), "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    out = path / "labels" / "unet-labels"
    assert ngff.labels_of(path) == ["unet-labels"] and ngff.ome_version(out) == version
    view, meta = ngff.read_ome_zarr(out)
    assert view.chunks == (1, 200, 173) and meta.pixel_size == (0.004, 0.004) and meta.z_spacing == 0.05
    np.testing.assert_array_equal(np.asarray(view), ref)
    # a rerun skips every chunk
    assert main(["predict", str(path), "--model", str(model), "-q"]) == 0
    assert "resuming: 27 of 27 blocks" in capsys.readouterr().err
    # drag and drop the folder: the image (lazy, calibrated) and the prediction as a Labels layer
    reader = _reader.napari_get_reader(str(path))
    assert callable(reader)
    (img, ikw, ikind), (lab, lkw, lkind) = reader(str(path))
    assert (ikind, lkind) == ("image", "labels") and lkw["name"] == "unet-labels"
    assert ikw["scale"] == pytest.approx((0.05, 0.004, 0.004)) and ikw["metadata"]["unit"] == "µm"
    assert type(img).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(img[1]), vol[1])
    np.testing.assert_array_equal(np.asarray(lab), ref)


def test_probabilities_and_tiff_out_from_zarr(tmp_path, em):
    model, _, vol, ref = em
    path = _zarr(tmp_path, vol)
    with pytest.raises(SystemExit, match="give -o probabilities.zarr"):
        main(["predict", str(path), "--model", str(model), "--kind", "probabilities", "-q"])
    probs = tmp_path / "p.zarr"
    rc = main(
        [
            "predict",
            str(path),
            "-o",
            str(probs),
            "--model",
            str(model),
            "--kind",
            "probabilities",
            "--prob-dtype",
            "uint8",
            "-q",
        ]
    )
    assert rc == 0
    p, meta = ngff.read_ome_zarr(probs)
    assert p.dtype == np.uint8 and p.shape == (2, *vol.shape) and meta.axes == "CZYX"
    assert np.mean(np.argmax(np.asarray(p[:, 0]), axis=0) == ref[0]) > 0.99  # p * 255 rounded: ties aside
    # instances: whole planes, one process, into labels/unet-instances; the same as the TIFF path's
    assert main(["predict", str(path), "--model", str(model), "--kind", "instances", "-q"]) == 0
    tif_inst = tmp_path / "inst.tif"
    assert main(["predict", str(path), "-o", str(tif_inst), "--model", str(model), "--kind", "instances", "-q"]) == 0
    np.testing.assert_array_equal(ngff.open_output(path / "labels" / "unet-instances")[:], tifffile.imread(tif_inst))
    assert ngff.labels_of(path) == ["unet-instances"]
    # the TIFF path still works on a zarr input (read lazily, one plane at a time)
    tif = tmp_path / "l.tif"
    assert main(["predict", str(path), "-o", str(tif), "--model", str(model), "--slices", "1", "-q"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tif), ref[1])


def test_worker_processes_equal_one_process(tmp_path, em):
    """Two LocalCluster worker processes (spawned, each with its own copy of the model)."""
    pytest.importorskip("distributed")
    model, tif, _, ref = em
    out = tmp_path / "w2.zarr"
    assert main(["predict", str(tif), "-o", str(out), "--workers", "2", "--model", str(model), "-q"]) == 0
    np.testing.assert_array_equal(ngff.open_output(out)[:], ref)


def test_killed_run_resumes_with_the_same_result(tmp_path, em):
    model, _, vol, ref = em
    path = _zarr(tmp_path, vol)
    cmd = [sys.executable, "-m", "napari_unet.cli", "predict", str(path), "--model", str(model), "-q"]
    chunks = path / "labels" / "unet-labels" / "0" / "c"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if chunks.is_dir() and sum(1 for p in chunks.rglob("*") if p.is_file()) >= 4:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sum(1 for p in chunks.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert 4 <= written < 27, "the run finished before it could be killed"
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {written} of 27 blocks" in rerun.stderr or "resuming:" in rerun.stderr
    np.testing.assert_array_equal(ngff.open_output(path / "labels" / "unet-labels")[:], ref)


def test_scheduler_address_of_an_existing_cluster(tmp_path, em):
    """--scheduler ADDR: the blocks run on a cluster someone else started (here: threads, in this process)."""
    distributed = pytest.importorskip("distributed")
    model, _, vol, ref = em
    path = _zarr(tmp_path, vol)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        rc = main(
            [
                "predict",
                str(path),
                "-o",
                str(tmp_path / "s.zarr"),
                "--model",
                str(model),
                "--scheduler",
                lc.scheduler_address,
                "-q",
            ]
        )
        assert rc == 0 and len(lc.workers) == 2  # the CLI closed its client, not the cluster
    np.testing.assert_array_equal(ngff.open_output(tmp_path / "s.zarr")[:], ref)
    with pytest.raises(SystemExit, match="instances needs whole planes"):
        main(
            [
                "predict",
                str(path),
                "-o",
                str(tmp_path / "i.zarr"),
                "--kind",
                "instances",
                "--model",
                str(model),
                "--workers",
                "2",
                "-q",
            ]
        )


def test_a_zoom_other_than_1_is_refused_before_anything_is_written(tmp_path, em, capsys):
    """Block-wise prediction needs zoom 1: the CLI says so (the core's one check) and writes nothing."""
    model, _, vol, _ = em
    path = _zarr(tmp_path, vol)
    assert main(["predict", str(path), "--model", str(model), "--zoom", "0.5", "-q"]) == 2
    assert "block-wise prediction (into an OME-Zarr) needs zoom 1" in capsys.readouterr().err
    assert ngff.labels_of(path) == []


# ----------------------------------------------------------------------------- bad input: resume, bounds, dask


def _small(tmp_path, vol, channels: int = 1) -> Path:
    """A 2 x 96 x 96 OME-Zarr (8 chunks of 1 x 48 x 48); ``channels`` > 1: CZYX, channel k = vol + 40 k."""
    data = vol[:2, :96, :96]
    axes, chunks = "ZYX", (1, 48, 48)
    if channels > 1:
        data = np.stack([(data.astype(np.int32) + 40 * k).clip(0, 255).astype(np.uint8) for k in range(channels)])
        axes, chunks = "CZYX", (1, *chunks)
    path = tmp_path / "in.zarr"
    ngff.create_output(path, shape=data.shape, dtype="uint8", chunks=chunks, axes=axes, labels=False)[:] = data
    return path


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _half_done(out: Path) -> None:
    """The output of a run killed half-way: every other chunk file removed."""
    chunks = sorted(p for p in (out / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    for p in chunks[::2]:
        p.unlink()


@pytest.mark.parametrize("change", ["channel", "model", "input", "kind-settings"])
def test_a_resume_with_anything_changed_is_refused_before_writing(tmp_path, em, capsys, change):
    """The output records what decides its result; a rerun that differs is refused (exit 2, nothing written),
    and the same rerun resumes to exactly a fresh run's result."""
    model, _, vol, _ = em
    path = _small(tmp_path, vol, channels=2)
    out = tmp_path / "out.zarr"
    base = ["predict", str(path), "-o", str(out), "--model", str(model), "--channel", "0", "-q"]
    assert main(base) == 0
    fresh = ngff.open_output(out)[:]
    _half_done(out)
    before = _files(out), _files(path)
    argv = list(base)
    if change == "channel":
        argv[argv.index("--channel") + 1] = "1"
    elif change == "model":
        torch.manual_seed(1)
        other = save_model(tmp_path / "m.safetensors", UNet(depth=2, base_channels=4))
        argv[argv.index("--model") + 1] = str(other)
    elif change == "input":
        arr = ngff.open_output(path)
        arr[0, 1, :48, :48] = 255 - arr[0, 1, :48, :48]
        before = _files(out), _files(path)
    else:
        argv += ["--tta"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds another prediction" in err and f"delete {out}" in err, err
    assert "Traceback" not in err
    assert (_files(out), _files(path)) == before  # nothing written
    if change == "input":
        return
    assert main(base) == 0  # the same run resumes to a fresh run's result
    assert "resuming: 4 of 8 blocks are already written" in capsys.readouterr().err
    np.testing.assert_array_equal(ngff.open_output(out)[:], fresh)


def test_a_model_file_swapped_under_the_same_name_is_refused(tmp_path, em, capsys):
    """The model's bytes, not its name, identify it: another model written over the same file is refused."""
    _, _, vol, _ = em
    path = _small(tmp_path, vol)
    model = save_model(tmp_path / "m.safetensors", UNet(depth=2, base_channels=4))
    out = tmp_path / "out.zarr"
    argv = ["predict", str(path), "-o", str(out), "--model", str(model), "-q"]
    assert main(argv) == 0
    _half_done(out)
    before = _files(out)
    torch.manual_seed(7)
    save_model(model, UNet(depth=2, base_channels=4))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.weights_sha256 was" in err and "model.files_sha256 was" in err, err
    assert _files(out) == before


_HUGE = {
    # 10^12 pixels declared, 4 chunk files real: 256 M blocks of 1 x 64 x 64
    "blocks": ((1_000_000, 1000, 1000), (1, 64, 64), "uint8", "ZYX", "256,000,000 blocks"),
    # a 2D plane of 500000 x 500000 uint32: 931 GiB
    "plane": ((500_000, 500_000), (512, 512), "uint32", "YX", "a plane of 250,000,000,000 px"),
    # one chunk of 1 x 20000 x 20000: a block of 400 M px
    "block": ((2, 20_000, 20_000), (1, 20_000, 20_000), "uint8", "ZYX", "blocks of 400,000,000 px"),
}


@pytest.mark.parametrize("case", list(_HUGE))
def test_a_store_declaring_a_huge_shape_is_refused_in_little_memory(tmp_path, em, case):
    """The shape and chunks in zarr.json are checked before any plan or allocation: exit 2 with the store's
    real chunk count, nothing written, the process under 1 GB RSS.

    The peak is the child's own VmHWM (/proc): its ru_maxrss also counts this process's RSS at the fork,
    which Linux carries over exec. Both and the time are printed, not asserted on."""
    model = em[0]
    shape, chunks, dtype, axes, expect = _HUGE[case]
    path = tmp_path / "huge.zarr"
    arr = ngff.create_output(path, shape=shape, dtype=dtype, chunks=chunks, axes=axes, labels=False)
    if case != "block":  # 4 real chunks (a chunk of the "block" case alone would be 400 MB here)
        for k in range(4):
            arr[(slice(k, k + 1), slice(0, 64), slice(0, 64)) if len(shape) == 3 else (slice(0, 64), slice(0, 64))] = 7
    before = _files(path)
    script = (
        "import re, resource, time\n"
        "from napari_unet.cli import main\n"
        "t = time.perf_counter()\n"
        f"rc = main(['predict', {str(path)!r}, '-o', {str(tmp_path / 'o.zarr')!r}, '--model', {str(model)!r}, '-q'])\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print('RESULT', rc, hwm, ru, time.perf_counter() - t)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    rc, hwm_kb, ru_kb, seconds = run.stdout.split("RESULT")[1].split()
    print(
        f"{case}: exit {rc}, VmHWM {int(hwm_kb) / 1024:.0f} MiB, ru_maxrss {int(ru_kb) / 1024:.0f} MiB, {float(seconds):.2f} s"
    )
    assert int(rc) == 2, run.stderr
    assert expect in run.stderr and "chunk files" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert int(hwm_kb) < 1024 * 1024  # KiB: under 1 GB
    assert not (tmp_path / "o.zarr").exists() and _files(path) == before


@pytest.mark.parametrize("workers", ["1000", "-1", "0"])
def test_workers_out_of_range_are_refused_at_once(tmp_path, em, capsys, workers):
    model, _, vol, _ = em
    path = _small(tmp_path, vol)
    before = _files(path)
    argv = ["predict", str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model), "-q", "--workers", workers]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--workers {workers}: workers must be a whole number from 1 to" in err and "Traceback" not in err
    assert not (tmp_path / "o.zarr").exists() and _files(path) == before


def test_a_scheduler_that_does_not_answer_fails_fast_and_leaves_nothing(tmp_path, em, capsys):
    import socket

    pytest.importorskip("distributed")
    model, _, vol, _ = em
    path = _small(tmp_path, vol)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = _files(path)
    t = time.perf_counter()
    argv = ["predict", str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model), "-q"]
    assert main([*argv, "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    print(f"closed scheduler port refused in {time.perf_counter() - t:.1f} s")
    err = capsys.readouterr().err
    assert "no dask scheduler answered" in err and "Traceback" not in err
    assert not (tmp_path / "o.zarr").exists() and _files(path) == before
    # into the container: no labels group left behind either
    assert main(["predict", str(path), "--model", str(model), "-q", "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    assert _files(path) == before


@pytest.mark.parametrize(
    ("multiscales", "expect"),
    [
        ({"datasets": [{"path": "0"}]}, "must be a list of multiscale objects"),
        ([{"axes": ["z", "y", "x"]}], "has no 'datasets' list"),
        ([None], "must be a list of multiscale objects"),
        ([{"datasets": [{"scale": 1}]}], "every dataset needs a 'path'"),
    ],
)
def test_broken_multiscales_metadata_is_a_clear_message(tmp_path, em, capsys, multiscales, expect):
    model, _, vol, _ = em
    path = _small(tmp_path, vol)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"] = multiscales
    (path / "zarr.json").write_text(json.dumps(meta))
    before = _files(path)
    assert main(["predict", str(path), "--model", str(model), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {path}" in err and expect in err and "Traceback" not in err, err
    assert _files(path) == before


def test_a_scale_that_is_no_size_is_not_copied_into_the_output(tmp_path, em, capsys):
    """A scale of [0, -1, NaN]: the image is predicted, with a warning, and the output says 1 on those axes."""
    model, _, vol, _ = em
    path = _small(tmp_path, vol)
    text = (path / "zarr.json").read_text()
    meta = json.loads(text)
    meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [0, -1, "x"]
    (path / "zarr.json").write_text(json.dumps(meta).replace('"x"', "NaN"))
    with pytest.warns(UserWarning, match="not a positive size"):
        assert main(["predict", str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model), "-q"]) == 0
    written = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())
    scale = written["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 1.0, 1.0]


def test_a_damaged_chunk_names_the_array(tmp_path, em, capsys):
    """A chunk whose zstd stream is broken: exit 2 naming the array, and no output left behind."""
    model, _, vol, _ = em
    path = _small(tmp_path, vol)
    chunk = next(p for p in sorted((path / "0").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    assert main(["predict", str(path), "-o", str(tmp_path / "o.zarr"), "--model", str(model), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the zarr array {path / '0'}" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.zarr").exists()
