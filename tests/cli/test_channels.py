"""Multichannel images end to end: the channel axis comes from the file (or --channel-axis), models take
their input channels from the data, and a grey model on a multichannel image says what to do."""

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_unet.cli import main
from napari_unet.core.data.files import read_image
from napari_unet.core.data.planes import declared_channel_axis
from napari_unet.core.models.load import load_model


@pytest.fixture
def nuclei(nuclei_sample):
    """Two DSB nuclei crops (the bundled sample) and their labels; a second channel made from the first
    (blurred, inverted)."""
    images, labels = nuclei_sample
    grey = images[:2, :96, :112]
    other = (255 - ndimage.gaussian_filter(grey.astype(np.float32), (0, 3, 3))).astype(np.uint8)
    lab = labels[:2, :96, :112].astype(np.uint16)
    return grey, np.stack([grey, other], axis=1), lab  # (Z, Y, X), (Z, C, Y, X), (Z, Y, X)


def write_files(tmp_path, grey, zcyx):
    """The same pixels as the layouts microscopes and tools write."""
    files = {}
    files["imagej"] = tmp_path / "hyper.tif"  # ImageJ hyperstack ZCYX
    tifffile.imwrite(files["imagej"], zcyx, imagej=True, metadata={"axes": "ZCYX"})
    files["ome"] = tmp_path / "two.ome.tif"  # OME-TIFF CYX (one slice)
    tifffile.imwrite(files["ome"], zcyx[0], metadata={"axes": "CYX"})
    rgb = np.stack([grey[0], zcyx[0, 1], grey[0]], axis=-1).astype(np.uint16) * 200
    files["rgb16"] = tmp_path / "rgb16.tif"  # uint16 RGB (YXS)
    tifffile.imwrite(files["rgb16"], rgb, photometric="rgb")
    files["planar"] = tmp_path / "planar.tif"  # planar RGB (SYX)
    tifffile.imwrite(files["planar"], np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    return files


def test_files_declare_their_channel_axis(tmp_path, nuclei):
    grey, zcyx, _ = nuclei
    files = write_files(tmp_path, grey, zcyx)
    expect = {"imagej": (1, 2), "ome": (0, 2), "rgb16": (2, 3), "planar": (0, 3)}
    for key, (axis, n) in expect.items():
        arr, meta = read_image(files[key])
        assert declared_channel_axis(arr.shape, meta.axes) == axis, (key, meta.axes)
        assert arr.shape[axis] == n
    arr, meta = read_image(tmp_path / "hyper.tif")
    assert declared_channel_axis((2, 96, 112), "ZYX") is None and declared_channel_axis(arr.shape, "ZYX") is None


def test_grey_model_on_channels_says_what_to_do_and_channel_k_predicts(tmp_path, nuclei, capsys):
    grey, zcyx, _ = nuclei
    files = write_files(tmp_path, grey, zcyx)
    out = tmp_path / "out.tif"
    for key in files:  # each is refused, not read as a stack of slices (128 slices of 128 x 3 for RGB)
        assert main(["predict", str(files[key]), "-o", str(out), "--model", "nuclei", "-q"]) == 2
        err = capsys.readouterr().err
        assert "the model expects 1 input channel(s), the image has" in err and "--channel K" in err, err
        assert not out.exists()
    # --channel 0 of the hyperstack == the grey stack itself
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    assert main(["predict", str(files["imagej"]), "-o", str(out), "--model", "nuclei", "--channel", "0", "-q"]) == 0
    grey_out = tmp_path / "grey-out.tif"
    assert main(["predict", str(tmp_path / "grey.tif"), "-o", str(grey_out), "--model", "nuclei", "-q"]) == 0
    assert np.array_equal(tifffile.imread(out), tifffile.imread(grey_out))
    # --channel-axis none: the file's channels are read as slices, as asked
    assert (
        main(["predict", str(files["ome"]), "-o", str(out), "--model", "nuclei", "--channel-axis", "none", "-q"]) == 0
    )
    assert tifffile.imread(out).shape == (2, 96, 112)
    # a channel that does not exist, and --channel on a grey file
    assert main(["predict", str(files["ome"]), "-o", str(out), "--model", "nuclei", "--channel", "5", "-q"]) == 2
    assert "channel 5 does not exist; the image has 2 channels" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "grey.tif"), "-o", str(out), "--model", "nuclei", "--channel", "1"]) == 2
    assert "declares no channel axis" in capsys.readouterr().err


def test_train_takes_its_input_channels_from_the_data(tmp_path, nuclei, capsys):
    grey, zcyx, lab = nuclei
    files = write_files(tmp_path, grey, zcyx)
    lp = tmp_path / "labels.tif"
    tifffile.imwrite(lp, lab)
    model = tmp_path / "two.safetensors"
    argv = ["train", "--images", str(files["imagej"]), "--labels", str(lp), "--mode", "instance"]
    argv += ["--labels-format", "instances", "--steps", "2", "--depth", "2", "--channels", "4", "--tile-in", "92"]
    assert main([*argv, "--slices", "0", "-o", str(model), "-q"]) == 0, capsys.readouterr().err
    m = load_model(model)
    assert m.config.in_channels == 2
    out = tmp_path / "out.tif"
    assert main(["predict", str(files["imagej"]), "-o", str(out), "--model", str(model), "-q"]) == 0
    assert tifffile.imread(out).shape == (2, 96, 112)
    rep = tmp_path / "r.json"
    ev = ["evaluate", "--model", str(model), "--images", str(files["imagej"]), "--labels", str(lp), "--json", str(rep)]
    assert main([*ev, "-q"]) == 0
    # the two-channel model on a grey image, and a grey labels file that does not fit
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    assert main(["predict", str(tmp_path / "grey.tif"), "-o", str(out), "--model", str(model), "-q"]) == 2
    assert "expects 2 input channel(s), the image has no channel axis" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "small.tif", lab[:, :50])
    bad = ["train", "--images", str(files["imagej"]), "--labels", str(tmp_path / "small.tif"), "-o", str(model)]
    assert main(bad) == 2
    assert "labels have shape (2, 50, 112) but the image has shape (2, 96, 112)" in capsys.readouterr().err


def test_api_refuses_channels_last_as_a_stack(nuclei):
    from napari_unet.core.predict.tiles import predict

    grey, zcyx, _ = nuclei
    model = load_model("nuclei")
    yxc = np.moveaxis(zcyx[0], 0, -1).astype(np.float32)
    with pytest.raises(ValueError, match="2 channels last"):
        predict(model, yxc)
    assert np.array_equal(predict(model, yxc[..., 0]), predict(model, grey[0]))


def test_slices_of_a_channels_first_stack_are_cut_on_its_z_axis():
    """An OME-Zarr keeps its channels first (C, Z, Y, X): --slices and the slice count use Z, not C."""
    from napari_unet.cli import _n_slices, _select

    stack = np.arange(2 * 5 * 4 * 3).reshape(2, 5, 4, 3)
    assert _n_slices(stack, 0) == 5 and _n_slices(stack, -1) == 2 and _n_slices(stack[0], None) == 5
    np.testing.assert_array_equal(_select(stack, [1, 3], 0), stack[:, [1, 3]])
    np.testing.assert_array_equal(_select(stack, [1], -1), stack[[1]])
