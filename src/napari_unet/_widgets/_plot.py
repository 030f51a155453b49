"""A small loss / validation plot docked inside a widget, painted with QPainter.

Why not matplotlib: redrawing a matplotlib canvas costs 40-65 ms of the GUI thread on a busy 2-core
CPU (most of it rendering tick labels), and a live run redraws every 0.3-0.5 s, so napari's event loop
stalls 40-65 ms twice a second: with a matplotlib plot, the live loop's measured pauses
(tests/widgets/test_live_widget.py) are the plot's. Painting a polyline and six labels with QPainter
takes about a millisecond.
"""

from __future__ import annotations

import math

import numpy as np

from ._workers import Throttle

LOSS_COLOUR = (31, 119, 180)  # matplotlib's tab:blue and tab:orange, as before
VAL_COLOUR = (255, 127, 14)


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``x`` (axis ends that grow in steps, not every point)."""
    if x <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(x))
    return next(m * k for m in (1, 2, 2.5, 5, 10) if m * k >= x * (1 - 1e-9))


def column_means(xs: np.ndarray, ys: np.ndarray, n_cols: int, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n_cols`` points: the mean loss per pixel column (a long run draws as many points as fit)."""
    if len(xs) <= n_cols:
        return xs, ys
    col = np.minimum((xs / x_max * (n_cols - 1)).astype(np.int64), n_cols - 1)
    count = np.bincount(col, minlength=n_cols)
    keep = count > 0
    return (
        (np.bincount(col, weights=xs, minlength=n_cols)[keep] / count[keep]),
        (np.bincount(col, weights=ys, minlength=n_cols)[keep] / count[keep]),
    )


