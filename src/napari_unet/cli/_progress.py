"""Progress bars on stderr (tqdm), off with -q."""

from __future__ import annotations

import sys


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="step" if "train" in desc else "tile",
        disable=quiet,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class _TileBar:
    """A progress callback for tile events: the bar opens at the first event (which knows the total)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def __call__(self, ev) -> None:
        if self.bar is None:
            self.bar = _bar(ev.total, "predict", self.quiet)
        if ev.kind == "tile":
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
