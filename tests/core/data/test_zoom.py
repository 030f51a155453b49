"""Scale: images at another magnification are resampled to the model's object size and back."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.core.data.zoom import check_zoom, model_zoom, resize, zoom_labels, zoom_plane
from napari_unet.core.models.checkpoint import CheckpointError, save_model
from napari_unet.core.models.load import load_model
from napari_unet.core.predict.tiles import predict
from napari_unet.core.train.start import pick_zoom


def test_resampling_keeps_grids_and_labels():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, (37, 53)).astype(np.uint16)
    for s in (0.5, 0.71, 1.41, 2.0, 3.0):
        z = zoom_labels(lab, s)
        assert z.shape == (round(37 * s), round(53 * s)) and set(np.unique(z)) <= set(np.unique(lab))
        assert resize(z, lab.shape, order=0).shape == lab.shape
    plane = rng.random((2, 40, 30)).astype(np.float32)
    assert zoom_plane(plane, 0.5).shape == (2, 20, 15)
    # up and down again: a smooth image comes back close (linear resampling, pixel areas aligned)
    smooth = np.fromfunction(lambda c, y, x: np.sin(y / 6) + np.cos(x / 7), (1, 40, 30)).astype(np.float32)
    back = resize(zoom_plane(smooth, 2.0), (40, 30), order=1)
    assert np.abs(back - smooth)[:, 2:-2, 2:-2].max() < 0.02


def test_scale_bounds_and_choice():
    for bad in (0, -1, 0.01, 100, float("nan")):
        with pytest.raises(ValueError, match="scale must be between"):
            check_zoom(bad)
    assert pick_zoom({1.0: 0.80, 0.5: 0.82}) == 1.0  # within MIN_GAIN: the image as it is
    assert pick_zoom({1.0: 0.70, 0.5: 0.90, 2.0: 0.5}) == 0.5
    assert pick_zoom({1.0: 0.92, 0.5: 0.97}) == 0.5  # another magnification: most disagreement gone
    assert pick_zoom({1.0: 0.69, 2.0: 0.73}) == 1.0  # correction strokes: disagreement at every zoom
    assert pick_zoom({1.0: float("nan"), 0.71: 0.6}) == 0.71
    assert pick_zoom({}) == 1.0


def _zoomed_3x(images, labels):
    im = np.stack([zoom_plane(i[None].astype(np.float32), 3.0)[0] for i in images])
    return im, np.stack([zoom_labels(x, 3.0) for x in labels])


@pytest.fixture(scope="module")
def big_nuclei(dsb):
    """DSB test images 85-87 (held out from the nuclei model) at 3x the magnification it was trained at."""
    images, labels = dsb
    return _zoomed_3x(images[85:88], labels[85:88])


@pytest.fixture(scope="module")
def big_sample_nuclei(nuclei_sample):
    """Two bundled DSB images (DSB 13 and 34: nuclei in the top-left corners the tests crop, and images
    the auto start finds like the nuclei model's) at 3x the magnification that model was trained at."""
    images, labels = nuclei_sample
    return _zoomed_3x(images[[2, 4]], labels[[2, 4]])


def _iou(pred, truth):
    return np.logical_and(pred > 0, truth > 0).sum() / np.logical_or(pred > 0, truth > 0).sum()


def test_predicting_at_the_models_scale_segments_larger_nuclei(big_nuclei, tmp_path):
    torch.set_num_threads(1)
    im, lab = big_nuclei
    model = load_model("nuclei")
    assert model_zoom(model) == 1.0
    as_is = predict(model, im, output="labels")
    rescaled = predict(model, im, output="labels", zoom=1 / 3)
    assert rescaled.shape == as_is.shape == lab.shape
    # measured on these three images: IoU 0.76 as is, 0.79 at the model's scale (10 images: 0.75, 0.81)
    assert _iou(rescaled, lab) > _iou(as_is, lab) + 0.02
    # a model that records its scale uses it by default; an explicit scale still wins
    info = replace(model.info, zoom={"input_zoom": 1 / 3})
    path = save_model(tmp_path / "big.safetensors", model, info=info)
    scaled_model = load_model(path)
    assert model_zoom(scaled_model) == pytest.approx(1 / 3)
    np.testing.assert_array_equal(predict(scaled_model, im[:1], output="labels"), rescaled[:1])
    np.testing.assert_array_equal(predict(scaled_model, im[:1], output="labels", zoom=1.0), as_is[:1])
    inst = predict(scaled_model, im[:1], output="instances")
    assert inst.shape == im[:1].shape and inst.max() > 3
    probs = predict(scaled_model, im[:1], output="probabilities")
    assert probs.shape == (model.n_classes, *im[:1].shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)


def test_damaged_scale_in_a_header_is_refused(tmp_path):
    model = load_model("nuclei")
    for bad in ({"input_zoom": "big"}, {"input_zoom": 1e9}, ["not", "a", "dict"]):
        path = save_model(tmp_path / "bad.safetensors", model, info=replace(model.info, zoom=bad))
        with pytest.raises(CheckpointError, match="scale"):
            load_model(path)


def test_cli_scale_option(big_sample_nuclei, tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main

    im, lab = big_sample_nuclei
    tifffile.imwrite(tmp_path / "big.tif", im[:1].astype(np.uint8))
    out = tmp_path / "out.tif"
    assert (
        main(["predict", str(tmp_path / "big.tif"), "-o", str(out), "--model", "nuclei", "--scale", "0.33", "-q"]) == 0
    )
    model = load_model("nuclei")
    expect = predict(model, im[:1].astype(np.uint8), zoom=0.33)
    np.testing.assert_array_equal(tifffile.imread(out), expect[0])
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "big.tif"), "-o", str(out), "--model", "nuclei", "--scale", "0"])
    assert "scale must be between" in capsys.readouterr().err


