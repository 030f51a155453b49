"""Elastic deformation and the other augmentations, on real ISBI/DSB crops and small synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.train.augment import (
    Deformed,
    coarse_displacements,
    dense_displacement,
    elastic_deform,
    elastic_deform_torch,
    intensity_jitter,
    random_flip_rot,
)


@pytest.fixture(scope="module")
def em(em_sample):
    """192 x 160 px of the bundled ISBI crop's first slice and its cells (membrane 1, cells 2..)."""
    img, _, inst = em_sample
    return img[0, :192, :160], inst[0, :192, :160].astype(np.uint16) + 1


@pytest.fixture(scope="module")
def nuclei(nuclei_sample):
    """One bundled DSB image (256 x 256, 16 nuclei) and its instance labels (0 background, 1..N)."""
    return nuclei_sample[0][1], nuclei_sample[1][1]


def test_same_seed_same_result_different_seed_different(em):
    img, lab = em
    a = elastic_deform(img, lab, rng=np.random.default_rng(7))
    b = elastic_deform(img, lab, rng=np.random.default_rng(7))
    c = elastic_deform(img, lab, rng=np.random.default_rng(8))
    assert isinstance(a, Deformed) and a.weights is None
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.displacement, b.displacement)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and a.labels.dtype == lab.dtype
    assert a.displacement.shape == (2, *img.shape) and a.displacement.dtype == np.float32


def test_labels_gain_no_values(em, nuclei):
    for img, lab in (em, nuclei):
        allowed = set(np.unique(lab))
        for seed in range(4):
            d = elastic_deform(img, lab, rng=np.random.default_rng(seed), sigma=15)
            assert set(np.unique(d.labels)) <= allowed
            # and it really moved things
            assert not np.array_equal(d.labels, lab)


def test_labels_and_image_move_together(nuclei):
    img, lab = nuclei
    d = elastic_deform(img.astype(np.float32), lab, rng=np.random.default_rng(3), order=1)
    # nuclei are bright: the deformed image is still bright where the deformed labels say nucleus
    fg, bg = d.image[d.labels > 0].mean(), d.image[d.labels == 0].mean()
    assert fg > bg + 0.5 * (img[lab > 0].mean() - img[lab == 0].mean())


def test_weights_linear_and_channels_first(em):
    img, lab = em
    w = np.random.default_rng(0).random(lab.shape).astype(np.float32) + 1
    multi = np.stack([img, 255 - img]).astype(np.float32)
    d = elastic_deform(multi, lab, w, rng=np.random.default_rng(1))
    assert d.image.shape == multi.shape
    # linear interpolation stays within the input range
    assert d.weights.min() >= w.min() - 1e-5 and d.weights.max() <= w.max() + 1e-5
    # both channels see the same field
    np.testing.assert_allclose(d.image[0] + d.image[1], 255, atol=1e-2)


def test_displacement_statistics_match_sigma():
    rng = np.random.default_rng(0)
    coarse = np.stack([coarse_displacements(rng, 3, 10.0) for _ in range(400)])
    assert coarse.shape == (400, 2, 3, 3)
    assert coarse.std() == pytest.approx(10.0, rel=0.05)
    assert abs(coarse.mean()) < 0.5
    assert coarse_displacements(rng, (4, 5), 2.0).shape == (2, 4, 5)


def test_dense_displacement_interpolates_grid_points():
    rng = np.random.default_rng(1)
    for grid, shape in ((3, (65, 129)), (5, (81, 41))):
        coarse = coarse_displacements(rng, grid, 10.0)
        dense = dense_displacement(coarse, shape)
        assert dense.shape == (2, *shape)
        ys = np.linspace(0, shape[0] - 1, grid).astype(int)
        xs = np.linspace(0, shape[1] - 1, grid).astype(int)
        np.testing.assert_allclose(dense[:, ys][:, :, xs], coarse, atol=1e-4)
        # smooth: neighbouring pixels move alike (control points 64 px apart here)
        if grid == 3:
            assert np.abs(np.diff(dense, axis=-1)).max() < 2.0
    # torch gives the same field
    t = dense_displacement(torch.from_numpy(coarse), (81, 41))
    np.testing.assert_allclose(t.numpy(), dense, atol=1e-4)


