"""Property tests of the weight map (paper eq. 2) on random painted rectangles and discs.

The fast map is compared with the library's own slow reference (one Euclidean distance transform
per object, :func:`~napari_unet.core.train.weights.weight_map_reference`), and both with eq. 2 written out
from brute-force point distances, which shares no code with either.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.core.train.weights import weight_map, weight_map_reference


@st.composite
def painted(draw, max_objects: int = 6):
    """Labels as painted: 1 = background, 2.. = objects (ids may repeat: one object in two pieces),
    0 = not painted; later shapes paint over earlier ones, so objects touch and overlap."""
    h, w = draw(st.integers(20, 40)), draw(st.integers(20, 40))
    lab = np.full((h, w), draw(st.sampled_from([1, 1, 0])), dtype=np.int32)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(draw(st.integers(0, max_objects))):
        value = draw(st.sampled_from([2, 3, 4, 5, 6, 2, 3, 4, 0, 1]))  # 0 rubs out, 1 paints background
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        ry, rx = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        if draw(st.booleans()):
            lab[max(0, y - ry) : y + ry, max(0, x - rx) : x + rx] = value
        else:
            lab[(yy - y) ** 2 + (xx - x) ** 2 <= ry * ry] = value
    return lab


options = st.fixed_dictionaries(
    {
        "w0": st.sampled_from([10.0, 5.0, 1.0]),
        "sigma": st.sampled_from([5.0, 3.0, 1.5, 8.0]),
        "mode": st.sampled_from(["instance", "semantic"]),
        "zero_is_background": st.booleans(),
        "class_balance": st.booleans(),
        "border_class": st.booleans(),
    }
)


@settings(max_examples=200)
@given(lab=painted(), kw=options)
def test_fast_map_equals_reference(lab, kw):
    fast = weight_map(lab, **kw)
    assert fast.dtype == np.float32 and fast.shape == lab.shape
    np.testing.assert_array_equal(fast, weight_map_reference(lab, **kw))


def _eq2_brute_force(inst: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The border term of eq. 2 at every non-object pixel, untruncated: d1, d2 = the two smallest
    distances from the pixel to any pixel of each object (all pairs of points, no distance transform)."""
    term = np.zeros(inst.shape)
    ids = np.unique(inst[inst > 0])
    if ids.size < 2:
        return term
    bg = np.argwhere(inst == 0).astype(float)
    per_object = [np.sqrt(((bg[:, None, :] - np.argwhere(inst == i)[None, :, :]) ** 2).sum(-1)).min(1) for i in ids]
    d1, d2 = np.sort(np.stack(per_object), axis=0)[:2]
    term[inst == 0] = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return term


@settings(max_examples=80)
@given(lab=painted(max_objects=5), w0=st.sampled_from([10.0, 3.0]), sigma=st.sampled_from([5.0, 2.0]))
def test_map_is_eq2_class_balance_plus_border_on_background(lab, w0, sigma):
    """Instance mode: w = w_c + border term on painted background (label 1), 0 where not painted."""
    cutoff = 1e-6
    w = weight_map(lab, w0=w0, sigma=sigma, cutoff=cutoff).astype(np.float64)
    wc = weight_map(lab, border=False).astype(np.float64)
    painted_px = lab > 0
    assert np.all(w[~painted_px] == 0) and np.all(wc[~painted_px] == 0)
    # w_c: inverse class frequency over the painted pixels, averaging 1, each present class the same share
    if painted_px.any():
        assert np.isclose(wc[painted_px].mean(), 1.0, rtol=1e-5)
        shares = [wc[m].sum() for m in (lab == 1, lab >= 2) if m.any()]
        np.testing.assert_allclose(shares, shares[0], rtol=1e-5)
    # border term: eq. 2 on painted background only, within the documented truncation (cutoff * w0)
    # plus the float32 rounding of w (w_c alone reaches hundreds when one class has a few pixels)
    expected = np.where(lab == 1, _eq2_brute_force(np.where(lab >= 2, lab - 1, 0), w0, sigma), 0.0)
    tol = cutoff * w0 + 2 * np.spacing(w.astype(np.float32)) + 1e-6 * expected
    assert np.all(np.abs((w - wc) - expected) <= tol)
    assert np.all(w[lab >= 2] == wc[lab >= 2])
