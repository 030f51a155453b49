"""OME-Zarr in and out: metadata round trip, the labels layout, atomic chunks, refusing to mix outputs."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

pytest.importorskip("zarr")

from napari_unet.core.data import ngff


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_round_trip_with_metadata_and_labels_layout(tmp_path, em_sample, version):
    img = em_sample[0][:3, :100, :120]
    path = tmp_path / "em.zarr"
    arr = ngff.create_output(
        path,
        shape=(1, *img.shape),
        dtype="uint8",
        chunks=(1, 1, 64, 50),
        axes="CZYX",
        scale=(1.0, 0.05, 0.004, 0.004),
        unit="µm",
        labels=False,
        version=version,
    )
    arr[:] = img[None]
    assert ngff.is_ome_zarr(path) and not ngff.is_ome_zarr(tmp_path)
    view, meta = ngff.read_ome_zarr(path)
    # the singleton channel axis is dropped; pixel size, spacing and unit come back from the metadata
    assert view.shape == img.shape and meta.axes == "ZYX" and view.chunks == (1, 64, 50)
    assert meta.pixel_size == (0.004, 0.004) and meta.z_spacing == 0.05 and meta.unit == "µm" and meta.lazy
    np.testing.assert_array_equal(view[1, 10:20, 5:9], img[1, 10:20, 5:9])
    np.testing.assert_array_equal(np.asarray(pickle.loads(pickle.dumps(view))), img)  # a worker reopens by path

    lab = ngff.create_output(
        path / "labels" / "pred",
        shape=img.shape,
        dtype="uint8",
        chunks=(1, 64, 50),
        axes="ZYX",
        scale=(0.05, 0.004, 0.004),
        unit="µm",
        version=version,
        provenance={"model": "m", "kind": "labels"},
    )
    assert ngff.labels_of(path) == ["pred"]
    attrs = json.loads((path / "labels" / "pred" / ("zarr.json" if version == "0.5" else ".zattrs")).read_text())
    attrs = attrs["attributes"]["ome"] if version == "0.5" else attrs
    assert "image-label" in attrs and attrs["multiscales"][0]["axes"][2] == {
        "name": "x",
        "type": "space",
        "unit": "micrometer",
    }
    # every chunk is written, empty or not, so a chunk file on disk means 'done'
    assert not ngff.chunk_done(lab, (0, 0, 0))
    lab[0, :64, :50] = 0
    assert ngff.chunk_done(lab, (0, 0, 0)) and not ngff.chunk_done(lab, (0, 0, 1))
    _, lmeta = ngff.read_ome_zarr(path / "labels" / "pred")
    assert lmeta.pixel_size == meta.pixel_size and lmeta.z_spacing == meta.z_spacing
    # reopening the same prediction resumes; another model's prediction is refused
    again = ngff.create_output(
        path / "labels" / "pred",
        shape=img.shape,
        dtype="uint8",
        chunks=(1, 64, 50),
        axes="ZYX",
        version=version,
        provenance={"model": "m", "kind": "labels"},
    )
    assert ngff.chunk_done(again, (0, 0, 0))
    with pytest.raises(ValueError, match="already holds another prediction"):
        ngff.create_output(
            path / "labels" / "pred",
            shape=img.shape,
            dtype="uint8",
            chunks=(1, 64, 50),
            axes="ZYX",
            version=version,
            provenance={"model": "other", "kind": "labels"},
        )


def test_channels_are_kept_lazily_and_bad_input_is_explained(tmp_path):
    data = np.arange(2 * 3 * 8 * 9, dtype=np.uint16).reshape(2, 3, 8, 9)
    path = tmp_path / "two.zarr"
    ngff.create_output(path, shape=data.shape, dtype="uint16", chunks=(1, 1, 8, 9), axes="CZYX", labels=False)[:] = data
    view, meta = ngff.read_ome_zarr(path)
    assert meta.axes == "CZYX" and meta.pixel_size == (1.0, 1.0)
    np.testing.assert_array_equal(view.take(0, 1)[2], data[1, 2])
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not an OME-Zarr image"):
        ngff.read_ome_zarr(tmp_path / "plain")
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not an OME-Zarr image; choose a new folder"):
        ngff.create_output(tmp_path / "plain", shape=(4, 4), dtype="uint8", chunks=(4, 4), axes="YX")


def test_chunk_writes_are_atomic(tmp_path, monkeypatch):
    """A write that dies half-way leaves no chunk file (a resumed run would take it for a finished one)."""
    arr = ngff.create_output(tmp_path / "o.zarr", shape=(8, 8), dtype="uint8", chunks=(4, 4), axes="YX")
    real_replace = ngff.os.replace

    def die(*a):
        raise OSError("disk full")

    monkeypatch.setattr(ngff.os, "replace", die)
    with pytest.raises(OSError, match="disk full"):
        arr[:4, :4] = 7
    monkeypatch.setattr(ngff.os, "replace", real_replace)
    assert not ngff.chunk_done(arr, (0, 0))
    assert not [p for p in (tmp_path / "o.zarr" / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    arr[:4, :4] = 7
    assert ngff.chunk_done(arr, (0, 0)) and int(ngff.open_output(tmp_path / "o.zarr")[0, 0]) == 7


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_outputs_validate_against_the_ngff_models(tmp_path, version):
    """ome-zarr-models (pydantic models of the NGFF spec) reads our image, labels group and labels image."""
    models = pytest.importorskip("ome_zarr_models")
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "img.zarr"
    kw = dict(shape=(3, 40, 50), dtype="uint8", chunks=(1, 16, 32), axes="ZYX", scale=(0.05, 0.004, 0.004), unit="µm")
    ngff.create_output(path, labels=False, version=version, **kw)[:] = 1
    ngff.create_output(path / "labels" / "pred", version=version, **kw)[:] = 1
    probs = tmp_path / "p.zarr"
    ngff.create_output(probs, shape=(2, 3, 40, 50), dtype="float16", chunks=(2, 1, 16, 32), axes="CZYX", labels=False)
    found = {
        q.relative_to(tmp_path).as_posix(): type(models.open_ome_zarr(zarr.open_group(str(q), mode="r"))).__name__
        for q in (path, path / "labels", path / "labels" / "pred", probs)
    }
    assert found == {
        "img.zarr": "Image",
        "img.zarr/labels": "Labels",
        "img.zarr/labels/pred": "ImageLabel",
        "p.zarr": "Image",
    }
