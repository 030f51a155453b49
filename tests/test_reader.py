"""npe2 reader / writer / sample data functions, without a GUI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_unet import _reader, _sample_data, _sample_layers, _writer
from napari_unet.core.data import files
from napari_unet.core.data.labels import instances_from_labels, targets_from_labels


@pytest.fixture
def ij_stack(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (4, 24, 32), dtype=np.uint8)
    path = tmp_path / "cells.tif"
    md = {"axes": "ZYX", "unit": "um", "spacing": 1.0}
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata=md)
    return path, data


# --------------------------------------------------------------------------- reader


def test_reader_declines_what_it_cannot_read(tmp_path, ij_stack):
    path, _ = ij_stack
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "fake.tif").write_text("not a tiff")
    (tmp_path / "no_tiffs").mkdir()
    (tmp_path / "no_tiffs" / "x.txt").write_text("x")
    assert _reader.napari_get_reader(str(tmp_path / "a.png")) is None
    assert _reader.napari_get_reader(str(tmp_path / "fake.tif")) is None
    assert _reader.napari_get_reader(str(tmp_path / "no_tiffs")) is None
    assert _reader.napari_get_reader(str(tmp_path / "missing.tif")) is None
    assert _reader.napari_get_reader([str(path), str(tmp_path / "a.png")]) is None
    assert _reader.napari_get_reader([str(path), str(tmp_path / "no_tiffs")]) is None
    assert _reader.napari_get_reader([]) is None
    assert _reader.napari_get_reader(42) is None


def test_reader_reads_tiff_with_scale(ij_stack):
    path, data = ij_stack
    reader = _reader.napari_get_reader(str(path))
    assert callable(reader)
    [(arr, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["name"] == "cells"
    np.testing.assert_array_equal(np.asarray(arr), data)
    assert kwargs["scale"] == pytest.approx((1.0, 0.2, 0.2))
    assert kwargs["metadata"]["unit"] == "µm" and kwargs["metadata"]["lazy"] is False


def test_reader_folder_and_list(tmp_path, ij_stack):
    path, data = ij_stack
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(data):
        tifffile.imwrite(folder / f"s{i}.tif", plane)
    [(arr, kwargs, _)] = _reader.napari_get_reader(str(folder))(str(folder))
    np.testing.assert_array_equal(np.asarray(arr), data)
    assert kwargs["name"] == "slices"
    paths = [str(folder / "s3.tif"), str(folder / "s1.tif")]  # napari's "open as stack"
    [(arr, kwargs, _)] = _reader.napari_get_reader(paths)(paths)
    np.testing.assert_array_equal(np.asarray(arr), data[[3, 1]])
    assert kwargs["name"] == "s3"
    mixed = [str(path), str(folder / "s0.tif")]  # (4, 24, 32) and (24, 32)
    with pytest.raises(ValueError, match="same shape and dtype"):
        _reader.napari_get_reader(mixed)(mixed)


def test_reader_large_file_is_lazy(tmp_path, monkeypatch):
    dask_array = pytest.importorskip("dask.array")
    pytest.importorskip("zarr")
    data = np.arange(6 * 40 * 50, dtype=np.uint16).reshape(6, 40, 50)
    tifffile.imwrite(tmp_path / "c.tif", data, compression="zlib", photometric="minisblack")
    tifffile.imwrite(tmp_path / "u.tif", data, photometric="minisblack")
    monkeypatch.setattr(files, "default_lazy_threshold", lambda: 1024)  # "bigger than RAM"
    [(arr, kwargs, _)] = _reader.reader_function(str(tmp_path / "c.tif"))
    assert isinstance(arr, dask_array.Array) and kwargs["metadata"]["lazy"]
    np.testing.assert_array_equal(arr[3].compute(), data[3])
    [(arr, kwargs, _)] = _reader.reader_function(str(tmp_path / "u.tif"))
    assert isinstance(arr, np.memmap) and kwargs["metadata"]["lazy"]
    np.testing.assert_array_equal(arr[5], data[5])


def test_reader_channels_become_channel_axis(tmp_path):
    data = np.zeros((3, 2, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    [(_, kwargs, _)] = _reader.reader_function(str(tmp_path / "h.tif"))
    assert kwargs["channel_axis"] == 1 and len(kwargs["scale"]) == 3
    # planar RGB (SYX) is split like channels, never read as 3 slices; interleaved RGB (YXS) stays colour
    rgb = np.zeros((16, 16, 3), np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    [(_, kwargs, _)] = _reader.reader_function(str(tmp_path / "planar.tif"))
    assert kwargs["channel_axis"] == 0 and len(kwargs["scale"]) == 2
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    [(_, kwargs, _)] = _reader.reader_function(str(tmp_path / "rgb.tif"))
    assert "channel_axis" not in kwargs and len(kwargs["scale"]) == 2


def test_reader_damaged_file_raises_clear_error(tmp_path, ij_stack):
    path, _ = ij_stack
    raw = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    reader = _reader.napari_get_reader(str(tmp_path / "cut.tif"))  # the signature is fine ...
    with pytest.raises(ValueError, match="damaged or truncated"):  # ... the content is not
        reader(str(tmp_path / "cut.tif"))


# --------------------------------------------------------------------------- writer


def test_writer_round_trip_with_scale(tmp_path):
    labels = np.zeros((2, 10, 12), np.int32)
    labels[:, 2:5, 3:7] = 3
    out = _writer.write_labels(str(tmp_path / "pred.tif"), labels, {"scale": (2.0, 0.5, 0.5), "name": "x"})
    assert out == [str(tmp_path / "pred.tif")]
    data, meta = files.read_image(out[0])
    np.testing.assert_array_equal(data, labels)
    assert meta.pixel_size == pytest.approx((0.5, 0.5)) and meta.z_spacing == pytest.approx(2.0)
    with tifffile.TiffFile(out[0]) as tif:
        assert tif.is_imagej


def test_writer_adds_suffix_and_skips_default_scale(tmp_path):
    out = _writer.write_labels(str(tmp_path / "pred"), np.ones((4, 4), np.uint8), {"scale": (1.0, 1.0)})
    assert out == [str(tmp_path / "pred.tif")]
    assert files.read_image(out[0])[1].pixel_size is None


# --------------------------------------------------------------------------- sample data


def test_em_sample_follows_the_label_convention():
    image, labels = _sample_data.load_em_sample()
    assert image.shape == labels.shape == (8, 256, 256)
    assert image.dtype == np.uint8 and labels.dtype == np.uint16
    assert labels.min() == 1  # fully annotated: 1 = membrane (background), no 0
    for z in range(len(labels)):
        ids = np.unique(labels[z])
        assert ids[0] == 1 and len(ids) > 20 and (ids[1:] >= 2).all()
        assert instances_from_labels(labels[z]).max() == len(ids) - 1
    # Membrane is darker than the cell interior, and is roughly a fifth of the pixels.
    assert image[labels == 1].mean() < image[labels >= 2].mean()
    assert 0.1 < (labels == 1).mean() < 0.4
    target = targets_from_labels(labels, mode="instance")
    assert set(np.unique(target)) == {0, 1}


def test_nuclei_sample_follows_the_label_convention():
    image, labels = _sample_data.load_nuclei_sample()
    assert image.shape == labels.shape == (6, 256, 256)
    assert image.dtype == np.uint8 and labels.dtype == np.uint16
    assert labels.min() == 1
    for z in range(len(labels)):
        assert len(np.unique(labels[z])) > 10
    assert image[labels >= 2].mean() > image[labels == 1].mean()  # bright nuclei on dark ground


def test_sample_layer_tuples():
    for make, names in [
        (_sample_layers.make_em_sample, ("EM (ISBI 2012)", "EM ground truth (do not paint)")),
        (_sample_layers.make_nuclei_sample, ("Nuclei (DSB 2018)", "Nuclei ground truth (do not paint)")),
    ]:
        (img, img_kw, img_kind), (lab, lab_kw, lab_kind) = make()
        assert (img_kind, lab_kind) == ("image", "labels")
        assert (img_kw["name"], lab_kw["name"]) == names
        assert img.shape == lab.shape


def test_sample_files_are_small_and_compressed():
    total = 0
    for f in (*_sample_data.EM_FILES, *_sample_data.NUCLEI_FILES):
        path = _sample_data.SAMPLE_DIR / f
        total += path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert total < 2.5e6
    assert (_sample_data.SAMPLE_DIR / "README.md").is_file()


def test_reader_writer_sample_import_without_qt():
    code = (
        "import sys, napari_unet._reader, napari_unet._writer, napari_unet._sample_data;"
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'napari', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
