"""Where to paint next: the regions of an image where the model is least sure, most uncertain first.

The uncertainty map is :func:`.tiling.iter_predict`'s ``output='uncertainty'`` (entropy of the
class probabilities, 0..1). :func:`rank_regions` averages it over square regions of each slice,
leaving out pixels already painted (a painted region teaches nothing new), and returns the regions
worth a stroke, as ilastik's uncertainty layer shows its users where to annotate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Region", "rank_regions"]


@dataclass(frozen=True)
class Region:
    """A square of one slice: ``z`` (None for a 2D image), top-left ``y``, ``x``, side ``size``."""

    z: int | None
    y: int
    x: int
    size: int
    score: float  # mean uncertainty of its unpainted pixels, 0..1

    @property
    def center(self) -> tuple[float, ...]:
        """The centre in (z,) y, x pixel coordinates, e.g. to move a viewer there."""
        c = (self.y + self.size / 2, self.x + self.size / 2)
        return c if self.z is None else (float(self.z), *c)

    def describe(self) -> str:
        where = f"slice {self.z}, " if self.z is not None else ""
        return f"{where}y {self.y}, x {self.x} (uncertainty {self.score:.2f})"


def rank_regions(uncertainty, *, painted=None, size: int = 128, k: int = 10) -> list[Region]:
    """The ``k`` most uncertain ``size``-px squares of a (Y, X) or (Z, Y, X) uncertainty map.

    ``painted``: labels of the same shape (> 0 = painted); painted pixels do not count, and a
    square with less than a quarter of its pixels left unpainted is skipped.
    """
    unc = np.asarray(uncertainty, dtype=np.float32)
    if unc.ndim not in (2, 3):
        raise ValueError(f"expected an uncertainty map (Y, X) or (Z, Y, X), got shape {unc.shape}")
    if size < 1 or k < 1:
        raise ValueError(f"size and k must be >= 1, got {size} and {k}")
    is_stack = unc.ndim == 3
    planes = unc if is_stack else unc[None]
    free = np.ones(planes.shape, bool) if painted is None else (np.asarray(painted) == 0).reshape(planes.shape)
    regions = []
    for z, (u, f) in enumerate(zip(planes, free)):
        H, W = u.shape
        for y in range(0, H, size):
            for x in range(0, W, size):
                fu = f[y : y + size, x : x + size]
                n = int(fu.sum())
                if n < 0.25 * fu.size:
                    continue
                score = float(u[y : y + size, x : x + size][fu].mean())
                regions.append(Region(z if is_stack else None, y, x, size, score))
    regions.sort(key=lambda r: -r.score)
    return regions[:k]
