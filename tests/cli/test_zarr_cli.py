"""The CLI and the napari reader on OME-Zarr: labels inside the container, -o out.zarr, worker processes,
a run killed with SIGKILL and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
