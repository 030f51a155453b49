"""core.data.files: reading TIFF stacks (eager and lazy), atomic label writing, normalisation, grey checks."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile

from napari_unet.core.data import files, intensity, planes


@pytest.fixture
def stack():
    return np.random.default_rng(0).integers(0, 60000, (5, 32, 48), dtype=np.uint16)


# --------------------------------------------------------------------------- reading


def test_multipage_round_trip(tmp_path, stack):
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    data, meta = files.read_image(tmp_path / "s.tif")
    assert isinstance(data, np.ndarray) and not isinstance(data, np.memmap)
    np.testing.assert_array_equal(data, stack)
    assert meta.shape == stack.shape and meta.dtype == "uint16" and len(meta.axes) == 3
    assert meta.pixel_size is None and meta.lazy is False
    assert meta.layer_scale() == (1.0, 1.0, 1.0)


def test_bigtiff_compressed(tmp_path, stack):
    tifffile.imwrite(tmp_path / "b.tif", stack, bigtiff=True, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.is_bigtiff
    data, _ = files.read_image(tmp_path / "b.tif")
    np.testing.assert_array_equal(data, stack)


def test_imagej_pixel_size_and_spacing(tmp_path, stack):
    tifffile.imwrite(
        tmp_path / "ij.tif",
        stack,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),  # (x, y) pixels per unit
        metadata={"axes": "ZYX", "unit": "um", "spacing": 2.0},
    )
    _, meta = files.read_image(tmp_path / "ij.tif")
    assert meta.axes == "ZYX"
    assert meta.pixel_size == pytest.approx((0.5, 0.25))
    assert meta.z_spacing == pytest.approx(2.0)
    assert meta.unit == "µm"
    assert meta.layer_scale() == pytest.approx((2.0, 0.5, 0.25))


def test_imagej_hyperstack_channels(tmp_path):
    data = np.zeros((3, 2, 16, 16), np.uint8)  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    arr, meta = files.read_image(tmp_path / "h.tif")
    assert arr.shape == (3, 2, 16, 16) and meta.axes == "ZCYX"
    assert meta.layer_scale(drop="C") == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="pick one channel"):
        planes.as_grey(arr, axes=meta.axes)
    assert planes.as_grey(arr, axes=meta.axes, channel=1).shape == (3, 16, 16)


def test_ome_pixel_size(tmp_path, stack):
    tifffile.imwrite(
        tmp_path / "o.ome.tif",
        stack,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.5},
    )
    _, meta = files.read_image(tmp_path / "o.ome.tif")
    assert meta.pixel_size == pytest.approx((0.4, 0.3))
    assert meta.z_spacing == pytest.approx(1.5)
    assert meta.unit == "µm"


def test_folder_of_slices_natural_order(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in (1, 2, 10, 3):
        tifffile.imwrite(folder / f"z{i}.tif", np.full((8, 9), i, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.tif").write_bytes(b"junk")
    data, meta = files.read_image(folder)
    assert data.shape == (4, 8, 9)
    assert data[:, 0, 0].tolist() == [1, 2, 3, 10]
    assert meta.axes == "ZYX" and meta.shape == (4, 8, 9)
    listed, meta = files.read_image([folder / "z10.tif", folder / "z1.tif"])
    assert listed[:, 0, 0].tolist() == [10, 1] and meta.path.endswith("z10.tif")
    with pytest.raises(ValueError, match="empty list"):
        files.read_image([])


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no TIFF files"):
        files.read_image(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(mixed / "b.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match="same shape and dtype"):
        files.read_image(mixed)
    dtypes = tmp_path / "dtypes"
    dtypes.mkdir()
    tifffile.imwrite(dtypes / "a.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(dtypes / "b.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="'b.tif'"):
        files.read_image(dtypes)


def test_lazy_memmap_for_large_uncompressed(tmp_path, stack):
    tifffile.imwrite(tmp_path / "u.tif", stack, photometric="minisblack")
    data, meta = files.read_image(tmp_path / "u.tif", lazy_threshold=1024)
    assert meta.lazy and isinstance(data, np.memmap)
    np.testing.assert_array_equal(data[2], stack[2])
    data, meta = files.read_image(tmp_path / "u.tif", lazy_threshold=10 * stack.nbytes)
    assert not meta.lazy and not isinstance(data, np.memmap)


def test_lazy_zarr_for_large_compressed(tmp_path, stack):
    pytest.importorskip("zarr")
    tifffile.imwrite(tmp_path / "c.tif", stack, compression="zlib", photometric="minisblack")
    data, meta = files.read_image(tmp_path / "c.tif", lazy_threshold=1024)
    assert meta.lazy and not isinstance(data, np.ndarray)
    assert data.shape == stack.shape
    np.testing.assert_array_equal(np.asarray(data[1:3]), stack[1:3])
    eager, meta = files.read_image(tmp_path / "c.tif", lazy=False, lazy_threshold=1024)
    assert isinstance(eager, np.ndarray) and not meta.lazy


def test_lazy_folder(tmp_path, stack):
    pytest.importorskip("zarr")
    for i, plane in enumerate(stack):
        tifffile.imwrite(tmp_path / f"p{i}.tif", plane)
    data, meta = files.read_image(tmp_path, lazy=True)
    assert meta.lazy and data.shape == stack.shape
    np.testing.assert_array_equal(np.asarray(data[4]), stack[4])


@pytest.mark.parametrize("kind", ["plain", "zlib", "imagej"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_tiff_is_a_clear_error(tmp_path, stack, kind, keep):
    kwargs = {"plain": {}, "zlib": {"compression": "zlib"}, "imagej": {"imagej": True}}[kind]
    tifffile.imwrite(tmp_path / "good.tif", stack, photometric="minisblack", **kwargs)
    raw = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "bad.tif").write_bytes(raw[: int(len(raw) * keep)])
    for lazy in (False, True):
        with pytest.raises(ValueError, match="damaged or truncated"):
            files.read_image(tmp_path / "bad.tif", lazy=lazy)


def test_corrupt_header_and_non_tiff(tmp_path):
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(ValueError, match="damaged or truncated"):
        files.read_image(tmp_path / "corrupt.tif")
    (tmp_path / "photo.tif").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ValueError, match="not a TIFF file"):
        files.read_image(tmp_path / "photo.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="not a TIFF file"):
        files.read_image(tmp_path / "empty.tif")
    with pytest.raises(FileNotFoundError):
        files.read_image(tmp_path / "missing.tif")


# --------------------------------------------------------------------------- writing


def test_write_labels_round_trip(tmp_path):
    labels = np.zeros((3, 20, 30), np.int64)
    labels[:, 5:10, 5:10] = 300
    path = files.write_labels(tmp_path / "l.tif", labels, pixel_size=(0.5, 0.25), z_spacing=2.0)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.series[0].dtype == np.uint16  # smallest dtype that holds 300
    data, meta = files.read_image(path)
    np.testing.assert_array_equal(data, labels)
    assert meta.pixel_size == pytest.approx((0.5, 0.25)) and meta.z_spacing == pytest.approx(2.0)
    assert meta.unit == "µm"
    assert sorted(os.listdir(tmp_path)) == ["l.tif"]


def test_write_labels_dtypes(tmp_path):
    files.write_labels(tmp_path / "b.tif", np.eye(4, dtype=bool))
    assert tifffile.imread(tmp_path / "b.tif").dtype == np.uint8
    big = np.full((4, 4), 70000, np.int64)
    files.write_labels(tmp_path / "big.tif", big, pixel_size=0.5)
    data, meta = files.read_image(tmp_path / "big.tif")
    assert data.dtype == np.uint32 and (data == 70000).all()
    assert meta.pixel_size == pytest.approx((0.5, 0.5))
    files.write_labels(tmp_path / "f.tif", np.array([[0.0, 2.0], [3.0, 1.0]]))
    assert tifffile.imread(tmp_path / "f.tif").tolist() == [[0, 2], [3, 1]]
    # A (Z, Y, 3) stack must stay a stack, never become RGB.
    files.write_labels(tmp_path / "narrow.tif", np.ones((2, 5, 3), np.uint8))
    assert files.read_image(tmp_path / "narrow.tif")[1].axes == "ZYX"


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([[-1, 2]]), ">= 0"),
        (np.array([[0.5, 2.0]]), "whole numbers"),
        (np.zeros((2, 2, 2, 2), np.uint8), "2D"),
        (np.array([["a"]]), "integer"),
    ],
)
def test_write_labels_rejects_bad_input(tmp_path, labels, match):
    with pytest.raises(ValueError, match=match):
        files.write_labels(tmp_path / "x.tif", labels)
    assert os.listdir(tmp_path) == []


def _crash(*args, **kwargs):
    raise RuntimeError("simulated crash")


def test_atomic_write_crash_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "labels.tif"
    old = np.arange(12, dtype=np.uint8).reshape(3, 4)
    files.write_labels(path, old)
    before = path.read_bytes()

    def half_write(fh, data, **kwargs):
        fh.write(b"II*\x00" + b"\x00" * 100)  # a broken beginning, then the process "dies"
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tifffile, "imwrite", half_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        files.write_labels(path, np.ones((3, 4), np.uint8))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["labels.tif"]  # no temporary file left behind


@pytest.mark.parametrize("target", ["fsync", "replace"])
def test_atomic_write_crash_before_rename(tmp_path, monkeypatch, target):
    path = tmp_path / "labels.tif"
    files.write_labels(path, np.full((3, 4), 7, np.uint8))
    monkeypatch.setattr(files.os, target, _crash)
    with pytest.raises(RuntimeError):
        files.write_labels(path, np.ones((3, 4), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(tifffile.imread(path), 7)
    assert os.listdir(tmp_path) == ["labels.tif"]


def test_atomic_write_into_new_file_leaves_nothing_on_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "replace", _crash)
    with pytest.raises(RuntimeError):
        files.write_labels(tmp_path / "new.tif", np.ones((3, 4), np.uint8))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_gives_normal_permissions(tmp_path):
    # mkstemp creates 0600 files; a saved label file must be readable like any other file the user
    # writes (umask), and overwriting keeps the permissions the user gave the file.
    umask = os.umask(0o022)
    try:
        new = files.write_labels(tmp_path / "new.tif", np.ones((3, 4), np.uint8))
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o644
        os.chmod(new, 0o664)
        files.write_labels(new, np.full((3, 4), 2, np.uint8))
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o664
    finally:
        os.umask(umask)


# --------------------------------------------------------------------------- normalisation


def test_normalize_uint8_and_uint16():
    ramp8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = intensity.normalize(ramp8, low=0, high=100)
    assert out.dtype == np.float32
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    ramp16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    np.testing.assert_allclose(intensity.normalize(ramp16, low=0, high=100), out, atol=1e-6)
    default = intensity.normalize(ramp16)  # 1 / 99.8 percentiles: slightly beyond [0, 1] at the extremes
    assert default.min() < 0 < 1 < default.max()
    assert intensity.normalize(ramp16, clip=True).max() == 1.0


def test_normalize_float_and_precomputed_percentiles():
    rng = np.random.default_rng(1)
    train = rng.normal(100, 10, (64, 64)).astype(np.float32)
    test = rng.normal(120, 10, (64, 64))
    lo, hi = intensity.percentiles(train, 1, 99)
    out = intensity.normalize(test, lo_hi=(lo, hi))
    np.testing.assert_allclose(out, (test - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    # The brighter test image keeps its offset (same mapping as training), unlike its own percentiles.
    assert out.mean() > 0.8 > 0.6 > intensity.normalize(test).mean()


def test_normalize_constant_image_has_no_nan():
    for dtype in (np.uint8, np.uint16, np.float32):
        out = intensity.normalize(np.full((8, 8), 42, dtype))
        assert np.isfinite(out).all() and (out == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_normalize_rejects_nan_and_inf(bad):
    img = np.ones((8, 8), np.float32)
    img[3, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        intensity.normalize(img)
    with pytest.raises(ValueError, match="NaN or inf"):
        intensity.percentiles(img)


def test_percentiles_subsample_lazy_stack(tmp_path):
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 4000, (20, 64, 64), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    lazy, _ = files.read_image(tmp_path / "s.tif", lazy=True)
    full = intensity.percentiles(stack, 1, 99.8)
    sub = intensity.percentiles(lazy, 1, 99.8, max_samples=5000)
    assert sub == pytest.approx(full, abs=0.02 * 4000)
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        intensity.percentiles(stack, 50, 10)


# --------------------------------------------------------------------------- grey


def test_as_grey_refuses_rgb_with_advice():
    rgb = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"this looks like an RGB image \(shape \(32, 32, 3\)\); U-Net Segment"):
        planes.as_grey(rgb)
    rgba = np.zeros((2, 32, 32, 4), np.uint8)
    with pytest.raises(ValueError, match="convert to greyscale or pick one channel"):
        planes.as_grey(rgba)


def test_as_grey_converts_or_picks_when_asked():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    grey = planes.as_grey(rgb, convert_rgb=True)
    assert grey.shape == (4, 5) and grey.dtype == np.float32
    assert grey[0, 0] == pytest.approx(0.299 * 100 + 0.587 * 200 + 0.114 * 50)
    assert (planes.as_grey(rgb, channel=1) == 200).all()
    chan_first = np.stack([np.full((6, 7), v, np.uint16) for v in (1, 2)])
    assert (planes.as_grey(chan_first, channel_axis=0, channel=-1) == 2).all()
    with pytest.raises(ValueError, match="channel 5 does not exist"):
        planes.as_grey(rgb, channel=5)


def test_as_grey_passes_grey_and_checks_dimensions():
    grey = np.zeros((3, 16, 16), np.uint16)
    assert planes.as_grey(grey) is grey
    assert planes.as_grey(np.zeros((16, 16, 3), np.uint16)).shape == (16, 16, 3)  # uint16 stack of 16 slices
    for shape in [(10,), (2, 2, 2, 4, 4)]:
        with pytest.raises(ValueError, match="2 to 4 dimensions"):
            planes.as_grey(np.zeros(shape, np.float32))


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    """kill -9 mid-save leaves a hidden temp file beside the output; the next write to it removes it."""
    import subprocess
    import sys

    from napari_unet.core.data.files import atomic_write

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    out = tmp_path / "model.safetensors"
    stale = tmp_path / f".model.safetensors.{dead_pid}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".model.safetensors.{os.getpid()}.zzz.tmp"  # this process: never touched
    live.write_bytes(b"y")
    with atomic_write(out) as fh:
        fh.write(b"new")
    assert out.read_bytes() == b"new"
    assert not stale.exists() and live.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p != live]
