"""--slices: which slices of a stack a command uses."""

from __future__ import annotations


def _parse_slices(text: str | None, n: int) -> list[int] | None:
    """'0-24', '3', '0,2,5-7' -> sorted indices (inclusive ranges)."""
    if not text:
        return None
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError(f"--slices {text}: range {part} runs backwards; write {b}-{a}")
                out.update(range(a, b + 1))
            elif part:
                out.add(int(part))
        except ValueError as e:
            if str(e).startswith("--slices"):
                raise
            raise ValueError(
                f"--slices {text}: {part!r} is not a slice number or range; use e.g. 3, 0-24 or 0,2,5-7 "
                "(slices count from 0)"
            ) from None
    if not out:  # ',' or ' ': nothing to stack
        raise ValueError(f"--slices {text!r} names no slice; use e.g. 3, 0-24 or 0,2,5-7 (slices count from 0)")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"--slices {text}: slice(s) {sorted(bad)[:5]} out of range for a stack of {n} slice(s)")
    return sorted(out)


def _z_axis(channel_axis, ndim: int) -> int:
    """The slice axis of a stack with ``channel_axis`` (channels last for TIFFs; anywhere in an OME-Zarr)."""
    return 1 if channel_axis is not None and channel_axis % ndim == 0 else 0


def _n_slices(arr, channel_axis) -> int:
    """Slices of a (Z, Y, X) stack (plus a channel axis when ``channel_axis`` is set); 1 for a 2D image."""
    return arr.shape[_z_axis(channel_axis, arr.ndim)] if arr.ndim - (channel_axis is not None) == 3 else 1


def _select(arr, slices, channel_axis=None):
    import numpy as np

    if slices is None:
        return arr
    if arr.ndim - (channel_axis is not None) != 3:
        raise ValueError("--slices needs a stack (Z, Y, X)")
    z = _z_axis(channel_axis, arr.ndim)
    return np.stack([np.asarray(arr[(slice(None),) * z + (i,)]) for i in slices], axis=z)