def test_auto_start_trains_at_the_scale_the_start_model_agrees_best(big_sample_nuclei, monkeypatch):
    """The auto start scores the strokes at each zoom and trains at the best one; the saved model
    predicts at that zoom by default. (On the benchmark's strokes over 3x nuclei the nuclei model agrees
    0.92 as is and 0.97 at x0.5: docs/accuracy.md; here the agreement is rigged to favour x0.5, so
    the test is about what follows from the choice.)"""
    from napari_unet.core.train import start
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.loop import train

    torch.set_num_threads(1)
    im, lab = big_sample_nuclei
    im, lab = im[:2, :384, :384], lab[:2, :384, :384]
    strokes = np.where(lab > 0, lab.astype(np.int32) + 1, 1)
    strokes[:, ::2] = 0  # every other row painted: strokes, not masks
    real = start.agreement

    def rigged(model, slices, label_mode, *, zoom=1.0, **kw):
        agree, per = real(model, slices, label_mode, zoom=zoom, **kw)
        bonus = 0.1 if zoom == 0.5 and model.info.name == "nuclei" else 0.0
        return agree + bonus, {k: min(1.0, v + bonus) for k, v in per.items()}

    monkeypatch.setattr(start, "agreement", rigged)
    cfg = TrainConfig(init="auto", keep_prior=None, label_mode="instance", steps=2, tile_in=188, device="cpu")
    result = train(cfg, im, strokes, preview=(0, 0))
    assert result.info.zoom == {"input_zoom": 0.5}
    assert "zoomed x0.50" in result.info.training["start"]
    assert model_zoom(result.model) == 0.5
    assert predict(result.model, im[:1], output="labels").shape == im[:1].shape
    # a fixed scale is kept as given; from scratch the images stay as they are
    cfg = TrainConfig(init=None, depth=2, base_channels=4, tile_in=92, steps=1, device="cpu")
    assert train(cfg, im, strokes).info.zoom == {}
    assert train(replace(cfg, zoom=0.71), im, strokes).info.zoom == {"input_zoom": 0.71}


