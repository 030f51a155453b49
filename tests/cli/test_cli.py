import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import _parse_slices, main
from napari_unet.core.models.load import read_info
from napari_unet.core.train.start import prior_weight


def cli(line: str) -> int:
    """main() on a command line written as one string (the test's paths have no spaces)."""
    return main(line.split())


@pytest.fixture
def em_files(tmp_path, em_sample):
    """The bundled EM crop's first 3 slices (128 x 160 px) and its ISBI-format labels (0 membrane, 255 cell)."""
    img, lab, _ = em_sample
    ip, lp = tmp_path / "em.tif", tmp_path / "em-labels.tif"
    tifffile.imwrite(ip, img[:3, :128, :160], photometric="minisblack")
    tifffile.imwrite(lp, lab[:3, :128, :160], photometric="minisblack")
    return ip, lp


def test_train_predict_evaluate_round_trip(tmp_path, em_files, capsys):
    ip, lp = em_files
    model = tmp_path / "m.safetensors"
    rc = cli(
        f"train --images {ip} --labels {lp} --labels-format isbi --slices 0-1 --steps 3 --depth 2 --channels 4 --tile-in 92 -o {model} -q"
    )
    assert rc == 0 and model.exists()
    assert "saved" in capsys.readouterr().out
    out = tmp_path / "pred.tif"
    assert main(["predict", str(ip), "-o", str(out), "--model", str(model), "--slices", "2", "-q"]) == 0
    pred = tifffile.imread(out)
    assert pred.reshape(-1, 160).shape == (128, 160) and pred.max() <= 1
    rep = tmp_path / "r.json"
    assert cli(f"evaluate --model {model} --images {ip} --labels {lp} --slices 2 --json {rep} -q") == 0
    report = json.loads(rep.read_text())
    assert report["kind"] == "membranes" and 0 <= report["pixel_error"] <= 1 and 0 <= report["v_rand"] <= 1
    probs = tmp_path / "p.tif"
    assert main(["predict", str(ip), "-o", str(probs), "--model", str(model), "--kind", "probabilities", "-q"]) == 0
    assert tifffile.imread(probs).shape == (2, 3, 128, 160)
    # fine-tuning from a model: unset options follow the widget (rate 10x lower, keep_prior by agreement)
    ft = tmp_path / "ft.safetensors"
    assert (
        cli(
            f"train --images {ip} --labels {lp} --labels-format isbi --slices 0 --steps 1 --tile-in 92 --init {model} -o {ft} -q"
        )
        == 0
    )
    training = read_info(ft).training
    cfg = training["config"]
    assert cfg["lr"] == 1e-4 and cfg["border_class"] is False
    assert cfg["keep_prior"] == prior_weight(training["start_worst_class"]) and training["start_agreement"] > 0
    assert cfg["optimizer"] == ("sgd" if torch.cuda.is_available() else "adam")  # the device's recipe
    # the output kind is --kind; '-o/--output instances' names a file and must not silently write something else
    for argv in (["-o", "instances"], ["--output", "instances", "-o", str(tmp_path / "x.tif")]):
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(ip), "--model", str(model), "-q", *argv])
        assert exc.value.code == 2 and "--kind instances" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


def test_errors_are_clear_and_exit_nonzero(tmp_path, em_files, capsys):
    ip, lp = em_files
    bad = tmp_path / "bad.tif"
    bad.write_bytes(ip.read_bytes()[:2000])
    assert main(["predict", str(bad), "-o", str(tmp_path / "x.tif"), "--model", "nope-model"]) == 2
    assert "no model file or shipped model named 'nope-model'" in capsys.readouterr().err
    assert (
        cli(f"train --images {ip} --labels {lp} --steps 1 --depth 2 --channels 4 --tile-in 90 -o {tmp_path / 'm'}") == 2
    )
    assert "nearest valid sizes" in capsys.readouterr().err
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((3, 128, 160), np.uint8), photometric="minisblack")
    assert (
        cli(f"train --images {ip} --labels {empty} --steps 1 --depth 2 --channels 4 --tile-in 92 -o {tmp_path / 'm'}")
        == 2
    )
    assert "nothing is annotated" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
    assert not (tmp_path / "x.tif").exists()


def test_parse_slices():
    assert _parse_slices("0-2,5", 10) == [0, 1, 2, 5]
    assert _parse_slices(None, 3) is None
    with pytest.raises(ValueError, match="out of range"):
        _parse_slices("0-30", 30)
    for text, msg in (("5-2", "runs backwards"), ("-1", "not a slice number"), ("abc", "not a slice number")):
        with pytest.raises(ValueError, match=msg):
            _parse_slices(text, 10)


