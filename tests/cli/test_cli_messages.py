"""Messages that name what the user gave: an out-of-memory hint says which tile size to lower, and below what."""

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main


@pytest.mark.parametrize(
    ("extra", "expect"), [([], "give a smaller --tile-out"), (["--tile-out", "512"], "below the 512 used")]
)
def test_out_of_memory_hint_names_the_tile_size(tmp_path, monkeypatch, capsys, extra, expect):
    import napari_unet.core.predict.tiles as tiles

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # a generator, as iter_predict

    monkeypatch.setattr(tiles, "iter_predict", oom)
    tifffile.imwrite(tmp_path / "im.tif", np.zeros((64, 64), np.uint8))
    rc = main(["predict", str(tmp_path / "im.tif"), "-o", str(tmp_path / "o.tif"), "--model", "nuclei", "-q", *extra])
    err = capsys.readouterr().err
    assert rc == 1 and expect in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "o.tif").exists()


def test_memory_hint_names_tiles_only_when_the_network_ran_out(tmp_path, monkeypatch, capsys):
    """An array numpy cannot allocate (the image, its result) is not the tile's doing: no --tile-out hint;
    on the CPU, no '--device cpu' either."""
    import argparse

    from napari_unet.cli._errors import _memory_hint

    args = argparse.Namespace(command="predict", tile_out=100000, device="cpu")
    numpy = MemoryError("Unable to allocate 37.3 GiB for an array with shape (100000, 100000, 4)")
    assert _memory_hint(args, numpy) == ""
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 93 GB")
    assert _memory_hint(args, cpu) == " (give a --tile-out below the 100000 used)"
    assert _memory_hint(args, RuntimeError("mat1 and mat2 shapes cannot be multiplied")) == ""


def test_slices_naming_no_slice_say_what_a_valid_one_looks_like():
    from napari_unet.cli._slices import _parse_slices

    for text in (",", " , ", ",,"):
        with pytest.raises(ValueError, match=r"names no slice; use e\.g\. 3, 0-24 or 0,2,5-7"):
            _parse_slices(text, 5)
    assert _parse_slices("1,", 5) == [1]
