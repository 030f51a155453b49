"""``napari-unet``: train, predict and evaluate without napari.

Examples
--------
Segment EM membranes with the shipped model::

    napari-unet predict stack.tif -o membranes.tif --model em-membrane

Fine-tune on your own painted labels (0 = not annotated, 1 = background, 2.. = objects)::

    napari-unet train --images stack.tif --labels painted.tif --mode instance \
        --init em-membrane --steps 500 -o my-model.safetensors

Share a model as a bioimage.io package (Fiji/deepImageJ, ilastik, QuPath, bioimageio.core), and use one::

    napari-unet export my-model.safetensors -o my-model.zip --sample stack.tif
    napari-unet predict stack.tif -o labels.tif --model my-model.zip

Score a model on held-out slices::

    napari-unet evaluate --model my-model.safetensors --images stack.tif --labels truth.tif --slices 25-29
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

LABEL_HELP = (
    "Labels: 0 = not annotated (ignored), then with --mode semantic value k>=1 is class k-1; "
    "with --mode instance 1 = background and every value >= 2 is its own object."
)


class _OutputPath(argparse.Action):
    """predict's -o/--output: the file to write. Older commands used --output for the kind of output,
    so a kind name, or the option given twice, is refused instead of silently writing the wrong thing."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(
                f"{option_string} given twice ({getattr(namespace, self.dest)!r} and {values!r}): -o/--output "
                "is the TIFF to write; choose the kind of output with --kind labels|instances|probabilities"
            )
        if values in ("labels", "instances", "probabilities"):
            parser.error(
                f"{option_string} {values}: -o/--output is the TIFF to write; the kind of output is now "
                f"--kind {values} (e.g. -o result.tif --kind {values})"
            )
        setattr(namespace, self.dest, values)


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
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ValueError(f"--slices {text}: slice(s) {sorted(bad)[:5]} out of range for a stack of {n} slice(s)")
    return sorted(out)


def _read_with_meta(path: str, what: str):
    """(pixels, ImageMeta) of a TIFF or a folder of TIFF slices; a missing file is a one-line error."""
    from .core.data.files import read_image

    try:
        return read_image(path)
    except FileNotFoundError:
        raise SystemExit(f"error: {what} {path} does not exist") from None


def _read(path: str, what: str):
    return _read_with_meta(path, what)[0]


def _read_image(path: str, args):
    """The pixels of image ``path``, their channel axis (-1: moved last, a view; or None) and the file's ImageMeta.

    The channel axis is the file's own (tifffile's C or S axis, e.g. ImageJ/OME channels, RGB, planar
    RGB), or ``--channel-axis`` (``none``: the file's C axis is slices); ``--channel K`` keeps one channel.
    """
    from .core.data.planes import channels_last, declared_channel_axis

    arr, meta = _open_image(path)
    given = getattr(args, "channel_axis", None)
    if given is None:
        ch = declared_channel_axis(arr.shape, meta.axes)
    elif given == "none":
        ch = None
    else:
        ch = int(given)
        if not -arr.ndim <= ch < arr.ndim:
            raise ValueError(f"--channel-axis {given}: {path} has only {arr.ndim} axes (shape {tuple(arr.shape)})")
    if getattr(args, "channel", None) is not None:
        if ch is None:
            raise ValueError(
                f"--channel {args.channel}: {path} (shape {tuple(arr.shape)}, axes {meta.axes}) declares no "
                "channel axis; say which axis holds the channels with --channel-axis"
            )
        return _pick(arr, ch, args.channel), None, meta
    if ch is not None and arr.shape[ch] == 1:
        return _pick(arr, ch, 0), None, meta
    if hasattr(arr, "take") and type(arr).__name__ == "ZarrView":
        return arr, (None if ch is None else ch % arr.ndim), meta  # lazy: the channel axis stays where it is
    return channels_last(arr, ch), (None if ch is None else -1), meta


def _pick(arr, ch, k):
    from .core.data.planes import channel_index, pick_channel

    if type(arr).__name__ == "ZarrView":  # lazy: fix the axis instead of reading the whole channel
        return arr.take(ch, channel_index(arr.shape[ch], k))
    return pick_channel(arr, ch, k)


def _open_image(path: str):
    """(pixels, ImageMeta) of a TIFF, a folder of TIFF slices or an OME-Zarr image (lazily)."""
    from .core.data.ngff import is_ome_zarr, read_ome_zarr

    return read_ome_zarr(path) if is_ome_zarr(path) else _read_with_meta(path, "image")


def _channel_axis_arg(text: str):
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an axis number (0, 1, -1 ...) or 'none'") from None


def _z_axis(channel_axis, ndim: int) -> int:
    """The slice axis of a stack with ``channel_axis`` (channels last for TIFFs; anywhere in an OME-Zarr)."""
    return 1 if channel_axis is not None and channel_axis % ndim == 0 else 0


