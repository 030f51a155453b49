"""How a command's failure reaches the shell: one line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import sys

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
