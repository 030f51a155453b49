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
