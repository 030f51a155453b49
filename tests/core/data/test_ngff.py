"""OME-Zarr in and out: metadata round trip, the labels layout, atomic chunks, refusing to mix outputs."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------- bad metadata, identity


@pytest.fixture(scope="module")
def image_zarr(tmp_path_factory):
    """A 4 x 6 OME-Zarr image (v3) whose group metadata the fuzz test rewrites."""
    path = tmp_path_factory.mktemp("fuzz") / "img.zarr"
    ngff.create_output(path, shape=(4, 6), dtype="uint8", chunks=(4, 6), axes="YX", labels=False)[:] = 3
    return path


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_scale = st.lists(st.floats(allow_nan=True, allow_infinity=True) | _json, max_size=3)
_transform = st.fixed_dictionaries({"type": st.sampled_from(["scale", "translation"]) | _json, "scale": _scale})
_dataset = st.fixed_dictionaries(
    {"path": st.sampled_from(["0", "1", "../img.zarr/0", "", "/0", "0/c"]) | _json},
    optional={"coordinateTransformations": st.lists(_transform | _json, max_size=2) | _json},
)
_axis = st.sampled_from(["y", "x", "z", "c"]) | st.fixed_dictionaries(
    {"name": st.sampled_from(["y", "x", "c"]) | _json}, optional={"unit": _json | st.just("micrometer")}
)
_multiscale = st.fixed_dictionaries(
    {},
    optional={
        "datasets": st.lists(_dataset | _json, max_size=2) | _json,
        "axes": st.lists(_axis | _json, max_size=3) | _json,
        "coordinateTransformations": st.lists(_transform | _json, max_size=2) | _json,
    },
)


@settings(max_examples=200, deadline=None)
@given(
    multiscales=st.lists(_multiscale | _json, max_size=2) | _json,
    version=st.sampled_from(["0.4", "0.5"]),
    attrs_extra=st.dictionaries(st.sampled_from(["ome", "labels", "napari-unet"]), _json, max_size=2),
)
def test_fuzzed_multiscales_metadata_reads_or_is_refused_cleanly(image_zarr, multiscales, version, attrs_extra):
    """Any group metadata: read_ome_zarr returns an image or raises a ValueError naming the file; nothing else."""
    attrs = {**attrs_extra, "multiscales": multiscales}
    if version == "0.5":
        attrs = {**attrs_extra, "ome": {"version": "0.5", "multiscales": multiscales}}
    (image_zarr / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}, allow_nan=True)
    )
    assert ngff.is_ome_zarr(image_zarr) in (True, False)
    ngff.labels_of(image_zarr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scale that is no size warns: wanted
        try:
            view, meta = ngff.read_ome_zarr(image_zarr)
        except ValueError as e:
            assert str(image_zarr) in str(e), e
            return
    assert view.shape == (4, 6) and meta.axes == "YX"
    assert meta.pixel_size is None or all(math.isfinite(v) and v > 0 for v in meta.pixel_size)


def test_scale_values_that_are_no_size_are_ignored_with_a_warning(tmp_path):
    path = tmp_path / "img.zarr"
    ngff.create_output(path, shape=(2, 4, 6), dtype="uint8", chunks=(1, 4, 6), axes="ZYX", labels=False)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [-1, 0, 2]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="not a positive size") as caught:
        _, m = ngff.read_ome_zarr(path)
    said = " ".join(str(w.message) for w in caught)
    assert "'z' is -1" in said and "'y' is 0" in said
    assert m.z_spacing is None and m.pixel_size is None


def test_array_fingerprint_sees_a_changed_chunk_in_full_and_sampled_mode(tmp_path, monkeypatch):
    arr = ngff.create_output(tmp_path / "a.zarr", shape=(8, 8), dtype="uint8", chunks=(2, 2), axes="YX", labels=False)
    arr[:] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    first = ngff.array_fingerprint(tmp_path / "a.zarr" / "0")
    assert first["chunk_files"] == 16 and first["chunks_hashed"] == "all"
    assert ngff.array_fingerprint(tmp_path / "a.zarr" / "0") == first  # the same files, the same identity
    arr[7, 7] = 0
    assert ngff.array_fingerprint(tmp_path / "a.zarr" / "0")["chunks_sha256"] != first["chunks_sha256"]
    monkeypatch.setattr(ngff, "INPUT_HASH_BYTES", 0)
    monkeypatch.setattr(ngff, "SAMPLED_CHUNKS", 4)
    assert ngff.array_fingerprint(tmp_path / "a.zarr" / "0")["chunks_hashed"] == 4


def test_remove_output_takes_its_name_off_the_labels_list(tmp_path):
    img = tmp_path / "img.zarr"
    ngff.create_output(img, shape=(4, 4), dtype="uint8", chunks=(4, 4), axes="YX", labels=False)
    for name in ("a", "b"):
        ngff.create_output(img / "labels" / name, shape=(4, 4), dtype="uint8", chunks=(4, 4), axes="YX")
    ngff.remove_output(img / "labels" / "a")
    assert ngff.labels_of(img) == ["b"] and not (img / "labels" / "a").exists()


def test_a_damaged_chunk_is_a_value_error_naming_the_array(tmp_path):
    arr = ngff.create_output(tmp_path / "a.zarr", shape=(4, 4), dtype="uint8", chunks=(2, 2), axes="YX", labels=False)
    arr[:] = 1
    (tmp_path / "a.zarr" / "0" / "c" / "0" / "0").write_bytes(b"\x28\xb5\x2f\xfd broken")
    view, _ = ngff.read_ome_zarr(tmp_path / "a.zarr")
    with pytest.raises(ValueError, match=r"cannot read the zarr array .*a\.zarr/0 .*damaged"):
        view[:2, :2]
