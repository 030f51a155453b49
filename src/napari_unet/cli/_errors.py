"""How a command's failure reaches the shell: one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import NoReturn

FAILED = 1  # a device or disk failing mid-run
BAD_INPUT = 2  # the input or an option is wrong: the message says what would be right
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)


def run_command(args) -> int:
    """Run the parsed command ``args.func``; its exit code, or the code of the error it raised."""
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return INTERRUPTED
    except (RuntimeError, OSError, MemoryError) as e:  # a device or disk failing mid-run: no traceback wall
        print(f"error: {type(e).__name__}: {e}{_memory_hint(args, e)}", file=sys.stderr)
        return FAILED


def run_process(args) -> NoReturn:
    """Run the parsed command as this process's own (the console script) and end the process with its code.

    A refusal made before any work (SystemExit with a message) prints it and exits 2 (bad input). A Ctrl-C
    pressed after the command ended, such as a late second press while the process shuts down, exits 130:
    Python's handler is gone while modules are torn down (about 0.3 s with torch loaded), where the press
    killed the process (exit -2), and during exit callbacks it printed a traceback.
    """
    try:
        code = run_command(args)
    except KeyboardInterrupt:  # pressed again while the command's own last words were printed
        code = INTERRUPTED
    except SystemExit as e:
        code = _refusal_code(e)
    _end(code)


def _refusal_code(e: SystemExit) -> int:
    """The exit code of a SystemExit: its message on stderr and 2 (bad input), or its own number."""
    if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
        return BAD_INPUT
    return int(e.code or 0)


def _end(code: int) -> NoReturn:
    """End the process: exit callbacks run (a Ctrl-C meanwhile is noted, not raised), then the process exits
    with ``code``, or 130 after a Ctrl-C, without tearing the modules down."""
    pressed = []
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        atexit._run_exitfuncs()  # what the interpreter runs at exit (dask clusters, multiprocessing children)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (| head) or stream: nothing more to say there
                pass
        os._exit(INTERRUPTED if pressed else code)


def _memory_hint(args, e: BaseException) -> str:
    """For the network running out of memory: the options that need less (a smaller tile than the one used).

    Only torch's allocators say so ("CUDA out of memory", the CPU allocator's "can't allocate memory"): the tile
    and batch are then the likely cause. An array numpy cannot allocate (MemoryError: the image or its result)
    is not a tile's doing, and gets no hint about tiles.
    """
    text = str(e).lower()
    if isinstance(e, MemoryError) or not ("out of memory" in text or "can't allocate memory" in text):
        return ""
    train = args.command == "train"
    given = getattr(args, "tile_out", None) if not train else getattr(args, "tile_in", None)
    flag = "--tile-in" if train else "--tile-out"
    smaller = f"a {flag} below the {given} used" if given else f"a smaller {flag}"
    hint = f" (give {smaller}" + (" or a smaller --batch-size" if train else "")
    return hint + (")" if getattr(args, "device", None) == "cpu" else ", or use --device cpu)")