def test_slices_do_not_hide_mismatched_labels(tmp_path, em_files, capsys):
    ip, lp = em_files
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, tifffile.imread(lp)[:2], photometric="minisblack")
    argv = f"train --images {ip} --labels {short} --slices 0-1 --steps 1 --depth 2 --channels 4 --tile-in 92"
    assert cli(f"{argv} -o {tmp_path / 'm'}") == 2
    assert "has shape" in capsys.readouterr().err and not (tmp_path / "m.safetensors").exists()


def test_unusable_outputs_and_devices_are_refused_before_any_work(tmp_path, em_files, capsys):
    ip, lp = em_files
    train = f"train --images {ip} --labels {lp} --steps 1 --depth 2 --channels 4 --tile-in 92"
    targets = [(tmp_path, "is a folder"), (tmp_path / "missing" / "m", "does not exist")]
    targets += [(Path("/dev/null"), "not a regular file")] if Path("/dev/null").exists() else []
    for out, msg in targets:
        with pytest.raises(SystemExit, match=msg):
            cli(f"{train} -o {out}")
        with pytest.raises(SystemExit, match=msg):
            main(["predict", str(ip), "-o", str(out), "--model", "em-membrane"])
    if not torch.cuda.is_available():
        assert (
            main(["predict", str(ip), "-o", str(tmp_path / "p.tif"), "--model", "em-membrane", "--device", "cuda"]) == 2
        )
        assert "use device 'auto' or 'cpu'" in capsys.readouterr().err
        assert not (tmp_path / "p.tif").exists()


def test_outputs_never_overwrite_an_input(tmp_path, em_files):
    ip, lp = em_files
    before = ip.read_bytes()
    for argv in (
        ["predict", str(ip), "-o", str(ip), "--model", "em-membrane"],
        ["train", "--images", str(ip), "--labels", str(lp), "--steps", "1", "-o", str(lp)],
    ):
        with pytest.raises(SystemExit, match="would destroy it"):
            main(argv)
    model = tmp_path / "copy.safetensors"
    from napari_unet.core.models.checkpoint import resolve_model_path

    model.write_bytes(resolve_model_path("em-membrane").read_bytes())
    with pytest.raises(SystemExit, match="is the model"):
        main(["predict", str(ip), "-o", str(model), "--model", str(model)])
    assert ip.read_bytes() == before and model.read_bytes() == resolve_model_path("em-membrane").read_bytes()


