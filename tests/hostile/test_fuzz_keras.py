"""Fuzzing the Keras loader: a real model's config.json, mutated by hypothesis (keys
dropped, values retyped or replaced by random JSON, layer references pointed elsewhere,
values nested deeper), written into a .keras archive or a legacy .h5 file, and whole
.keras files with random bytes overwritten. Every outcome must be a lint or one clear
error line: never a traceback or an internal error.

pwlint runs in-process for speed. The budget is fixed and derandomized so that CI is
repeatable and quick; set PWLINT_FUZZ_EXAMPLES to search longer locally."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import run_inprocess
from tests.hostile.harness import FUZZ_EXAMPLES as EXAMPLES
from tests.hostile.harness import assert_handled_inprocess, fuzz_budget
from tests.hostile.test_keras_hostile import save_models

BUDGET = fuzz_budget()

#: values that have broken parsers before: wrong types, huge, negative, empty, NaN
SCALARS = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, -1, 1, 2**31, 2**62, -(2**63), 10**30]),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["", "same", "valid", "channels_first", "relu", "InputLayer", "Dense", "__keras_tensor__"]),
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(the saved model's config, its .keras file, a scratch folder)."""
    saved = save_models(tmp_path_factory)
    with zipfile.ZipFile(saved["keras"]) as zf:
        config = json.loads(zf.read("config.json"))
    return config, saved["keras"], tmp_path_factory.mktemp("fuzz")