def test_a_given_scale_is_kept_by_the_auto_start(big_sample_nuclei, monkeypatch):
    """--init auto --scale 1: the start is scored (and trained) at the zoom given, not at the best one."""
    from napari_unet.core.train import start
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.loop import train

    torch.set_num_threads(1)
    im, lab = big_sample_nuclei
    im, lab = im[:1, :256, :256], lab[:1, :256, :256]
    strokes = np.where(lab > 0, 2, 1).astype(np.int32)
    strokes[:, ::2] = 0
    tried = []
    real = start.agreement

    def spy(model, slices, label_mode, *, zoom=1.0, **kw):
        tried.append(zoom)
        return real(model, slices, label_mode, zoom=zoom, **kw)

    monkeypatch.setattr(start, "agreement", spy)
    cfg = TrainConfig(init="auto", zoom=1.0, steps=1, tile_in=188, device="cpu")
    result = train(cfg, im, strokes)
    assert set(tried) == {1.0}
    assert model_zoom(result.model) == 1.0


def test_block_wise_prediction_runs_a_zoomed_model_at_scale_1_only_when_asked(tmp_path):
    pytest.importorskip("distributed")
    from napari_unet.core.drain import drain
    from napari_unet.core.predict.blocks import create_prediction, iter_predict_blocks
    from napari_unet.core.predict.config import PredictConfig

    model = load_model("nuclei")
    zoomed = load_model(
        save_model(tmp_path / "z.safetensors", model, info=replace(model.info, zoom={"input_zoom": 0.5}))
    )
    image = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    with pytest.raises(ValueError, match="zooms images x0.50"):
        drain(iter_predict_blocks(zoomed, image, np.zeros((96, 96), np.uint8)))
    out = drain(iter_predict_blocks(zoomed, image, np.zeros((96, 96), np.uint8), PredictConfig(zoom=1.0)))
    np.testing.assert_array_equal(out, predict(model, image, output="labels"))
    # the same on a cluster of its own (the widget's 'workers'): the scale reaches the inner call
    with pytest.raises(ValueError, match="zooms images x0.50"):  # refused before any cluster starts
        drain(iter_predict_blocks(zoomed, image, str(tmp_path / "none.zarr"), workers=1, processes=False))
    target = tmp_path / "pred.zarr"
    create_prediction(target, zoomed, (96, 96), chunks=(48, 48))
    at_1 = PredictConfig(zoom=1.0)
    on_cluster = drain(iter_predict_blocks(zoomed, image, str(target), at_1, workers=1, processes=False))
    np.testing.assert_array_equal(np.asarray(on_cluster[...]), out)


def test_an_explicit_min_size_is_in_the_images_pixels(big_sample_nuclei):
    """The model's own size filter is in its pixels (divided by zoom^2); a size the user gives is not."""
    im, _ = big_sample_nuclei
    model = load_model("nuclei")
    plane = im[0, :256, :256]
    small = predict(model, plane, output="instances", zoom=0.5, min_size=1)
    sizes = np.bincount(small.ravel())[1:]
    cut = int(np.median(sizes[sizes > 0])) + 1  # about half the objects are smaller
    big = predict(model, plane, output="instances", zoom=0.5, min_size=cut)
    kept = np.bincount(big.ravel())[1:]
    assert kept[kept > 0].min() >= cut  # at zoom 0.5 the model's own rule would have kept 1/4 of cut
    assert 0 < len(np.unique(big)) < len(np.unique(small))


def test_the_package_of_a_zoomed_model_says_so():
    from napari_unet.core.export.bioimageio import _zoom_note

    model = load_model("nuclei")
    assert _zoom_note(model) == ""
    model.info = replace(model.info, zoom={"input_zoom": 0.5})
    assert "zoomed x0.5" in _zoom_note(model) and "resample" in _zoom_note(model)


def test_a_saved_runs_zoom_is_read_under_either_name():
    """TrainConfig.zoom is stored in the model file's config; files that named it 'scale' read the same."""
    from napari_unet.core.train.config import TrainConfig

    assert TrainConfig.saved_settings({"scale": 0.5, "tile_size": 188}) == {"zoom": 0.5, "tile_in": 188}
    assert TrainConfig.saved_settings(TrainConfig(zoom=0.71).to_dict())["zoom"] == 0.71