def test_help_runs_as_console_script():
    r = subprocess.run([sys.executable, "-m", "napari_unet.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "0 = not annotated" in r.stdout


def test_train_crash_saves_the_steps_done(tmp_path, em_files, monkeypatch, capsys):
    import napari_unet.core.train.loop as core_train

    real, calls = core_train.weighted_loss, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated device failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(core_train, "weighted_loss", failing)
    ip, lp = em_files
    out = tmp_path / "m.safetensors"
    assert (
        cli(
            f"train --images {ip} --labels {lp} --labels-format isbi --steps 5 --depth 2 --channels 4 --tile-in 92 -o {out} -q"
        )
        == 1
    )
    assert "simulated device failure" in capsys.readouterr().err
    kept = tmp_path / "m-crashed.safetensors"
    assert not out.exists() and kept.exists()
    info = read_info(kept)
    assert info.training["state"] == "crashed" and info.training["steps_done"] == 2


def test_resume_continues_the_saved_run(tmp_path, em_files, capsys):
    """--resume takes the saved run's settings (not the device's defaults), and a run with nothing
    left to do says so instead of a traceback."""
    ip, lp = em_files
    common = ["--images", str(ip), "--labels", str(lp), "--labels-format", "isbi", "--slices", "0", "-q"]
    run = tmp_path / "run.safetensors"
    assert (
        main(
            [
                "train",
                *common,
                "--optimizer",
                "sgd",
                "--lr",
                "5e-3",
                "--steps",
                "2",
                "--depth",
                "2",
                "--channels",
                "4",
                "--tile-in",
                "92",
                "--save-last",
                "-o",
                str(run),
            ]
        )
        == 0
    )
    more = tmp_path / "more.safetensors"
    assert main(["train", *common, "--resume", str(run), "--steps", "3", "--save-last", "-o", str(more)]) == 0
    cfg = read_info(more).training["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["depth"], cfg["tile_in"]) == ("sgd", 5e-3, 2, 92)
    assert read_info(more).training["steps_done"] == 3
    capsys.readouterr()
    assert main(["train", *common, "--resume", str(more), "--steps", "3", "-o", str(tmp_path / "same")]) == 0
    assert "no step ran" in capsys.readouterr().out
    assert main(["train", *common, "--resume", str(more), "--border-class", "-o", str(tmp_path / "x")]) == 2
    assert "trained without a border class" in capsys.readouterr().err


def test_tile_size_is_a_deprecated_alias_for_the_right_side(capsys):
    from napari_unet.cli import build_parser

    args = build_parser().parse_args("train --images x.tif --labels y.tif -o m --tile-size 92".split())
    assert args.tile_in == 92 and "input tile side here: use --tile-in 92" in capsys.readouterr().err
    args = build_parser().parse_args("predict x.tif -o y.tif --model m --tile-size 256".split())
    assert args.tile_out == 256 and "output tile side here: use --tile-out 256" in capsys.readouterr().err


def _train_until_running(tmp_path, ip, lp, out, net=("2", "4", "92")):
    """`napari-unet train` in a subprocess (``net``: depth, channels, input tile), returned once steps run."""
    import re
    import time

    cmd = [sys.executable, "-m", "napari_unet.cli", "train", "--images", str(ip), "--labels", str(lp)]
    cmd += ["--labels-format", "isbi", "--steps", "100000", "--depth", net[0], "--channels", net[1]]
    cmd += ["--tile-in", net[2]]
    proc = subprocess.Popen([*cmd, "-o", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen = ""
    t0 = time.monotonic()
    # a measured rate ('3.2step/s'), not the bar's first line ('?step/s'): that one is printed before the
    # Ctrl-C handler is installed, and a signal sent then aborted the run (exit 130) on a busy machine
    while not re.search(r"\d(step/s|s/step)", seen) and time.monotonic() - t0 < 120:
        seen += proc.stderr.read(1) or ""
        if proc.poll() is not None:
            break
    return proc


def test_ctrl_c_never_replaces_the_output(tmp_path, em_files, monkeypatch, capsys):
    """First Ctrl-C: stop and save beside -o (<output>-interrupted), never over it; second: nothing written."""
    import os
    import signal
    import time

    import napari_unet.core.train.loop as core_train

    ip, lp = em_files
    out = tmp_path / "good.safetensors"
    out.write_bytes(b"a good model the user keeps")
    proc = _train_until_running(tmp_path, ip, lp, out)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert out.read_bytes() == b"a good model the user keeps"
    assert (tmp_path / "good-interrupted.safetensors").is_file()

    # the second press while the stopping step still runs, as a user's would: both presses from inside
    # the second step's loss (in this process: a press timed from outside may land after that step ended)
    real, calls = core_train.weighted_loss, []

    def pressed_twice(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here, so the two presses arrive as two
        return real(*args, **kwargs)

    monkeypatch.setattr(core_train, "weighted_loss", pressed_twice)
    other = tmp_path / "other.safetensors"
    argv = f"train --images {ip} --labels {lp} --labels-format isbi --steps 5 --depth 2 --channels 4 --tile-in 92"
    assert cli(f"{argv} -o {other} -q") == 130
    assert "stopping after this step" in capsys.readouterr().err and len(calls) == 2
    assert not other.exists() and not (tmp_path / "other-interrupted.safetensors").exists()


_LATE_PRESS = """
import atexit, os, signal, sys, time

import napari_unet.core.train.loop as core_train

real, calls = core_train.weighted_loss, []


def press():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the handler runs here


def first_press(*args, **kwargs):  # inside the second step: stop after it and save
    calls.append(1)
    if len(calls) == 2:
        press()
    return real(*args, **kwargs)


core_train.weighted_loss = first_press
atexit.register(press)  # the second press, registered first so it runs last: the run has ended and saved
from napari_unet.cli import main

main()
"""


def test_a_late_second_ctrl_c_exits_130(tmp_path, em_files):
    """A second Ctrl-C that lands after the stopped run was saved, while the process ends: exit 130 and no
    traceback (the default handler killed the process, exit -2, or printed a traceback from an exit callback)."""
    ip, lp = em_files
    out = tmp_path / "m.safetensors"
    argv = ["train", "--images", str(ip), "--labels", str(lp), "--labels-format", "isbi", "--steps", "5"]
    argv += ["--depth", "2", "--channels", "4", "--tile-in", "92", "--init", "scratch", "-q", "-o", str(out)]
    r = subprocess.run([sys.executable, "-c", _LATE_PRESS, *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and "stopping after this step" in r.stderr
    assert "stopped early: 2 steps" in r.stdout and (tmp_path / "m-interrupted.safetensors").is_file()


def test_a_refusal_exits_2_from_the_console(tmp_path, em_files):
    """The console script: a refusal made before any work (here -o onto the input) is a message and exit 2."""
    ip, _ = em_files
    before = ip.read_bytes()
    argv = ["predict", str(ip), "-o", str(ip), "--model", "em-membrane"]
    r = subprocess.run([sys.executable, "-m", "napari_unet.cli", *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "would destroy it" in r.stderr and "Traceback" not in r.stderr
    assert ip.read_bytes() == before