class LossPlot:
    """Training loss (left axis) and validation IoU (right axis, 0-1) against the step.

    ``add_loss`` / ``add_val`` store points and ask Qt for a repaint at most every ``interval``
    seconds; Qt merges repaints, and a paint costs about a millisecond however long the run.
    """

    def __init__(self, interval: float = 0.3, height: int = 150):
        from qtpy.QtWidgets import QWidget

        plot = self

        class _Canvas(QWidget):
            def paintEvent(self, event):  # noqa: N802 (Qt's name)
                plot._paint(self)

        self.canvas = _Canvas()
        self.canvas.setMinimumHeight(height)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.vals: list[float] = []
        self._throttle = Throttle(interval)
        self.total: int | None = None  # the run's steps: the x axis ends there (None: a nice number past the last)
        self.painted = 0  # paints done (tests)
        self.x_max = 1.0  # the x axis end of the last paint (tests)
        self.last_polyline: np.ndarray = np.zeros((0, 2))  # the loss points of the last paint, in pixels

    @property
    def native(self):
        return self.canvas

    def clear(self) -> None:
        self.steps.clear(), self.losses.clear(), self.val_steps.clear(), self.vals.clear()
        self.redraw(force=True)

    def set_total(self, total: int | None) -> None:
        """The coming run's length: the x axis runs 0..total (None: a live run, until Stop)."""
        self.total = total
        self.redraw(force=True)

    def add_loss(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.redraw()

    def add_val(self, step: int, metric: float) -> None:
        self.val_steps.append(step)
        self.vals.append(metric)
        self.redraw(force=True)

    def redraw(self, force: bool = False) -> None:
        if self._throttle(force):
            self.canvas.update()  # a paint event, merged with any pending one

    def _limits(self, finite: np.ndarray) -> tuple[float, tuple[float, float]]:
        """x: 0 to a nice number past the last step; y: the range of the ``finite`` losses, padded."""
        last = max([*self.steps[-1:], *self.val_steps[-1:], 1])
        x_max = float(self.total) if self.total and self.total >= last else nice_ceiling(last)
        if not len(finite):
            return x_max, (0.0, 1.0)
        lo, hi = float(finite.min()), float(finite.max())
        pad = 0.05 * (hi - lo or abs(hi) or 1.0)
        return x_max, (max(0.0, lo - pad), hi + pad)

    def _paint(self, widget) -> None:
        from qtpy.QtCore import QPointF, QRectF, Qt
        from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF

        self.painted += 1
        xs, ys = np.asarray(self.steps, float), np.asarray(self.losses, float)
        ok = np.isfinite(ys)
        xs, ys = xs[ok], ys[ok]
        x_max, (y_lo, y_hi) = self._limits(ys)
        self.x_max = x_max
        validation = bool(self.vals)  # the right-hand 0-1 axis only once there is a validation IoU to read
        p = QPainter(widget)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing)
            font = QFont(p.font())
            font.setPointSizeF(7.5)
            p.setFont(font)
            fm = p.fontMetrics()
            text = widget.palette().windowText().color()
            w, h = widget.width(), widget.height()
            # the left margin fits the longest y label (a fixed width clipped "0.00123")
            y_labels = (f"{y_hi:.3g}", f"{y_lo:.3g}")
            left = max(fm.horizontalAdvance(t) for t in (*y_labels, "0.00")) + 6
            right = fm.horizontalAdvance("1.0") + 6 if validation else 6
            top, bottom = fm.height() // 2 + 2, fm.height() + 6
            box = QRectF(left, top, max(w - left - right, 10), max(h - top - bottom, 10))
            p.setPen(QPen(text, 1))
            p.drawRect(box)
            # axis labels: the ends of each axis (what a glance at a loss curve needs)
            p.drawText(
                QRectF(0, box.top() - fm.height() / 2, left - 3, fm.height()),
                Qt.AlignmentFlag.AlignRight,
                y_labels[0],
            )
            p.drawText(
                QRectF(0, box.bottom() - fm.height() / 2, left - 3, fm.height()),
                Qt.AlignmentFlag.AlignRight,
                y_labels[1],
            )
            p.drawText(QRectF(box.left(), box.bottom() + 2, 60, fm.height()), Qt.AlignmentFlag.AlignLeft, "0")
            p.drawText(
                QRectF(box.right() - 120, box.bottom() + 2, 120, fm.height()),
                Qt.AlignmentFlag.AlignRight,
                f"step {x_max:g}",
            )
            p.drawText(QRectF(box.left() + 4, box.top() + 1, 60, fm.height()), Qt.AlignmentFlag.AlignLeft, "loss")
            orange = QColor(*VAL_COLOUR)
            p.setPen(QPen(orange, 1))
            if validation:  # the validation IoU's 0-1 axis, only for a run that validates
                p.drawText(QRectF(box.right() + 3, box.top() - fm.height() / 2, right, fm.height()), 0, "1")
                p.drawText(QRectF(box.right() + 3, box.bottom() - fm.height() / 2, right, fm.height()), 0, "0")
            if self.vals:
                p.drawText(
                    QRectF(box.right() - 84, box.top() + 1, 80, fm.height()), Qt.AlignmentFlag.AlignRight, "val IoU"
                )

            def to_px(xs, ys, lo, hi):
                px = box.left() + np.asarray(xs, float) / x_max * box.width()
                py = box.bottom() - (np.asarray(ys, float) - lo) / ((hi - lo) or 1.0) * box.height()
                return np.stack([px, np.clip(py, box.top(), box.bottom())], axis=1)

            xs, ys = column_means(xs, ys, int(box.width()), x_max)
            pts = to_px(xs, ys, y_lo, y_hi)
            self.last_polyline = pts
            if len(pts):
                p.setPen(QPen(QColor(*LOSS_COLOUR), 1.2))
                p.drawPolyline(QPolygonF([QPointF(float(a), float(b)) for a, b in pts]))
            if self.vals:
                vp = to_px(self.val_steps, self.vals, 0.0, 1.0)
                p.setPen(QPen(orange, 1.2))
                p.setBrush(orange)
                if len(vp) > 1:
                    p.drawPolyline(QPolygonF([QPointF(float(a), float(b)) for a, b in vp]))
                for a, b in vp:
                    p.drawEllipse(QPointF(float(a), float(b)), 2.0, 2.0)
        finally:
            p.end()
