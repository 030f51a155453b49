"""The thin layer between widgets and core generators.

Workers get plain arrays and frozen configs (never a layer or a widget) and
run a core generator in a :func:`napari.qt.threading.create_worker` thread;
widgets touch layers only in the worker's signal slots, on the GUI thread.
Also: choosing layers, checking them, and reading the slice on screen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator

import numpy as np

DEBOUNCE_MS = 200  # paint -> preview delay: long enough to skip mid-stroke updates, short enough to feel live


# ----------------------------------------------------------------------------- layer choices


def layer_choices(viewer, kind: str) -> Callable:
    """A magicgui ``choices`` callable listing the viewer's layers of one kind ('image' or 'labels')."""

    def choices(widget=None):
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, cls)]

    return choices


def follow_layers(viewer, container) -> None:
    """Refresh the container's layer pickers when layers are added, removed or renamed."""

    def reset(event=None):
        try:
            container.reset_choices()
        except RuntimeError:  # the Qt widget is gone
            pass

    viewer.layers.events.inserted.connect(reset)
    viewer.layers.events.removed.connect(reset)
    viewer.layers.events.moved.connect(reset)

    def disconnect():
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            ev.disconnect(reset)

    container.native.destroyed.connect(lambda *_: disconnect())


def check_image_layer(layer, what: str = "image") -> None:
    """Raise ValueError (user-facing) unless ``layer`` is a grey 2D image or a (Z, Y, X) stack."""
    if layer is None:
        raise ValueError(f"no {what} layer chosen: open an image (File > Open, or File > Open Sample > U-Net Segment)")
    if getattr(layer, "rgb", False):
        raise ValueError(
            f"{layer.name!r} is an RGB image; U-Net Segment works on grey images. Convert it first "
            "(right-click the layer > Split RGB, then use one channel)"
        )
    if getattr(layer, "multiscale", False):
        raise ValueError(f"{layer.name!r} is a multiscale (pyramid) image; open its full-resolution level as a plain layer")
    if layer.ndim not in (2, 3):
        raise ValueError(
            f"{layer.name!r} has {layer.ndim} dimensions {tuple(layer.data.shape)}; expected a 2D image (Y, X) or "
            "a stack (Z, Y, X). Split channels or time points into separate layers first"
        )


def current_index(viewer, layer) -> tuple[int, ...]:
    """Indices of the leading (non-YX) axes of ``layer`` at the slice on screen, clipped to the data."""
    shape = layer.data.shape
    lead = len(shape) - 2
    if lead <= 0:
        return ()
    pt = layer.world_to_data(viewer.dims.point)
    pt = np.asarray(pt)[-len(shape):]
    return tuple(int(np.clip(round(float(p)), 0, s - 1)) for p, s in zip(pt[:lead], shape[:lead]))


def current_plane(viewer, layer) -> tuple[np.ndarray, tuple[int, ...]]:
    """The 2D (Y, X) plane of ``layer`` on screen (a copy) and its leading indices."""
    idx = current_index(viewer, layer)
    return np.array(layer.data[idx] if idx else layer.data), idx


def show_plane(viewer, name: str, plane: np.ndarray, like, idx: tuple[int, ...], kind: str = "image", **kwargs):
    """Show one 2D plane as layer ``name`` placed at slice ``idx`` of layer ``like``; update in place if it exists.

    The layer holds (1, ..., 1, Y, X) data translated to the slice, so a preview of
    one slice shows on that slice only and costs one plane of memory, not a stack.
    """
    data = plane.reshape((1,) * len(idx) + plane.shape)
    scale = np.asarray(like.scale, dtype=float)
    translate = np.asarray(like.translate, dtype=float).copy()
    translate[: len(idx)] += np.asarray(idx, dtype=float) * scale[: len(idx)]
    from napari.layers import Labels

    active = viewer.layers.selection.active
    if name in viewer.layers and viewer.layers[name].data.ndim == data.ndim and (
        (kind == "labels") == isinstance(viewer.layers[name], Labels)
    ):
        layer = viewer.layers[name]
        # each assignment refreshes the layer: set only what changed (the preview of a
        # running training comes every few steps, on the GUI thread)
        if not np.array_equal(layer.translate, translate):
            layer.translate = translate
        if not np.array_equal(layer.scale, scale):
            layer.scale = scale
        layer.data = data
        for k, v in kwargs.items():
            if k not in ("colormap", "name") and getattr(layer, k, None) != v:
                setattr(layer, k, v)
    else:
        if name in viewer.layers:
            viewer.layers.remove(name)
        add = viewer.add_labels if kind == "labels" else viewer.add_image
        layer = add(data, name=name, scale=scale, translate=translate, **kwargs)
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active  # keep painting on the labels layer
    return layer


