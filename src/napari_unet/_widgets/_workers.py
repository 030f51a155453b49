"""Threads and jobs: the thin layer between widgets and core generators.

Workers get plain arrays and frozen configs (never a layer or a widget) and
run a core generator in a :func:`napari.qt.threading.create_worker` thread;
widgets touch layers only in the worker's signal slots, on the GUI thread.
:class:`JobWidget` is the job lifecycle Train and Predict share (start, progress,
finish, stop when the widget closes). Layers: :mod:`._layers`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

from . import _state

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
        except Exception:  # only a head start (e.g. napari quit mid-import): the worker imports it anyway
            pass
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


BACKGROUND_NICE = 10  # the worker threads' nice value (Linux): below the GUI thread's 0


def run_below_gui() -> None:
    """Lower the calling worker thread's CPU priority (Linux: nice +10, that thread only).

    On a busy CPU the GUI thread (and, with software OpenGL, the threads drawing the canvas) then
    take a core before the training thread does. Unprivileged, a thread cannot raise its priority
    back, so the pool thread stays low for later jobs too, which is where background work belongs.
    Elsewhere, and on the main thread (a test draining a job synchronously), nothing changes.
    """
    import os
    import sys

    if not sys.platform.startswith("linux") or threading.current_thread() is threading.main_thread():
        return
    tid = threading.get_native_id()  # on Linux, PRIO_PROCESS with a thread id sets that thread alone
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except OSError:  # a sandbox that forbids it: the job runs at normal priority
        pass


def drain(gen: Generator, threads: int | None = None):
    """Yield from a core generator and return its result, below the GUI's priority (:func:`run_below_gui`);
    ``threads`` caps torch's CPU threads meanwhile."""
    run_below_gui()
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


def start_worker(
    gen: Generator,
    *,
    yielded=None,
    returned=None,
    errored=None,
    finished=None,
    aborted=None,
    threads: int | None = None,
):
    """Run ``gen`` in a napari GeneratorWorker thread and connect the GUI-thread slots."""
    from napari.qt.threading import create_worker

    connect = {
        sig: slot
        for sig, slot in (
            ("yielded", yielded),
            ("returned", returned),
            ("errored", errored),
            ("finished", finished),
            ("aborted", aborted),
        )
        if slot is not None
    }
    # with an 'errored' slot given here, superqt does not re-raise the error in the GUI thread
    worker = create_worker(
        drain, gen, threads, _connect=connect, _start_thread=False, _ignore_errors=errored is not None
    )
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

    def release(self) -> None:
        """No longer block the other widget's jobs (see ``_state.RUNNING``)."""
        if _state.RUNNING.get(self.name) is self:
            _state.RUNNING.pop(self.name, None)

    def finish(self) -> None:
        """Everything the worker sent has been shown: drop the generator (and its model/tensors) now."""
        self.release()
        self.worker = None

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


class JobWidget:
    """Mixin for a dock widget that runs one :class:`Job` at a time (Train, Predict).

    The widget defines ``_set_running(bool)``; it calls :meth:`_run_job` to start a
    generator and :meth:`_stop_on_close` once in ``__init__``.
    """

    job: Job | None = None
    progress = None
    _closed = False  # the Qt widget is gone: slots only clean up

    def _run_job(self, job: Job, gen: Generator, device, *, total: int, desc: str, status: str, **slots) -> Job:
        """Show a progress bar and start ``gen`` in a worker; ``slots``: yielded, returned, errored, aborted."""
        from napari.utils import progress

        from napari_unet.core.network.device import resolve_device

        self.job = job
        self.progress = progress(total=total, desc=desc)
        self._set_running(True)
        self.status.value = status
        _state.RUNNING[job.name] = job
        threads = gui_threads() if resolve_device(device).type == "cpu" else None
        job.worker = start_worker(gen, finished=self._on_finished, threads=threads, **slots)
        return job

    def _on_finished(self, *_):
        if not self._closed:
            self._set_running(False)
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.job is not None:
            self.job.finish()

    def _on_close(self) -> None:
        """Called once when the Qt widget is destroyed, before its job is stopped."""

    def _stop_on_close(self) -> None:
        """Closing the widget (or napari) stops its job; the slot holds the widget only until then."""
        holder = {"widget": self}

        def stop(*_):
            w = holder.pop("widget", None)
            if w is None:
                return
            w._closed = True
            w._on_close()
            if w.job is not None:
                w.job.stop(quit=True)
                w.job.release()

        self.native.destroyed.connect(stop)
