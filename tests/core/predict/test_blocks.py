"""Block-wise prediction equals single-process prediction, here and on a dask cluster, and resumes."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("zarr")

from napari_unet.core.data import ngff
from napari_unet.core.drain import drain
from napari_unet.core.network.unet import UNet
from napari_unet.core.predict.blocks import check_plan, check_workers, iter_predict_blocks, plan_blocks
from napari_unet.core.predict.config import PredictConfig
from napari_unet.core.predict.tiles import predict
from napari_unet.core.predict.zarr import model_identity, prepare_zarr_prediction

ODD = (1, 200, 173)  # odd blocks: off the 2**depth grid and not dividing the 512 px planes


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(depth=2, base_channels=4)


@pytest.fixture(scope="module")
def volume(em_planes):
    return np.ascontiguousarray(em_planes[:3])  # ISBI-sized planes (512 x 512)


@pytest.fixture(scope="module")
def reference(net, volume):
    return predict(net, volume, device="cpu"), predict(net, volume, device="cpu", output="probabilities")


def _zarr_image(tmp_path, volume, chunks=ODD):
    path = tmp_path / "em.zarr"
    ngff.create_output(path, shape=volume.shape, dtype="uint8", chunks=chunks, axes="ZYX", labels=False)[:] = volume
    return ngff.read_ome_zarr(path)[0]


def _output(tmp_path, name, shape, dtype="uint8", chunks=ODD):
    path = tmp_path / name
    ngff.create_output(path, shape=shape, dtype=dtype, chunks=chunks, axes="CZYX"[-len(shape) :])
    return path


def test_plan_blocks_covers_every_pixel_once():
    blocks = plan_blocks((3, 512, 512), ODD)
    cover = np.zeros((3, 512, 512), int)
    for b in blocks:
        cover[slice(*b.z), slice(*b.y), slice(*b.x)] += 1
    assert len(blocks) == 3 * 3 * 3 and (cover == 1).all()


def test_blocks_equal_single_process(net, volume, reference, tmp_path):
    labels, probs = reference
    out = np.zeros_like(labels)
    drain(iter_predict_blocks(net, _zarr_image(tmp_path, volume), out, chunks=ODD))
    np.testing.assert_array_equal(out, labels)
    # a 2D image, blocks of other odd sizes, probabilities in float32
    p2 = np.zeros(probs[:, 0].shape, np.float32)
    config = PredictConfig(output="probabilities", prob_dtype="float32")
    drain(iter_predict_blocks(net, volume[0], p2, config, chunks=(97, 131)))
    np.testing.assert_allclose(p2, probs[:, 0], atol=1e-5)


def test_distributed_local_cluster_equals_single_process(net, volume, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    labels, probs = reference
    image = _zarr_image(tmp_path, volume)
    lab_path = _output(tmp_path, "labels.zarr", labels.shape)
    prob_path = _output(tmp_path, "probs.zarr", probs.shape, "float16", (2, *ODD))
    # threads, not processes, to keep the test fast; tests/cli/test_zarr_cli.py runs worker processes
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc:
        with distributed.Client(lc) as client:
            events = list(iter_predict_blocks(net, image, str(lab_path), client=client))
            drain(iter_predict_blocks(net, image, str(prob_path), PredictConfig(output="probabilities"), client=client))
    assert events[0].kind == "start" and events[-1].done == events[-1].total == 27
    np.testing.assert_array_equal(ngff.open_output(lab_path)[:], labels)
    got = ngff.open_output(prob_path)[:]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), probs, atol=1e-3)  # float16 storage: 2**-11 relative


def test_interrupted_run_resumes_skipping_finished_chunks(net, volume, reference, tmp_path):
    labels, _ = reference
    image = _zarr_image(tmp_path, volume)
    path = _output(tmp_path, "labels.zarr", labels.shape)
    gen = iter_predict_blocks(net, image, ngff.open_output(path))
    for ev in gen:
        if ev.kind == "block" and ev.done == 10:
            break
    gen.close()  # as a killed run: 10 blocks on disk, nothing else
    # a write killed mid-way leaves only a temporary file, never a chunk file
    (path / "0" / "c" / "2").mkdir(parents=True, exist_ok=True)
    (path / "0" / "c" / "2" / ".0.abc.tmp").write_bytes(b"\0" * 7)
    written = {}

    events = list(iter_predict_blocks(net, image, ngff.open_output(path)))
    assert events[0].kind == "start" and events[0].skipped == 10
    written = [ev.block for ev in events if ev.kind == "block"]
    assert len(written) == 17
    np.testing.assert_array_equal(ngff.open_output(path)[:], labels)
    # a finished output is left alone
    again = list(iter_predict_blocks(net, image, ngff.open_output(path)))
    assert [ev.kind for ev in again] == ["start"] and again[0].skipped == 27


def test_instances_are_refused_with_what_to_do(net, volume):
    with pytest.raises(ValueError, match="instances need whole planes"):
        drain(iter_predict_blocks(net, volume, np.zeros(volume.shape, np.uint32), PredictConfig(output="instances")))


def test_a_killed_worker_process_loses_nothing(net, volume, reference, tmp_path):
    """SIGKILL one of two worker processes mid-run: the scheduler reruns its blocks elsewhere, the result is whole."""
    import os
    import signal

    distributed = pytest.importorskip("distributed")
    labels, _ = reference
    image = _zarr_image(tmp_path, volume[:2])
    path = _output(tmp_path, "labels.zarr", labels[:2].shape)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        with distributed.Client(lc) as client:
            gen = iter_predict_blocks(net, image, str(path), PredictConfig(threads=1), client=client)
            killed = False
            for ev in gen:
                if ev.kind == "block" and ev.done >= 2 and not killed:
                    pid = next(iter(client.run(os.getpid).values()))
                    os.kill(pid, signal.SIGKILL)
                    killed = True
    assert killed and ev.done == ev.total == 18
    np.testing.assert_array_equal(ngff.open_output(path)[:], labels[:2])


# ----------------------------------------------------------------------------- bounds and identity


@pytest.mark.parametrize(
    ("spatial", "chunks", "expect"),
    [
        ((10**6, 1000, 1000), (1, 64, 64), "256,000,000 blocks"),
        ((500_000, 500_000), (512, 512), "a plane of 250,000,000,000 px"),
        ((2, 20_000, 20_000), (1, 20_000, 20_000), "blocks of 400,000,000 px"),
    ],
)
def test_plans_beyond_the_limits_are_refused_from_the_shapes_alone(spatial, chunks, expect):
    with pytest.raises(ValueError, match=expect):
        plan_blocks(spatial, chunks)
    check_plan((3, 512, 512), (1, 200, 173))  # an ordinary volume passes


@pytest.mark.parametrize("n", [0, -1, 2.5, "2", 10**6])
def test_workers_outside_one_to_four_per_core_are_refused(n):
    with pytest.raises(ValueError, match="workers must be a whole number from 1 to"):
        check_workers(n)
    assert check_workers(1) == 1


def test_a_resume_with_another_input_or_setting_is_refused_and_the_same_one_equals_a_fresh_run(
    net, volume, reference, tmp_path
):
    """prepare_zarr_prediction (the CLI's and the widget's): the output records the input's pixels and the
    settings; a rerun that differs is refused before writing; the same rerun completes a fresh run's result."""
    image = np.ascontiguousarray(volume[:3, :128, :96])  # 3 blocks of 1 x 128 x 96
    out_path = tmp_path / "o.zarr"
    config = PredictConfig(device="cpu")
    out, events = prepare_zarr_prediction(net, image, out_path, config)
    drain(itertools.islice(events, 2))  # a run stopped after one block: the start event and one block
    events.close()
    written = {p: p.read_bytes() for p in out_path.rglob("*") if p.is_file()}
    changed = image.copy()
    changed[1, 5, 5] ^= 1
    for other, cfg in [
        (changed, config),
        (image, replace(config, tta=True)),
        (image, replace(config, normalize=(0, 255))),
    ]:
        with pytest.raises(ValueError, match="already holds another prediction.*To start over, delete"):
            prepare_zarr_prediction(net, other, out_path, cfg)
        assert {p: p.read_bytes() for p in out_path.rglob("*") if p.is_file()} == written
    out, events = prepare_zarr_prediction(net, image, out_path, config)
    drain(events)
    np.testing.assert_array_equal(out[:], predict(net, image, device="cpu"))


def test_the_model_identity_covers_every_file_of_a_package_folder(net, tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "rdf.yaml").write_text("name: x\n")
    (pkg / "weights.bin").write_bytes(b"1234")
    (pkg / "attachments").mkdir()
    (pkg / "attachments" / "note.txt").write_text("a")
    first = model_identity(net, pkg / "rdf.yaml")
    (pkg / "attachments" / "note.txt").write_text("b")
    second = model_identity(net, pkg / "rdf.yaml")
    assert first["weights_sha256"] == second["weights_sha256"] and first["files_sha256"] != second["files_sha256"]
    other = UNet(depth=2, base_channels=4)
    assert model_identity(other)["weights_sha256"] != first["weights_sha256"]
