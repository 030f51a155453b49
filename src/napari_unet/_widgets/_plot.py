"""A small loss / validation plot docked inside a widget (matplotlib's Qt canvas)."""

from __future__ import annotations

from ._workers import Throttle


class LossPlot:
    """Training loss (left axis) and validation IoU (right axis) against the step.

    ``add_loss`` / ``add_val`` only store points; the canvas redraws at most
    every ``interval`` seconds (``draw_idle``), so a fast run cannot flood the
    GUI thread with redraws.
    """

    def __init__(self, interval: float = 0.3, height: int = 180):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), dpi=80, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height)
        self.ax = self.figure.add_subplot(111)
        self.ax.set_xlabel("step", fontsize=8)
        self.ax.set_ylabel("loss", fontsize=8)
        self.ax.tick_params(labelsize=7)
        self.ax2 = self.ax.twinx()
        self.ax2.set_ylabel("val IoU", fontsize=8, color="tab:orange")
        self.ax2.tick_params(labelsize=7, colors="tab:orange")
        self.ax2.set_ylim(0, 1)
        (self.loss_line,) = self.ax.plot([], [], lw=1, color="tab:blue", label="loss")
        (self.val_line,) = self.ax2.plot([], [], "o-", ms=3, lw=1, color="tab:orange", label="val IoU")
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.vals: list[float] = []
        self._throttle = Throttle(interval)
        self._laid_out = False

    @property
    def native(self):
        return self.canvas

    def clear(self) -> None:
        self.steps.clear(), self.losses.clear(), self.val_steps.clear(), self.vals.clear()
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
        if not self._throttle(force):
            return
        self.loss_line.set_data(self.steps, self.losses)
        self.val_line.set_data(self.val_steps, self.vals)
        if self.steps:
            self.ax.set_xlim(0, max(self.steps[-1], 1))
            lo, hi = min(self.losses), max(self.losses)
            pad = 0.05 * (hi - lo or 1.0)
            self.ax.set_ylim(max(0.0, lo - pad), hi + pad)
        # constrained layout costs half of a draw (~35 of ~70 ms on a busy 2-core CPU, on the GUI
        # thread): lay out on forced redraws (start, validation, end) and keep that layout between
        self.figure.set_layout_engine("constrained" if force or not self._laid_out else "none")
        self._laid_out = True
        self.canvas.draw_idle()
