"""Helpers for the GUI tests (imported by name: tests/ is not a package)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

GAPS_FILE = Path(os.environ.get("NAPARI_UNET_GAPS", Path(tempfile.gettempdir()) / "napari_unet_gaps.json"))


def dock(viewer, name: str):
    """Dock a widget by its Plugins-menu name, as a user would."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
    return widget


def brush(layer, idx, value, y, x0, x1, qtbot, *, step: int = 5, ms: int = 16):
    """A brush stroke along row ``y`` of slice ``idx`` as napari's paint tool makes one from a mouse drag:
    one dab per mouse move (~60 Hz), each redrawing only the painted part of the labels texture, and one
    undo item and ``paint`` event at the release."""
    with layer.block_history():
        for x in range(x0, x1 + 1, step):
            layer.paint((idx, y, x), value)
            qtbot.wait(ms)


class GapMeter:
    """Longest gap between ticks of a 10 ms QTimer: how long the event loop was blocked."""

    def __init__(self):
        from qtpy.QtCore import QElapsedTimer, QTimer

        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.longest = 0.0
        self.ticks = 0
        self.gaps: list[float] = []

    def _tick(self):
        now = self.clock.elapsed()
        if self.last is not None:
            self.longest = max(self.longest, float(now - self.last))
            self.gaps.append(float(now - self.last))
        self.last = now
        self.ticks += 1

    def p99(self) -> float:
        """99th percentile of the gaps between ticks (ms)."""
        if not self.gaps:
            return 0.0
        g = sorted(self.gaps)
        return g[min(len(g) - 1, int(0.99 * len(g)))]

    def __enter__(self):
        self.clock.start()
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()


def record_gap(what: str, ms: float, ticks: int, meter: GapMeter | None = None) -> None:
    """Write the measured gap to a json file and print it (timed assertions stay generous)."""
    data = json.loads(GAPS_FILE.read_text()) if GAPS_FILE.exists() else {}
    data[what] = {"longest_gap_ms": round(ms, 1), "ticks": ticks}
    extra = ""
    if meter is not None and meter.gaps:
        over = sum(g > 50 for g in meter.gaps)
        data[what].update(p99_ms=round(meter.p99(), 1), over_50ms=over)
        extra = f", 99th percentile {meter.p99():.1f} ms, {over} gaps over 50 ms"
    GAPS_FILE.write_text(json.dumps(data, indent=1))
    print(f"\nlongest event-loop gap during {what}: {ms:.1f} ms over {ticks} ticks{extra} ({GAPS_FILE})")


def paint(layer, idx, value, box):
    """Set labels in a box of slice ``idx`` and fire the events a brush stroke fires."""
    y0, y1, x0, x1 = box
    data = layer.data
    data[idx, y0:y1, x0:x1] = value
    layer.events.paint(value=[])
    layer.refresh()


def close_dock(viewer, widget) -> None:
    """Close a docked widget's dock with its title bar's close button, as a user would."""
    from qtpy.QtWidgets import QDockWidget

    parent = widget.native.parent()
    while not isinstance(parent, QDockWidget):
        parent = parent.parent()
    parent.title.close_button.click()