def test_identity_when_sigma_zero(em):
    img, lab = em
    w = np.ones(lab.shape, np.float32)
    d = elastic_deform(img, lab, w, rng=np.random.default_rng(0), sigma=0)
    np.testing.assert_array_equal(d.image, img)
    np.testing.assert_array_equal(d.labels, lab)
    np.testing.assert_array_equal(d.weights, w)
    assert not d.displacement.any()
    # a near-zero field resamples (round-off only)
    d = elastic_deform(img, lab, rng=None, displacement=np.full((2, *lab.shape), 1e-6, np.float32))
    np.testing.assert_allclose(d.image, img, atol=0.05)
    np.testing.assert_array_equal(d.labels, lab)


def test_order_and_bad_input(em):
    img, lab = em
    lin = elastic_deform(img, rng=np.random.default_rng(2), order=1).image
    assert lin.min() >= img.min() and lin.max() <= img.max()  # bilinear never overshoots
    with pytest.raises(ValueError, match="order must be"):
        elastic_deform(img, rng=np.random.default_rng(0), order=2)
    with pytest.raises(ValueError, match="grid must be"):
        elastic_deform(img, rng=np.random.default_rng(0), grid=1)
    with pytest.raises(ValueError, match="labels must be"):
        elastic_deform(img, lab[:10], rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="numpy Generator"):
        elastic_deform(img, rng=0)


def test_torch_batched(em):
    img, lab = em
    b = 3
    ti = torch.from_numpy(np.stack([img] * b)[:, None].astype(np.float32))
    tl = torch.from_numpy(np.stack([lab.astype(np.int64)] * b))
    tw = torch.rand(b, *lab.shape, generator=torch.Generator().manual_seed(0))
    g1 = torch.Generator().manual_seed(5)
    r = elastic_deform_torch(ti, tl, tw, generator=g1)
    assert r.image.shape == ti.shape and r.labels.shape == tl.shape and r.weights.shape == tw.shape
    assert r.labels.dtype == torch.int64 and r.displacement.shape == (b, 2, *lab.shape)
    assert set(torch.unique(r.labels).tolist()) <= set(np.unique(lab).tolist())
    # per-sample fields
    assert not torch.equal(r.displacement[0], r.displacement[1])
    # reproducible with the same generator seed
    r2 = elastic_deform_torch(ti, tl, tw, generator=torch.Generator().manual_seed(5))
    assert torch.equal(r.image, r2.image) and torch.equal(r.labels, r2.labels)
    # same distribution as the numpy version: the coarse vectors are N(0, sigma)
    big = elastic_deform_torch(None, tl[:1].expand(64, -1, -1), generator=g1, sigma=10.0).displacement
    corners = big[:, :, [0, -1]][:, :, :, [0, -1]]
    assert corners.std().item() == pytest.approx(10.0, rel=0.15)
    # and the same warp as the numpy path for the same field
    d = elastic_deform(img, lab, rng=None, displacement=r.displacement[0].numpy())
    np.testing.assert_allclose(d.image, r.image[0, 0].numpy(), atol=1e-3)
    np.testing.assert_array_equal(d.labels, r.labels[0].numpy())


def test_flip_rot_applied_identically():
    rng = np.random.default_rng(0)
    img = np.arange(2 * 6 * 6).reshape(2, 6, 6)
    lab = img[0] * 10
    seen = set()
    for _ in range(64):
        a, b, none = random_flip_rot(rng, img, lab, None)
        assert none is None and a.shape == img.shape
        np.testing.assert_array_equal(a[0] * 10, b)
        seen.add(a[0].tobytes())
    assert len(seen) == 8  # all symmetries of the square appear


def test_intensity_jitter_is_mild_and_seeded(nuclei):
    img = nuclei[0].astype(np.float32)
    a = intensity_jitter(img, np.random.default_rng(4))
    b = intensity_jitter(img, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == img.shape
    assert not np.array_equal(a, img)
    assert np.corrcoef(a.ravel(), img.ravel())[0, 1] > 0.95
    rng_range = img.max() - img.min()
    assert abs(a.mean() - img.mean()) < 0.3 * rng_range


def test_huge_label_values_take_the_gather_path():
    rng = np.random.default_rng(0)
    lab = (rng.integers(0, 4, (64, 64)).astype(np.int64) * (2**40 + 1)).repeat(2, 0)[:64]
    img = rng.random((64, 64)).astype(np.float32)
    d = elastic_deform(img, lab, rng=np.random.default_rng(1), sigma=8)
    assert set(np.unique(d.labels)) <= set(np.unique(lab))
    assert not np.array_equal(d.labels, lab)
    # both paths agree where values are small
    small = (lab // (2**40 + 1)).astype(np.int64)
    e = elastic_deform(img, small, rng=None, displacement=d.displacement)
    np.testing.assert_array_equal(e.labels * (2**40 + 1), d.labels)
