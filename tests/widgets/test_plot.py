"""The Train widget's loss plot: axis ends that grow in steps, long runs drawn as pixel-column means."""

import numpy as np
import pytest

from napari_unet._widgets._plot import column_means, nice_ceiling

pytestmark = pytest.mark.gui


def test_axis_ends_and_long_runs():
    assert [nice_ceiling(x) for x in (0, 1, 3, 12, 240, 251, 999)] == [1, 1, 5, 20, 250, 500, 1000]
    xs = np.arange(100_000, dtype=float)
    ys = np.sin(xs / 5000.0)
    cx, cy = column_means(xs, ys, 300, 100_000.0)
    assert len(cx) <= 300 and np.all(np.diff(cx) > 0)
    np.testing.assert_allclose(cy, np.sin(cx / 5000.0), atol=0.01)  # the means follow the curve
    same = column_means(xs[:10], ys[:10], 300, 10.0)
    np.testing.assert_array_equal(same[0], xs[:10])


def test_the_plot_paints_losses_and_validation(qtbot):
    from napari_unet._widgets._plot import LOSS_COLOUR, VAL_COLOUR, LossPlot

    plot = LossPlot(interval=0.0)
    qtbot.addWidget(plot.native)
    plot.native.resize(300, 150)
    for s in range(1, 200):
        plot.add_loss(s, 1.0 / s if s != 50 else float("nan"))  # a NaN step is skipped, not drawn
    plot.add_val(100, 0.5)
    plot.add_val(199, 0.8)
    img = plot.native.grab().toImage()
    assert plot.painted >= 1 and np.all(np.isfinite(plot.last_polyline))
    colours = [img.pixelColor(x, y).getRgb()[:3] for x in range(img.width()) for y in range(img.height())]

    def near(c, ref):
        return sum(abs(a - b) for a, b in zip(c, ref)) < 60

    assert sum(near(c, LOSS_COLOUR) for c in colours) > 50
    assert sum(near(c, VAL_COLOUR) for c in colours) > 10
    plot.clear()
    assert plot.steps == [] and plot.vals == []
