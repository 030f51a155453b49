"""core.metrics against scikit-image, brute-force references and hand-made cases, on real data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.evaluate import metrics as M


@pytest.fixture(scope="module")
def isbi3(em_sample):
    """First 3 slices of the bundled ISBI crop: (cells bool, derived instances 0 = membrane / 1..N)."""
    _, labels, inst = em_sample
    return labels[:3] == 255, inst[:3].astype(np.int64)


@pytest.fixture(scope="module")
def dsb6(nuclei_sample):
    """The 6 bundled DSB 2018 instance label images (0 = background, 1..N nuclei; 318 nuclei)."""
    return nuclei_sample[1].astype(np.int64)


def _blocks():
    """Four 10x10 cells separated by a 2 px membrane (0)."""
    t = np.zeros((22, 22), np.int64)
    t[0:10, 0:10], t[0:10, 12:22], t[12:22, 0:10], t[12:22, 12:22] = 1, 2, 3, 4
    return t


# --------------------------------------------------------------------------- pixel error, IoU


def test_pixel_error():
    truth = np.array([[0, 255], [255, 255]], np.uint8)
    assert M.pixel_error(truth, truth) == 0.0
    assert M.pixel_error(np.array([[1, 1], [1, 0]]), truth) == 0.5
    probs = np.array([[0.2, 0.9], [0.7, 0.4]])
    assert M.pixel_error(probs, truth) == 0.25
    assert M.pixel_error(probs, truth, threshold=0.1) == 0.25
    with pytest.raises(ValueError, match="same shape"):
        M.pixel_error(truth, truth[:1])


def test_iou_per_class():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])
    res = M.iou(pred, truth)
    np.testing.assert_allclose(res, [3 / 4, 4 / 5])
    res3 = M.iou(pred, truth, n_classes=3)
    assert np.isnan(res3[2])
    assert M.mean_iou(pred, truth, n_classes=3) == pytest.approx((3 / 4 + 4 / 5) / 2)
    with pytest.raises(ValueError, match="n_classes=2"):
        M.iou(pred + 1, truth, n_classes=2)


# --------------------------------------------------------------------------- V_rand: hand-made


def test_vrand_perfect_and_relabelled():
    t = _blocks()
    assert M.vrand(t, t) == 1.0 and M.rand_error(t, t) == 0.0
    perm = np.array([0, 7, 3, 9, 5])[t]  # other ids, same partition
    assert M.vrand(perm, t) == pytest.approx(1.0)
    # Whatever the prediction does on truth membranes (0) does not count.
    noisy = perm.copy()
    noisy[t == 0] = 11
    assert M.vrand(noisy, t) == pytest.approx(1.0)


def test_vrand_split_and_merge():
    t = _blocks()
    split = t.copy()
    split[0:10, 5:10] = 5  # cell 1 cut in two
    s = M.rand_scores(split, t)
    assert s.split < 1.0 and s.merge == pytest.approx(1.0)
    merged = np.where(t == 2, 1, t)  # cells 1 and 2 fused
    s = M.rand_scores(merged, t)
    assert s.merge < 1.0 and s.split == pytest.approx(1.0)
    # Hand computation: 4 cells of 100 px; merge -> sum p^2 = 4 * 100^2, sum b^2 = 200^2 + 2 * 100^2.
    assert s.merge == pytest.approx(4e4 / 6e4)
    assert s.v_rand == pytest.approx(2 * 4e4 / (4e4 + 6e4))
    assert s.rand_error == pytest.approx(1 - s.v_rand)


def test_vrand_pred_zero_singletons_vs_segment():
    t = _blocks()
    thick = t.copy()
    thick[:, 9] = 0  # predicted membrane eats into cells 1 and 3
    singles = M.rand_scores(thick, t)
    seg = M.rand_scores(thick, t, pred_zero="segment")
    assert singles.merge == pytest.approx(1.0) and singles.split < 1.0
    assert seg.merge < 1.0  # as one segment, the 0 pixels of two cells merge them
    with pytest.raises(ValueError, match="pred_zero"):
        M.vrand(thick, t, pred_zero="ignore")


def test_vrand_stack_modes():
    t = np.stack([_blocks(), _blocks()])
    p = t.copy()
    p[1] = np.where(t[1] == 2, 1, t[1])
    one = M.vrand(p[1], t[1])
    assert M.vrand(p, t, stack="mean") == pytest.approx((1 + one) / 2)
    pooled = M.vrand(p, t)
    assert one < pooled < 1  # pair counts summed over slices, pairs never cross slices
    # As one volume, equal ids in both slices are the same object.
    assert M.vrand(t, t, stack="3d") == 1.0
    with pytest.raises(ValueError, match="stack must be"):
        M.vrand(p, t, stack="volume")


def test_vrand_empty_truth_and_bad_input():
    z = np.zeros((4, 4), np.int64)
    assert M.vrand(np.ones((4, 4), np.int64), z) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        M.vrand(-np.ones((4, 4), np.int64), np.ones((4, 4), np.int64))
    with pytest.raises(ValueError, match="whole-number"):
        M.vrand(np.full((4, 4), 0.5), np.ones((4, 4)))


# --------------------------------------------------------------------------- V_rand: real data vs scikit-image


def _unique_zeros(seg):
    """Give every 0 pixel its own id: 'singletons' expressed for a library that has no such option."""
    out = seg.astype(np.int64).copy()
    z = out == 0
    out[z] = out.max() + 1 + np.arange(z.sum())
    return out


def test_vrand_matches_skimage_on_isbi(isbi3):
    from skimage.metrics import adapted_rand_error

    cells, inst = isbi3
    truth = inst[0]
    # A realistic imperfect prediction: thicker membranes (split-prone) and a slightly shifted copy.
    eroded = M.segmentation_from_membranes(ndi.binary_erosion(cells[0], iterations=2))
    shifted = M.segmentation_from_membranes(np.roll(cells[0], 4, axis=1))
    for pred in (eroded, shifted):
        are, prec, rec = adapted_rand_error(truth, pred)
        s = M.rand_scores(pred, truth, pred_zero="segment")
        # scikit-image counts pairs of distinct pixels (n(n-1)), the Fiji script n^2: < 1e-3 apart here.
        assert s.v_rand == pytest.approx(1 - are, abs=1e-3)
        # scikit-image's "precision" divides by the truth marginals: our split score; "recall" = merge.
        assert s.split == pytest.approx(prec, abs=1e-3) and s.merge == pytest.approx(rec, abs=1e-3)
        are_single, _, _ = adapted_rand_error(truth, _unique_zeros(pred))
        assert M.vrand(pred, truth) == pytest.approx(1 - are_single, abs=1e-3)
        assert 0 < M.vrand(pred, truth) < 1


def test_segmentation_from_membranes_reproduces_instances(isbi3):
    cells, inst = isbi3
    seg = M.segmentation_from_membranes(cells)
    assert seg.dtype == np.int32 and seg.shape == cells.shape
    assert ((seg > 0) == (inst > 0)).all()
    assert M.vrand(seg, inst) == 1.0 and M.vrand(seg, inst, stack="mean") == 1.0
    # ids are unique across the stack
    assert len(np.unique(seg[0])[1:]) + len(np.unique(seg[1])[1:]) == len(np.unique(seg[:2])[1:])
    probs = cells.astype(np.float32) * 0.8 + 0.1
    np.testing.assert_array_equal(M.segmentation_from_membranes(probs), seg)
    assert M.pixel_error(seg > 0, cells) == 0.0


# --------------------------------------------------------------------------- instance F1


def _brute_force_f1(pred, truth, thr=0.5):
    """Dense IoU matrix with explicit loops: slow but obviously right (for IoU > 0.5)."""
    tp = n_p = n_t = 0
    ious = []
    for p, t in zip(pred, truth):
        pid, tid = np.unique(p)[1:], np.unique(t)[1:] if t.any() else np.array([])
        n_p, n_t = n_p + len(pid), n_t + len(tid)
        for i in tid:
            ti = t == i
            for j in np.unique(p[ti]):
                if j == 0:
                    continue
                pj = p == j
                v = np.logical_and(ti, pj).sum() / np.logical_or(ti, pj).sum()
                if v > thr:
                    tp += 1
                    ious.append(v)
    return tp, n_p - tp, n_t - tp, np.mean(ious)


def test_instance_f1_identical(dsb6):
    r = M.instance_f1(dsb6, dsb6)
    n = sum(len(np.unique(x)) - 1 for x in dsb6)
    assert r == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "tp": n, "fp": 0, "fn": 0, "mean_matched_iou": 1.0}


def test_instance_f1_eroded_and_shifted_vs_brute_force(dsb6):
    sub = dsb6[:4]
    eroded = np.stack([np.where(ndi.binary_erosion(x > 0, iterations=2), x, 0) for x in sub])
    shifted = np.roll(sub, 3, axis=-1)
    for pred in (eroded, shifted):
        r = M.instance_f1(pred, sub)
        tp, fp, fn, miou = _brute_force_f1(pred, sub)
        assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn)
        assert r["mean_matched_iou"] == pytest.approx(miou)
        assert r["precision"] == pytest.approx(tp / (tp + fp))
        assert r["recall"] == pytest.approx(tp / (tp + fn))
        assert r["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert 0 < r["f1"] < 1


def test_instance_f1_many_objects_and_low_threshold(dsb6):
    # 6 images, 318 nuclei: the sparse overlap table handles them at once.
    eroded = np.stack([np.where(ndi.binary_erosion(x > 0, iterations=2), x, 0) for x in dsb6])
    strict, loose = M.instance_f1(eroded, dsb6), M.instance_f1(eroded, dsb6, iou_threshold=0.1)
    assert loose["tp"] >= strict["tp"]
    assert loose["tp"] + loose["fn"] == strict["tp"] + strict["fn"]
    mean = M.instance_f1(eroded, dsb6, stack="mean")
    assert mean["tp"] == strict["tp"] and 0 < mean["f1"] <= 1


def test_instance_f1_hand_cases():
    t = np.zeros((20, 20), np.int64)
    t[2:8, 2:8], t[10:18, 10:18] = 5, 9  # non-consecutive ids
    p = np.zeros_like(t)
    p[2:8, 2:8] = 1  # exact
    p[10:18, 10:13] = 2  # too small: IoU 3/8
    p[0:2, 15:20] = 3  # spurious
    r = M.instance_f1(p, t)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["mean_matched_iou"] == 1.0
    # Below 0.5 one true object could overlap two predictions: the assignment keeps it one-to-one.
    p2 = np.zeros_like(t)
    p2[10:18, 10:14], p2[10:18, 14:18] = 1, 2
    r2 = M.instance_f1(p2, t, iou_threshold=0.3)
    assert (r2["tp"], r2["fp"], r2["fn"]) == (1, 1, 1)
    empty = np.zeros((5, 5), np.int64)
    assert M.instance_f1(empty, empty)["f1"] == 1.0
    assert M.instance_f1(empty, t[:5, :5])["recall"] == 0.0
    none = M.instance_f1(p, np.zeros_like(t))
    assert none["precision"] == 0.0 and none["fp"] == 3 and np.isnan(none["mean_matched_iou"])
    with pytest.raises(ValueError, match="iou_threshold"):
        M.instance_f1(p, t, iou_threshold=1.0)
