"""Fuzzing model files' safetensors headers: whatever the header says, loading gives a model or a clean refusal.

Each example is a file written by hand (tests/model_files.py): the metadata's JSON fields (the network,
the format, class names, label mode, normalisation, zoom, the optimizer state), the tensors' dtypes,
shapes and offsets, drawn around a tiny valid model so that most examples get far into the checks.
Loading must return a U-Net or raise :class:`CheckpointError` / ValueError with a message, never another
exception, and never build a network beyond what a model file may hold.
"""

from __future__ import annotations

import json
import math
import resource

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_files import write_safetensors

from napari_unet.core.models import checkpoint
from napari_unet.core.models.checkpoint import MAX_PARAMETERS, CheckpointError
from napari_unet.core.models.load import load_model, read_info
from napari_unet.core.network.unet import UNetConfig, parameter_shapes

TINY = UNetConfig(depth=1, base_channels=2)
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "BOOL", "I16", "U16", "I32", "U32", "I64", "U64", "F8_E4M3", "X"]
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "BOOL": 1, "I16": 2, "U16": 2, "I32": 4}
SIZES |= {"U32": 4, "I64": 8, "U64": 8, "F8_E4M3": 1, "X": 1}

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# a network field's bent value: mostly plausible, sometimes anything
net_value = st.one_of(
    st.integers(0, 3), st.sampled_from([1024, 2048, 10**9, -1, "valid", "same", 0.5, 1.0]), json_value
)
field_values = {
    "format": st.sampled_from(["napari-unet/1", "napari-unet/0", "napari-unet/2", "napari-unet/", "x/1", ""]),
    "classes": st.lists(st.text(max_size=5), max_size=3),
    "label_mode": st.sampled_from(["semantic", "instance", "other"]),
    "scale": st.fixed_dictionaries({"input_scale": st.sampled_from([0.5, 1.0, 0.0, -1.0, 1e9]) | json_value}),
    "normalization": st.just({"method": "percentile", "low": 1.0, "high": 99.8}),
    "border_class": st.booleans(),
    "training": st.just({}),
    "name": st.text(max_size=5),
    "model": st.just({}),
}
dtype_bend = st.tuples(st.just("dtype"), st.sampled_from(DTYPES))
shape_bend = st.tuples(st.just("shape"), st.lists(st.sampled_from([0, 1, 2, 3, 2**20, 2**40]), max_size=4))
offset_bend = st.tuples(st.just("offsets"), st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)))
tensor_bend = st.one_of(dtype_bend, shape_bend, offset_bend, st.tuples(st.just("missing"), st.none()))


@st.composite
def model_files(draw):
    """(string metadata, tensors) of a model file: the tiny network's, up to two of its header's fields, two
    network fields and two tensors bent (a dtype, a shape, offsets, a tensor missing)."""
    model = TINY.to_dict()
    for key in draw(st.lists(st.sampled_from([*model, "extra"]), max_size=2)):
        model[key] = draw(net_value)
    info = {"model": model, "format": "napari-unet/1"}
    for key in draw(st.lists(st.sampled_from(sorted(field_values)), max_size=2)):
        info[key] = draw(field_values[key] | json_value)
    text = json.dumps(info) if draw(st.integers(0, 9)) else draw(st.sampled_from(["{", "[" * 5000, "null", '"a"']))
    meta = {"napari_unet": text}
    if draw(st.booleans()):
        meta["optimizer"] = draw(st.sampled_from(['{"param_groups": [], "state": {}}', "[1]", "{", '{"state": 3}']))
    shapes = {f"model.{k}": ("F32", list(s)) for k, s in parameter_shapes(TINY).items()}
    bends = {draw(st.sampled_from(sorted(shapes))): draw(tensor_bend) for _ in range(draw(st.integers(0, 2)))}
    fill = draw(st.sampled_from([b"\x00", b"\x01", b"\x00\x00\x80\x3f", b"\xff"]))  # 0, tiny, 1, NaN
    tensors = {}
    for name, (dtype, shape) in shapes.items():
        how, value = bends.get(name, (None, None))
        if how == "missing":
            continue
        dtype, shape = value if how == "dtype" else dtype, value if how == "shape" else shape
        n = math.prod(shape) * SIZES[dtype]
        # bytes as much as the shape needs; a shape larger than the file: offsets that claim it
        content = (fill * n)[:n] if n <= 4096 else (0, n)
        tensors[name] = (dtype, shape, value if how == "offsets" else content)
    return meta, tensors


@pytest.fixture(scope="module")
def built_sizes():
    """The parameter counts of every network loading builds (checkpoint.build_model, spied on)."""
    sizes, original = [], checkpoint.build_model

    def spy(config):
        sizes.append(sum(math.prod(s) for s in parameter_shapes(config).values()))
        return original(config)

    checkpoint.build_model = spy
    yield sizes
    checkpoint.build_model = original


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model_files())
def test_any_safetensors_header_loads_or_is_refused_cleanly(tmp_path, built_sizes, case):
    meta, tensors = case
    path = write_safetensors(tmp_path / "fuzz.safetensors", tensors, meta)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for load in (read_info, load_model):
        try:
            load(path)
        except (CheckpointError, ValueError) as e:
            assert str(e) and "fuzz.safetensors" in str(e), repr(e)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 256, grown_mb
    assert all(n <= MAX_PARAMETERS for n in built_sizes)
