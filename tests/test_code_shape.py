"""The shape of the code, as the house rules state it: short functions in core/ and cli/, no history in comments."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "napari_unet"
MAX_LINES = 80


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function or method under ``root`` longer than ``limit`` lines
    (def line to last line, decorators excluded, docstring included)."""
    found = []
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(
                        f"{f.relative_to(REPO) if REPO in f.parents else f}:{node.lineno} {node.name} ({n} lines)"
                    )
    return found


@pytest.mark.parametrize("room", ["core", "cli"])
def test_no_function_over_80_lines(room):
    root = SRC / room if (SRC / room).is_dir() else SRC / f"{room}.py"
    assert root.exists()
    assert not long_functions(root), "split these into named steps:\n" + "\n".join(long_functions(root))


def test_the_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert [s.split()[1] for s in long_functions(tmp_path / "m.py")] == ["long"]


HISTORY = re.compile(r"\b[Ss]top[ -]?[0-9]")


def test_no_project_history_in_code_or_docs():
    """Comments and docs describe the code as it is: no numbered stop of our work, which a reader cannot look up."""
    try:
        files = subprocess.run(
            ["git", "ls-files", "src", "tests", "docs"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = []
    for name in files:
        p = REPO / name
        if p.suffix not in {".py", ".md", ".yaml", ".txt"} or p == Path(__file__):
            continue
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{name}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
