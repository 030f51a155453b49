"""What the dock widgets share inside one napari session (GUI thread only).

``TRAINED_MODELS`` holds the trained models by name ("run 1", "run 2", ...), so Train can save or export
any of them and Predict can offer them without a file, and Train's 'auto' start can weigh this session's
runs against the shipped models (:func:`model_file`). ``RUNNING`` names the jobs in flight ('train',
'predict') so one widget can refuse to start while another runs (two jobs on one CPU/GPU would only slow
both and double the memory). :func:`weights` is the one set of eq. 2 weight settings that the Weight map
preview and Train both show and edit (:class:`WeightSettings`).

Every run is saved as it finishes to a user folder (:func:`models_dir`) and the runs found there are
listed again in the next session. Why saved, not a "save?" prompt when napari closes: napari gives a
plugin no way to hold its window's close, a crash or a killed process would still lose the run, and the
complaint users make of peers is losing a trained model, not disk space (the shipped models' files are
3.9 MB each; Fiji's U-Net asks "save snapshot?" only on cancel). Delete files there to forget runs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal

MODELS_ENV = "NAPARI_UNET_MODELS_DIR"  # overrides the user folder (tests, shared machines)
_RUN = re.compile(r"^run-(\d+)\.safetensors$")


class _Models(dict):
    """name -> model; runs of earlier sessions are stored as their file and loaded when first asked for."""

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if isinstance(value, Path):
            from napari_unet.core.models.load import load_model

            value = load_model(value)
            super().__setitem__(name, value)
        return value


TRAINED_MODELS: dict[str, Any] = _Models()
LABELS: dict[str, str] = {}  # name -> what a picker shows: "run 2 · 60 steps · val IoU 0.81"
SESSION: list[str] = []  # the runs trained in this session, oldest first
EARLIER: set[str] = set()  # the runs saved by earlier sessions (listed, loaded when chosen)
RUNNING: dict[str, Any] = {}
_FILES: dict[str, tuple[int, Path]] = {}  # name -> (id of the model saved, its file)
_DIR: list[Path] = []


@dataclass
class WeightSettings:
    """The eq. 2 settings shown by the Weight map preview and by Train (either widget edits them)."""

    w0: float
    sigma: float
    class_balance: bool
    border: bool
    label_mode: str


class _Events:
    models_changed = Signal()
    weights_changed = Signal()  # weights() changed; the widgets showing it follow


events = _Events()


_WEIGHTS: list[WeightSettings] = []  # made when first asked for: the core (and torch) load with a widget


def weights() -> WeightSettings:
    """The shared eq. 2 settings (the paper's w0 and σ, both toggles on, instance mode until changed)."""
    if not _WEIGHTS:
        from napari_unet.core.train.weights import SIGMA, W0

        _WEIGHTS.append(WeightSettings(W0, SIGMA, True, True, "instance"))
    return _WEIGHTS[0]


def set_weights(**changes) -> None:
    """Change the shared weight settings and tell the widgets that show them."""
    shared = weights()
    changed = {k: v for k, v in changes.items() if getattr(shared, k) != v}
    if changed:
        for k, v in changed.items():
            setattr(shared, k, v)
        events.weights_changed.emit()


def models_dir() -> Path:
    """Where every trained run is saved: ``$NAPARI_UNET_MODELS_DIR``, else the user data folder
    (``~/.local/share/napari-unet/models`` on Linux, platformdirs' equivalent elsewhere)."""
    given = os.environ.get(MODELS_ENV)
    if given:
        return Path(given)
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-unet", appauthor=False)) / "models"


def _saved_runs() -> dict[int, Path]:
    folder = models_dir()
    found = {}
    if folder.is_dir():
        for f in folder.iterdir():
            m = _RUN.match(f.name)
            if m:
                found[int(m.group(1))] = f
    return dict(sorted(found.items()))


def _list_saved() -> None:
    """The runs saved by earlier sessions, listed (not loaded) under their names."""
    for n, path in _saved_runs().items():
        name = f"run {n}"
        try:
            label = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["label"]
        except (OSError, ValueError, KeyError):
            label = name
        TRAINED_MODELS[name] = path
        EARLIER.add(name)
        LABELS[name] = f"{label} (saved)"
        _FILES[name] = (-1, path)


def describe(steps: int, *, val_iou: float | None = None, agreement: float | None = None) -> str:
    """A run's score as the pickers show it: held-out IoU when validated, else its painted pixels right."""
    score = ""
    if val_iou is not None:
        score = f" · val IoU {val_iou:.2f}"
    elif agreement is not None:
        score = f" · painted px right {agreement:.2f}"
    return f"{steps} steps{score}"


def register_run(model, summary: str, result=None) -> str:
    """Keep a finished (or crashed) run as "run N" and save it to :func:`models_dir`; returns its name.

    ``result``: the TrainResult (its best weights are saved with the run's info); else ``model`` is saved.
    A folder that cannot be written keeps the run for this session only (the error is raised after it
    is registered, so the caller can say so)."""
    from napari_unet.core.models.checkpoint import save_model

    taken = [int(n.split()[1]) for n in TRAINED_MODELS if re.fullmatch(r"run \d+", n)]
    n = max([0, *taken, *_saved_runs()]) + 1
    name = f"run {n}"
    TRAINED_MODELS[name] = model
    LABELS[name] = f"{name} · {summary}"
    SESSION.append(name)
    events.models_changed.emit()
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{n}.safetensors"
    path = Path(result.save(path) or path) if result is not None else save_model(path, model)
    path.with_suffix(".json").write_text(json.dumps({"label": LABELS[name]}), encoding="utf-8")
    _FILES[name] = (id(model), path)
    return name


def register_model(name: str, model) -> None:
    """Keep ``model`` under ``name`` for this session only (not saved)."""
    TRAINED_MODELS[name] = model
    LABELS.setdefault(name, name)
    if name not in SESSION:
        SESSION.append(name)
    events.models_changed.emit()


def latest() -> str | None:
    """The model kept last in this session: its last run, or one registered (None before the first)."""
    return SESSION[-1] if SESSION else None


def choices(session: bool | None = None) -> list[tuple[str, str]]:
    """(label, name) of the kept models, newest first: what Train's and Predict's model pickers list;
    ``session`` True: this session's only, False: the earlier sessions' only, None: both."""
    names = [n for n in reversed(list(TRAINED_MODELS)) if session is None or (n not in EARLIER) == session]
    return [(LABELS.get(name, name), name) for name in names]


def model_file(name: str) -> Path:
    """A file holding model ``name`` (the saved run, else written once per model in a temporary folder),
    so it can be a start candidate like any model file."""
    from napari_unet.core.models.checkpoint import save_model

    kept = _FILES.get(name)
    if kept is not None and kept[1].is_file() and (kept[0] == -1 or kept[0] == id(dict.get(TRAINED_MODELS, name))):
        return kept[1]
    model = TRAINED_MODELS[name]
    if not _DIR:
        _DIR.append(Path(tempfile.mkdtemp(prefix="napari-unet-session-")))
    path = save_model(_DIR[0] / f"{name.replace(' ', '-')}.safetensors", model)
    _FILES[name] = (id(model), path)
    return path


def clear() -> None:
    """Forget everything and list the saved runs again (tests, and a fresh viewer)."""
    TRAINED_MODELS.clear()
    LABELS.clear()
    SESSION.clear()
    EARLIER.clear()
    RUNNING.clear()
    _FILES.clear()
    _WEIGHTS.clear()
    _list_saved()
    events.models_changed.emit()


_list_saved()
