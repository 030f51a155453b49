"""``napari-unet train``: train or fine-tune a U-Net on labelled images and save it as a model file."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path

from ._errors import FAILED
from ._images import _read, _read_image
from ._options import LABEL_HELP, _TileSize, add_channels, add_common, add_scale, add_trust
from ._outputs import _check_output, _model_inputs, _refuse_inputs
from ._progress import _bar
from ._slices import _n_slices, _parse_slices, _select


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


def add_parser(subparsers) -> None:
    """The ``train`` subcommand and its arguments."""
    t = subparsers.add_parser("train", help="train or fine-tune a U-Net on labelled TIFFs", epilog=LABEL_HELP)
    _add_data(t)
    _add_start(t)
    _add_optimisation(t)
    _add_network(t)
    _add_loss_and_augmentation(t)
    _add_run(t)
    add_common(t)
    add_trust(
        t,
        "; training starts only from napari-unet models: --init / --candidates packages napari-unet did not write are refused before loading",
    )
    add_channels(t)
    add_scale(t, "'auto': the zoom at which the start model agrees best with your labels (1 from scratch)")
    t.set_defaults(func=cmd_train)


def _add_data(t) -> None:
    """What to train on: the images, their labels and how to read them, and the model file to write."""
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


def _add_start(t) -> None:
    """Where training starts: --init, --candidates, --keep-prior, --resume."""
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


def _add_optimisation(t) -> None:
    """Steps, learning rate, optimizer, schedule, batch and tile size."""
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


def _add_network(t) -> None:
    """The architecture of a new network (a model to start from brings its own)."""
    t.add_argument("--depth", type=int, default=None, help="network depth (default 4; ignored with --init/--resume)")
    t.add_argument(
        "--channels",
        type=int,
        default=None,
        help="base channels (the paper: 64, default on CUDA; 16, default on CPU, trains ~10x faster; "
        "ignored with --init/--resume)",
    )
    t.add_argument("--padding", choices=["valid", "same"], default="valid")


def _add_loss_and_augmentation(t) -> None:
    """The border weights (eq. 2), the elastic deformation, the border class and what 0 means."""
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


def _add_run(t) -> None:
    """Validation, precision, seed and what is saved."""
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


def cmd_train(args) -> int:
    """Train on ``args.images`` / ``args.labels`` and save the model to ``args.output``."""
    if len(args.images) != len(args.labels):
        raise ValueError(f"{len(args.images)} --images but {len(args.labels)} --labels; give one labels file per image")
    _refuse_inputs(args.output, _train_inputs(args), suffix=".safetensors")
    _check_output(args.output, ".safetensors")
    images, labels, channel_axis = _read_pairs(args)
    _fill_settings(args)
    cfg = _train_config(args)
    _check_free_space(args, cfg, 1 if channel_axis is None else int(images[0].shape[channel_axis]))
    result, out, save_error = _train_and_save(args, cfg, images, labels, channel_axis)
    _print_summary(result, out)
    if save_error is not None:
        print(
            f"error: saving the model failed ({save_error}); the trained weights are in {out} instead: move "
            "them where you want them",
            file=sys.stderr,
        )
        return FAILED
    return 0


def _train_inputs(args) -> list[tuple[object, str]]:
    """What ``train`` reads, for :func:`_refuse_inputs`: the images, labels and the model files it starts from."""
    models = [m for m in (args.init, args.resume, *(args.candidates or ())) if m not in (None, "auto", "scratch")]
    return [(p, "training data") for p in (*args.images, *args.labels)] + [
        found for m in models for found in _model_inputs(m)
    ]


def _read_pairs(args):
    """The training images and labels (--slices and --labels-format applied) and their channel axis, counted
    from the end (None: one channel)."""
    import numpy as np

    from ..core.data.labels import check_shapes

    images, labels, channels, axes = [], [], set(), set()
    for ip, lp in zip(args.images, args.labels):
        (im, ch, _), lab = _read_image(ip, args), _read(lp, "labels")
        check_shapes(im, lab, channel_axis=ch, name=f"{lp} on {ip}")  # before --slices, which would hide a mismatch
        channels.add(1 if ch is None else im.shape[ch])
        axes.add(None if ch is None else ch % im.ndim - im.ndim)  # counted from the end: 2D and stacks alike
        sl = _parse_slices(args.slices, _n_slices(im, ch))
        im, lab = _select(im, sl, ch), _select(lab, sl)
        images.append(im)
        labels.append(_convert_labels(np.asarray(lab), args.labels_format))
    if len(channels) > 1:
        raise ValueError(
            f"the images have different numbers of channels ({sorted(channels)}); train on images with the same "
            "channels, or keep one with --channel K"
        )
    if len(axes) > 1:
        raise ValueError("the images hold their channels on different axes; give files of one layout")
    return images, labels, (next(iter(axes)) if channels != {1} else None)


def _convert_labels(lab, labels_format: str):
    """Labels in --labels-format isbi or instances -> the convention of ``ours`` (LABEL_HELP)."""
    import numpy as np

    from ..core.data.labels import isbi_to_instances

    if labels_format == "isbi":
        return isbi_to_instances(lab)
    if labels_format == "instances":
        return np.where(lab > 0, lab.astype(np.int64) + 1, 1)
    return lab


def _fill_settings(args) -> None:
    """Resolve --init, and set every unset option to the recommended value for the device and the start (or to
    the saved run's with --resume)."""
    from ..core.network.device import resolve_device
    from ..core.train.config import resolve_settings

    if args.init is None:
        # the default start is 'auto', unless the command asks for a run of its own: --resume continues
        # one, --depth / --channels ask for a new architecture (from scratch)
        args.init = None if (args.resume or args.depth or args.channels) else "auto"
    elif args.init == "scratch":
        args.init = None
    # unset options follow the device and the start (or the saved run's with --resume), by the rule the Train
    # widget uses too (core.train.config.resolve_settings)
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


def _train_config(args):
    """The TrainConfig of the filled-in arguments."""
    from ..core.train.config import TrainConfig

    return TrainConfig(
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
        zoom=args.zoom,
        # unset: TrainConfig's own defaults (the paper's)
        **{
            k: v
            for k, v in dict(
                w0=args.w0, sigma=args.sigma, elastic_grid=args.elastic_grid, elastic_sigma=args.elastic_sigma
            ).items()
            if v is not None
        },
    )


def _train_and_save(args, cfg, images, labels, channel_axis):
    """Train with a progress bar and save the model; (the TrainResult, the file written). Ctrl-C stops after
    the current step and saves beside -o; a second Ctrl-C aborts without saving."""
    from ..core.drain import drain
    from ..core.train.events import TrainState
    from ..core.train.loop import iter_train

    out_path = Path(args.output)
    # a stopped run never replaces -o (it may hold a good model): it goes beside it
    interrupted = out_path.with_name(out_path.name.removesuffix(".safetensors") + "-interrupted.safetensors")
    ctrl_c = _CtrlC(interrupted)
    # the handler stays until the file is written: a second Ctrl-C while saving aborts the save too
    old = signal.signal(signal.SIGINT, ctrl_c)
    # the bar after the handler: once it shows, Ctrl-C stops and saves (a press in between killed the run)
    bar = _bar(cfg.steps, "train", args.quiet)
    try:
        try:
            result = drain(
                iter_train(cfg, images, labels, channel_axis=channel_axis, cancel=ctrl_c.cancel),
                partial(_show_event, args, bar),
            )
        finally:
            bar.close()
        if ctrl_c.abort.is_set():
            raise KeyboardInterrupt
        target = interrupted if result.state is TrainState.STOPPED else out_path
        out, save_error = _save(args, result, target)
    finally:
        signal.signal(signal.SIGINT, old)
    return result, out, save_error


def _save(args, result, target: Path) -> tuple[Path, OSError | None]:
    """Save the trained model to ``target``: (the file written, None). When writing it fails (a full disk, a
    folder made read-only during the run) the weights go beside it, or failing that to the temp dir: (that
    file, the error). OSError when no place takes them."""
    save = partial(result.save, which="last" if args.save_last else "best", half=args.half)
    try:
        return save(target), None
    except OSError as err:
        error = err
    stem = target.name.removesuffix(".safetensors")
    for folder in (target.parent, Path(tempfile.gettempdir())):
        try:
            return save(_free_name(folder, f"{stem}-rescued")), error
        except OSError as err:
            last = err
    raise OSError(
        f"saving {target} failed ({error}), and so did saving its weights beside it and in the temp folder "
        f"{tempfile.gettempdir()} ({last}); free some disk space"
    )


def _free_name(folder: Path, stem: str) -> Path:
    """``folder/stem.safetensors``, or ``stem-2``, ``stem-3``, ... when taken: a rescue never replaces a file."""
    path, n = folder / f"{stem}.safetensors", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.safetensors"
    return path


# the model file beyond its tensors: the JSON header (model info, tensor names and offsets) holds a few KB
_HEADER_MARGIN = 1 << 20
# optimizer state saved with --save-last, in float32 values per parameter
_OPTIMIZER_COPIES = {"adam": 2, "sgd": 1}  # Adam's two moments; SGD's momentum buffer


def _check_free_space(args, cfg, in_channels: int) -> None:
    """SystemExit before training when the folder of -o has less free space than the model file needs (its
    parameters x bytes per value, the optimizer state with --save-last, and a header margin): found at the
    end, it cost the trained weights."""
    n = _n_parameters(cfg, in_channels)
    if n is None:
        return  # a start whose architecture is read when training starts (its loader says what is wrong)
    per_value = 2 if args.half else 4
    need = n * per_value + _HEADER_MARGIN
    what = f"{n:,} parameters x {per_value} bytes"
    if cfg.init == "auto" and not cfg.resume:
        what = f"the largest start --init auto may choose: {what}"
    if args.save_last:
        need += n * 4 * _OPTIMIZER_COPIES.get(cfg.optimizer, 2)
        what += f" + the {cfg.optimizer} optimizer's state"
    out = Path(args.output).expanduser()
    folder = out.parent if str(out.parent) else Path(".")
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(
            f"error: -o {args.output}: the model file needs about {need / 2**20:.1f} MiB ({what} + header), and "
            f"the folder {folder} has {free / 2**20:.1f} MiB free; free some space or choose another folder"
        )


def _n_parameters(cfg, in_channels: int) -> int | None:
    """The number of parameters of the network ``cfg`` trains (the largest start --init auto may choose);
    None when the start model's architecture cannot be read."""
    from ..core.models.checkpoint import available_models
    from ..core.network.unet import UNetConfig
    from ..core.train.config import AUTO

    if cfg.resume or (cfg.init and cfg.init != AUTO):
        return _count(_architecture(cfg.resume or cfg.init))
    # a new network (its head, a few values per class, is in the header margin), or a start --init auto picks
    counts = [_count(UNetConfig(in_channels, 2, cfg.depth, cfg.base_channels, cfg.padding).to_dict())]
    if cfg.init == AUTO:
        counts += [_count(_architecture(m)) for m in (*available_models().values(), *cfg.candidates)]
    return max((n for n in counts if n is not None), default=None)


def _architecture(model) -> dict | None:
    """The network of model file or package ``model`` (its UNetConfig as a dict), read from its header; None
    when it cannot be read (loading it at the start of training says why)."""
    from ..core.models.checkpoint import resolve_model_path
    from ..core.models.load import read_info

    try:
        return dict(read_info(resolve_model_path(model)).model)
    except (ValueError, TypeError, OSError):
        return None


def _count(architecture: dict | None) -> int | None:
    """The parameters of the U-Net ``architecture``, by arithmetic (nothing is built)."""
    from ..core.network.unet import UNetConfig, count_parameters

    if architecture is None:
        return None
    try:
        return count_parameters(UNetConfig(**architecture))
    except (ValueError, TypeError, KeyError, RuntimeError):
        return None  # a damaged header: loading the model says what is wrong


class _CtrlC:
    """The SIGINT handler while training: the first press sets ``cancel`` (stop after this step and save to
    ``interrupted``), the second sets ``abort`` and raises KeyboardInterrupt."""

    def __init__(self, interrupted: Path):
        self.interrupted = interrupted
        self.cancel, self.abort = threading.Event(), threading.Event()

    def __call__(self, signum, frame) -> None:
        if self.cancel.is_set():
            self.abort.set()  # checked before anything is written
            raise KeyboardInterrupt
        self.cancel.set()
        print(
            f"\nstopping after this step and saving to {self.interrupted} (press Ctrl-C again to abort without saving)",
            file=sys.stderr,
        )


def _show_event(args, bar, ev) -> None:
    """One training event on the progress bar: the start's message, the loss, validation scores, a crash."""
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
        _save_crashed(args, bar, ev)


def _save_crashed(args, bar, ev) -> None:
    """Keep what was trained before a crash (the best weights: the last ones may be what made the loss NaN);
    the error itself is raised when drain() resumes the generator."""
    out = Path(args.output)
    try:
        kept = ev.result.save(out.with_name(out.stem.removesuffix(".safetensors") + "-crashed"), half=args.half)
        bar.write(f"training crashed at step {ev.step}; the best weights so far are saved in {kept}")
    except OSError as save_err:
        bar.write(f"training crashed at step {ev.step}, and saving its weights failed too: {save_err}")


def _print_summary(result, out) -> None:
    """The last line of a run: how it ended, its steps and loss, and where the model went."""
    from ..core.train.events import TrainState

    msg = "stopped early" if result.state is TrainState.STOPPED else "done"
    loss = f"final loss {result.history[-1][1]:.4f}, " if result.history else "no step ran this time, "
    print(f"{msg}: {result.steps_done} steps, {loss}best at step {result.best_step}; saved {out}")
