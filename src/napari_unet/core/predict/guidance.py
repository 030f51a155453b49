"""Where to paint next: the regions of an image where the model is least sure, most uncertain first.

The uncertainty map is :func:`.tiling.iter_predict`'s ``output='uncertainty'`` (entropy of the
class probabilities, 0..1). :func:`rank_regions` averages it over square regions of each slice,
leaving out pixels already painted (a painted region teaches nothing new), and returns the regions
worth a stroke, as ilastik's uncertainty layer shows its users where to annotate.

Every third region is not the next most uncertain but the unpainted square farthest from every stroke
(and from the squares already chosen): a model can be sure and wrong. em-membrane fine-tuned on a few
mitochondria strokes predicts mitochondria over most of the image, confidently; the entropy then points
only at its doubts, and guided strokes never reach its mistakes (docs/accuracy.md, "Where to paint next").
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
    far: bool = False  # chosen for being far from every stroke, not for its uncertainty

    @property
    def center(self) -> tuple[float, ...]:
        """The centre in (z,) y, x pixel coordinates, e.g. to move a viewer there."""
        c = (self.y + self.size / 2, self.x + self.size / 2)
        return c if self.z is None else (float(self.z), *c)

    def describe(self) -> str:
        where = f"slice {self.z}, " if self.z is not None else ""
        why = "far from your strokes: check it" if self.far else f"uncertainty {self.score:.2f}"
        return f"{where}y {self.y}, x {self.x} ({why})"


def rank_regions(
    uncertainty, *, painted=None, size: int = 128, k: int = 10, explore: int | None = None
) -> list[Region]:
    """The ``k`` most uncertain ``size``-px squares of a (Y, X) or (Z, Y, X) uncertainty map, every third
    replaced by the square farthest from the strokes (``explore`` of them; default ``k // 3``).

    ``painted``: labels of the same shape (> 0 = painted); painted pixels do not count, and a
    square with less than a quarter of its pixels left unpainted is skipped.
    """
    from scipy import ndimage as ndi

    unc = np.asarray(uncertainty, dtype=np.float32)
    if unc.ndim not in (2, 3):
        raise ValueError(f"expected an uncertainty map (Y, X) or (Z, Y, X), got shape {unc.shape}")
    if size < 1 or k < 1:
        raise ValueError(f"size and k must be >= 1, got {size} and {k}")
    explore = k // 3 if explore is None else min(max(int(explore), 0), k)
    is_stack = unc.ndim == 3
    planes = unc if is_stack else unc[None]
    free = np.ones(planes.shape, bool) if painted is None else (np.asarray(painted) == 0).reshape(planes.shape)
    regions, away = [], []  # away: each square's centre distance to the nearest stroke of its slice
    for z, (u, f) in enumerate(zip(planes, free)):
        H, W = u.shape
        dist = ndi.distance_transform_edt(f) if not f.all() else np.full(f.shape, float(H + W))
        for y in range(0, H, size):
            for x in range(0, W, size):
                fu = f[y : y + size, x : x + size]
                n = int(fu.sum())
                if n < 0.25 * fu.size:
                    continue
                score = float(u[y : y + size, x : x + size][fu].mean())
                regions.append(Region(z if is_stack else None, y, x, size, score))
                away.append(float(dist[min(y + size // 2, H - 1), min(x + size // 2, W - 1)]))
    order = sorted(range(len(regions)), key=lambda i: -regions[i].score)
    sure = order[: k - explore]
    far = _farthest(regions, away, exclude=set(sure), n=explore)
    out = [regions[i] for i in sure]
    for j, i in enumerate(far):  # at places 3, 6, 9 ...: the list still starts with the most uncertain
        r = regions[i]
        out.insert(min(3 * j + 2, len(out)), Region(r.z, r.y, r.x, r.size, r.score, far=True))
    taken = {(r.z, r.y, r.x) for r in out}
    out += [regions[i] for i in order if (regions[i].z, regions[i].y, regions[i].x) not in taken][: k - len(out)]
    return out


def _farthest(regions: list[Region], away: list[float], *, exclude: set[int], n: int) -> list[int]:
    """``n`` squares by farthest-first traversal: each the farthest from the strokes, from the ``exclude``d
    squares (they get strokes too) and from the ones chosen before it."""
    d = list(away)

    def taken(b: Region) -> None:
        for i, r in enumerate(regions):
            if r.z == b.z:
                d[i] = min(d[i], float(np.hypot(r.y - b.y, r.x - b.x)))

    for i in exclude:
        taken(regions[i])
    chosen: list[int] = []
    for _ in range(n):
        left = [i for i in range(len(regions)) if i not in exclude and i not in chosen]
        if not left:
            break
        best = max(left, key=d.__getitem__)
        chosen.append(best)
        taken(regions[best])
    return chosen
