"""Uncertainty ('where to paint next'): high where the model is unsure, ranked regions skip painted ones."""

import numpy as np
import pytest
import torch

from napari_unet.core.models.load import load_model
from napari_unet.core.predict.guidance import rank_regions
from napari_unet.core.predict.tiles import entropy, predict


def test_entropy_bounds():
    assert entropy(np.array([[1.0], [0.0]]))[0] == pytest.approx(0, abs=1e-5)
    assert entropy(np.array([[0.5], [0.5]]))[0] == pytest.approx(1.0)
    assert entropy(np.full((3, 2, 2), 1 / 3)).max() == pytest.approx(1.0)


def test_uncertainty_is_high_where_the_model_is_wrong(isbi):
    """em-membrane on held-out ISBI slices: its uncertain pixels hold far more of its mistakes."""
    torch.set_num_threads(1)
    img, lab, _ = isbi
    model = load_model("em-membrane")
    image, truth = img[28, :256, :256], lab[28, :256, :256]
    unc = predict(model, image, output="uncertainty")
    assert unc.shape == image.shape and unc.dtype == np.float32 and 0 <= unc.min() and unc.max() <= 1
    wrong = predict(model, image) != (truth > 0)  # class 0 = membrane, truth 0 = membrane
    top = unc >= np.quantile(unc, 0.9)
    # the most uncertain 10 % of the pixels hold several times their share of the mistakes
    assert wrong[top].mean() > 3 * wrong.mean()
    probs = predict(model, image, output="probabilities")
    np.testing.assert_allclose(unc, entropy(probs), atol=1e-5)
    # TTA: the 8 views' mean, and the same map at another zoom comes back on the image's grid
    assert predict(model, image, output="uncertainty", tta=True).shape == image.shape
    assert predict(model, image, output="uncertainty", zoom=0.71).shape == image.shape


def test_rank_regions_most_uncertain_first_and_skips_painted():
    unc = np.zeros((2, 64, 64), np.float32)
    unc[1, 32:, :32] = 0.9
    unc[0, :32, 32:] = 0.5
    regions = rank_regions(unc, size=32, k=3)
    assert [(r.z, r.y, r.x) for r in regions[:2]] == [(1, 32, 0), (0, 0, 32)]
    assert regions[0].center == (1.0, 48.0, 16.0) and "slice 1" in regions[0].describe()
    painted = np.zeros(unc.shape, np.uint16)
    painted[1, 32:, :32] = 1  # already painted: nothing to learn there
    assert (rank_regions(unc, painted=painted, size=32, k=1)[0].z, rank_regions(unc, size=32, k=1)[0].z) == (0, 1)
    assert rank_regions(unc[0], size=32, k=1)[0].z is None
    with pytest.raises(ValueError, match="uncertainty map"):
        rank_regions(np.zeros(5))


def test_cli_uncertainty(tmp_path, em_sample, capsys):
    import tifffile

    from napari_unet.cli import main

    img, _, _ = em_sample
    tifffile.imwrite(tmp_path / "em.tif", img[:2, :128, :128])
    out = tmp_path / "unc.tif"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "em.tif"),
                "-o",
                str(out),
                "--model",
                "em-membrane",
                "--kind",
                "uncertainty",
                "-q",
            ]
        )
        == 0
    )
    unc = tifffile.imread(out)
    assert unc.shape == (2, 128, 128) and unc.dtype == np.float32
    assert "paint next (most uncertain first): slice" in capsys.readouterr().out


def test_every_third_region_is_the_one_farthest_from_the_strokes():
    """A model can be sure and wrong: one region in three goes where nobody painted, whatever its entropy."""
    unc = np.zeros((1, 128, 128), np.float32)
    unc[0, :32, :64] = 0.8  # the model's doubts sit next to the strokes
    painted = np.zeros(unc.shape, np.uint16)
    painted[0, 40:44, 0:20] = 1
    regions = rank_regions(unc, painted=painted, size=32, k=3)
    assert [r.far for r in regions] == [False, False, True]
    assert [(r.y, r.x) for r in regions[:2]] == [(0, 0), (0, 32)]
    assert (regions[2].y, regions[2].x) == (96, 96)  # the corner farthest from the strokes and the two above
    assert "far from your strokes" in regions[2].describe()
    assert not any(r.far for r in rank_regions(unc, painted=painted, size=32, k=3, explore=0))
    assert len(rank_regions(unc, size=32, k=16)) == 16  # every square once
    assert len({(r.y, r.x) for r in rank_regions(unc, size=32, k=16)}) == 16
