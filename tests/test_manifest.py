"""The npe2 manifest validates, every command imports, and importing the widgets stays cheap."""

import subprocess
import sys

import pytest

WIDGETS = {"Annotate", "Weight map preview", "Deformation preview", "Train", "Predict"}


def test_manifest_validates_and_imports_resolve():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-unet")
    assert pm.name == "napari-unet" and pm.display_name == "U-Net Segment"
    pm.validate_imports()  # raises if any python_name does not resolve
    c = pm.contributions
    assert {w.display_name for w in c.widgets} == WIDGETS
    assert {s.key for s in c.sample_data} == {"em", "nuclei"}
    (reader,) = c.readers
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff", "*.zarr"} and reader.accepts_directories
    (writer,) = c.writers
    assert [str(t) for t in writer.layer_types] == ["labels"]
    assert set(writer.filename_extensions) == {".tif", ".tiff"}


def test_npe2_validate_cli():
    npe2 = pytest.importorskip("npe2")
    from npe2.cli import app  # noqa: F401 - the CLI is importable

    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-unet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout
    assert npe2


def test_sample_data_commands_give_image_and_labels():
    import importlib

    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-unet")
    commands = {c.id: c.python_name for c in pm.contributions.commands}
    for s in pm.contributions.sample_data:
        module, name = commands[s.command].split(":")
        layers = getattr(importlib.import_module(module), name)()
        assert [t for _, _, t in layers] == ["image", "labels"]
        (img, _, _), (lab, _, _) = layers
        assert img.shape == lab.shape and lab.min() >= 1  # fully annotated: 1 = background


def test_importing_the_widget_modules_loads_no_torch():
    code = (
        "import sys, napari_unet, napari_unet._widgets, napari_unet._widgets._state; "
        "print('torch' in sys.modules, 'qtpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
