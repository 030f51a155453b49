"""Checks on the file a command writes, made before any work: it must be writable and none of its inputs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _refuse_inputs(output, inputs: Iterable[tuple[object, str]], opt: str = "-o", suffix: str | None = None) -> None:
    """SystemExit when ``output`` is one of ``inputs`` or lies inside one; ``inputs``: (path, what it is) pairs.

    Inside: a folder of slices (a file there joins the slices), an OME-Zarr container other than its ``labels/``
    group, a model package's folder, a file (a .zip package). Paths are compared as the files they name
    (``os.path.samestat``): symlinks, ``..`` and letter case on file systems that ignore it. ``suffix``: the
    one the command adds to a name without it (train's .safetensors, export's .zip), checked too.
    """
    given = Path(output).expanduser()
    written = given.with_name(given.name + suffix) if suffix and given.suffix != suffix else given
    for p, what in inputs:
        if not p or not Path(p).exists():
            continue  # a missing input is the reader's message
        for out in dict.fromkeys((given, written)):
            rel = _inside(out, Path(p))
            if rel is None or _in_labels_group(Path(p), rel):
                continue
            if not rel:
                raise SystemExit(
                    f"error: {opt} {output} is the {what} {p}; writing there would destroy it. Choose another file"
                )
            raise SystemExit(f"error: {opt} {output} lies inside the {what} {p}; {_why_inside(Path(p), what)}")


def _model_inputs(model) -> list[tuple[Path, str]]:
    """The files of the model a command uses, as :func:`_refuse_inputs` takes them: the model file (a shipped
    name resolved), and for a package given by its rdf.yaml the package's folder (its weights, sources and
    attachments lie there). Empty when there is no such model: loading it says so."""
    from ..core.models.checkpoint import resolve_model_path

    if not model:
        return []
    try:
        path = resolve_model_path(model)
    except FileNotFoundError:
        return []
    found = [(path, "model")]
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        found.append((path.parent, "model package folder"))
    return found


def _inside(output: Path, container: Path) -> tuple[str, ...] | None:
    """The parts of ``output`` below ``container`` (() when it is ``container`` itself), or None when it is not
    inside: the first existing folder on ``output``'s real path that is the same file as ``container``."""
    try:
        target = os.stat(container)
        out = output.resolve()  # symlinks and '..' of the part that exists
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, which _check_output refuses
        return None
    for up, a in enumerate((out, *out.parents)):
        try:
            if os.path.samestat(os.stat(a), target):
                return out.parts[len(out.parts) - up :]
        except OSError:
            continue  # not there yet: its parent may be
    return None


def _in_labels_group(container: Path, rel: tuple[str, ...]) -> bool:
    """An image inside an OME-Zarr's labels group (``<container>/labels/<name>``): where predictions go."""
    from ..core.data.ngff import is_ome_zarr

    if len(rel) < 2 or not is_ome_zarr(container):
        return False
    labels = container / "labels"
    first = container / rel[0]
    return rel[0] == "labels" or (labels.exists() and first.exists() and os.path.samefile(labels, first))


def _why_inside(container: Path, what: str) -> str:
    """Why writing inside ``container`` is refused, and what to write instead."""
    from ..core.data.ngff import is_ome_zarr

    if is_ome_zarr(container):
        return (
            "writing there would replace a chunk or metadata of that image. Predict into its labels group "
            f"(-o {container / 'labels' / 'NAME'}) or into a .zarr outside it"
        )
    if "package" in what:
        return f"writing there could replace a file the package uses. Choose a path outside {container}"
    if container.is_dir():
        return (
            f"writing there would change that folder's slices (a TIFF there becomes one more). Choose a path "
            f"outside {container}"
        )
    return f"{container} is a file, not a folder. Choose a path outside it"


def _check_output(output, suffix: str | None = None, opt: str = "-o") -> None:
    """SystemExit before any work when ``output`` cannot be written (a folder, a missing or read-only
    folder, a device or other non-regular file): found after training, it would cost the trained weights.
    ``opt``: the option that named it, for the message."""
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
