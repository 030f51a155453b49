import math
import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet.core.models import checkpoint as ck
from napari_unet.core.models.checkpoint import CheckpointError, save_model
from napari_unet.core.models.load import load_model, read_info
from napari_unet.core.network.unet import UNet


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(depth=2, base_channels=4, n_classes=3)


def test_round_trip_weights_and_config(tmp_path, net):
    p = save_model(
        tmp_path / "m.safetensors", net, classes=["bg", "a", "b"], label_mode="semantic", training={"steps_done": 7}
    )
    m = load_model(p)
    assert m.config == net.config
    for (k, a), (_, b) in zip(net.state_dict().items(), m.state_dict().items()):
        assert torch.equal(a, b), k
    assert m.info.classes == ["bg", "a", "b"] and m.info.training["steps_done"] == 7
    assert read_info(p).model["depth"] == 2
    assert m.info.name == "m"


def test_suffix_added_and_half_precision(tmp_path, net):
    p = save_model(tmp_path / "model", net, half=True)
    assert p.name == "model.safetensors"
    m = load_model(p)
    w = net.down[0][0].weight
    assert m.down[0][0].weight.dtype == torch.float32
    torch.testing.assert_close(m.down[0][0].weight, w.half().float())


def test_crash_mid_save_keeps_old_file(tmp_path, net, monkeypatch):
    p = save_model(tmp_path / "m.safetensors", net, training={"v": 1})
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(p, UNet(depth=2, base_channels=4, n_classes=3), training={"v": 2})
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temp file left behind


def test_truncated_file_gives_clear_error(tmp_path, net):
    p = save_model(tmp_path / "m.safetensors", net)
    data = p.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged, truncated or not a model file"):
        load_model(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(CheckpointError):
        load_model(junk)


def test_foreign_safetensors_rejected(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(p), metadata={"framework": "something else"})
    with pytest.raises(CheckpointError, match="not a napari-unet model"):
        load_model(p)


def test_pickle_crafted_to_run_code_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"state": Evil()}, p)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(p)
    raw = tmp_path / "evil2.safetensors"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_model(raw)
    assert not marker.exists()


def test_incompatible_version_and_mismatched_weights(tmp_path, net):
    from safetensors.torch import load_file, save_file

    p = save_model(tmp_path / "m.safetensors", net)
    tensors = load_file(str(p))
    info = read_info(p)
    info.format = "napari-unet/99"
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={"napari_unet": info.to_json()})
    with pytest.raises(CheckpointError, match="incompatible version"):
        load_model(tmp_path / "future.safetensors")
    info = read_info(p)
    info.model["base_channels"] = 8
    save_file(tensors, str(tmp_path / "mismatch.safetensors"), metadata={"napari_unet": info.to_json()})
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path / "mismatch.safetensors")


