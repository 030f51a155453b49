"""Training as in the paper, as a generator a GUI can watch and stop.

``iter_train(config, images, labels)`` samples tiles around annotated pixels
of any slice of any stack, deforms them elastically, and minimises the
pixel-wise softmax cross-entropy weighted by eq. 2 (class balance + border
weights) with SGD, momentum 0.99 (Adam optional). It yields a
:class:`TrainEvent` after every step (and after validation / preview passes)
and returns a :class:`TrainResult` holding the last and best weights.

Stopping: set ``cancel`` (a ``threading.Event``) and the run ends cleanly
after the current step, returning its result; closing the generator also
stops it (without a result). GPU memory is released on exit.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import replace

import numpy as np
import torch

from ..data.intensity import percentiles
from ..data.labels import n_classes_for
from ..data.planes import plane_at
from ..data.zoom import model_zoom
from ..drain import drain
from ..models.checkpoint import MODEL_BOUNDS, ModelInfo, load_optimizer_state, resolve_model_path
from ..models.load import load_model, read_info
from ..network.device import autocast_dtype, default_precision, memory_format, resolve_device
from ..network.unet import UNet, build_model, check_tile_in, is_valid_size, nearest_valid_sizes
from ..predict.tiles import predict
from . import sampling, start
from .config import AUTO, FINE_TUNE_LR, SCRATCH_LR, TrainConfig
from .events import TrainEvent, TrainResult, TrainState
from .losses import annotated_iou, kept_start_loss, weighted_loss
from .sampling import TrainSlice, as_pairs, prepare_slices

__all__ = ["iter_train", "train"]

# ----------------------------------------------------------------------------- main loop


def _build(config: TrainConfig, n_classes: int, in_channels: int) -> tuple[UNet, ModelInfo | None, str, bool]:
    """The network to train, its start's info, a note on the start, and whether the head is new."""
    note = ""
    if config.resume:
        model = load_model(config.resume)
        return model, model.info, "resumed", False
    if config.init:
        model = load_model(config.init)
        info = model.info
        if model.config.in_channels != in_channels:
            raise ValueError(
                f"the starting model expects {model.config.in_channels} input channel(s), the images have "
                f"{in_channels}; start from a model made for {in_channels} channel(s), or from scratch"
            )
        if model.n_classes != n_classes:
            old = model.head
            model.head = torch.nn.Conv2d(old.in_channels, n_classes, 1)
            torch.nn.init.normal_(model.head.weight, 0.0, math.sqrt(2.0 / old.in_channels))
            torch.nn.init.zeros_(model.head.bias)
            model.config = replace(model.config, n_classes=n_classes)
            note = f"fine-tuning {info.name}: new {n_classes}-class head (was {old.out_channels})"
            return model, info, note, True
        return model, info, f"fine-tuning {info.name}", False
    model = UNet(in_channels, n_classes, config.depth, config.base_channels, config.padding, config.dropout)
    return model, None, "from scratch", True


