"""The settings a run gets for the options nobody set, by device and start: the one table that
core (``TrainConfig`` defaults for the device), the CLI (``napari-unet train``) and the Train widget
resolve alike. tests/core/train/test_settings.py and tests/widgets/test_train_widget.py check each against it."""

from __future__ import annotations

# by the device the run trains on ('mps' trains like the CPU)
BY_DEVICE = {
    "cuda": dict(depth=4, base_channels=64, tile_in=572, optimizer="sgd", steps=1000, batch_size=1),
    "cpu": dict(depth=4, base_channels=16, tile_in=316, optimizer="adam", steps=500, batch_size=1),
    "mps": dict(depth=4, base_channels=16, tile_in=316, optimizer="adam", steps=500, batch_size=1),
}
# by the start: None = decided when training starts (the rate and keep_prior follow the start chosen)
BY_START = {
    "scratch": dict(lr=1e-3, keep_prior=0.0),
    "auto": dict(lr=None, keep_prior=None),
    "model": dict(lr=1e-4, keep_prior=None),
}
SCHEDULE = "constant"  # the CLI's default schedule (TrainConfig's too)
SHOWN_AUTO_LR = 1e-4  # the Train widget's rate box under 'auto' (it cannot be empty)


def expected(device: str, start: str) -> dict:
    """The table's row for a device type and a start ('scratch', 'auto' or 'model')."""
    return {**BY_DEVICE[device], **BY_START[start]}


def pretend_device(monkeypatch, device: str) -> None:
    """Make 'auto' resolve to ``device`` on this machine (torch's availability checks, patched)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: device == "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: device == "mps")
