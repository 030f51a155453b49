"""Checks on the file a command writes, made before any work: it must be writable and none of its inputs."""

from __future__ import annotations

from pathlib import Path


def _refuse_overwrite(output, inputs, what: str = "input", opt: str = "-o") -> None:
    """SystemExit when ``output`` is one of ``inputs`` (an image, labels or model file this command reads)."""
    out = Path(output).expanduser().resolve()
    for p in inputs:
        if p and Path(p).exists() and Path(p).expanduser().resolve() == out:
            raise SystemExit(
                f"error: {opt} {output} is the {what} {p}; writing there would destroy it. Choose another file"
            )


def _check_output(output, suffix: str | None = None, opt: str = "-o") -> None:
    """SystemExit before any work when ``output`` cannot be written (a folder, a missing or read-only
    folder, a device or other non-regular file): found after training, it would cost the trained weights.
    ``opt``: the option that named it, for the message."""
    import os

    if str(output).endswith(("/", "\\")):  # Path() drops the slash: 'results/' became a file named results
        raise SystemExit(f"error: {opt} {output} names a folder; give a file name inside it")
    given = Path(output).expanduser()
    out = given.with_name(given.name + suffix) if suffix and given.suffix != suffix else given
    for p in dict.fromkeys((given, out)):  # the path as given, and as written (with the suffix added)
        if p.is_dir():
            raise SystemExit(f"error: {opt} {output} is a folder; give a file name inside it")
        if p.exists() and not p.is_file():
            raise SystemExit(f"error: {opt} {output} is not a regular file (a device or pipe?); give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise SystemExit(f"error: {opt} {output}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise SystemExit(f"error: {opt} {output}: the folder {parent} is not writable; choose another folder")