def iter_train(
    config: TrainConfig,
    images,
    labels,
    *,
    channel_axis: int | None = None,
    val_images=None,
    val_labels=None,
    preview: tuple[int, int] | None = None,
    cancel: threading.Event | None = None,
    feed: Callable[[], list[tuple[int, int | None, np.ndarray]]] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train (or fine-tune) a U-Net on painted labels; yields events, returns a TrainResult.

    Parameters
    ----------
    config : TrainConfig
    images, labels : array or list of arrays
        (Y, X) or (Z, Y, X) each (lazy arrays fine: only annotated slices are read).
        Labels follow core/labels.py: 0 = not annotated.
    val_images, val_labels : optional
        A separate validation set; otherwise ``config.val_fraction`` of the
        annotated slices is held out (at least one, when two or more exist).
    preview : (pair index, slice), optional
        Slice to predict every ``config.preview_every`` steps (event kind 'preview').
    cancel : threading.Event, optional
        Set it to stop after the current step; the result is returned as usual.
    feed : callable, optional
        Live training: called before every step, returns the label planes painted since the last
        call as ``(pair index, slice or None, labels plane)`` (copies: the caller keeps painting).
        Their slices are prepared again (targets, weight maps) and join the training data without
        a restart; an event of kind 'live' says how many, and the preview moves to the slice painted last.
    """
    t_start = time.perf_counter()
    pairs = as_pairs(images, labels)
    in_channels = 1 if channel_axis is None else int(np.shape(pairs[0][0])[channel_axis])
    choice = None
    if config.init == AUTO:
        choice = _choose_start(config, pairs, in_channels, channel_axis)
        config = replace(
            config,
            init=None if choice.name == start.SCRATCH else choice.name,
            keep_prior=choice.keep_prior if config.keep_prior is None else config.keep_prior,
            zoom=choice.zoom if config.zoom is None else config.zoom,
        )
    config = config.settled()
    if config.lr is None:
        config = replace(config, lr=FINE_TUNE_LR if (config.init or config.resume) else SCRATCH_LR)
    n_classes = _n_classes(config, pairs)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, start_info, start_note, new_head = _build(config, n_classes, in_channels)
    if config.zoom is None:  # a model file's own zoom (a correction round keeps it); scratch: 1
        config = replace(config, zoom=model_zoom(model) if start_info is not None else 1.0)
    if config.zoom != 1.0:
        start_note += f"; images zoomed x{config.zoom:.2f} to the model's object size"
    n_classes = model.n_classes
    depth, padding = model.depth, model.padding

    t_in = int(config.tile_in)
    if padding == "valid" and choice is not None and not is_valid_size(t_in, depth):
        # 'auto' chose a model of another depth than the tile was sized for: the nearest valid tile
        lo, hi = nearest_valid_sizes(t_in, depth)
        t_in = hi if lo is None or hi - t_in <= t_in - lo else lo
    if padding == "valid":
        check_tile_in(t_in, depth)  # the starting model's depth may differ from the config's
    else:
        step = 2**depth
        t_in = max(step, t_in // step * step)
    t_out = model.output_size(t_in)

    slices = prepare_slices(pairs, config, n_classes, in_channels, channel_axis, weights=False)
    if val_images is not None:
        val = prepare_slices(
            as_pairs(val_images, val_labels), config, n_classes, in_channels, channel_axis, weights=False
        )
    elif config.val_fraction > 0 and len(slices) >= 2:
        # at least one slice each way: holding out all (0.9 of 2 slices rounds to 2) left nothing to train on
        k = min(len(slices) - 1, max(1, int(round(len(slices) * config.val_fraction))))
        order = rng.permutation(len(slices))
        val = [slices[i] for i in sorted(order[:k])]
        slices = [slices[i] for i in sorted(order[k:])]
    else:
        val = []
    counts = np.array([s.n_annotated for s in slices], dtype=np.float64)
    probs = counts / counts.sum()

    painted = np.unique(
        np.concatenate([np.unique(start.collapse(s.target[s.target >= 0], config.label_mode)) for s in slices])
    )
    no_val = ""
    if config.val_fraction > 0 and val_images is None and not val:  # asked for, and silently skipped before
        no_val = (
            f"no validation (val_fraction {config.val_fraction:g}): only one slice is annotated, and training "
            "needs it; annotate a second slice to validate"
        )
    one_class = ""
    if len(painted) == 1:
        what = _default_class_names(config, n_classes)[int(painted[0])] if painted[0] < n_classes else "one class"
        one_class = f"only {what} is painted: the model can only learn to predict {what} everywhere. Paint " + (
            "objects (2, 3, ...) too" if painted[0] == 0 else "some background (1) too"
        )
    # how well the start model already predicts the painted pixels: sets keep_prior when it is None
    fine_tune = bool(config.init) and not config.resume
    same_head = fine_tune and not new_head
    start_agreement, worst, warning = None, None, ""
    if choice is not None:
        picked = next((c for c in choice.candidates if c.name == choice.name), None)
        start_agreement, worst = (picked.agreement, picked.worst) if picked is not None else (None, None)
    elif same_head:
        start_agreement, per_class = start.agreement(
            model, slices, config.label_mode, device=resolve_device(config.device)
        )
        worst = min(per_class.values()) if per_class else None
    if start_agreement is not None:
        start_note += f"; it agrees {start_agreement:.2f} with your strokes"
    if config.keep_prior is None:
        config = replace(config, keep_prior=start.prior_weight(worst) if same_head else 0.0)
        if same_head and config.keep_prior == 0 and worst is not None:
            warning = (
                f"the start model contradicts your strokes (it predicts only {worst:.2f} of one painted class as "
                "you painted it): it learns what you painted from its features, and its prediction is not kept "
                "where you did not paint"
            )
    keeps = same_head and config.keep_prior > 0  # a start that is kept: its loss weighting is kept too
    config = replace(
        config,
        class_balance=not keeps if config.class_balance is None else config.class_balance,
        border_weights=not keeps if config.border_weights is None else config.border_weights,
    )
    sampling.weigh(slices, config)
    teacher = None
    if config.keep_prior > 0 and fine_tune:
        if same_head:
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
            start_note += f", kept where you did not paint (keep_prior {config.keep_prior:.2f})"
        else:
            start_note += "; keep_prior ignored: the starting model has other classes"
    yield TrainEvent(
        "start",
        0,
        config.steps,
        float("nan"),
        config.lr,
        time.perf_counter() - t_start,
        0.0,
        message=choice.reason if choice is not None else start_note,
        warning="; ".join(w for w in (one_class, no_val, warning) if w),
    )
    if choice is not None:
        start_note = f"{start_note} (auto: {choice.reason})"

    dev = resolve_device(config.device)
    precision = config.precision or default_precision(dev)
    amp_dtype = autocast_dtype(precision, dev)
    mem_fmt = memory_format(dev)
    model.to(dev).to(memory_format=mem_fmt)
    if teacher is not None:
        teacher.to(dev).to(memory_format=mem_fmt)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step0 = 0
    if config.resume:
        load_optimizer_state(config.resume, opt)
        step0 = int((start_info.training or {}).get("steps_done", 0))
        for g in opt.param_groups:
            g["lr"] = config.lr
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16 and dev.type == "cuda")
    lr0 = config.lr

    def lr_at(step: int) -> float:
        if config.schedule == "cosine":
            return lr0 * 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
        return lr0

    classes = list(config.class_names) if config.class_names else _default_class_names(config, n_classes)
    info = ModelInfo(
        model=model.config.to_dict(),
        classes=classes,
        label_mode=config.label_mode,
        border_class=config.border_class,
        normalization={"method": "percentile", "low": config.norm_low, "high": config.norm_high},
        training={
            "config": config.to_dict(),
            "start": start_note,
            "tile_in": t_in,
            "tile_out": t_out,
            "n_train_slices": len(slices),
            "n_val_slices": len(val),
            "device": str(dev),
            "start_agreement": start_agreement,
            "start_worst_class": worst,
            "domain": start.domain_signature(s.image for s in slices),
        },
        name=(start_info.name if start_info is not None and config.resume else ""),
        scale={"input_scale": config.zoom} if config.zoom != 1.0 else {},
    )

    history: list[tuple[int, float]] = []
    val_history: list[tuple[int, float]] = []
    best_state = _cpu_state(model)
    best_metric: float | None = None
    best_step = step0
    ema = None
    agree = None  # running balanced accuracy on the painted pixels of the batches (event.agreement)
    state = TrainState.TRAINING
    step = step0
    fresh = step0  # best weights are tracked from here (live strokes move it)
    last_loss = float("nan")

    def snapshot_model() -> UNet:
        # what a step event's snapshot() copies: the live weights, on the CPU, nothing else
        net = build_model(model.config)
        net.load_state_dict(_cpu_state(model))
        net.info = info
        return net

    def event(kind: str, lr: float, eta: float, *, elapsed: float | None = None, live: bool = True, **kw):
        """A TrainEvent at the current step; ``live`` ones (the run goes on) offer a weight snapshot."""
        if elapsed is None:
            elapsed = time.perf_counter() - t_start
        snap = snapshot_model if live else None
        return TrainEvent(
            kind,
            step,
            config.steps,
            last_loss,
            lr,
            elapsed,
            eta,
            device=str(dev),
            snapshot_model=snap,
            agreement=agree,
            **kw,
        )

    def snapshot_result(st: TrainState) -> TrainResult:
        last_state = _cpu_state(model)
        # no best tracked yet (too few steps, no validation): the last weights are the best there are
        b_state, b_step = (best_state, best_step) if best_metric is not None else (last_state, step)
        training = dict(
            info.training,
            steps_done=step,
            best_step=b_step,
            best_metric=best_metric,
            final_loss=last_loss,
            state=st.value,
            seconds=round(time.perf_counter() - t_start, 1),
        )
        res_info = replace(info, training=training)
        cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
        cpu_model.info = res_info
        return TrainResult(
            model=cpu_model,
            best_state=b_state,
            last_state=last_state,
            info=res_info,
            state=st,
            steps_done=step,
            history=history,
            val_history=val_history,
            best_step=b_step,
            best_metric=best_metric,
            optimizer_state=_cpu_opt_state(opt),
        )

    try:
        model.train()
        while step < config.steps:
            if cancel is not None and cancel.is_set():
                state = TrainState.STOPPED
                break
            lr = lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
            if feed is not None:
                updates = feed()
                if updates:
                    n_new, skipped = _take_strokes(
                        updates, pairs, slices, val, config, n_classes, in_channels, channel_axis
                    )
                    # the data changed: weights from before the strokes are no 'best' (the loss rises with them)
                    best_metric, ema, fresh = None, None, step
                    counts = np.array([s.n_annotated for s in slices], dtype=np.float64)
                    probs = counts / counts.sum()
                    msg = f"{n_new} painted slice(s) joined the training data" + (f"; {skipped}" if skipped else "")
                    if preview is not None and updates[-1][0] == preview[0]:  # the preview follows the painting
                        preview = (preview[0], updates[-1][1] or 0)
                    yield event("live", lr, 0.0, message=msg)
            # through the module, so a benchmark can time (wrap) the sampler
            x, y, w = sampling.sample_batch(slices, probs, config, t_in, t_out, rng)
            xt = torch.from_numpy(x).to(dev).contiguous(memory_format=mem_fmt)
            yt = torch.from_numpy(y).to(dev)
            wt = torch.from_numpy(w).to(dev)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xt)
            if teacher is None:
                loss = weighted_loss(logits, yt, wt)
            else:
                with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    t_logits = teacher(xt)
                loss = kept_start_loss(logits, t_logits, yt, wt, config.keep_prior)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {step + 1}; lower the learning rate (now {lr:g})"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            last_loss = float(loss.item())
            history.append((step, last_loss))
            with torch.no_grad():
                pred = start.collapse(logits.argmax(1).cpu().numpy(), config.label_mode)
                acc, _ = start.balanced_accuracy(pred, start.collapse(y, config.label_mode))
            if np.isfinite(acc):
                agree = acc if agree is None else 0.9 * agree + 0.1 * acc
            ema = last_loss if ema is None else 0.95 * ema + 0.05 * last_loss
            if not val and (best_metric is None or -ema > best_metric) and step - fresh >= min(20, config.steps):
                best_metric, best_step, best_state = -ema, step, _cpu_state(model)
            elapsed = time.perf_counter() - t_start
            per_step = elapsed / max(step - step0, 1)
            eta = per_step * (config.steps - step)
            if step % max(config.log_every, 1) == 0 or step == config.steps:
                yield event("step", lr, eta, elapsed=elapsed)
            if val and (step % config.val_every == 0 or step == config.steps):
                metric = _validate(model, val, n_classes, dev, precision)
                model.train()
                val_history.append((step, metric))
                if best_metric is None or metric > best_metric:
                    best_metric, best_step, best_state = metric, step, _cpu_state(model)
                yield event("validation", lr, eta, val_metric=metric)
            if preview is not None and config.preview_every and step % config.preview_every == 0:
                pv = _preview(model, pairs[preview[0]][0], preview[1], dev, channel_axis, config)
                model.train()
                yield event("preview", lr, eta, preview=pv, preview_where=tuple(preview))
        else:
            state = TrainState.DONE
        result = snapshot_result(state)
        yield event("finished", lr_at(step), 0.0, live=False, val_metric=best_metric if val else None, state=state)
        return result
    except Exception as exc:
        # free the step's tensors (the traceback keeps this frame alive) and move the weights off the
        # device first, so an out-of-memory crash can still be snapshotted and GPU memory comes back
        loss = logits = t_logits = xt = yt = wt = None
        opt.zero_grad(set_to_none=True)
        model.to("cpu")
        if teacher is not None:
            teacher.to("cpu")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        partial = None
        if step > step0:
            try:
                partial = snapshot_result(TrainState.CRASHED)
            except Exception:
                partial = None
        yield event("crashed", lr_at(step), 0.0, live=False, state=TrainState.CRASHED, error=exc, result=partial)
        raise
    finally:
        model.to("cpu")
        opt = teacher = None  # drop the optimizer state and the teacher now
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _take_strokes(updates, pairs, slices, val, config, n_classes, in_channels, channel_axis) -> tuple[int, str]:
    """Live training: the painted planes ``updates`` replace (or join) their slices in ``slices`` / ``val``,
    in place. Returns how many slices were taken and what was skipped (a message, or '')."""
    taken, skipped = 0, []
    for i, z, lab in updates:
        if not 0 <= i < len(pairs):
            continue
        plane = plane_at(pairs[i][0], z, channel_axis)  # (C, H, W), wherever the channel axis is
        where = (i, 0 if z is None else int(z))
        try:
            new = prepare_slices([(plane, np.asarray(lab))], config, n_classes, in_channels, 0)
        except ValueError as e:  # nothing left painted there, or a class the model does not have
            if "nothing is annotated" not in str(e):
                skipped.append(f"slice {z}: {e}")
            new = []
        for s in new:
            s.where = where
        for group in (val, slices):
            old = [k for k, s in enumerate(group) if s.where == where]
            if old:
                if new:
                    group[old[0]] = new[0]
                elif group is slices and len(slices) > 1:
                    del group[old[0]]
                break
        else:
            slices.extend(new)
        taken += len(new)
    return taken, "; ".join(skipped)


def _n_classes(config: TrainConfig, pairs) -> int:
    """Classes the network needs: a resumed run's, the config's, or what the labels hold."""
    if config.resume:
        return read_info(resolve_model_path(config.resume)).model["n_classes"]
    if config.n_classes is not None:
        return config.n_classes
    if config.label_mode == "semantic":
        n = max(n_classes_for("semantic", np.asarray(lab), border_class=config.border_class) for _, lab in pairs)
        if n > MODEL_BOUNDS["n_classes"][1]:
            # instance ids painted for semantic training: it trained a huge head, and saved a model no one could load
            raise ValueError(
                f"semantic labels up to {n} ask for {n} classes (value k is class k-1), more than a model can "
                f"hold ({MODEL_BOUNDS['n_classes'][1]}); values like these are object ids: train in instance mode "
                "(label_mode='instance'; --mode instance in the CLI, label mode in the Train widget)"
            )
        return n
    return n_classes_for("instance", border_class=config.border_class)


def _choose_start(config: TrainConfig, pairs, in_channels: int, channel_axis) -> start.StartChoice:
    """init='auto': score every candidate start on the painted pixels (no training) and pick one."""
    # a broken file of the user's is reported before the shipped models are scored (and each file is read once)
    loaded = {name: load_model(name) for name in config.candidates}
    # agreement collapses a border class into its object; the slices as painted (each candidate zooms them)
    quick = replace(config, border_class=False, zoom=None)
    n_classes = _n_classes(quick, pairs)
    slices = prepare_slices(pairs, quick, n_classes, in_channels, channel_axis, weights=False)
    signature = start.domain_signature(s.image for s in slices)
    scored = []
    for name in start.default_candidates(config.candidates):
        if name == start.SCRATCH:
            scored.append(start.Candidate(name))
            continue
        scored.append(
            start.score_candidate(
                name, slices, config.label_mode, n_classes, signature, zoom=config.zoom, model=loaded.get(name)
            )
        )
    return start.choose(scored)


def _default_class_names(config: TrainConfig, n_classes: int) -> list[str]:
    if config.label_mode == "instance":
        return ["background", "object", "border"][:n_classes]
    return ["background"] + [f"class {i}" for i in range(1, n_classes)]


def _cpu_state(model: UNet) -> dict:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _cpu_opt_state(opt) -> dict:
    sd = opt.state_dict()
    return {
        "state": {
            k: {kk: (vv.detach().to("cpu", copy=True) if torch.is_tensor(vv) else vv) for kk, vv in st.items()}
            for k, st in sd["state"].items()
        },
        "param_groups": copy.deepcopy(sd["param_groups"]),
    }


def _validate(model: UNet, val: list[TrainSlice], n_classes: int, dev, precision) -> float:
    scores = []
    for s in val:
        pred = predict(
            model,
            s.image[0] if s.image.shape[0] == 1 else s.image,
            channel_axis=None if s.image.shape[0] == 1 else 0,
            normalize=False,
            device=dev,
            precision=precision,
            scale=1.0,  # the slices are zoomed for the model already
        )
        scores.append(annotated_iou(pred, s.target, n_classes))
    return float(np.nanmean(scores)) if scores else float("nan")


def _preview(model: UNet, image, z: int, dev, channel_axis, config: TrainConfig) -> np.ndarray:
    """Labels of one slice, normalised as in training."""
    is_stack = len(np.shape(image)) == (3 if channel_axis is None else 4)
    plane = plane_at(image, z if is_stack else None, channel_axis)
    lo, hi = percentiles(plane, config.norm_low, config.norm_high)
    kw = dict(normalize=(lo, hi), device=dev, output="labels", scale=config.zoom)  # the image as the user sees it
    if channel_axis is None:
        return predict(model, plane[0], **kw)
    return predict(model, plane, channel_axis=0, **kw)


def train(config: TrainConfig, images, labels, **kwargs) -> TrainResult:
    """Run :func:`iter_train` to the end without events."""
    return drain(iter_train(config, images, labels, **kwargs))