def test_the_zoom_is_written_and_read_under_the_file_key(tmp_path, net):
    """Model files hold the zoom as "scale": {"input_scale": z} (users' files, installed versions);
    ModelInfo.zoom reads it as {"input_zoom": z} and writes it back under the file key."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    p = save_model(tmp_path / "m.safetensors", net, zoom={"input_zoom": 0.5})
    with safe_open(str(p), framework="pt") as f:
        header = json.loads(f.metadata()["napari_unet"])
    assert header["scale"] == {"input_scale": 0.5} and "zoom" not in header
    assert load_model(p).info.zoom == {"input_zoom": 0.5}
    # a file as users have them: written by hand with the file key only
    header["scale"] = {"input_scale": 0.25}
    save_file(load_file(str(p)), str(tmp_path / "old.safetensors"), metadata={"napari_unet": json.dumps(header)})
    assert read_info(tmp_path / "old.safetensors").zoom == {"input_zoom": 0.25}


def test_missing_model_names_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="shipped models"):
        load_model(tmp_path / "nope.safetensors")


def test_optimizer_state_round_trip(tmp_path, net):
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99)
    net(torch.randn(1, 1, 44, 44)).sum().backward()
    opt.step()
    p = save_model(tmp_path / "m.safetensors", net, optimizer=opt)
    m = load_model(p)
    opt2 = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.99)
    assert ck.load_optimizer_state(p, opt2)
    a = opt.state_dict()["state"][0]["momentum_buffer"]
    b = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(a, b)
    assert np.isclose(opt2.param_groups[0]["momentum"], 0.99)


def test_damaged_headers_and_weights_are_refused_before_allocating(tmp_path):
    """A crafted header (depth 1000, a JSON list) or NaN weights: a clear CheckpointError, nothing built."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = ck.resolve_model_path("em-membrane")

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(src))
    key = next(k for k in meta if k not in ("format", "dtype", "optimizer"))
    info = json.loads(meta[key])

    def write(name, meta_value=None, weights=tensors):
        p = tmp_path / f"{name}.safetensors"
        save_file(weights, str(p), metadata={**meta, key: meta_value or meta[key]})
        return p

    deep = write("deep", json.dumps({**info, "model": {**info["model"], "depth": 1000}}))
    with pytest.raises(CheckpointError, match="depth=1000"):
        load_model(deep)
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_model(write("list", json.dumps([1, 2, 3])))
    nan = {k: (v.clone().fill_(float("nan")) if k.endswith("head.weight") else v) for k, v in tensors.items()}
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_model(write("nan", weights=nan))


def test_a_header_length_ending_in_0x80_is_not_a_pickle(tmp_path):
    """The first byte of a safetensors file is its header length's low byte: 0x80 is as valid as any."""
    model = UNet(1, 2, depth=1, base_channels=2)
    for pad in range(300):  # descriptions of growing length until the header length ends in 0x80
        path = save_model(tmp_path / "m.safetensors", model, description="x" * pad)
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no header length ending in 0x80 reached")
    assert load_model(path).n_classes == 2


def test_non_finite_weights_are_refused_at_save(tmp_path):
    """Saving NaN weights (or values float16 cannot hold) fails before writing: the old file stays."""
    good = save_model(tmp_path / "m.safetensors", UNet(depth=2, base_channels=4))
    before = good.read_bytes()
    broken = UNet(depth=2, base_channels=4)
    with torch.no_grad():
        broken.head.weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN or inf"):
        save_model(good, broken)
    huge = UNet(depth=2, base_channels=4)
    with torch.no_grad():
        huge.head.bias.fill_(1e6)
    with pytest.raises(CheckpointError, match="too large for float16"):
        save_model(good, huge, half=True)
    assert good.read_bytes() == before and not list(tmp_path.glob(".*"))


