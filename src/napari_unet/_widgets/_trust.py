"""The confirmation a widget asks before loading a package whose weights need its Python code.

:func:`confirm_trust` is looked up at call time (``_trust.confirm_trust``), so a test replaces it with
an answer (``monkeypatch.setattr(_trust, "confirm_trust", ...)``) instead of clicking a dialog.
"""

from __future__ import annotations

TRUST_BUTTON = "Trust and load"


def confirm_trust(error, parent=None) -> bool:
    """Ask whether to run the code of the package in ``error`` (a CodeNotTrusted): True on 'Trust and load'."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Warning)
    box.setWindowTitle("Run this package's code?")
    box.setText(
        f"{error.package.name} needs to run the Python code in {error.code_file} to build its network. "
        "That code runs with your rights: load it only if you trust who made this file."
    )
    box.setInformativeText(f"package: {error.package}\ncode file: {error.code_file}\nsha256: {error.sha256}")
    trust = box.addButton(TRUST_BUTTON, QMessageBox.AcceptRole)
    box.addButton(QMessageBox.Cancel)
    box.setDefaultButton(QMessageBox.Cancel)
    box.exec_()
    return box.clickedButton() is trust


def load_asking(load_model, path, parent=None):
    """``load_model(path)``; for a package whose code is not trusted yet, ask (:func:`confirm_trust`) and
    load it with its code only on 'Trust and load' (ValueError otherwise: nothing of it ran)."""
    from napari_unet.core.models.packages import CodeNotTrusted

    from . import _trust

    try:
        return load_model(path)
    except CodeNotTrusted as e:
        if not _trust.confirm_trust(e, parent):
            raise ValueError(f"{e.package.name} was not loaded: its code ({e.code_file}) was not trusted") from None
        return load_model(path, trust_code=True)