def _n_slices(arr, channel_axis) -> int:
    """Slices of a (Z, Y, X) stack (plus a channel axis when ``channel_axis`` is set); 1 for a 2D image."""
    return arr.shape[_z_axis(channel_axis, arr.ndim)] if arr.ndim - (channel_axis is not None) == 3 else 1


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
    folder, a device or other non-regular file): found after training, it used to cost the trained weights.
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


def _select(arr, slices, channel_axis=None):
    import numpy as np

    if slices is None:
        return arr
    if arr.ndim - (channel_axis is not None) != 3:
        raise ValueError("--slices needs a stack (Z, Y, X)")
    z = _z_axis(channel_axis, arr.ndim)
    return np.stack([np.asarray(arr[(slice(None),) * z + (i,)]) for i in slices], axis=z)


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


class _TileSize(argparse.Action):
    """The old --tile-size: train's input side, predict's output side. Still accepted, with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--tile-in" if self.dest == "tile_in" else "--tile-out"
        side = "input" if self.dest == "tile_in" else "output"
        print(
            f"warning: --tile-size is deprecated; it is the {side} tile side here: use {new} {values}", file=sys.stderr
        )
        setattr(namespace, self.dest, values)


# ----------------------------------------------------------------------------- train


def _keep_prior(text: str):
    """--keep-prior: 'auto' (None) or a weight >= 0."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}")
    return value