# ----------------------------------------------------------------------------- workers


TORCH_WARM = threading.Event()
_warm_lock = threading.Lock()
_warm_started = False


def warm_up_torch() -> None:
    """Import, once and in a daemon thread, what torch imports lazily at the first optimizer.

    ``torch.optim.*(...)`` imports ``torch._dynamo`` (sympy, torch.distributed: ~1.5 s here) on
    first use; done by the training worker, those imports held the GIL in chunks that froze the
    viewer for up to ~300 ms right after Train was pressed. The Train widget starts this when it
    docks, so the cost falls while the user is still setting up; ``TORCH_WARM`` is set when done.
    """
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return
        _warm_started = True

    def run():
        try:
            import torch._dynamo  # noqa: F401
        finally:
            TORCH_WARM.set()

    threading.Thread(target=run, name="napari-unet-torch-warm-up", daemon=True).start()


def gui_threads() -> int:
    """Torch CPU threads for a worker: all cores but one, which stays free for the GUI thread.

    With every core busy in torch's intra-op pool, the Qt event loop waits for a
    time slice and the brush stutters; one core less costs little throughput.
    """
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n - 1)


def drain(gen: Generator, threads: int | None = None):
    """Yield from a core generator and return its result; ``threads`` caps torch's CPU threads meanwhile."""
    if threads is None:
        result = yield from gen
        return result
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = yield from gen
    finally:
        torch.set_num_threads(before)
    return result


def start_worker(gen: Generator, *, yielded=None, returned=None, errored=None, finished=None, aborted=None,
                 threads: int | None = None):
    """Run ``gen`` in a napari GeneratorWorker thread and connect the GUI-thread slots."""
    from napari.qt.threading import create_worker

    connect = {sig: slot for sig, slot in (("yielded", yielded), ("returned", returned), ("errored", errored),
                                            ("finished", finished), ("aborted", aborted)) if slot is not None}
    # with an 'errored' slot given here, superqt does not re-raise the error in the GUI thread
    worker = create_worker(drain, gen, threads, _connect=connect, _start_thread=False, _ignore_errors=errored is not None)
    worker.start()
    return worker


class Job:
    """One running worker and its cancel Event; outlives the widget so closing can stop it."""

    def __init__(self, name: str):
        self.name = name
        self.cancel = threading.Event()
        self.worker = None
        self.started = time.perf_counter()

    @property
    def running(self) -> bool:
        # not ``worker.is_running``: that is False before the thread starts and
        # again before its queued signals reach the GUI; the widget's finished
        # slot sets ``worker = None`` once everything has been shown
        return self.worker is not None

    def stop(self, *, quit: bool = False) -> None:
        """Ask the generator to end after the current step (``quit``: also drop the rest)."""
        self.cancel.set()
        if quit and self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:
                pass


def error_text(exc: BaseException) -> str:
    """A one-line message for a notification: the exception's own text, which core writes for users."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in msg.lower():
        return f"{msg}. Lower the tile size or batch size (Advanced), or train on the CPU"
    return msg


class Throttle:
    """True at most every ``interval`` seconds (redraws and layer refreshes during a run)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = -1e9

    def __call__(self, force: bool = False) -> bool:
        now = time.perf_counter()
        if force or now - self._last >= self.interval:
            self._last = now
            return True
        return False
