"""Property tests of the elastic deformation: labels never gain values, shapes and dtypes are kept,
and an image moves exactly as its labels do (up to the image's interpolation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.core.train.augment import elastic_deform, elastic_deform_torch

DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def label_images(draw, dtypes=DTYPES):
    """Blocky label images of any integer dtype, with values anywhere in its range (large ones
    included: above 2**24 they no longer survive float32, which takes another code path)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    info = np.iinfo(dtype)
    hi = min(int(info.max), 2**62)
    h, w = draw(st.integers(2, 48)), draw(st.integers(2, 48))
    values = draw(
        st.lists(st.integers(max(int(info.min), -(2**62)), hi), min_size=1, max_size=6, unique=True)
        | st.lists(st.integers(0, 7), min_size=1, max_size=6, unique=True)
    )
    block = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    idx = rng.integers(0, len(values), (-(-h // block), -(-w // block))).repeat(block, 0).repeat(block, 1)[:h, :w]
    return np.asarray(values, dtype=dtype)[idx]


deform_args = st.fixed_dictionaries(
    {"seed": st.integers(0, 2**32 - 1), "sigma": st.sampled_from([10.0, 3.0, 25.0, 0.5]), "grid": st.integers(2, 5)}
)


@settings(max_examples=200)
@given(lab=label_images(), args=deform_args, order=st.sampled_from([3, 1, 0]))
def test_labels_gain_no_values_and_shapes_are_kept(lab, args, order):
    h, w = lab.shape
    image = np.random.default_rng(0).random((2, h, w), dtype=np.float32)
    weights = np.ones((h, w), np.float32)
    rng = np.random.default_rng(args["seed"])
    d = elastic_deform(image, lab, weights, rng=rng, sigma=args["sigma"], grid=args["grid"], order=order)
    assert d.labels.shape == lab.shape and d.labels.dtype == lab.dtype
    assert np.isin(d.labels, lab).all()
    assert d.image.shape == image.shape and d.image.dtype == np.float32
    assert d.weights.shape == (h, w) and d.displacement.shape == (2, h, w)
    np.testing.assert_allclose(d.weights, 1.0, atol=1e-5)  # bilinear of a constant is that constant


@settings(max_examples=100)
@given(lab=label_images(), args=deform_args)
def test_image_moves_as_its_labels(lab, args):
    """The same field moves the image and the labels: a label image deformed as an image
    (nearest neighbour) equals the deformed labels; bilinear, each object's mask keeps >= 1/4
    of its weight wherever the deformed labels say that object (the nearest of the 4 pixels
    mixed has weight >= 1/4), and < 3/4 elsewhere."""
    values, ids = np.unique(lab, return_inverse=True)
    ids = ids.reshape(lab.shape).astype(np.float32)  # small ids: exact in float32, unlike huge values
    rng = np.random.default_rng(args["seed"])
    d = elastic_deform(ids, lab, rng=rng, sigma=args["sigma"], grid=args["grid"], order=0)
    np.testing.assert_array_equal(values[d.image.astype(np.int64)], d.labels)
    masks = np.stack([ids == i for i in range(len(values))]).astype(np.float32)
    e = elastic_deform(masks, lab, masks[0], rng=None, displacement=d.displacement, order=1)
    np.testing.assert_array_equal(e.labels, d.labels)
    np.testing.assert_array_equal(e.weights, e.image[0])  # weights: the image's bilinear, same grid
    mine = e.labels[None] == values[:, None, None]  # (object, H, W): where the labels say that object
    assert np.all(e.image[mine] >= 0.25 - 1e-5)
    assert np.all(e.image[~mine] <= 0.75 + 1e-5)


@settings(max_examples=80)
@given(
    labs=st.lists(label_images(dtypes=[np.uint8, np.int16, np.int32, np.int64]), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_batched_torch_labels_gain_no_values(labs, seed):
    h, w = labs[0].shape
    lab = np.stack([np.resize(a, (h, w)) for a in labs])  # one shape for the batch, each sample its values
    g = torch.Generator().manual_seed(seed)
    d = elastic_deform_torch(None, torch.from_numpy(lab), generator=g, sigma=10.0)
    out = d.labels.numpy()
    assert out.shape == lab.shape and out.dtype == lab.dtype
    for a, b in zip(lab, out):
        assert np.isin(b, a).all()


@st.composite
def near_ties(draw):
    """A (2, H, W) displacement of half-integers nudged by a few float32 ulps: the sample points
    where nearest-neighbour rounding is decided by the last bit of the coordinate."""
    h, w = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    disp = (rng.integers(-3 * max(h, w), 3 * max(h, w), (2, h, w)) + 0.5).astype(np.float32)
    for _ in range(draw(st.integers(0, 3))):
        disp = np.nextafter(disp, np.where(rng.random(disp.shape) < 0.5, -np.inf, np.inf).astype(np.float32))
    return disp


@settings(max_examples=100)
@given(disp=near_ties(), big=st.sampled_from([2**24 + 1, 2**40 + 1, 1]))
def test_every_label_value_range_takes_the_image_s_nearest_sample(disp, big):
    """Labels whose values do not survive float32 (> 2**24) take another code path than small ones;
    both must pick the pixel that nearest-neighbour resampling of an image picks, ties included."""
    h, w = disp.shape[1:]
    ids = np.arange(h * w).reshape(h, w)
    d = elastic_deform(ids.astype(np.float32), ids.astype(np.int64) * big, rng=None, displacement=disp, order=0)
    np.testing.assert_array_equal(d.labels, d.image.astype(np.int64) * big)
