"""Weight map (paper eq. 2): equal to the slow reference on real labels, and its properties."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.core.train.weights import (
    border_weight,
    border_weight_reference,
    cutoff_distance,
    weight_map,
    weight_map_reference,
)


@pytest.fixture(scope="module")
def isbi_crop(em_sample):
    """160 x 192 px of one slice of the bundled ISBI crop, 18 cells: membrane -> 1 (background), cells -> 2.."""
    return em_sample[2][3, 40:200, 32:224].astype(np.int32) + 1


@pytest.fixture(scope="module")
def dsb_touching(nuclei_sample):
    # the first bundled DSB images whose nuclei touch (two different ids 4-adjacent)
    picked = []
    for lab in nuclei_sample[1]:
        touch = ((lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)).any()
        if touch:
            picked.append(lab.astype(np.int32) + 1)
        if len(picked) == 2:
            break
    return np.stack(picked)


def test_equals_reference_on_isbi(isbi_crop):
    fast = weight_map(isbi_crop)
    ref = weight_map_reference(isbi_crop)
    assert fast.dtype == np.float32 and fast.shape == isbi_crop.shape
    np.testing.assert_array_equal(fast, ref)
    assert fast[isbi_crop == 1].max() > 5  # membranes between cells are up-weighted


def test_equals_reference_on_touching_nuclei(dsb_touching):
    for lab in dsb_touching:
        for kw in ({}, {"w0": 5.0, "sigma": 3.0}, {"class_balance": False}):
            np.testing.assert_array_equal(weight_map(lab, **kw), weight_map_reference(lab, **kw))


def test_border_weight_equals_reference_without_mask(isbi_crop):
    inst = isbi_crop - 1
    np.testing.assert_array_equal(border_weight(inst, 10, 5), border_weight_reference(inst, 10, 5))


def test_random_blobs_equal_reference():
    rng = np.random.default_rng(0)
    for _ in range(3):
        inst = rng.integers(0, 6, (40, 50))
        inst[rng.random(inst.shape) < 0.8] = 0  # sparse, scattered objects: many ties and far pairs
        np.testing.assert_array_equal(border_weight(inst, 10, 4), border_weight_reference(inst, 10, 4))


def test_unannotated_is_zero_and_sparse_painting(isbi_crop):
    lab = isbi_crop.copy()
    lab[:, : lab.shape[1] // 2] = 0  # left half not painted
    w = weight_map(lab)
    assert np.all(w[lab == 0] == 0)
    assert np.all(w[lab > 0] > 0)
    np.testing.assert_array_equal(w, weight_map_reference(lab))


def test_class_balance_means(isbi_crop):
    w = weight_map(isbi_crop, border=False)
    bg, fg = isbi_crop == 1, isbi_crop >= 2
    np.testing.assert_allclose(w[isbi_crop > 0].mean(), 1.0, rtol=1e-6)
    # inverse frequency: each class carries half the total weight
    np.testing.assert_allclose(w[bg].sum(), w[fg].sum(), rtol=1e-5)
    assert w[bg][0] > w[fg][0]  # membrane is the rarer class in ISBI
    flat = weight_map(isbi_crop, border=False, class_balance=False)
    assert np.all(flat[isbi_crop > 0] == 1)


def test_border_term_high_in_gaps_between_touching_cells():
    lab = np.ones((40, 60), dtype=np.int32)
    lab[10:30, 5:28] = 2
    lab[10:30, 30:55] = 3  # a 2-pixel gap at x = 28, 29
    w = weight_map(lab, class_balance=False)
    gap = w[10:30, 28:30]
    assert gap.min() > 1 + 10 * np.exp(-9 / 50) - 1e-5  # d1 + d2 <= 3 there
    assert w[2, 5] < 1.01  # far from the gap: only w_c
    assert np.all(w[lab >= 2] == 1)  # never inside cells
    assert w[20, 29] == pytest.approx(w[20, 28])  # symmetric gap


def test_single_object_no_border_term():
    lab = np.ones((30, 30), dtype=np.int32)
    lab[5:15, 5:15] = 2
    w = weight_map(lab, class_balance=False)
    assert np.all(w[lab > 0] == 1)


def test_nd_is_per_slice(dsb_touching):
    w = weight_map(dsb_touching)
    for i, lab in enumerate(dsb_touching):
        np.testing.assert_array_equal(w[i], weight_map(lab))
    assert weight_map(dsb_touching[:, None]).shape == (len(dsb_touching), 1, 256, 256)


def test_zero_is_background_and_semantic_mode():
    lab = np.zeros((30, 40), dtype=np.uint16)
    lab[5:25, 3:18] = 2
    lab[5:25, 20:37] = 3
    w = weight_map(lab, zero_is_background=True)
    assert np.all(w > 0)
    assert w[15, 18] > 5  # the gap
    sem = np.where(lab >= 2, 2, 1)  # semantic: one foreground class; two blobs = two components
    ws = weight_map(sem, mode="semantic")
    np.testing.assert_array_equal(ws, w)


def test_cutoff_truncation_documented():
    # the term vanishes exactly where d1 + d2 passes the documented cutoff distance
    r = cutoff_distance(5.0)
    assert r == pytest.approx(5 * np.sqrt(2 * np.log(1e6)))
    lab = np.ones((5, 80), dtype=np.int32)
    lab[:, :2] = 2
    lab[:, 78:] = 3  # gap of 76 px: d1 + d2 = 77 > r everywhere
    assert np.all(weight_map(lab, class_balance=False) == 1)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([[1.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.array([[1.0, 1.5], [1.0, 2.0]]), "whole numbers"),
        (np.arange(10), r"2D image \(Y, X\)"),
        (np.array([[1, -1], [1, 2]]), ">= 0"),
        (np.array([["a", "b"], ["c", "d"]]), "integer array"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        weight_map(labels)


def test_bad_parameters():
    lab = np.ones((8, 8), dtype=np.int32)
    with pytest.raises(ValueError, match="sigma must be"):
        weight_map(lab, sigma=0)
    with pytest.raises(ValueError, match="w0 must be"):
        weight_map(lab, w0=-1)
    with pytest.raises(ValueError, match="label mode"):
        weight_map(lab, mode="panoptic")


def test_strokes_in_objects_do_not_assert_interior_over_border():
    """A partly painted object (a stroke) is 'object: interior or border'; a fully painted one keeps its
    interior and border; the loss of an ANY_OBJECT pixel is -log(p_interior + p_border)."""
    import torch

    from napari_unet.core.data.labels import ANY_OBJECT, targets_from_labels
    from napari_unet.core.train.losses import weighted_loss

    lab = np.zeros((12, 20), np.int32)
    lab[1:11, 1:9] = 1
    lab[3:8, 3:7] = 2  # a whole object, surrounded by painted background
    lab[4:6, 12:18] = 3  # a stroke: unpainted pixels around it
    t = targets_from_labels(lab, mode="instance", border_class=True, partial_objects=True)
    assert t[5, 4] == 1 and t[3, 4] == 2  # the whole object: interior and border as painted
    assert (t[4:6, 12:18] == ANY_OBJECT).all()  # the stroke: object, border unknown
    plain = targets_from_labels(lab, mode="instance", border_class=True)
    assert (plain[4:6, 12:18] == 1).all()  # without the option: as before
    logits = torch.tensor([[0.0, 2.0, 2.0]]).reshape(1, 3, 1, 1)
    any_loss = weighted_loss(logits, torch.tensor([[[ANY_OBJECT]]]), torch.ones(1, 1, 1))
    p = torch.softmax(logits[0, :, 0, 0], 0)
    assert torch.isclose(any_loss, -torch.log(p[1] + p[2]))
    assert torch.isclose(weighted_loss(logits, torch.tensor([[[1]]]), torch.ones(1, 1, 1)), -torch.log(p[1]))


def test_training_config_chooses_how_partly_painted_objects_teach():
    """TrainConfig.partial_objects reaches the targets training samples (the benchmark's 'autowhole' arm)."""
    from napari_unet.core.data.labels import ANY_OBJECT
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.sampling import prepare_slices

    image = np.random.default_rng(0).random((12, 20)).astype(np.float32)
    lab = np.zeros((12, 20), np.int32)
    lab[1:11, 1:9] = 1
    lab[4:6, 12:18] = 3  # a stroke in an object
    cfg = TrainConfig(border_class=True)
    (new,) = prepare_slices([(image, lab)], cfg, 3, 1, None, weights=False)
    (old,) = prepare_slices(
        [(image, lab)], TrainConfig(border_class=True, partial_objects=False), 3, 1, None, weights=False
    )
    assert (new.target[4:6, 12:18] == ANY_OBJECT).all() and (old.target[4:6, 12:18] == 1).all()


def test_slice_weights_is_what_training_weighs_sparse_and_dense_slices_with():
    """The Weight map preview's function: class balance on densely painted slices only, as weigh() does."""
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.sampling import DENSE, prepare_slices, slice_weights

    sparse = np.zeros((64, 64), np.int32)
    sparse[10:13, 5:60], sparse[30:33, 5:60] = 1, 2
    dense = np.ones((64, 64), np.int32)
    dense[20:40, 20:40] = 2
    cfg = TrainConfig(label_mode="instance")
    image = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    slices = prepare_slices([(image, np.stack([sparse, dense]))], cfg, 2, 1, None)
    assert slices[0].n_annotated < DENSE * sparse.size <= slices[1].n_annotated
    for s, lab in zip(slices, (sparse, dense)):
        np.testing.assert_array_equal(slice_weights(lab, cfg), s.weights)
    np.testing.assert_array_equal(slice_weights(sparse, cfg), weight_map(sparse, class_balance=False))
    np.testing.assert_array_equal(slice_weights(dense, cfg), weight_map(dense, class_balance=True).astype(np.float32))
