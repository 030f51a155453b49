"""Property tests of overlap-tile prediction: any image size, any tile size, tiled == one whole-image pass."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.core.network.unet import UNet, margin, output_size
from napari_unet.core.predict.tiles import mirror_pad, plan_tiles, predict, predict_whole

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _net(depth: int, base: int, padding: str = "valid") -> UNet:
    torch.manual_seed(1000 * depth + base)
    return UNet(1, 3, depth=depth, base_channels=base, padding=padding, dropout=0.0).eval()


sizes = st.integers(1, 70)
tiles = st.integers(1, 80)


@settings(max_examples=300)
@given(
    h=sizes,
    w=sizes,
    ty=tiles,
    tx=tiles,
    depth=st.integers(1, 4),
    padding=st.sampled_from(["valid", "same"]),
)
def test_plan_covers_every_output_pixel_from_inside_the_padded_plane(h, w, ty, tx, depth, padding):
    """Valid and padded nets: tiles on the pooling grid, every output pixel covered, every input
    tile inside the mirror-padded plane, and (valid) tile_in -> tile_out by the size arithmetic."""
    model = _net(depth, 2, padding)
    plan = plan_tiles((h, w), model, (ty, tx))
    step = 2**depth
    (toy, tox), (tiy, tix) = plan.tile_out, plan.tile_in
    assert plan.tile_in[0] - plan.tile_out[0] == plan.tile_in[1] - plan.tile_out[1] == 2 * plan.context
    if padding == "valid":
        assert plan.context == margin(depth)
        assert output_size(tiy, depth) == toy and output_size(tix, depth) == tox
    # tiles on the pooling grid (what makes tiled == whole exact), in order, starting at 0
    for pos in (plan.ys, plan.xs):
        assert pos[0] == 0 and all(p % step == 0 for p in pos)
        assert list(pos) == sorted(set(pos))
    # every output pixel is written by at least one tile
    hits = np.zeros((h, w), dtype=np.int32)
    for y in plan.ys:
        for x in plan.xs:
            hits[y : y + toy, x : x + tox] += 1
    assert hits.min() >= 1
    # every tile's input lies inside the mirror-padded plane (a short slice would be a silent crop)
    padded = mirror_pad(np.zeros((1, h, w), np.float32), plan.pad)
    assert all(p >= 0 for pair in plan.pad for p in pair)
    assert plan.ys[-1] + tiy <= padded.shape[-2] and plan.xs[-1] + tix <= padded.shape[-1]


@settings(max_examples=150)
@given(
    h=sizes,
    w=sizes,
    ty=st.integers(1, 40),
    tx=st.integers(1, 40),
    depth=st.integers(1, 3),
    base=st.integers(2, 4),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_one_whole_image_pass(h, w, ty, tx, depth, base, batch, seed):
    """Any image size from 1 px, any output tile (below the 2**depth grid too), tiles one by one or
    batched: the probabilities equal one pass over the whole mirrored image."""
    model = _net(depth, base)
    image = np.random.default_rng(seed).random((h, w), dtype=np.float32)
    ref = predict_whole(model, image)
    whole = predict(model, image, tile_out=max(h, w), output="probabilities", normalize=False)
    tiled = predict(model, image, tile_out=(ty, tx), output="probabilities", normalize=False, batch_size=batch)
    assert tiled.shape == whole.shape == ref.shape == (3, h, w)
    np.testing.assert_allclose(whole, ref, atol=2e-5)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    assert tiled.sum(0).min() > 0.99  # every pixel predicted: an unwritten one stays 0
