"""The recommended settings, by device and start, as core and the CLI resolve them (tests/settings_table.py)."""

import numpy as np
import pytest
import tifffile
from settings_table import SCHEDULE, SHOWN_AUTO_LR, expected, pretend_device

from napari_unet.cli import main
from napari_unet.core.train.config import resolve_settings

DEVICES = ("cuda", "cpu", "mps")
# what a start is called in core, and which row of the table it takes
STARTS = {None: "scratch", "scratch": "scratch", "auto": "auto", "em-membrane": "model", "my.safetensors": "model"}
KEYS = ("depth", "base_channels", "tile_in", "optimizer", "lr", "steps", "batch_size", "keep_prior")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("start", list(STARTS))
def test_core_resolves_the_table(device, start):
    got = resolve_settings(device, start)
    assert {k: got[k].value for k in KEYS} == expected(device, STARTS[start])
    assert got["schedule"].value == SCHEDULE


class _Captured(Exception):
    """Raised instead of training: carries the config the CLI built."""


@pytest.fixture
def cli_config(tmp_path, monkeypatch):
    """``napari-unet train`` on a tiny pair with the given options; returns the TrainConfig it builds."""
    image, labels = tmp_path / "i.tif", tmp_path / "l.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    lab = np.zeros((64, 64), np.uint8)
    lab[5:20, 5:20], lab[30:50, 30:50] = 1, 2
    tifffile.imwrite(labels, lab)

    def capture(config, *args, **kwargs):
        raise _Captured(config)

    monkeypatch.setattr("napari_unet.core.train.loop.iter_train", capture)

    def run(device: str, *options: str):
        pretend_device(monkeypatch, device)
        argv = ["train", "--images", str(image), "--labels", str(labels), "-o", str(tmp_path / "m.safetensors")]
        with pytest.raises(_Captured) as got:
            main([*argv, "--device", "auto", "-q", *options])
        return got.value.args[0]

    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "options, start",
    [
        ((), "auto"),
        (("--init", "auto"), "auto"),
        (("--init", "scratch"), "scratch"),
        (("--init", "em-membrane"), "model"),
    ],
)
def test_cli_fills_unset_options_from_the_table(cli_config, device, options, start):
    cfg = cli_config(device, *options)
    assert {k: getattr(cfg, k) for k in KEYS} == expected(device, start)
    assert cfg.schedule == SCHEDULE and cfg.device == "auto"


def test_cli_options_given_win_and_a_new_architecture_starts_from_scratch(cli_config):
    cfg = cli_config("cpu", "--channels", "8")  # no --init: a new architecture is a run from scratch
    assert cfg.init is None and cfg.base_channels == 8
    assert {k: getattr(cfg, k) for k in KEYS if k != "base_channels"} == {
        k: v for k, v in expected("cpu", "scratch").items() if k != "base_channels"
    }
    cfg = cli_config("cuda", "--init", "em-membrane", "--lr", "0.02", "--keep-prior", "0.5", "--steps", "7")
    assert (cfg.lr, cfg.keep_prior, cfg.steps, cfg.optimizer) == (0.02, 0.5, 7, "sgd")
    cfg = cli_config("cpu", "--init", "scratch", "--keep-prior", "auto", "--optimizer", "sgd", "--schedule", "cosine")
    assert (cfg.keep_prior, cfg.optimizer, cfg.schedule) == (0.0, "sgd", "cosine")


def test_cli_resume_takes_the_saved_runs_settings(tmp_path, request):
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.loop import train

    image = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    lab = np.zeros((64, 64), np.uint8)
    lab[5:20, 5:20], lab[30:50, 30:50] = 1, 2
    saved = TrainConfig(
        depth=2, base_channels=4, tile_in=60, optimizer="sgd", lr=0.005, steps=3, schedule="cosine", keep_prior=0.25
    )
    run = train(saved, image, lab).save(tmp_path / "run.safetensors", which="last")
    cli_config = request.getfixturevalue("cli_config")  # after training: it replaces iter_train
    cfg = cli_config("cuda", "--resume", str(run))
    assert cfg.resume == str(run) and cfg.init is None
    assert (cfg.depth, cfg.base_channels, cfg.tile_in, cfg.optimizer, cfg.lr, cfg.steps) == (2, 4, 60, "sgd", 0.005, 3)
    assert (cfg.schedule, cfg.keep_prior, cfg.batch_size) == ("cosine", 0.25, 1)
    cfg = cli_config("cpu", "--resume", str(run), "--steps", "9", "--lr", "0.001")
    assert (cfg.steps, cfg.lr, cfg.optimizer) == (9, 0.001, "sgd")


def test_each_setting_says_its_rule():
    got = resolve_settings("cpu", "auto", {"lr": 0.01, "steps": None})
    assert (got["lr"].value, got["lr"].rule) == (0.01, "given")
    assert got["steps"].value == 500 and "CPU" in got["steps"].rule  # None is not given
    auto = resolve_settings("cuda", "auto")
    assert auto["lr"].value is None and auto["lr"].shown == SHOWN_AUTO_LR and "start" in auto["lr"].rule
    assert "CUDA" in auto["tile_in"].rule
