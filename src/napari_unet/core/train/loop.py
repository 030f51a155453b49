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
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..data.intensity import percentiles
from ..data.labels import n_classes_for
from ..data.planes import plane_at
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
        Labels follow core/data/labels.py: 0 = not annotated.
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
    run = _Run(time.perf_counter(), preview)
    choice = yield from run.choose_start(config, as_pairs(images, labels), channel_axis)
    run.build_model(choice)
    run.prepare_data(val_images, val_labels)
    yield run.settle_start(choice)
    run.build_optimizer()
    try:
        run.model.train()
        while run.step < run.config.steps:
            if cancel is not None and cancel.is_set():
                run.state = TrainState.STOPPED
                break
            lr = run.set_lr()
            if feed is not None:
                yield from run.take_live(feed(), lr)
            run.train_step(lr)
            yield from run.report(lr)
        else:
            run.state = TrainState.DONE
        result = run.result(run.state)
        val_metric = run.best_metric if run.val else None
        yield run.event("finished", run.lr_at(run.step), 0.0, live=False, val_metric=val_metric, state=run.state)
        return result
    except Exception as exc:
        yield run.crashed(exc)
        raise
    finally:
        run.release()


class _Run:
    """One training run between its steps: data, start, model, optimizer and bookkeeping.

    The phases of :func:`iter_train`, in order: :meth:`choose_start`, :meth:`build_model`,
    :meth:`prepare_data`, :meth:`settle_start` and :meth:`build_optimizer`; then each step
    :meth:`set_lr`, :meth:`take_live`, :meth:`train_step` and :meth:`report`; and at the end
    :meth:`result` (or :meth:`crashed`) and :meth:`release`.
    """

    def __init__(self, t_start: float, preview: tuple[int, int] | None):
        self.t_start = t_start
        self.preview = preview  # live strokes move it to the slice painted last
        # the step's tensors, held only here: a crash drops them (its traceback keeps the frames alive)
        self.batch: dict[str, torch.Tensor] = {}
        self.history: list[tuple[int, float]] = []
        self.val_history: list[tuple[int, float]] = []
        self.best_metric: float | None = None
        self.ema: float | None = None
        self.agree: float | None = None  # running balanced accuracy on the painted pixels (event.agreement)
        self.state = TrainState.TRAINING
        self.last_loss = float("nan")

    # ------------------------------------------------------------------ before the first step

    def choose_start(
        self, config: TrainConfig, pairs, channel_axis
    ) -> Generator[TrainEvent, None, start.StartChoice | None]:
        """init='auto': the start that fits the strokes (scored before the run is seeded, a 'scoring' event
        per candidate); the config with its start model, border class and rate decided."""
        self.pairs, self.channel_axis = pairs, channel_axis
        self.in_channels = 1 if channel_axis is None else int(np.shape(pairs[0][0])[channel_axis])
        choice = None
        if config.init == AUTO:
            choice = yield from _choose_start(config, pairs, self.in_channels, channel_axis, self.t_start)
        if choice is not None:
            config = replace(config, init=None if choice.name == start.SCRATCH else choice.name)
        config = config.settled()
        if config.lr is None:
            config = replace(config, lr=FINE_TUNE_LR if (config.init or config.resume) else SCRATCH_LR)
        self.config = config
        return choice

    def build_model(self, choice: start.StartChoice | None) -> None:
        """The run seeded, its network built (new, or the start model's), its zoom and training tile."""
        config = self.config
        n_classes = _n_classes(config, self.pairs)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        model, self.start_info, self.built, self.new_head = _build(config, n_classes, self.in_channels)
        zoom = start.zoom_for(config, choice, model if self.start_info is not None else None)
        self.config = replace(config, zoom=zoom)
        self.model, self.n_classes = model, model.n_classes
        self.t_in, self.t_out = _tile(self.config, model, auto=choice is not None)

    def prepare_data(self, val_images, val_labels) -> None:
        """The annotated slices at the run's zoom, those held out for validation, how often each is sampled,
        and what the strokes cannot teach (warnings for the 'start' event)."""
        config = self.config
        prepare = partial(
            prepare_slices,
            config=config,
            n_classes=self.n_classes,
            in_channels=self.in_channels,
            channel_axis=self.channel_axis,
            weights=False,
        )
        slices, val = prepare(self.pairs), []
        if val_images is not None:
            val = prepare(as_pairs(val_images, val_labels))
        elif config.val_fraction > 0 and len(slices) >= 2:
            # at least one slice each way: holding out all (0.9 of 2 slices rounds to 2) left nothing to train on
            k = min(len(slices) - 1, max(1, int(round(len(slices) * config.val_fraction))))
            order = self.rng.permutation(len(slices))
            slices, val = [slices[i] for i in sorted(order[k:])], [slices[i] for i in sorted(order[:k])]
        self.slices, self.val, self.probs = slices, val, _probs(slices)
        self.warnings = _data_warnings(config, slices, val, self.n_classes, val_given=val_images is not None)

    def settle_start(self, choice: start.StartChoice | None) -> TrainEvent:
        """keep_prior and the loss weighting by the start (core/train/start.py), the start model kept as a
        teacher where nobody painted; returns the 'start' event."""
        config = self.config
        self.start = start.settle(
            config, self.slices, self.model, built=self.built, new_head=self.new_head, choice=choice
        )
        keeps = self.start.kept  # a start that is kept: its loss weighting is kept too
        self.config = replace(
            config,
            keep_prior=self.start.keep_prior,
            class_balance=not keeps if config.class_balance is None else config.class_balance,
            border_weights=not keeps if config.border_weights is None else config.border_weights,
        )
        sampling.weigh(self.slices, self.config)
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False) if keeps else None
        warning = "; ".join(w for w in (*self.warnings, self.start.warning) if w)
        elapsed = time.perf_counter() - self.t_start
        return TrainEvent(
            "start",
            0,
            self.config.steps,
            float("nan"),
            self.config.lr,
            elapsed,
            0.0,
            message=self.start.message,
            warning=warning,
        )

    def build_optimizer(self) -> None:
        """The model (and the kept start) on the device, the optimizer, and the model file's info."""
        config, model = self.config, self.model
        self.dev = resolve_device(config.device)
        self.precision = config.precision or default_precision(self.dev)
        self.amp_dtype = autocast_dtype(self.precision, self.dev)
        self.mem_fmt = memory_format(self.dev)
        model.to(self.dev).to(memory_format=self.mem_fmt)
        if self.teacher is not None:
            self.teacher.to(self.dev).to(memory_format=self.mem_fmt)
        if config.optimizer == "sgd":
            self.opt = torch.optim.SGD(
                model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        else:
            self.opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step0 = 0
        if config.resume:
            load_optimizer_state(config.resume, self.opt)
            self.step0 = int((self.start_info.training or {}).get("steps_done", 0))
            for g in self.opt.param_groups:
                g["lr"] = config.lr
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16 and self.dev.type == "cuda")
        self.info = self._model_info()
        # a step event's snapshot copies the live weights, on the CPU, and nothing else of the run
        self.snapshot = partial(_snapshot_model, model, self.info)
        self.best_state = _cpu_state(model)
        self.best_step = self.step = self.fresh = self.step0  # best weights are tracked from fresh on

    def _model_info(self) -> ModelInfo:
        config, model = self.config, self.model
        classes = list(config.class_names) if config.class_names else _default_class_names(config, self.n_classes)
        return ModelInfo(
            model=model.config.to_dict(),
            classes=classes,
            label_mode=config.label_mode,
            border_class=config.border_class,
            normalization={"method": "percentile", "low": config.norm_low, "high": config.norm_high},
            training={
                "config": config.to_dict(),
                "start": self.start.note,
                "tile_in": self.t_in,
                "tile_out": self.t_out,
                "n_train_slices": len(self.slices),
                "n_val_slices": len(self.val),
                "device": str(self.dev),
                "start_agreement": self.start.agreement,
                "start_worst_class": self.start.worst,
                "domain": start.domain_signature(s.image for s in self.slices),
            },
            name=(self.start_info.name if self.start_info is not None and config.resume else ""),
            zoom={"input_zoom": config.zoom} if config.zoom != 1.0 else {},
        )

    # ------------------------------------------------------------------ each step

    def lr_at(self, step: int) -> float:
        config = self.config
        if config.schedule == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
        return config.lr

    def set_lr(self) -> float:
        lr = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def take_live(self, updates, lr: float) -> Generator[TrainEvent, None, None]:
        """Live training: the planes painted since the last step join the data (event 'live')."""
        if not updates:
            return
        n_new, skipped = _take_strokes(
            updates, self.pairs, self.slices, self.val, self.config, self.n_classes, self.in_channels, self.channel_axis
        )
        # the data changed: weights from before the strokes are no 'best' (the loss rises with them)
        self.best_metric, self.ema, self.fresh = None, None, self.step
        self.probs = _probs(self.slices)
        msg = f"{n_new} painted slice(s) joined the training data" + (f"; {skipped}" if skipped else "")
        if self.preview is not None and updates[-1][0] == self.preview[0]:  # the preview follows the painting
            self.preview = (self.preview[0], updates[-1][1] or 0)
        yield self.event("live", lr, 0.0, message=msg)

    def train_step(self, lr: float) -> None:
        """One optimisation step on a sampled batch, then the loss, the agreement and the best weights."""
        config, dev, b = self.config, self.dev, self.batch
        # through the module, so a benchmark can time (wrap) the sampler
        x, y, w = sampling.sample_batch(self.slices, self.probs, config, self.t_in, self.t_out, self.rng)
        b["x"] = torch.from_numpy(x).to(dev).contiguous(memory_format=self.mem_fmt)
        b["y"], b["w"] = torch.from_numpy(y).to(dev), torch.from_numpy(w).to(dev)
        amp = dict(dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with torch.autocast(dev.type, **amp):
            b["logits"] = self.model(b["x"])
        if self.teacher is None:
            b["loss"] = weighted_loss(b["logits"], b["y"], b["w"])
        else:
            with torch.no_grad(), torch.autocast(dev.type, **amp):
                b["t_logits"] = self.teacher(b["x"])
            b["loss"] = kept_start_loss(b["logits"], b["t_logits"], b["y"], b["w"], config.keep_prior)
        if not torch.isfinite(b["loss"]):
            raise FloatingPointError(
                f"the loss became {b['loss'].item()} at step {self.step + 1}; lower the learning rate (now {lr:g})"
            )
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(b["loss"]).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.step += 1
        self.last_loss = float(b["loss"].item())
        self.history.append((self.step, self.last_loss))
        with torch.no_grad():
            pred = start.collapse(b["logits"].argmax(1).cpu().numpy(), config.label_mode)
            acc, _ = start.balanced_accuracy(pred, start.collapse(y, config.label_mode))
        if np.isfinite(acc):
            self.agree = acc if self.agree is None else 0.9 * self.agree + 0.1 * acc
        self.ema = self.last_loss if self.ema is None else 0.95 * self.ema + 0.05 * self.last_loss
        if not self.val and self._better(-self.ema) and self.step - self.fresh >= min(20, config.steps):
            self.best_metric, self.best_step, self.best_state = -self.ema, self.step, _cpu_state(self.model)

    def _better(self, metric: float) -> bool:
        return self.best_metric is None or metric > self.best_metric

    def report(self, lr: float) -> Generator[TrainEvent, None, None]:
        """The step's events: 'step' (every log_every), 'validation' and 'preview' when due."""
        config, step = self.config, self.step
        elapsed = time.perf_counter() - self.t_start
        eta = elapsed / max(step - self.step0, 1) * (config.steps - step)
        if step % max(config.log_every, 1) == 0 or step == config.steps:
            yield self.event("step", lr, eta, elapsed=elapsed)
        if self.val and (step % config.val_every == 0 or step == config.steps):
            metric = _validate(self.model, self.val, self.n_classes, self.dev, self.precision)
            self.model.train()
            self.val_history.append((step, metric))
            if self._better(metric):
                self.best_metric, self.best_step, self.best_state = metric, step, _cpu_state(self.model)
            yield self.event("validation", lr, eta, val_metric=metric)
        if self.preview is not None and config.preview_every and step % config.preview_every == 0:
            pv = _preview(
                self.model, self.pairs[self.preview[0]][0], self.preview[1], self.dev, self.channel_axis, config
            )
            self.model.train()
            yield self.event("preview", lr, eta, preview=pv, preview_where=tuple(self.preview))

    def event(self, kind: str, lr: float, eta: float, *, elapsed: float | None = None, live: bool = True, **kw):
        """A TrainEvent at the current step; ``live`` ones (the run goes on) offer a weight snapshot."""
        if elapsed is None:
            elapsed = time.perf_counter() - self.t_start
        return TrainEvent(
            kind,
            self.step,
            self.config.steps,
            self.last_loss,
            lr,
            elapsed,
            eta,
            device=str(self.dev),
            snapshot_model=self.snapshot if live else None,
            agreement=self.agree,
            **kw,
        )

    # ------------------------------------------------------------------ the end

    def result(self, state: TrainState) -> TrainResult:
        """CPU copies of the weights (best and last) and what the model file records."""
        model, step = self.model, self.step
        last_state = _cpu_state(model)
        # no best tracked yet (too few steps, no validation): the last weights are the best there are
        tracked = self.best_metric is not None
        best_state, best_step = (self.best_state, self.best_step) if tracked else (last_state, step)
        training = dict(
            self.info.training,
            steps_done=step,
            best_step=best_step,
            best_metric=self.best_metric,
            final_loss=self.last_loss,
            state=state.value,
            seconds=round(time.perf_counter() - self.t_start, 1),
        )
        info = replace(self.info, training=training)
        cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
        cpu_model.info = info
        return TrainResult(
            model=cpu_model,
            best_state=best_state,
            last_state=last_state,
            info=info,
            state=state,
            steps_done=step,
            history=self.history,
            val_history=self.val_history,
            best_step=best_step,
            best_metric=self.best_metric,
            optimizer_state=_cpu_opt_state(self.opt),
        )

    def crashed(self, exc: Exception) -> TrainEvent:
        """The 'crashed' event, with the weights trained so far (None before the first step)."""
        # free the step's tensors and move the weights off the device first, so an out-of-memory crash
        # can still be snapshotted and GPU memory comes back
        self.batch.clear()
        self.opt.zero_grad(set_to_none=True)
        self.model.to("cpu")
        if self.teacher is not None:
            self.teacher.to("cpu")
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        partial_result = None
        if self.step > self.step0:
            try:
                partial_result = self.result(TrainState.CRASHED)
            except Exception:
                partial_result = None
        return self.event(
            "crashed",
            self.lr_at(self.step),
            0.0,
            live=False,
            state=TrainState.CRASHED,
            error=exc,
            result=partial_result,
        )

    def release(self) -> None:
        """The weights to the CPU, the optimizer state and the kept start dropped, GPU memory returned."""
        self.model.to("cpu")
        self.opt = self.teacher = None
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the steps' parts


def _build(config: TrainConfig, n_classes: int, in_channels: int) -> tuple[UNet, ModelInfo | None, str, bool]:
    """The network to train, its start's info, a note on the start, and whether the head is new."""
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


def _tile(config: TrainConfig, model: UNet, *, auto: bool) -> tuple[int, int]:
    """The training tile's input and output sides, valid for the model (its depth may differ from the config's)."""
    t_in, depth = int(config.tile_in), model.depth
    if model.padding == "valid" and auto and not is_valid_size(t_in, depth):
        # 'auto' chose a model of another depth than the tile was sized for: the nearest valid tile
        lo, hi = nearest_valid_sizes(t_in, depth)
        t_in = hi if lo is None or hi - t_in <= t_in - lo else lo
    if model.padding == "valid":
        check_tile_in(t_in, depth)  # the starting model's depth may differ from the config's
    else:
        step = 2**depth
        t_in = max(step, t_in // step * step)
    return t_in, model.output_size(t_in)


def _probs(slices: list[TrainSlice]) -> np.ndarray:
    """How often each slice is sampled: by its annotated pixels."""
    counts = np.array([s.n_annotated for s in slices], dtype=np.float64)
    return counts / counts.sum()


def _data_warnings(config: TrainConfig, slices, val, n_classes: int, *, val_given: bool) -> tuple[str, str]:
    """What the strokes cannot teach: only one class painted; no validation although asked for."""
    painted = np.unique(
        np.concatenate([np.unique(start.collapse(s.target[s.target >= 0], config.label_mode)) for s in slices])
    )
    one_class = ""
    if len(painted) == 1:
        what = _default_class_names(config, n_classes)[int(painted[0])] if painted[0] < n_classes else "one class"
        one_class = f"only {what} is painted: the model can only learn to predict {what} everywhere. Paint " + (
            "objects (2, 3, ...) too" if painted[0] == 0 else "some background (1) too"
        )
    no_val = ""
    if config.val_fraction > 0 and not val_given and not val:  # asked for: say why there is none
        no_val = (
            f"no validation (val_fraction {config.val_fraction:g}): only one slice is annotated, and training "
            "needs it; annotate a second slice to validate"
        )
    return one_class, no_val


def _snapshot_model(model: UNet, info: ModelInfo) -> UNet:
    """What a step event's snapshot() copies: the live weights, on the CPU, nothing else."""
    net = build_model(model.config)
    net.load_state_dict(_cpu_state(model))
    net.info = info
    return net


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


def _choose_start(
    config: TrainConfig, pairs, in_channels: int, channel_axis, t_start: float
) -> Generator[TrainEvent, None, start.StartChoice]:
    """init='auto': score every candidate start on the painted pixels (no training) and pick one.

    Scoring takes 5-20 s on a CPU (each candidate predicts the painted crops): a 'scoring' event before
    each candidate says which one (``step`` = candidates scored, ``total`` = candidates) so a GUI can show
    progress."""
    # a broken file of the user's is reported before the shipped models are scored (and each file is read once)
    loaded = {name: _load_candidate(name) for name in config.candidates}
    # agreement collapses a border class into its object; the slices as painted (each candidate zooms them)
    quick = replace(config, border_class=False, zoom=None)
    n_classes = _n_classes(quick, pairs)
    slices = prepare_slices(pairs, quick, n_classes, in_channels, channel_axis, weights=False)
    signature = start.domain_signature(s.image for s in slices)
    scored = []
    names = start.default_candidates(config.candidates)
    for i, name in enumerate(names):
        message = f"scoring start {i + 1}/{len(names)}: {Path(name).stem if name != start.SCRATCH else name}"
        yield TrainEvent(
            "scoring", i, len(names), float("nan"), float("nan"), time.perf_counter() - t_start, 0.0, message=message
        )
        if name == start.SCRATCH:
            scored.append(start.Candidate(name))
            continue
        scored.append(
            start.score_candidate(
                name, slices, config.label_mode, n_classes, signature, zoom=config.zoom, model=loaded.get(name)
            )
        )
    return start.choose(scored)


def _load_candidate(name: str) -> UNet:
    """A --candidates model: its header first, so a package napari-unet did not write is refused before any
    of it loads (training starts only from napari-unet U-Nets, which carry no code)."""
    read_info(resolve_model_path(name))
    return load_model(name)


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
            zoom=1.0,  # the slices are zoomed for the model already
        )
        scores.append(annotated_iou(pred, s.target, n_classes))
    return float(np.nanmean(scores)) if scores else float("nan")


def _preview(model: UNet, image, z: int, dev, channel_axis, config: TrainConfig) -> np.ndarray:
    """Labels of one slice, normalised as in training."""
    is_stack = len(np.shape(image)) == (3 if channel_axis is None else 4)
    plane = plane_at(image, z if is_stack else None, channel_axis)
    lo, hi = percentiles(plane, config.norm_low, config.norm_high)
    kw = dict(normalize=(lo, hi), device=dev, output="labels", zoom=config.zoom)  # the image as the user sees it
    if channel_axis is None:
        return predict(model, plane[0], **kw)
    return predict(model, plane, channel_axis=0, **kw)


def train(config: TrainConfig, images, labels, **kwargs) -> TrainResult:
    """Run :func:`iter_train` to the end without events."""
    return drain(iter_train(config, images, labels, **kwargs))
