"""Shared helpers for the benchmarks: raw result files, machine description and docs/benchmarks.md sections.

Each benchmark writes its raw numbers (every timed repetition, the machine, the load) to
``benchmarks/results/<name>.json`` and builds its section of docs/benchmarks.md from that file
alone, delimited by ``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->``; rerunning a benchmark
replaces its section only, so benchmarks can run in any order. ``--reuse`` rebuilds the section
from the stored file without measuring (:func:`run`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
RESULTS = Path(__file__).resolve().parent / "results"
HEADER = (
    "# Benchmarks\n\n"
    "Produced by the scripts in `benchmarks/` (`make bench` runs them all). Each table compares napari-unet "
    "with a peer measured in the same process on the same machine; ratios > 1 mean napari-unet is faster. "
    "Timings are medians of repeated runs. Each section is built from its raw numbers in "
    "`benchmarks/results/<name>.json` (`python benchmarks/bench_<name>.py --reuse` rebuilds it without measuring).\n"
)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {dev}; "
        f"{_dt.date.today().isoformat()}"
    )


def times(fn, *, repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall times of ``repeat`` calls of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(values: list[float]) -> float:
    """The middle value (the upper one of the two middle values for an even count)."""
    return sorted(values)[len(values) // 2]


def timeit(fn, *, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    return median(times(fn, repeat=repeat, warmup=warmup))


def results_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def save_results(name: str, res: dict) -> dict:
    """Write one run's raw numbers to ``benchmarks/results/<name>.json`` with the machine that measured them."""
    res = {"machine": machine(), **res}
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_path(name).write_text(json.dumps(res, indent=1) + "\n")
    return res


def load_results(name: str) -> dict:
    return json.loads(results_path(name).read_text())


def run(name: str, measure, report) -> None:
    """Measure (or, with ``--reuse`` on the command line, read ``results/<name>.json``), store, then report.

    ``measure()`` returns the raw numbers as a JSON-able dict; the 1-minute load average at its start and
    end is added (2 cores shared with other jobs: above ~2 they took part of the machine). ``report(res)``
    writes the docs section from that dict alone.
    """
    if "--reuse" in sys.argv[1:]:
        res = load_results(name)
    else:
        load0 = os.getloadavg()[0]
        res = measure()
        res["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
        res = save_results(name, res)
    report(res)


def machine_line(res: dict) -> str:
    """The machine (and, where recorded, the load average) of a stored run, for the section's footer."""
    load = res.get("load")
    return res.get("machine", "not recorded") + (
        f"; load average {load[0]:.1f} / {load[1]:.1f} at start / end" if load else ""
    )


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, machine_text: str | None = None) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md.

    ``machine_text`` is the footer's machine, as stored with the run (:func:`machine_line`); by default
    the machine running this now.
    """
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    footer = machine_text or machine()
    block = f"<!-- bench:{name} -->\n## {title}\n\n{body.strip()}\n\n_Machine: {footer}_\n<!-- /bench:{name} -->"
    pat = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pat.sub(lambda _m: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(block)
