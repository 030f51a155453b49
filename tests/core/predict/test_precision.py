"""The automatic precision choice: both branches with the CPU capability mocked, and one real trial."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from napari_unet.core.network import device
from napari_unet.core.network.unet import UNet
from napari_unet.core.predict import tiles
from napari_unet.core.predict.tiles import choose_precision, predict


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(depth=2, base_channels=4)


@pytest.fixture
def stack(em_planes):
    return em_planes  # 4 x 512 x 512: big enough for a trial


def test_no_native_bf16_means_fp32_without_a_trial(net, stack, monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "avx512f"})  # an Intel Xeon without avx512_bf16

    def no_trial(*a, **k):
        raise AssertionError("no trial on a CPU without native bf16")

    monkeypatch.setattr(tiles, "_trial", no_trial)
    precision, why = choose_precision(net, stack, device="cpu")
    assert precision == "fp32" and "no native bf16" in why


def _fake_trials(monkeypatch, seconds: dict, disagree: float = 0.0):
    def fake(model, x, amp_dtype, repeats=2):
        labels = np.zeros((1, 100, 100), np.int64)
        if amp_dtype is torch.bfloat16:
            labels.flat[: int(disagree * labels.size)] = 1
        return seconds[amp_dtype], labels

    monkeypatch.setattr(tiles, "cpu_bf16_native", lambda: (True, "the CPU has avx512_bf16 (mocked)"))
    monkeypatch.setattr(tiles, "_trial", fake)


def test_native_bf16_that_is_faster_and_agrees_is_chosen(net, stack, monkeypatch):
    _fake_trials(monkeypatch, {None: 1.0, torch.bfloat16: 0.4}, disagree=0.003)
    precision, why = choose_precision(net, stack, device="cpu")
    assert precision == "bf16" and "2.50x" in why and "99.70%" in why
    assert choose_precision(net, stack, device="cpu")[0] == "bf16"  # remembered for this model


def test_native_bf16_that_disagrees_or_is_not_faster_stays_fp32(net, stack, monkeypatch):
    _fake_trials(monkeypatch, {None: 1.0, torch.bfloat16: 0.4}, disagree=0.01)
    precision, why = choose_precision(net, stack, device="cpu")
    assert precision == "fp32" and "agree 99.00%" in why
    other = UNet(depth=2, base_channels=4)
    _fake_trials(monkeypatch, {None: 1.0, torch.bfloat16: 1.05})
    precision, why = choose_precision(other, stack, device="cpu")
    assert precision == "fp32" and "not worth it" in why
    # a small image is not worth a trial at all
    assert choose_precision(UNet(depth=2, base_channels=4), stack[0, :64, :64], device="cpu") == (
        "fp32",
        "the CPU has avx512_bf16 (mocked), but the image is too small for a bf16 trial to pay off",
    )


def test_a_real_trial_and_auto_in_iter_predict(net, stack, monkeypatch, caplog):
    monkeypatch.setattr(tiles, "cpu_bf16_native", lambda: (True, "native bf16 (mocked)"))
    with caplog.at_level(logging.INFO, logger="napari_unet"):
        labels = predict(net, stack, precision="auto", device="cpu")
    [msg] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision ")]
    assert "trial tile, labels agree" in msg
    chosen = msg.split()[1].rstrip(":")
    assert chosen in ("bf16", "fp32")
    np.testing.assert_array_equal(labels, predict(net, stack, precision=chosen, device="cpu"))
