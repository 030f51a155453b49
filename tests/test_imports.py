"""Layering: the core never loads Qt/napari, and importing the package is cheap."""

import subprocess
import sys

GUI = ("qtpy", "napari", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6")


def _loaded(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                       capture_output=True, text=True, check=True)
    return set(r.stdout.split())


def test_core_loads_no_gui():
    mods = _loaded(
        "import importlib, pkgutil, napari_unet.core as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'napari_unet.core.'): importlib.import_module(m.name)\n"
        "import napari_unet.cli"
    )
    assert not {m.split(".")[0] for m in mods} & set(GUI)


def test_package_import_loads_neither_torch_nor_qt():
    mods = {m.split(".")[0] for m in _loaded("import napari_unet")}
    assert "torch" not in mods
    assert not mods & set(GUI)