def _places(value, path=()) -> list[tuple]:
    """The path of every value inside ``value`` (``value`` itself first)."""
    found, stack = [], [(path, value)]
    while stack:
        where, item = stack.pop()
        found.append(where)
        if isinstance(item, dict):
            stack.extend((where + (key,), child) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((where + (index,), child) for index, child in enumerate(item))
    return found


def _get(root, path):
    for key in path:
        root = root[key]
    return root


def _layer_names(config) -> list[str]:
    layers = config.get("config", {}).get("layers") if isinstance(config.get("config"), dict) else None
    names = [layer.get("name") for layer in layers or [] if isinstance(layer, dict)]
    return [name for name in names if isinstance(name, str)] or ["ghost"]


def _mutate(config: dict, data) -> dict:
    """One to five mutations, each at a place hypothesis picks."""
    config = copy.deepcopy(config)
    for _ in range(data.draw(st.integers(1, 5), label="mutations")):
        places = [p for p in _places(config) if p]
        if not places:
            break
        path = data.draw(st.sampled_from(places), label="where")
        parent, key = _get(config, path[:-1]), path[-1]
        action = data.draw(st.sampled_from(["drop", "replace", "retype", "nest", "reference", "swap"]), label="action")
        if action == "drop":
            del parent[key]
        elif action == "replace":
            parent[key] = data.draw(JSON, label="value")
        elif action == "retype":
            value = parent[key]
            parent[key] = data.draw(st.sampled_from([str(value), [value], {"value": value}, None, len(str(value))]))
        elif action == "nest":
            depth = data.draw(st.sampled_from([1, 2, 50, 500]), label="depth")
            value = parent[key]
            for _ in range(depth):
                value = [value] if data.draw(st.booleans(), label="list") else {"config": value}
            parent[key] = value
        elif action == "reference":  # a tensor reference to another layer, call or output
            name = data.draw(st.sampled_from(_layer_names(config) + ["ghost", ""]), label="layer")
            parent[key] = [name, data.draw(st.sampled_from([0, 1, -1, 10**6])), data.draw(st.sampled_from([0, 1, -1, 9999]))]
        else:  # swap with another value of the config, which may be its own ancestor
            other = data.draw(st.sampled_from(places), label="other")
            parent[key] = copy.deepcopy(_get(config, other))
    return config


def _write_keras(path: Path, config_text: str, weights: bytes | None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", config_text)
        if weights is not None:
            zf.writestr("model.weights.h5", weights)


def _write_h5(path: Path, config_text: str) -> None:
    import h5py

    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = config_text


@BUDGET
@given(data=st.data())
def test_mutated_configs_in_a_keras_archive(base, data):
    config, source, folder = base
    mutated = _mutate(config, data)
    with zipfile.ZipFile(source) as zf:
        weights = zf.read("model.weights.h5") if data.draw(st.booleans(), label="weights") else None
    path = folder / "fuzz.keras"
    _write_keras(path, json.dumps(mutated), weights)
    assert_handled_inprocess(path)


@BUDGET
@given(data=st.data())
def test_mutated_configs_in_a_legacy_h5(base, data):
    config, _, folder = base
    path = folder / "fuzz.h5"
    _write_h5(path, json.dumps(_mutate(config, data)))
    assert_handled_inprocess(path)


@settings(BUDGET, max_examples=max(EXAMPLES // 3, 1))
@given(data=st.data())
def test_keras_files_with_random_bytes_overwritten(base, data):
    _, source, folder = base
    raw = bytearray(source.read_bytes())
    for _ in range(data.draw(st.integers(1, 8), label="bytes")):
        raw[data.draw(st.integers(0, len(raw) - 1), label="at")] = data.draw(st.integers(0, 255), label="byte")
    path = folder / "flipped.keras"
    path.write_bytes(bytes(raw))
    assert_handled_inprocess(path)


# regressions found by the fuzzer ----------------------------------------------------------

def _set(config: dict, path: tuple, value) -> dict:
    config = copy.deepcopy(config)
    _get(config, path[:-1])[path[-1]] = value
    return config


def _dense_config(config: dict) -> tuple:
    """The path of the Dense layer's config in the saved model's config."""
    (index,) = [i for i, layer in enumerate(config["config"]["layers"]) if layer["class_name"] == "Dense"]
    return ("config", "layers", index, "config")


@pytest.mark.parametrize("value", ["0", [5], {"units": 5}, 2.5, True], ids=["str", "list", "dict", "float", "bool"])
def test_units_of_the_wrong_type_are_an_unknown_size(base, value):
    """``units: "0"`` reached PW001 as a string (an internal error: int + str)."""
    config, source, folder = base
    path = folder / "units.keras"
    with zipfile.ZipFile(source) as zf:
        _write_keras(path, json.dumps(_set(config, _dense_config(config) + ("units",), value)), zf.read("model.weights.h5"))
    run = run_inprocess("check", str(path), "--format", "json")
    assert run.code in (0, 1) and run.err == "", run.err
    assert json.loads(run.out)["files"][0]["error"] is None



def test_flatten_input_with_unknown_channels_and_known_positions(base):
    """Found at 4000 examples: the shape recorded for the flatten's input says ``[None, 6, 6, None]``."""
    config, _, folder = base
    flatten = next(i for i, layer in enumerate(config["config"]["layers"]) if layer["class_name"] == "Flatten")
    shape = ("config", "layers", flatten, "inbound_nodes", 0, "args", 0, "config", "shape")
    path = folder / "channels.keras"
    _write_keras(path, json.dumps(_set(config, shape, [None, 6, 6, None])), None)
    assert_handled_inprocess(path)
    intact = run_inprocess("check", str(base[1]), "--select", "PW001")
    unknown = run_inprocess("check", str(path), "--select", "PW001")
    # the channel count comes from the dense layer's fan-in: the same finding as the intact model's
    assert "PW001" in intact.out and unknown.out == intact.out.replace(str(base[1]), str(path))


def test_a_class_name_that_is_not_a_string_is_no_model_graph(base):
    """``"class_name": {...}`` at the top was a TypeError (a dict looked up in a set): now
    the config is not a layer graph, and a model of nothing pwlint knows is refused."""
    config, _, folder = base
    path = folder / "classname.keras"
    _write_keras(path, json.dumps(_set(config, ("class_name",), {"Functional": 1})), None)
    run = run_inprocess("check", str(path))
    assert run.code == 2 and run.err.startswith(f"pwlint: error: {path}: "), run.err
    assert "internal error" not in run.err and "cannot check this model" in run.err, run.err


def _conv_config(config: dict) -> tuple:
    (index,) = [i for i, layer in enumerate(config["config"]["layers"]) if layer["class_name"] == "Conv2D"]
    return ("config", "layers", index, "config")


@pytest.mark.parametrize("key", ["groups", "depth_multiplier"])
@pytest.mark.parametrize("value", [[2], "two", {"n": 2}, 1.5], ids=["list", "str", "dict", "float"])
def test_conv_counts_of_the_wrong_type_are_unknown(base, key, value):
    """``groups: [2]`` was a TypeError in int(): a count that is not a whole number is unknown,
    and the model lints as the intact one does (the head is still found)."""
    config, source, folder = base
    path = folder / "groups.keras"
    with zipfile.ZipFile(source) as zf:
        _write_keras(path, json.dumps(_set(config, _conv_config(config) + (key,), value)), zf.read("model.weights.h5"))
    run = run_inprocess("check", str(path), "--select", "PW001")
    assert (run.code, run.err) == (1, ""), run.err
    assert "PW001" in run.out


def test_damaged_weights_data_is_a_refusal_not_an_internal_error(base):
    """h5py raised RuntimeError while listing a damaged group of the weights file: that is
    a damaged file, refused with h5py's reason."""
    _, source, folder = base
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo("model.weights.h5")
    assert info.compress_type == zipfile.ZIP_STORED  # Keras stores it: its bytes are in the file as is
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    weights = bytes(raw[start:start + info.file_size])
    # every group's local heap (its link names) starts with "HEAP": corrupt those signatures
    heaps = [i for i in range(len(weights)) if weights.startswith(b"HEAP", i)]
    assert heaps
    for offset in heaps:
        raw[start + offset:start + offset + 4] = b"XXXX"
    path = folder / "heap.keras"
    path.write_bytes(bytes(raw))
    run = run_inprocess("check", str(path))
    assert run.code == 2, run.out
    assert run.err.startswith(f"pwlint: error: {path}: cannot read the stored weights, the HDF5 data is damaged ("), run.err
