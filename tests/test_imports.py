"""Layering: the core never loads Qt/napari, and importing the package is cheap."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

GUI = ("qtpy", "napari", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")


def _loaded(code: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(r.stdout.split())


def test_core_loads_no_gui():
    mods = _loaded(
        "import importlib, pkgutil, napari_unet.core as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'napari_unet.core.'): importlib.import_module(m.name)\n"
        "import napari_unet.cli"
    )
    assert not {m.split(".")[0] for m in mods} & set(GUI)


def test_core_and_cli_work_without_the_bioimageio_extra(tmp_path):
    """The extra is optional: importing the core loads no bioimageio, and without it a package is refused
    with the command that installs it (simulated by making `import bioimageio` fail)."""
    assert not {m.split(".")[0] for m in _loaded("import napari_unet.core.export.bioimageio, napari_unet.cli")} & {
        "bioimageio"
    }
    (tmp_path / "m.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    code = (
        "import sys; sys.modules['bioimageio'] = None\n"
        "from napari_unet.core.models import load_model\n"
        "from napari_unet.cli import main\n"
        f"try:\n    load_model({str(tmp_path / 'm.zip')!r})\nexcept ValueError as e:\n    print('load:', e)\n"
        f"main(['export', 'nuclei', '-o', {str(tmp_path / 'x.zip')!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert out.count("pip install 'napari-unet[bioimageio]'") == 2, out


def test_package_import_loads_neither_torch_nor_qt():
    mods = {m.split(".")[0] for m in _loaded("import napari_unet")}
    assert "torch" not in mods
    assert not mods & set(GUI)


def test_cli_import_loads_neither_torch_nor_qt():
    """`napari-unet --help` stays quick: every module of cli/ imports the core inside its commands."""
    mods = {m.split(".")[0] for m in _loaded("import napari_unet.cli")}
    assert not mods & {"torch", "numpy", "scipy", *GUI}


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute imports, at any depth: also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_scripts_and_benchmarks_use_the_library_not_the_cli():
    """scripts/ and benchmarks/ are not packages, so import-linter cannot see them: this test is their contract."""
    files = sorted((REPO / "scripts").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    assert files
    bad = {
        f.name: sorted(m for m in _imported_modules(f) if m == "napari_unet.cli" or m.startswith("napari_unet.cli."))
        for f in files
    }
    assert not {k: v for k, v in bad.items() if v}


def test_import_contract_fails_on_a_deliberate_violation(tmp_path):
    """The contracts in pyproject.toml catch a core module that imports the CLI (on a copy of the package)."""
    pytest.importorskip("importlinter")
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.skip("lint-imports is not installed (pip install -e .[testing])")
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "src" / "napari_unet", src / "napari_unet", ignore=shutil.ignore_patterns("*.safetensors", "__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(src)}

    def lint() -> subprocess.CompletedProcess:
        return subprocess.run([str(lint_imports)], cwd=tmp_path, env=env, capture_output=True, text=True)

    ok = lint()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    drain = src / "napari_unet" / "core" / "drain.py"
    original = drain.read_text()
    drain.write_text(original + "\nfrom napari_unet import cli  # a deliberate violation\n")
    broken = lint()
    assert broken.returncode != 0
    assert "core/ is GUI- and CLI-free" in broken.stdout and "BROKEN" in broken.stdout
    assert "napari_unet.core.drain -> napari_unet.cli" in broken.stdout
    # a stage that imports a later one breaks the layers contract
    drain.write_text(original)
    labels = src / "napari_unet" / "core" / "data" / "labels.py"
    labels.write_text(labels.read_text() + "\nfrom napari_unet.core.train import weights  # a deliberate violation\n")
    upward = lint()
    assert upward.returncode != 0
    assert "core/ stages point one way" in upward.stdout and "BROKEN" in upward.stdout


def _internal_imports(path: Path, module: str) -> set[str]:
    """The napari_unet modules ``module`` (at ``path``) imports, at any depth (inside functions and
    ``if TYPE_CHECKING:`` too), relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("napari_unet"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("napari_unet"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
    return out


def test_no_import_cycle_in_src():
    """Walk every import in src/ (function-level and TYPE_CHECKING ones included) and find no cycle between
    modules: a package's own ``__init__`` re-exports are not cycles (the package imports its modules,
    never the reverse)."""
    root = REPO / "src"
    modules = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = f
    graph = {}
    for name, f in modules.items():
        deps = {d for d in _internal_imports(f, name) if d in modules and d != name}
        # importing a package from inside it runs its __init__, which only re-exports: not an edge back
        graph[name] = {d for d in deps if not (modules[d].name == "__init__.py" and name.startswith(d + "."))}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
