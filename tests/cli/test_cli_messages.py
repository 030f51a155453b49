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