def _scale(text: str):
    """--scale: 'auto' (None) or a zoom factor (core/scale.py)."""
    if text == "auto":
        return None
    from .core.data.zoom import check_zoom

    try:
        return check_zoom(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def cmd_train(args) -> int:
    import numpy as np

    from .core.data.labels import check_shapes, isbi_to_instances
    from .core.drain import drain
    from .core.network.device import resolve_device
    from .core.train.config import TrainConfig, resolve_settings
    from .core.train.events import TrainState
    from .core.train.loop import iter_train

    if len(args.images) != len(args.labels):
        raise ValueError(f"{len(args.images)} --images but {len(args.labels)} --labels; give one labels file per image")
    _refuse_overwrite(args.output, [*args.images, *args.labels], "training data")
    _check_output(args.output, ".safetensors")
    images, labels, channels, axes = [], [], set(), set()
    for ip, lp in zip(args.images, args.labels):
        (im, ch, _), lab = _read_image(ip, args), _read(lp, "labels")
        check_shapes(im, lab, channel_axis=ch, name=f"{lp} on {ip}")  # before --slices, which would hide a mismatch
        channels.add(1 if ch is None else im.shape[ch])
        axes.add(None if ch is None else ch % im.ndim - im.ndim)  # counted from the end: 2D and stacks alike
        sl = _parse_slices(args.slices, _n_slices(im, ch))
        im, lab = _select(im, sl, ch), _select(lab, sl)
        lab = np.asarray(lab)
        if args.labels_format == "isbi":
            lab = isbi_to_instances(lab)
        elif args.labels_format == "instances":
            lab = np.where(lab > 0, lab.astype(np.int64) + 1, 1)
        images.append(im)
        labels.append(lab)
    if len(channels) > 1:
        raise ValueError(
            f"the images have different numbers of channels ({sorted(channels)}); train on images with the same "
            "channels, or keep one with --channel K"
        )
    if len(axes) > 1:
        raise ValueError("the images hold their channels on different axes; give files of one layout")
    channel_axis = next(iter(axes)) if channels != {1} else None
    if args.init is None:
        # the default start is 'auto', unless the command asks for a run of its own: --resume continues
        # one, --depth / --channels ask for a new architecture (from scratch)
        args.init = None if (args.resume or args.depth or args.channels) else "auto"
    elif args.init == "scratch":
        args.init = None
    # unset options follow the device and the start (--resume: the saved run's), as in the Train widget
    unset = (
        ("depth", "depth"),
        ("channels", "base_channels"),
        ("tile_in", "tile_in"),
        ("optimizer", "optimizer"),
        ("lr", "lr"),
        ("steps", "steps"),
        ("keep_prior", "keep_prior"),
        ("schedule", "schedule"),
    )
    given = {key: getattr(args, opt) for opt, key in unset}
    settings = resolve_settings(resolve_device(args.device).type, args.init, given, resume=args.resume)
    for opt, key in unset:
        setattr(args, opt, settings[key].value)
    cfg = TrainConfig(
        depth=args.depth,
        base_channels=args.channels,
        padding=args.padding,
        label_mode=args.mode,
        zero_is_background=args.zero_is_background,
        border_class=args.border_class,
        optimizer=args.optimizer,
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        tile_in=args.tile_in,
        augment=not args.no_augment,
        val_fraction=args.val_fraction,
        val_every=args.val_every,
        init=args.init,
        candidates=tuple(args.candidates or ()),
        resume=args.resume,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        schedule=args.schedule,
        keep_prior=args.keep_prior,
        zoom=args.scale,
        # unset: TrainConfig's own defaults (the paper's)
        **{
            k: v
            for k, v in dict(
                w0=args.w0, sigma=args.sigma, elastic_grid=args.elastic_grid, elastic_sigma=args.elastic_sigma
            ).items()
            if v is not None
        },
    )
    cancel, abort = threading.Event(), threading.Event()
    out_path = Path(args.output)
    # a stopped run never replaces -o (it may hold a good model): it goes beside it
    interrupted = out_path.with_name(out_path.name.removesuffix(".safetensors") + "-interrupted.safetensors")

    def on_sigint(signum, frame):
        if cancel.is_set():
            abort.set()  # checked before anything is written
            raise KeyboardInterrupt
        cancel.set()
        print(
            f"\nstopping after this step and saving to {interrupted} (press Ctrl-C again to abort without saving)",
            file=sys.stderr,
        )

    def on_event(ev):
        if ev.kind == "start":
            bar.write(ev.message)
            if ev.warning:
                bar.write(f"warning: {ev.warning}")
        elif ev.kind == "step":
            bar.n = ev.step
            post = {"loss": f"{ev.loss:.4f}"}
            if ev.agreement is not None:  # how much of the painted pixels the model gets right now
                post["painted ok"] = f"{ev.agreement:.2f}"
            bar.set_postfix(post, refresh=False)
            bar.refresh()
        elif ev.kind == "validation":
            bar.write(f"step {ev.step}: validation IoU {ev.val_metric:.4f}")
        elif ev.kind == "crashed" and ev.result is not None:
            # keep what was trained (the best weights: the last ones may be what made the loss NaN);
            # the error itself is raised when drain() resumes the generator
            out = Path(args.output)
            try:
                kept = ev.result.save(out.with_name(out.stem.removesuffix(".safetensors") + "-crashed"), half=args.half)
                bar.write(f"training crashed at step {ev.step}; the best weights so far are saved in {kept}")
            except OSError as save_err:
                bar.write(f"training crashed at step {ev.step}, and saving its weights failed too: {save_err}")

    # the handler stays until the file is written: a second Ctrl-C while saving aborts the save too
    old = signal.signal(signal.SIGINT, on_sigint)
    # the bar after the handler: once it shows, Ctrl-C stops and saves (a press in between killed the run)
    bar = _bar(cfg.steps, "train", args.quiet)
    try:
        try:
            result = drain(iter_train(cfg, images, labels, channel_axis=channel_axis, cancel=cancel), on_event)
        finally:
            bar.close()
        if abort.is_set():
            raise KeyboardInterrupt
        target = interrupted if result.state is TrainState.STOPPED else out_path
        out = result.save(target, which="last" if args.save_last else "best", half=args.half)
    finally:
        signal.signal(signal.SIGINT, old)
    msg = "stopped early" if result.state is TrainState.STOPPED else "done"
    loss = f"final loss {result.history[-1][1]:.4f}, " if result.history else "no step ran this time, "
    print(f"{msg}: {result.steps_done} steps, {loss}best at step {result.best_step}; saved {out}")
    return 0


# ----------------------------------------------------------------------------- predict


def _is_zarr_path(path) -> bool:
    from .core.data.ngff import ZARR_SUFFIXES, is_ome_zarr

    return str(path).rstrip("/").lower().endswith(ZARR_SUFFIXES) or is_ome_zarr(path)


def _zarr_target(args, image_is_zarr: bool) -> Path | None:
    """Where a zarr prediction goes: -o out.zarr, or (no -o) labels/<name> inside the input container."""
    if args.output is not None:
        return Path(args.output) if _is_zarr_path(args.output) else None
    if not image_is_zarr:
        raise SystemExit("error: -o is required (a TIFF, or a .zarr folder), unless the image is an OME-Zarr")
    if args.kind == "probabilities":
        raise SystemExit(
            "error: probabilities are no labels image: give -o probabilities.zarr (an OME-Zarr image of its own)"
        )
    return Path(args.image) / "labels" / (args.name or f"unet-{args.kind}")


def _client(args):
    """A dask.distributed Client for --scheduler / --workers, or None (this process)."""
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise ImportError("--scheduler needs dask.distributed: pip install 'napari-unet[zarr]'") from err
        return Client(args.scheduler)
    if args.workers:
        from .core.predict.blocks import local_cluster

        return local_cluster(args.workers, memory_limit=args.worker_memory)
    return None


def _sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _predict_tiles(args, model, image, ch, out=None):
    """``args.kind`` of ``image`` by overlap-tile prediction (into ``out`` if given), with the tile bar."""
    from .core.drain import drain
    from .core.predict.tiles import iter_predict

    bar = _TileBar(args.quiet)
    try:
        return drain(
            iter_predict(
                model,
                image,
                channel_axis=ch,
                output=args.kind,
                out=out,
                tile_out=args.tile_out,
                tta=args.tta,
                device=args.device,
                min_size=args.min_size,
                precision=args.precision,
                scale=args.scale,
            ),
            bar,
        )
    finally:
        bar.close()


def _predict_zarr(args, model, image, meta, ch, target: Path) -> int:
    """Predict into an OME-Zarr image at ``target``, block by block (resumable), here or on dask."""
    from .core.data.ngff import ome_version
    from .core.data.planes import as_stack
    from .core.models.checkpoint import resolve_model_path
    from .core.predict.blocks import create_prediction, default_threads, iter_predict_blocks, output_chunks

    if args.slices:
        raise SystemExit("error: --slices writes TIFFs only; a .zarr output takes the whole volume (a rerun resumes)")
    from .core.data.zoom import model_zoom

    zoom = model_zoom(model) if args.scale is None else args.scale
    if zoom != 1.0 and args.kind != "instances":
        raise SystemExit(
            f"error: block-wise OME-Zarr prediction runs at the image's own scale, and this model zooms images "
            f"x{zoom:.2f}: predict into a TIFF (-o out.tif), or give --scale 1 to predict the volume as it is"
        )
    if args.kind not in ("labels", "probabilities", "instances"):
        raise SystemExit(
            f"error: --kind {args.kind} writes a TIFF (-o out.tif); an OME-Zarr output takes labels, "
            "probabilities or instances"
        )
    if args.kind == "instances" and (args.workers or args.scheduler):
        raise SystemExit(
            "error: --kind instances needs whole planes and runs in one process: drop --workers/--scheduler "
            "(or predict labels on the cluster; docs/scaling.md)"
        )
    _, n_z, (H, W), is_stack = as_stack(image, ch, model.config.in_channels)
    spatial = (n_z, H, W) if is_stack else (H, W)
    chunks = output_chunks(spatial, _spatial_chunks(image, ch))
    inside = target.parent.name == "labels" and Path(args.image).resolve() == target.parent.parent.resolve()
    provenance = {
        "model": str(args.model),
        "model_sha256": _sha256(resolve_model_path(args.model)),
        "tta": bool(args.tta),
        "source": str(Path(args.image).resolve()),
    }
    out = create_prediction(
        target,
        model,
        spatial,
        output=args.kind,
        chunks=chunks,
        pixel_size=meta.pixel_size,
        z_spacing=meta.z_spacing,
        unit=meta.unit,
        prob_dtype=args.prob_dtype,
        version=ome_version(args.image) if inside else "0.5",
        provenance=provenance,
    )
    if args.kind == "instances":
        _predict_tiles(args, model, image, ch, out=out)
        print(f"wrote {target} (instances, shape {tuple(out.shape)})")
        return 0
    client = _client(args)
    n_workers = len(client.scheduler_info()["workers"]) if client is not None else 1
    gen = iter_predict_blocks(
        model,
        image,
        str(target) if client is not None else out,
        output=args.kind,
        channel_axis=ch,
        tile_out=args.tile_out,
        tta=args.tta,
        device=args.device if client is None else ("cpu" if args.device == "auto" else args.device),
        precision=args.precision,
        prob_dtype=args.prob_dtype,
        client=client,
        threads=default_threads(n_workers) if args.workers else None,
        scale=args.scale,
    )
    bar = None
    try:
        for ev in gen:
            if ev.kind == "start":
                if ev.message and not args.quiet:
                    print(ev.message, file=sys.stderr)
                if ev.skipped:
                    print(f"resuming: {ev.skipped} of {ev.total} blocks are already written", file=sys.stderr)
                where = f"{n_workers} dask worker(s)" if client is not None else "this process"
                bar = _bar(ev.total, f"predict ({where})", args.quiet)
                bar.unit = "block"
                bar.update(ev.skipped)
            else:
                bar.update(1)
    except KeyboardInterrupt:
        print(
            f"\ncancelled: the blocks written so far stay in {target}; run the same command to resume", file=sys.stderr
        )
        return 130
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if args.workers and cluster is not None:
                cluster.close()
    print(f"wrote {target} ({args.kind}, shape {tuple(out.shape)}, chunks {tuple(out.chunks)})")
    return 0


def _spatial_chunks(image, ch):
    from .core.data.planes import spatial_shape

    chunks = getattr(image, "chunks", None)
    return None if chunks is None else spatial_shape(chunks, ch)


def cmd_predict(args) -> int:
    import numpy as np

    from .core.data.files import write_labels
    from .core.data.ngff import is_ome_zarr
    from .core.models.checkpoint import resolve_model_path
    from .core.models.load import load_model

    image_is_zarr = is_ome_zarr(args.image)
    target = _zarr_target(args, image_is_zarr)
    if target is None:
        _refuse_overwrite(args.output, [args.image], "input image")
        _check_output(args.output)
    else:
        if target.resolve() == Path(args.image).resolve():
            raise SystemExit(f"error: -o {target} is the input image; writing there would destroy it")
        parent = target.parent if target.parent.name != "labels" else target.parent.parent
        if not parent.is_dir():
            raise SystemExit(f"error: -o {target}: the folder {parent} does not exist; create it first")
    try:
        if args.output is not None:
            _refuse_overwrite(args.output, [resolve_model_path(args.model)], "model")
    except FileNotFoundError:
        pass  # load_model says what is missing
    if target is None:
        from .core.data.files import TIFF_SUFFIXES

        suffix = Path(args.output).suffix.lower()
        if suffix and suffix not in TIFF_SUFFIXES:  # a TIFF named result.png: a viewer would fail to open it
            raise SystemExit(
                f"error: -o {args.output}: predict writes TIFF files (.tif, .tiff) or OME-Zarr (.zarr); rename it"
            )
    if (args.workers or args.scheduler) and target is None:
        raise SystemExit("error: --workers/--scheduler write an OME-Zarr: give -o out.zarr (or an OME-Zarr input)")
    model = load_model(args.model)
    image, ch, meta = _read_image(args.image, args)
    if target is not None:
        return _predict_zarr(args, model, image, meta, ch, target)
    slices = _parse_slices(args.slices, _n_slices(image, ch))
    if slices is not None:
        image = _select(image, slices, ch)
    if args.precision == "auto":
        from .core.predict.tiles import choose_precision

        args.precision, why = choose_precision(model, image, device=args.device, channel_axis=ch)
        if not args.quiet:
            print(f"precision {args.precision}: {why}", file=sys.stderr)
    try:
        result = _predict_tiles(args, model, image, ch)
    except KeyboardInterrupt:
        print("\ncancelled: nothing was written", file=sys.stderr)
        return 130
    out = Path(args.output)
    if args.kind in ("probabilities", "uncertainty"):
        import tifffile

        from .core.data.files import atomic_write

        with atomic_write(out) as fh:
            # minisblack: a class axis of 3 must not be stored as RGB
            tifffile.imwrite(fh, np.asarray(result, dtype=np.float32), compression="zlib", photometric="minisblack")
    else:
        write_labels(out, result)
    print(f"wrote {out} ({args.kind}, shape {tuple(result.shape)})")
    if args.kind == "uncertainty":
        from .core.predict.guidance import rank_regions

        where = rank_regions(result, k=5)
        print("paint next (most uncertain first): " + "; ".join(r.describe() for r in where))
    return 0


# ----------------------------------------------------------------------------- evaluate


def cmd_evaluate(args) -> int:
    import numpy as np

    from .core.data.labels import check_shapes
    from .core.evaluate.score import evaluate_arrays
    from .core.models.load import load_model

    if args.json:  # found after the evaluation, a bad --json cost its run (or overwrote an input)
        _refuse_overwrite(args.json, [args.images, args.labels, args.model], "input", opt="--json")
        _check_output(args.json, opt="--json")
    model = load_model(args.model)
    image, ch, _ = _read_image(args.images, args)
    truth = np.asarray(_read(args.labels, "labels"))
    # before --slices, which would hide a mismatch
    check_shapes(image, truth, channel_axis=ch, name=f"the ground truth {args.labels} on {args.images}")
    slices = _parse_slices(args.slices, _n_slices(image, ch))
    image, truth = _select(image, slices, ch), _select(truth, slices)
    bar = _TileBar(args.quiet)
    try:
        report = evaluate_arrays(
            model,
            image,
            truth,
            kind=args.kind,
            tta=args.tta,
            device=args.device,
            min_size=args.min_size,
            progress=bar,
            channel_axis=ch,
            scale=args.scale,
        )
    finally:
        bar.close()
    report["model"] = str(args.model)
    report["slices"] = args.slices or "all"
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


# ----------------------------------------------------------------------------- export

# the real data that goes into a shipped model's package (test input, cover): the plugin's sample crops
_SHIPPED_SAMPLES = {"em-membrane": "load_em_sample", "nuclei": "load_nuclei_sample"}


def _parse_cite(text: str) -> dict:
    """'Author et al. (2020) Title. doi:10.1/x' or '... https://...' -> a bioimage.io citation."""
    import re

    m = re.search(r"(?:doi:\s*|https?://(?:dx\.)?doi\.org/)(10\.\S+)\s*$", text)
    if m:
        return {"text": text[: m.start()].strip().rstrip(".,;") or text, "doi": m.group(1).rstrip(".")}
    m = re.search(r"(https?://\S+)\s*$", text)
    if m:
        return {"text": text[: m.start()].strip().rstrip(".,;") or text, "url": m.group(1)}
    raise ValueError(f"--cite {text!r}: end it with doi:10.xxx/... or a https:// address (bioimage.io needs one)")


def cmd_export(args) -> int:
    import getpass

    import numpy as np

    from .core.export import bioimageio
    from .core.models.checkpoint import available_models, resolve_model_path
    from .core.models.load import load_model

    if not bioimageio.available():
        raise SystemExit(
            f"error: exporting a bioimage.io package needs the bioimageio extra: {bioimageio.INSTALL_HINT}"
        )
    src = resolve_model_path(args.model)
    _refuse_overwrite(args.output, [src], "model")
    _check_output(args.output, ".zip")
    model = load_model(src)
    shipped = src in available_models().values()
    if args.sample:
        sample = np.asarray(_read(args.sample, "sample image"))
        if sample.ndim == 3:
            if not 0 <= args.sample_slice < sample.shape[0]:
                raise ValueError(f"--sample-slice {args.sample_slice} is out of range for {sample.shape[0]} slices")
            sample = sample[args.sample_slice]
    elif shipped and model.info.name in _SHIPPED_SAMPLES:
        from . import _sample_data

        sample = getattr(_sample_data, _SHIPPED_SAMPLES[model.info.name])()[0][args.sample_slice]
    else:
        raise ValueError(
            "--sample IMAGE is needed: a TIFF of the kind of data the model segments (a crop of it becomes the "
            "package's test input and cover image; give data you may share)"
        )
    card = Path(args.card).read_text(encoding="utf-8") if args.card else None  # default: the model's own .md
    out = bioimageio.export_package(
        src,  # the file itself: its card (<name>.md) goes in, and it is attached byte for byte
        args.output,
        sample=sample,
        card=card,
        authors=args.author or (None if shipped else [getpass.getuser() or "napari-unet user"]),
        cite=[_parse_cite(c) for c in args.cite] if args.cite else None,
        license=args.license or ("BSD-3-Clause" if shipped else "CC-BY-4.0"),
        name=args.name,
        data=args.data,
    )
    print(f"wrote {out} (bioimage.io model package, spec 0.5; check it with `bioimageio test {out}`)")
    from .core.data.zoom import model_zoom

    if model_zoom(model) != 1.0:
        print(
            f"note: this model expects images zoomed x{model_zoom(model):.3g} (it was trained so); napari-unet "
            "zooms for you when it loads the zip, other tools do not: the model card says so",
            file=sys.stderr,
        )
    return 0


# ----------------------------------------------------------------------------- models


def cmd_models(args) -> int:
    from .core.models.checkpoint import available_models
    from .core.models.load import read_info

    shipped = available_models()
    if not shipped:
        print("no models are shipped with this installation")
    for name, path in shipped.items():
        info = read_info(path)
        m = info.model
        print(
            f"{name}: {info.description or ''} [{info.label_mode}, classes {info.classes}, depth {m['depth']}, "
            f"{m['base_channels']} channels, {m['padding']}"
            + (f", post-processing {info.postprocess}" if info.postprocess else "")
            + "]"
        )
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net Segment: train, predict and evaluate U-Nets (Ronneberger et al. 2015) on TIFF images.",
        epilog=LABEL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def scale(sp, default_help: str):
        sp.add_argument(
            "--scale",
            type=_scale,
            default=None,
            metavar="S",
            help="zoom the images by S for the network (0.5: objects twice as large as the model's, e.g. another "
            f"objective) and the result back to the image's grid; default: {default_help}",
        )

    def channels(sp):
        sp.add_argument(
            "--channel-axis",
            type=_channel_axis_arg,
            metavar="AXIS",
            help="the image axis that holds channels (default: the file's own, from OME/ImageJ metadata or "
            "RGB; 'none': read a file's channels as slices)",
        )
        sp.add_argument(
            "--channel",
            type=int,
            metavar="K",
            help="use only channel K of a multichannel image (e.g. the nuclei channel for a grey model)",
        )

    t = sub.add_parser("train", help="train or fine-tune a U-Net on labelled TIFFs", epilog=LABEL_HELP)
    t.add_argument("--images", nargs="+", required=True, help="image TIFF(s) (2D or stacks) or folders of slices")
    t.add_argument("--labels", nargs="+", required=True, help="labels TIFF(s), one per image, same shape")
    t.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    t.add_argument(
        "--mode",
        choices=["semantic", "instance"],
        default="instance",
        help="how to read the labels (default: instance)",
    )
    t.add_argument(
        "--labels-format",
        choices=["ours", "isbi", "instances"],
        default="ours",
        help="ours = the convention below; isbi = 0 membrane / 255 cell; instances = 0 background, 1..N objects",
    )
    t.add_argument("--slices", help="use only these slices of every stack, e.g. 0-24")
    t.add_argument(
        "--init",
        help="where to start: 'auto' (default: the shipped model, --candidates file or scratch that fits the "
        "strokes best, chosen in seconds before training and named in the log), a shipped model name, model "
        "file or bioimage.io package exported by napari-unet (fine-tune), or 'scratch' (the default is scratch "
        "with --depth/--channels)",
    )
    t.add_argument(
        "--candidates",
        nargs="+",
        metavar="MODEL",
        help="with --init auto: your own model files to consider besides the shipped models and scratch",
    )
    t.add_argument(
        "--keep-prior",
        type=_keep_prior,
        default=None,
        metavar="W",
        help="fine-tuning: weight of a loss keeping the starting model's prediction on unannotated pixels, so "
        "sparse strokes correct it without it forgetting the rest. Default 'auto': 1 when the start model "
        "gets at least half of every painted class right, 0 when it contradicts a class (30%% of its painted "
        "pixels right or less), in between linearly; 0 = the paper's plain fine-tuning",
    )
    t.add_argument("--resume", help="continue a run saved with --save-last (unset options: that run's settings)")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: 1000 on CUDA, 500 on CPU)")
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 1e-3 from scratch, 1e-4 from a model, also when --init auto picks one; "
        "the saved run's with --resume)",
    )
    t.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default=None,
        help="sgd = the paper (momentum 0.99; default on CUDA); adam converges in fewer steps (default on CPU)",
    )
    t.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default=None,
        help="learning-rate schedule (default: constant; with --resume, the saved run's)",
    )
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument(
        "--tile-in",
        type=int,
        default=None,
        help="INPUT tile side for training (valid sizes 188, 204, ... 572 for depth 4; default: 572 "
        "on CUDA, 316 on CPU)",
    )
    t.add_argument("--tile-size", dest="tile_in", type=int, action=_TileSize, help=argparse.SUPPRESS)
    t.add_argument("--depth", type=int, default=None, help="network depth (default 4; ignored with --init/--resume)")
    t.add_argument(
        "--channels",
        type=int,
        default=None,
        help="base channels (the paper: 64, default on CUDA; 16, default on CPU, trains ~10x faster; "
        "ignored with --init/--resume)",
    )
    t.add_argument("--padding", choices=["valid", "same"], default="valid")
    t.add_argument("--w0", type=float, default=None, help="border weight w0 (eq. 2; default 10, the paper)")
    t.add_argument("--sigma", type=float, default=None, help="border weight sigma in px (eq. 2; default 5, the paper)")
    t.add_argument(
        "--elastic-grid", type=int, default=None, help="elastic deformation control points per side (paper 3)"
    )
    t.add_argument(
        "--elastic-sigma", type=float, default=None, help="elastic deformation displacement std in px (paper 10)"
    )
    t.add_argument(
        "--border-class",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="instance mode: learn a third 'border' class (default: as the --init model has it, "
        "e.g. on for nuclei; off from scratch)",
    )
    t.add_argument("--zero-is-background", action="store_true", help="labels are complete: 0 means background")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction of annotated slices")
    t.add_argument("--val-every", type=int, default=50)
    t.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="default: bf16 on CUDA GPUs that support it, else fp32 (as predict)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--half", action="store_true", help="store weights as float16")
    t.add_argument(
        "--save-last", action="store_true", help="save the last state (+ optimizer, for --resume) instead of the best"
    )
    common(t)
    channels(t)
    scale(t, "'auto': the zoom at which the start model agrees best with your labels (1 from scratch)")
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="overlap-tile prediction of a TIFF or OME-Zarr image or stack")
    pr.add_argument("image", help="image TIFF (2D or stack), folder of slices, or OME-Zarr image (image.zarr)")
    pr.add_argument(
        "-o",
        "--output",
        "--output-path",
        dest="output",
        default=None,
        action=_OutputPath,
        help="TIFF to write, or a .zarr folder (an OME-Zarr image, written block by block; a rerun resumes). "
        "Default for an OME-Zarr input: labels/<--name> inside it (the NGFF labels layout)",
    )
    pr.add_argument(
        "--model",
        required=True,
        help="model file, shipped model name (em-membrane, nuclei; see `napari-unet models`) or bioimage.io "
        "package (model.zip or rdf.yaml; needs napari-unet[bioimageio])",
    )
    pr.add_argument(
        "--kind",
        choices=["labels", "instances", "probabilities", "uncertainty"],
        default="labels",
        help="labels: class per pixel (0 = background); instances: one id per object; "
        "probabilities: one float map per class; uncertainty: where the model is unsure (0..1; the most "
        "uncertain regions, where a stroke helps most, are listed)",
    )
    pr.add_argument("--slices", help="only these slices, e.g. 25-29")
    pr.add_argument(
        "--tile-out", type=int, default=None, help="OUTPUT tile side in px (default: automatic from free memory)"
    )
    pr.add_argument("--tile-size", dest="tile_out", type=int, action=_TileSize, help=argparse.SUPPRESS)
    pr.add_argument("--tta", action="store_true", help="average 8 flips/rotations")
    pr.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="PX",
        help="--kind instances: drop objects smaller than PX pixels (default: the model's own, "
        "see `napari-unet models`)",
    )
    pr.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto (default): bf16 on CUDA GPUs that support it; on a CPU with native bf16 (avx512_bf16, "
        "amx_bf16) a one-tile trial picks bf16 when it is faster and its labels agree >= 99.5 %% with fp32 "
        "(2.4-2.7x on an AMD EPYC; docs/benchmarks.md); else fp32. The choice and why are printed",
    )
    pr.add_argument(
        "--name",
        default=None,
        help="OME-Zarr input without -o: the labels image's name (default unet-<kind>, e.g. image.zarr/labels/unet-labels)",
    )
    pr.add_argument(
        "--prob-dtype",
        choices=["float16", "uint8", "float32"],
        default="float16",
        help=".zarr output of --kind probabilities: float16 (default) or uint8 (p * 255, rounded)",
    )
    pr.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="predict on a dask LocalCluster of N worker processes (needs a .zarr output); same result as one process",
    )
    pr.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="predict on an existing dask cluster, e.g. tcp://host:8786 (input and output on storage all workers see)",
    )
    pr.add_argument(
        "--worker-memory",
        default="2GiB",
        help="--workers: memory limit per worker (dask's; default 2GiB)",
    )
    common(pr)
    channels(pr)
    scale(pr, "the model's own (recorded when it was trained; 1 for the shipped models)")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="score a model against ground truth")
    ev.add_argument("--model", required=True, help="model file, shipped model name or bioimage.io package")
    ev.add_argument("--images", required=True)
    ev.add_argument(
        "--labels",
        required=True,
        help="ground truth: ISBI style (0 membrane, 255 cell) or instances (0 background, 1..N)",
    )
    ev.add_argument("--kind", choices=["auto", "membranes", "instances"], default="auto")
    ev.add_argument("--slices")
    ev.add_argument("--tta", action="store_true")
    ev.add_argument(
        "--min-size",
        type=int,
        default=None,
        metavar="PX",
        help="instances: drop predicted objects smaller than PX pixels (default: the model's own)",
    )
    ev.add_argument("--json", help="also write the report to this file")
    common(ev)
    channels(ev)
    scale(ev, "the model's own")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser(
        "export",
        help="write a model as a bioimage.io package (runs in Fiji/deepImageJ, ilastik, QuPath, bioimageio.core)",
    )
    ex.add_argument("model", help="model file or shipped model name")
    ex.add_argument("-o", "--output", required=True, help="package to write (.zip)")
    ex.add_argument(
        "--sample",
        help="image TIFF: a crop of it becomes the test input and cover (default for shipped models: their "
        "sample data). It ships inside the package: use data you may share",
    )
    ex.add_argument("--sample-slice", type=int, default=0, help="slice of a --sample stack (default 0)")
    ex.add_argument("--card", help="model card (markdown) for the documentation (default: the model's own .md)")
    ex.add_argument("--author", action="append", help="an author's name (repeat for more; default: your user name)")
    ex.add_argument(
        "--cite",
        action="append",
        help="the training data's citation ending in doi:10... or a https:// address (repeat for more); "
        "the U-Net paper is always cited",
    )
    ex.add_argument("--license", help="SPDX licence id (default: CC-BY-4.0; BSD-3-Clause for shipped models)")
    ex.add_argument("--name", help="the package's name (default: the model's)")
    ex.add_argument(
        "--data",
        help="what the model was trained on and its licence, for the card's Data section (models without a card)",
    )
    ex.set_defaults(func=cmd_export)

    mo = sub.add_parser("models", help="list the models shipped with napari-unet")
    mo.set_defaults(func=cmd_models)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, MemoryError) as e:  # a device or disk failing mid-run: no traceback wall
        hint = ""
        if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            given = getattr(args, "tile_out", None) if args.func is not cmd_train else getattr(args, "tile_in", None)
            flag = "--tile-in" if args.func is cmd_train else "--tile-out"
            smaller = f"a {flag} below the {given} used" if given else f"a smaller {flag}"
            hint = f" (give {smaller}" + (" or a smaller --batch-size" if args.func is cmd_train else "")
            hint += ", or use --device cpu)"
        print(f"error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