def _crafted(tmp_path, name: str):
    """The crafted model files of the bad-input matrix, each written by hand (tests/model_files.py)."""
    import json
    import struct

    from model_files import crafted_model, model_header, write_safetensors

    from napari_unet.core.network.unet import UNetConfig, parameter_shapes

    p = tmp_path / f"{name}.safetensors"
    tiny = {
        f"model.{k}": ("F32", s, bytes(4 * math.prod(s)))
        for k, s in parameter_shapes(UNetConfig(depth=2, base_channels=4)).items()
    }
    make = {
        "huge-network": lambda: crafted_model(p, depth=3, base_channels=1024),
        "int8-weights": lambda: crafted_model(p, dtype="I8"),
        "bool-weights": lambda: crafted_model(p, dtype="BOOL", fill=b"\x01"),
        "nan-weights": lambda: crafted_model(p, fill=b"\x00\x00\xc0\x7f"),
        "inf-weights": lambda: crafted_model(p, dtype="F16", fill=b"\x00\x7c"),
        "other-shapes": lambda: crafted_model(p, shapes_of=parameter_shapes(UNetConfig(depth=2, base_channels=2))),
        "missing-tensor": lambda: write_safetensors(p, dict(list(tiny.items())[1:]), model_header()),
        "extra-tensor": lambda: write_safetensors(p, {**tiny, "model.evil": ("F32", [1], bytes(4))}, model_header()),
        "unknown-field": lambda: crafted_model(p, kernel=7),
        "padding-list": lambda: crafted_model(p, padding=["valid"]),
        "dropout-nan": lambda: write_safetensors(p, tiny, model_header(dropout=0.5) | {"napari_unet": "{}"}),
        "classes-not-names": lambda: write_safetensors(p, tiny, model_header({"classes": [1, 2]})),
        "label-mode-unknown": lambda: write_safetensors(p, tiny, model_header({"label_mode": "panoptic"})),
        "format-not-a-number": lambda: write_safetensors(p, tiny, model_header({"format": "napari-unet/x"})),
        "metadata-nested-deep": lambda: write_safetensors(p, tiny, {"napari_unet": "[" * 100_000}),
        "optimizer-damaged": lambda: write_safetensors(p, tiny, model_header() | {"optimizer": "[1]"}),
        "offsets-past-the-end": lambda: write_safetensors(
            p, {"model.head.bias": ("F32", [2**40], (0, 2**42))}, model_header()
        ),
        "header-length-2-63": lambda: p.write_bytes(struct.pack("<Q", 2**63) + b"{" + bytes(64)) and p,
        "header-length-past-the-end": lambda: p.write_bytes(struct.pack("<Q", 10**6) + json.dumps({}).encode()) and p,
    }
    return make[name]()


CRAFTED = {
    "huge-network": "1,969 M parameters",
    "int8-weights": r"not floating-point numbers",
    "bool-weights": r"not floating-point numbers",
    "nan-weights": "NaN or inf",
    "inf-weights": "NaN or inf",
    "other-shapes": "do not match the stored architecture",
    "missing-tensor": "do not match the stored architecture",
    "extra-tensor": "do not match the stored architecture",
    "unknown-field": "unknown fields",
    "padding-list": "padding",
    "dropout-nan": "metadata is damaged",
    "classes-not-names": "classes",
    "label-mode-unknown": "label_mode",
    "format-not-a-number": "incompatible version",
    "metadata-nested-deep": "metadata is damaged",
    "optimizer-damaged": "optimizer state is damaged",
    "offsets-past-the-end": "damaged, truncated",
    "header-length-2-63": "damaged, truncated",
    "header-length-past-the-end": "damaged, truncated",
}


@pytest.mark.parametrize(("name", "expect"), list(CRAFTED.items()), ids=list(CRAFTED))
def test_crafted_model_files_are_refused_naming_the_file(tmp_path, name, expect):
    """Every crafted header or tensor table: a CheckpointError that names the file, from the header alone
    where it can (read_info), and nothing built."""
    path = _crafted(tmp_path, name)
    with pytest.raises(CheckpointError, match=expect) as e:
        load_model(path)
    assert path.name in str(e.value)


def test_a_crafted_huge_network_is_refused_in_little_memory(tmp_path):
    """A 32 KB file whose header describes a 7.3 GiB network (depth 3, 1024 base channels): refused by
    predict, train --init and --candidates alike (all load through load_model), in a process that stays
    under 1 GB RSS. The time is reported, not asserted."""
    import subprocess
    import sys

    path = _crafted(tmp_path, "huge-network")
    assert path.stat().st_size < 64 * 1024
    script = (
        "import resource, sys, time\n"
        "from napari_unet.core.models import CheckpointError, load_model\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    load_model(sys.argv[1])\n"
        "except CheckpointError as e:\n"
        "    print('refused', e)\n"
        "print('seconds', time.perf_counter() - t)\n"
        "import re  # the child's own peak: its ru_maxrss also counts this pytest process's RSS at the fork\n"
        "print('rss_mb', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    print(run.stdout)
    assert "huge-network.safetensors" in lines["refused"] and "7.3 GiB" in lines["refused"], run.stderr
    assert float(lines["rss_mb"]) < 1024
