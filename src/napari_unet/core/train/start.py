"""Where fine-tuning starts: how well a model already knows the user's task and images.

Measured on the strokes painted so far, in seconds, without training:

* **agreement**: the balanced accuracy of the model's own prediction on the
  painted pixels (mean over the painted classes of the fraction predicted as
  painted). A model that already knows the task scores 0.95-0.98 on its own
  kind of images; the EM membrane model on VNC mitochondria scores 0.55.
* **worst class**: the lowest of those per-class fractions. It tells a model
  that *contradicts* the strokes (one painted class mostly predicted as
  another: the EM model gets 0.17 of the background painted around
  mitochondria right, it calls cytoplasm 'cell') from one that is being
  *corrected* (strokes painted over its mistakes are wrong by construction, but
  only some of a class: 0.51-0.76 with 5-15 correction strokes per image on
  DSB and ISBI, measured in docs/accuracy.md), where the balanced accuracy
  cannot (0.55 vs 0.74-0.88).
* **domain similarity**: how alike the user's images and the model's training
  images look after the shared percentile normalisation: histograms of
  intensity and of gradient magnitude at two scales, compared by total
  variation distance (1 = same statistics, 0 = disjoint). Stored with every
  trained model (``info.training['domain']``), so a user's own models are
  candidates too.

From these, :func:`prior_weight` sets how strongly fine-tuning keeps the start
model's prediction where nobody painted (``TrainConfig.keep_prior=None``), and
:func:`choose` picks the start for ``init='auto'``; :func:`settle` settles every run's start (which
model, zoom, keep_prior, what the user is told):

Only models trained on images like the user's count (similarity >= ``SIMILAR``,
or unknown for a model file without a signature): a model from another domain
can agree with strokes by accident (the nuclei model calls bright EM cells
'nucleus': 0.77 on ISBI strokes) and fine-tunes no better than scratch there
(docs/accuracy.md). Among those:

1. a model that does not contradict the strokes (worst class > ``CONTRADICT``):
   the best agreeing one; it is kept where nobody painted (:func:`prior_weight`);
2. else the most similar one: its features are kept, its prediction is not
   (prior off), the strokes teach the new structure;
3. else scratch.

Why not a linear probe on the start model's features: measured on VNC
mitochondria, a probe on a random network scored higher (0.74) than on the EM
model (0.58) although the EM model fine-tunes far better (IoU 0.59 vs 0.20 in
5 CPU minutes). docs/accuracy.md has the numbers behind the thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..data.intensity import percentiles, scale_intensity
from ..data.labels import IGNORE
from ..data.planes import plane_at
from ..data.zoom import ZOOM_RANGE, model_zoom, zoom_plane
from ..models.checkpoint import CheckpointError, available_models, resolve_model_path
from ..models.load import load_model, read_info
from ..network.device import resolve_device
from ..predict.tiles import predict

__all__ = [
    "CONTRADICT",
    "Candidate",
    "KEEP_FULL",
    "MAX_LEFT",
    "MIN_GAIN",
    "ModelMatch",
    "POOR_MATCH",
    "SCRATCH",
    "SIMILAR",
    "Start",
    "StartChoice",
    "ZOOMS",
    "agreement",
    "balanced_accuracy",
    "choose",
    "collapse",
    "default_candidates",
    "domain_signature",
    "domain_similarity",
    "image_signature",
    "pick_zoom",
    "prior_weight",
    "rank_models",
    "score_candidate",
    "settle",
    "zoom_for",
]

# the magnifications tried by the auto start: a factor 2 either way (20x <-> 40x objectives), in sqrt(2) steps
ZOOMS = (0.5, 0.71, 1.0, 1.41, 2.0)
# another zoom is taken only when it agrees clearly better than the image as it is: by MIN_GAIN, and
# with at most MAX_LEFT of the disagreement left. A model at another magnification mostly stops
# disagreeing when zoomed (DSB nuclei 3x: 0.92 -> 0.97 at x0.5); strokes painted over a model's mistakes
# are disagreement by construction, at every zoom, and a zoom that happens to score 0.03 better there
# (ISBI correction strokes: 0.73 at x2, which cleared MIN_GAIN over the images as they are) is noise
# that cost 0.17 IoU (docs/accuracy.md)
MIN_GAIN = 0.03
MAX_LEFT = 0.5


def pick_zoom(scores: dict[float, float], default: float = 1.0) -> float:
    """The zoom with the best agreement; ``default`` (the model's own) unless another one is better by
    :data:`MIN_GAIN` and leaves at most :data:`MAX_LEFT` of the disagreement at ``default``."""
    scores = {s: a for s, a in scores.items() if a is not None and np.isfinite(a)}
    if not scores:
        return default
    best = max(scores, key=lambda s: (scores[s], -abs(math.log(s / default))))
    base = scores.get(default)
    if base is not None and (scores[best] < base + MIN_GAIN or 1.0 - scores[best] > MAX_LEFT * (1.0 - base)):
        return default
    return float(best)


CONTRADICT = 0.3  # worst-class recall at or below: the start model contradicts the strokes; prior off
KEEP_FULL = 0.5  # at and above: full prior (keep_prior 1); linear in between
SIMILAR = 0.8  # domain similarity from which a disagreeing model still beats scratch
# measured (docs/accuracy.md): ISBI vs VNC EM 0.94, DSB vs DSB x2 0.95, EM vs DSB 0.20, uniform noise vs ISBI 0.66
SCRATCH = "scratch"

_BINS = 24
_RANGES = {"intensity": (-0.25, 1.25), "grad1": (0.0, 0.4), "grad4": (0.0, 0.1)}
_MAX_PIXELS = 2**21  # agreement is scored on at most ~2 Mpx of the painted slices
_SCALE_PIXELS = 2**17  # ... and each magnification tried on ~0.13 Mpx of them


# ----------------------------------------------------------------------------- domain signature


def domain_signature(images: Iterable[np.ndarray], *, max_pixels: int = 2**22) -> dict:
    """Normalised histograms of normalised intensity and gradient magnitude (sigma 1 and 4 px).

    ``images``: 2D planes already normalised as for training (percentiles to [0, 1]).
    A small JSON-able dict stored in the model file.
    """
    hist = {k: np.zeros(_BINS) for k in _RANGES}
    used = 0
    for im in images:
        im = np.asarray(im, dtype=np.float32)
        if im.ndim == 3:  # (C, H, W): the first channel
            im = im[0]
        if used >= max_pixels:
            break
        feats = {
            "intensity": im,
            "grad1": ndi.gaussian_gradient_magnitude(im, 1.0),
            "grad4": ndi.gaussian_gradient_magnitude(im, 4.0),
        }
        for k, (lo, hi) in _RANGES.items():
            h, _ = np.histogram(np.clip(feats[k], lo, hi), bins=_BINS, range=(lo, hi))
            hist[k] += h
        used += im.size
    return {k: [round(float(v), 6) for v in h / max(h.sum(), 1)] for k, h in hist.items()}


def domain_similarity(a: dict | None, b: dict | None) -> float | None:
    """1 - mean total-variation distance of the signatures' histograms (None when one is missing)."""
    if not a or not b:
        return None
    d = [0.5 * np.abs(np.asarray(a[k]) - np.asarray(b[k])).sum() for k in _RANGES if k in a and k in b]
    return float(1.0 - np.mean(d)) if d else None


# ----------------------------------------------------------------------------- agreement


def _painted_crops(slices, max_pixels: int = _MAX_PIXELS):
    """(image crop, target crop) around the painted pixels, most-painted slices first, up to ``max_pixels``."""
    used = 0
    side = int(np.sqrt(max_pixels))  # a crop larger than the budget: the window around the painted middle
    for s in sorted(slices, key=lambda s: -s.n_annotated):
        painted = s.target != IGNORE
        rows, cols = np.flatnonzero(painted.any(axis=1)), np.flatnonzero(painted.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        if (y1 - y0) * (x1 - x0) > max_pixels:
            cy, cx = (int(np.median(a)) for a in np.nonzero(painted))
            y0, x0 = max(y0, min(cy - side // 2, y1 - side)), max(x0, min(cx - side // 2, x1 - side))
            y1, x1 = min(y1, y0 + side), min(x1, x0 + side)
        yield s.image[:, y0:y1, x0:x1], s.target[y0:y1, x0:x1]
        used += (y1 - y0) * (x1 - x0)
        if used >= max_pixels:
            return


def collapse(classes: np.ndarray, label_mode: str) -> np.ndarray:
    """Instance mode: the border class (2) counts as object (1), in targets and predictions alike."""
    if label_mode == "instance":
        return np.where(classes >= 2, 1, classes)
    return classes


def balanced_accuracy(pred: np.ndarray, target: np.ndarray) -> tuple[float, dict[int, float]]:
    """Mean over the painted classes of the fraction of their pixels predicted as that class."""
    pred, target = np.asarray(pred), np.asarray(target)
    ann = target != IGNORE
    p, t = pred[ann], target[ann]
    per = {int(c): float((p[t == c] == c).mean()) for c in np.unique(t)}
    return (float(np.mean(list(per.values()))) if per else float("nan")), per


def agreement(
    model, slices, label_mode: str, *, device="cpu", zoom: float = 1.0, max_pixels: int = _MAX_PIXELS
) -> tuple[float, dict[int, float]]:
    """How well ``model`` already predicts the painted pixels of ``slices`` (prepared TrainSlices), with the
    images zoomed by ``zoom`` for the network (the prediction comes back to the strokes' grid)."""
    preds, targets = [], []
    for image, target in _painted_crops(slices, max_pixels):
        c = image.shape[0]
        pred = predict(
            model,
            image[0] if c == 1 else image,
            channel_axis=None if c == 1 else 0,
            normalize=False,
            device=device,
            output="labels",
            zoom=zoom,
        )
        preds.append(collapse(np.asarray(pred, dtype=np.int64), label_mode).ravel())
        targets.append(collapse(target, label_mode).ravel())
    return balanced_accuracy(np.concatenate(preds), np.concatenate(targets))


def prior_weight(worst: float | None) -> float:
    """keep_prior for a start model whose worst painted class is ``worst`` right: 0 up to CONTRADICT,
    1 from KEEP_FULL."""
    if worst is None or not np.isfinite(worst):
        return 0.0
    return float(np.clip((worst - CONTRADICT) / (KEEP_FULL - CONTRADICT), 0.0, 1.0))


# ----------------------------------------------------------------------------- choosing a start


@dataclass
class Candidate:
    """One possible start, as scored on the user's strokes."""

    name: str  # shipped model name, model file, or 'scratch'
    agreement: float | None = None  # None: scratch, or classes that do not match the labels
    similarity: float | None = None  # None: scratch, or a model file without a domain signature
    note: str = ""
    worst: float | None = None  # the lowest per-class fraction right (None as agreement)
    zoom: float = 1.0  # the zoom at which it agrees best (core/data/zoom.py)

    @property
    def label(self) -> str:
        """The name as a user reads it: a model file by its stem."""
        return Path(self.name).stem if self.name.endswith(".safetensors") else self.name

    def describe(self) -> str:
        parts = []
        if self.agreement is not None:
            at = f" with the images zoomed x{self.zoom:.2f}" if self.zoom != 1.0 else ""
            parts.append(f"agrees {self.agreement:.2f} with your strokes{at}")
        if self.similarity is not None:
            parts.append(f"image similarity {self.similarity:.2f}")
        if self.note:
            parts.append(self.note)
        return f"{self.label} ({', '.join(parts)})" if parts else self.label


@dataclass
class StartChoice:
    """What :func:`choose` picked among the scored candidates, and why."""

    name: str  # 'scratch' or the model to start from
    reason: str
    candidates: list[Candidate]
    zoom: float = 1.0

    @property
    def picked(self) -> Candidate | None:
        """The candidate chosen (None: scratch when it was not among the candidates)."""
        return next((c for c in self.candidates if c.name == self.name), None)

    @property
    def keep_prior(self) -> float:
        """How strongly the pick is kept where nobody painted: :func:`prior_weight` of its worst class."""
        return prior_weight(self.picked.worst if self.picked is not None else None)


def choose(candidates: Sequence[Candidate]) -> StartChoice:
    """The rule of the module docstring, over scored candidates (scratch is always possible)."""
    models = [c for c in candidates if c.name != SCRATCH]
    listing = "; ".join(c.describe() for c in models) or "no start models"
    # a model trained on other images is no start, however well it happens to agree
    eligible = [c for c in models if c.similarity is None or c.similarity >= SIMILAR]
    agreeing = [c for c in eligible if prior_weight(c.worst) > 0]
    if agreeing:
        best = max(agreeing, key=lambda c: (c.agreement, c.similarity or 0.0))
        kp = prior_weight(best.worst)
        why = (
            f"start from {best.label}: it already agrees {best.agreement:.2f} with your strokes, so it is "
            f"fine-tuned and kept where you did not paint (keep_prior {kp:.2f}) [{listing}]"
        )
        return StartChoice(best.name, why, list(candidates), best.zoom)
    similar = [c for c in eligible if c.similarity is not None]
    if similar:
        best = max(similar, key=lambda c: (c.similarity, c.agreement or 0.0))
        why = (
            f"start from {best.label}: no model knows what you painted, but {best.label} was trained on images "
            f"like yours (similarity {best.similarity:.2f}); its features are kept, its prediction is not "
            f"(keep_prior 0) [{listing}]"
        )
        return StartChoice(best.name, why, list(candidates), best.zoom)
    why = f"start from scratch: no model was trained on images like yours [{listing}]"
    return StartChoice(SCRATCH, why, list(candidates))


# ----------------------------------------------------------------------------- the start of a run


@dataclass(frozen=True)
class Start:
    """A run's start, settled: what it trains from, at which zoom, how much of the start model is kept,
    and what the user is told."""

    init: str | None  # the model it fine-tunes; None: from scratch, or a resumed run (config.resume)
    zoom: float  # the images' zoom for the network (core/data/zoom.py)
    keep_prior: float
    kept: bool  # the start model's prediction is kept where nobody painted (keep_prior > 0, same head)
    agreement: float | None  # how well the start model agrees with the strokes (None: none measured)
    worst: float | None  # its worst painted class (:func:`balanced_accuracy`'s per-class fraction)
    message: str  # the 'start' event's: the auto start's reason, else ``note``
    note: str  # what the model file records (info.training['start'])
    warning: str  # the start model contradicts the strokes and is not kept ('' when not)


def zoom_for(config, choice: StartChoice | None, model) -> float:
    """The zoom a run trains at: the config's, else the auto start's pick, else the start ``model``'s own
    (a correction round keeps its zoom), 1 from scratch (``model`` None)."""
    if config.zoom is not None:
        return config.zoom
    if choice is not None:
        return choice.zoom
    return model_zoom(model) if model is not None else 1.0


def settle(config, slices, model, *, built: str, new_head: bool, choice: StartChoice | None = None) -> Start:
    """The start of a run whose ``model`` is built (``built`` says how: 'from scratch', 'fine-tuning X', ...)
    and whose strokes are prepared at its zoom (``slices``, the training ones; ``config.zoom`` settled by
    :func:`zoom_for`, ``config.init`` by ``choice``, what :func:`choose` picked for init='auto').

    keep_prior, unless the config gives it, is :func:`prior_weight` of the start model's worst painted class:
    the auto start's pick as scored, an explicit start that keeps its head as measured here on ``slices``;
    0 from scratch, for a resumed run and for an explicit start with a new head. An explicit start that
    contradicts the strokes (prior 0) is warned about: it learns from its features, its prediction is not kept.
    """
    fine_tune = bool(config.init) and not config.resume
    same_head = fine_tune and not new_head
    agree = worst = None
    if choice is not None and choice.picked is not None:
        agree, worst = choice.picked.agreement, choice.picked.worst
    elif choice is None and same_head:
        agree, per_class = agreement(model, slices, config.label_mode, device=resolve_device(config.device))
        worst = min(per_class.values()) if per_class else None
    keep, warning = config.keep_prior, ""
    if keep is None and choice is not None:
        keep = choice.keep_prior
    elif keep is None:
        keep = prior_weight(worst) if same_head else 0.0
        if same_head and keep == 0 and worst is not None:
            warning = (
                f"the start model contradicts your strokes (it predicts only {worst:.2f} of one painted class as "
                "you painted it): it learns what you painted from its features, and its prediction is not kept "
                "where you did not paint"
            )
    note = built + (f"; images zoomed x{config.zoom:.2f} to the model's object size" if config.zoom != 1.0 else "")
    if agree is not None:
        note += f"; it agrees {agree:.2f} with your strokes"
    if keep > 0 and fine_tune:
        note += (
            f", kept where you did not paint (keep_prior {keep:.2f})"
            if same_head
            else "; keep_prior ignored: the starting model has other classes"
        )
    message = choice.reason if choice is not None else note
    if choice is not None:
        note = f"{note} (auto: {choice.reason})"
    kept = same_head and keep > 0
    return Start(config.init, config.zoom, keep, kept, agree, worst, message, note, warning)


def score_candidate(
    name: str,
    slices,
    label_mode: str,
    n_classes: int,
    signature: dict,
    *,
    device="cpu",
    zoom: float | None = None,
    model=None,
):
    """A :class:`Candidate` for model ``name`` on the prepared ``slices`` (``zoom``: the zoom asked for, else
    the one of :data:`ZOOMS` around the model's own at which it agrees best; ``model``: ``name``
    already loaded)."""
    model = load_model(name) if model is None else model
    model_domain = (model.info.training or {}).get("domain")
    sim = domain_similarity(signature, model_domain)
    if model.config.in_channels != slices[0].image.shape[0]:
        return Candidate(name, None, None, f"expects {model.config.in_channels} channel(s)")
    matches = model.info.label_mode == label_mode and (label_mode == "instance" or model.n_classes == n_classes)
    if not matches:
        return Candidate(name, None, sim, "other classes")
    # the magnification: the zoom at which the model agrees best on a small part of the strokes
    own = model_zoom(model) if zoom is None else zoom
    at = own
    if zoom is None:
        tried = sorted({own, *(own * z for z in ZOOMS if ZOOM_RANGE[0] <= own * z <= ZOOM_RANGE[1])})
        quick = {
            z: agreement(model, slices, label_mode, device=device, zoom=z, max_pixels=_SCALE_PIXELS)[0] for z in tried
        }
        at = pick_zoom(quick, default=own)
    agree, per_class = agreement(model, slices, label_mode, device=device, zoom=at)
    if at != own and prior_weight(min(per_class.values()) if per_class else None) == 0:
        # a model that contradicts the strokes at every zoom says nothing about their scale: its own
        at = own
        agree, per_class = agreement(model, slices, label_mode, device=device, zoom=at)
    if at != 1.0:
        sim = domain_similarity(domain_signature(zoom_plane(s.image, at) for s in slices), model_domain)
    return Candidate(name, agree, sim, worst=min(per_class.values()) if per_class else None, zoom=at)


def default_candidates(extra: Iterable[str] = ()) -> list[str]:
    """Every shipped model, then the user's own model files, then scratch."""
    names = list(available_models()) + [str(e) for e in extra if e]
    return list(dict.fromkeys(names)) + [SCRATCH]


# ----------------------------------------------------------------------------- which model suits an image

# under this image similarity a model was trained on other images: measured on the bundled samples, the
# EM sample scores 0.98 with em-membrane and 0.21 with nuclei, the nuclei sample 0.75 with nuclei (DSB images
# of other sizes and stains) and 0.42 with em-membrane; uniform noise scores 0.66 with ISBI (docs/accuracy.md)
POOR_MATCH = 0.5


@dataclass(frozen=True)
class ModelMatch:
    """How well model ``name`` suits an image, before anyone paints: the domain similarity of the image
    and the model's training images (None: the model stores no signature), and whether it takes the
    image's channels at all."""

    name: str
    similarity: float | None
    label_mode: str = ""
    classes: tuple[str, ...] = ()
    fits: bool = True  # the model takes the image's number of channels
    note: str = ""  # why it does not fit, or why nothing is known

    @property
    def poor(self) -> bool:
        """Trained on images unlike this one (similarity under :data:`POOR_MATCH`), or unusable on it."""
        return not self.fits or (self.similarity is not None and self.similarity < POOR_MATCH)

    def describe(self) -> str:
        """'nuclei (image similarity 0.93)'."""
        if not self.fits:
            return f"{self.name} ({self.note})"
        if self.similarity is None:
            return f"{self.name} (image similarity unknown{': ' + self.note if self.note else ''})"
        return f"{self.name} (image similarity {self.similarity:.2f})"


def image_signature(
    image,
    *,
    channel_axis: int | None = None,
    zoom: float = 1.0,
    max_planes: int = 4,
    max_side: int = 1024,
    low=1.0,
    high=99.8,
) -> dict:
    """:func:`domain_signature` of ``image`` (a plane or a (Z, Y, X) stack, channels at ``channel_axis``).

    Up to ``max_planes`` evenly spaced planes (their central ``max_side`` px box, the only pixels read from
    a lazy stack), normalised per plane as training does (percentiles ``low`` / ``high``), zoomed by ``zoom``.
    """
    shape = [s for i, s in enumerate(np.shape(image)) if channel_axis is None or i != channel_axis % np.ndim(image)]
    n = int(shape[0]) if len(shape) == 3 else 1
    picks = np.unique(np.linspace(0, n - 1, min(n, max_planes)).round().astype(int)) if len(shape) == 3 else [None]
    # a central box of at most max_side px a side: the statistics of a large plane, read in a fraction of the time
    box = [slice(max(0, (s - max_side) // 2), max(0, (s - max_side) // 2) + max_side) for s in shape[-2:]]
    planes = []
    for z in picks:
        im = plane_at(image, None if z is None else int(z), channel_axis, *box)[0].astype(np.float32)
        im = scale_intensity(im, *percentiles(im, low, high))
        planes.append(zoom_plane(im, zoom) if zoom != 1.0 else im)
    return domain_signature(planes)


def _model_info(model):
    """The ModelInfo of a loaded model (None for a bare UNet), or of a model name / file (read without its
    weights)."""
    if isinstance(model, (str, Path)):
        return read_info(resolve_model_path(model))
    return getattr(model, "info", None)  # None: a bare UNet, neither loaded nor trained


def rank_models(image, models=None, *, channel_axis: int | None = None) -> list[ModelMatch]:
    """The models that suit ``image`` best first, by the auto start's domain similarity (no prediction run).

    ``models``: a mapping name -> loaded model or model file, or an iterable of model names / files
    (default: the shipped models). Each model's stored signature (``info.training['domain']``) is compared
    with the image's at the model's own zoom. Models that do not take the image's channels come last,
    then those whose similarity is unknown.
    """
    if models is None:
        models = list(available_models())
    items = models.items() if hasattr(models, "items") else ((str(m), m) for m in models)
    channels = 1 if channel_axis is None else int(np.shape(image)[channel_axis])
    signatures: dict[float, dict] = {}
    out = []
    for name, model in items:
        try:
            info = _model_info(model)
        except (OSError, CheckpointError) as e:
            out.append(ModelMatch(name, None, fits=False, note=f"unreadable: {e}"))
            continue
        if info is None:
            want = int(getattr(getattr(model, "config", None), "in_channels", channels))
            out.append(ModelMatch(name, None, fits=want == channels, note="no signature stored"))
            continue
        kw = dict(label_mode=info.label_mode or "", classes=tuple(info.classes or ()))
        want = int((info.model or {}).get("in_channels", 1))
        if want != channels:
            out.append(
                ModelMatch(name, None, fits=False, note=f"expects {want} channel(s), the image has {channels}", **kw)
            )
            continue
        zoom = model_zoom(_Info(info))
        if zoom not in signatures:
            signatures[zoom] = image_signature(image, channel_axis=channel_axis, zoom=zoom)
        sim = domain_similarity(signatures[zoom], (info.training or {}).get("domain"))
        out.append(ModelMatch(name, sim, note="" if sim is not None else "no signature stored", **kw))
    return sorted(out, key=lambda m: (not m.fits, m.similarity is None, -(m.similarity or 0.0)))


@dataclass(frozen=True)
class _Info:
    """A model's info where :func:`model_zoom` expects a model."""

    info: object
