"""``--fix`` on Keras models: the Keras backend rewrites ``.keras`` (and legacy ``.h5``)
files with Keras itself. Every check here loads the original and the fixed file with
``keras.saving.load_model(safe_mode=True)`` and runs both on the same random inputs:
pwlint's own report is not trusted for the numbers."""

from __future__ import annotations

import json
import zipfile
from math import prod

import numpy as np
import pytest

from tests.conftest import codes, fix_json, leftovers, lint, run_inprocess
from tests.formats.keras import models as keras_models
from tests.formats.keras.fix_helpers import leaves as _leaves
from tests.formats.keras.fix_helpers import randomise

keras = pytest.importorskip("keras")
layers = keras.layers

RTOL, ATOL = 1e-4, 1e-5
#: Keras' own numpy-2 deprecation noise, raised inside Keras on every get_weights()
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# models -------------------------------------------------------------------------------

def functional_head():
    """Functional: Conv -> Flatten -> Dropout -> Dense(relu) -> BN -> Dense, and two outputs
    (the logits and a Softmax of them), so the last dense feeds a layer and an output."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    x = layers.Dense(12, activation="relu", name="fc1")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    logits = layers.Dense(7, name="fc2")(x)
    probs = layers.Softmax(name="probs")(logits)
    return keras.Model(inputs, [logits, probs], name="functional_head")


def nested_head():
    """The Flatten + Dense head inside a Sequential used as a layer of a Functional model."""
    head = keras.Sequential([
        layers.Flatten(name="flat"),
        layers.Dense(12, activation="relu", name="fc1"),
        layers.Dense(5, activation="softmax", name="fc2"),
    ], name="head")
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return keras.Model(inputs, head(x), name="nested_head")


def channels_first(flatten_format: str):
    """A channels-first map, flattened in (c, h, w) order (Flatten channels_last) or in
    (h, w, c) order (Flatten channels_first moves the channels last)."""
    inputs = keras.Input((3, 6, 5), name="image")
    x = layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    x = layers.Flatten(data_format=flatten_format, name="flat")(x)
    x = layers.Dense(12, activation="relu", name="fc1")(x)
    x = layers.Dense(7, name="fc2")(x)
    return keras.Model(inputs, x, name=f"cf_{flatten_format}")


def bias_then_norm():
    """Sequential: two Conv2D(use_bias=True) -> BN blocks (two PW004 fixes in one round),
    then a Flatten + Dense head: PW004 and PW001 in one model."""
    return keras.Sequential([
        keras.Input((8, 8, 3), name="image"),
        layers.Conv2D(6, 3, use_bias=True, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
        layers.Conv2D(5, 1, use_bias=True, name="conv2"),
        layers.BatchNormalization(name="bn2"),
        layers.MaxPooling2D(name="pool"),
        layers.Flatten(name="flatten"),
        layers.Dense(10, name="fc"),
    ], name="bias_then_norm")


def pointwise_map():
    """A 1x1 conv before the Flatten: a spatially constant input gives a spatially constant
    feature map, on which global pooling + pointwise is exact."""
    inputs = keras.Input((4, 5, 3), name="image")
    x = layers.Conv2D(6, 1, activation="relu", name="conv")(inputs)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(8, activation="relu", name="fc1")(x)
    x = layers.Dense(3, name="fc2")(x)
    return keras.Model(inputs, x, name="pointwise_map")


def big_dense():
    inputs = keras.Input((64,), name="features")
    x = layers.Dense(128, activation="relu", name="big")(inputs)
    x = layers.Dense(4, name="out")(x)
    return keras.Model(inputs, x, name="big_dense")


MODELS = {
    "vgg-sequential": keras_models.vgg,
    "lenet-sequential": keras_models.lenet,
    "functional": functional_head,
    "nested": nested_head,
    "channels-first-flatten-last": lambda: channels_first("channels_last"),
    "channels-first-flatten-first": lambda: channels_first("channels_first"),
}
#: (first dense, its conv kernel H x W, the later dense layers) per model
HEADS = {
    "vgg-sequential": ("fc1", (4, 4), ["predictions"]),
    "lenet-sequential": ("fc1", (4, 4), ["fc2", "fc3"]),
    "functional": ("fc1", (4, 4), ["fc2"]),
    "nested": ("head/fc1", (4, 4), ["head/fc2"]),
    "channels-first-flatten-last": ("fc1", (4, 3), ["fc2"]),
    "channels-first-flatten-first": ("fc1", (4, 3), ["fc2"]),
}


def conv_of(name: str, head: str) -> str:
    """Where a dense layer of ``HEADS[head]`` is after the head fix: a conv of its own name,
    except the last, whose name the final Flatten keeps (the model's output name)."""
    first, _, later = HEADS[head]
    return f"{name}_conv" if name == [first, *later][-1] else name


def output_names(model) -> list[str]:
    """What a model's outputs are called: Functional's output_names, a Sequential's last layer."""
    return list(getattr(model, "output_names", None) or [model.layers[-1].name])


def save(model, path):
    model.save(str(path))
    return path


def load(path):
    return keras.saving.load_model(str(path), compile=False, safe_mode=True)


def sample(model, seed: int, batch: int = 3) -> np.ndarray:
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype("float32")


def outputs(model, x) -> list[np.ndarray]:
    result = model(x, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(r)) for r in keras.tree.flatten(result)]


def assert_same_outputs(original, fixed, seeds=(0, 1, 2)):
    before, after = load(original), load(fixed)
    for seed in seeds:
        x = sample(before, seed)
        expected, got = outputs(before, x), outputs(after, x)
        assert len(expected) == len(got)
        for b, a in zip(expected, got):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def layer_at(model, path: str):
    for name in path.split("/"):
        model = model.get_layer(name)
    return model


def params(layer) -> int:
    return sum(prod(w.shape) for w in layer.trainable_weights)


def fix_report(report: dict) -> dict:
    return report["files"][0]["fix"]


# PW001 safe: convolutionalise ------------------------------------------------------------

@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def safely_fixed(request, tmp_path_factory):
    """(model name, original file, fixed file, report): fixed once per module."""
    name = request.param
    folder = tmp_path_factory.mktemp("keras-safe")
    original = save(randomise(MODELS[name]()), folder / "original.keras")
    model = folder / "model.keras"
    model.write_bytes(original.read_bytes())
    _, report = fix_json(model, "--fix")
    return name, original, model, report


def test_safe_head_fix_keeps_the_outputs(safely_fixed):
    _, original, model, report = safely_fixed
    assert model.read_bytes() != original.read_bytes()
    applied = fix_report(report)["applied"]
    assert [(o["code"], o["applicability"]) for o in applied] == [("PW001", "safe")]
    assert_same_outputs(original, model)


def test_safe_head_fix_makes_an_hxw_conv_and_pointwise_convs_of_the_same_names(safely_fixed):
    """Each dense layer becomes a conv of its name, except the last: its name goes to the
    final Flatten, so that the model's output names (what losses and predict() dicts are
    keyed by) stay the same, and its conv is ``<name>_conv``."""
    name, original, model, _ = safely_fixed
    first, kernel, later = HEADS[name]
    before, after = load(original), load(model)
    last = [first, *later][-1]
    conv = layer_at(after, conv_of(first, name))
    assert type(conv).__name__ == "Conv2D" and tuple(conv.kernel_size) == kernel and conv.padding == "valid"
    assert conv.activation.__name__ == layer_at(before, first).activation.__name__
    for dense in later:
        pointwise = layer_at(after, conv_of(dense, name))
        assert type(pointwise).__name__ == "Conv2D" and tuple(pointwise.kernel_size) == (1, 1)
        assert pointwise.activation.__name__ == layer_at(before, dense).activation.__name__
    assert type(layer_at(after, last)).__name__ == "Flatten"
    # same parameters, layer by layer
    for dense in [first, *later]:
        assert params(layer_at(after, conv_of(dense, name))) == params(layer_at(before, dense))
    assert after.count_params() == before.count_params()
    assert [tuple(o.shape) for o in after.outputs] == [tuple(o.shape) for o in before.outputs]
    assert output_names(after) == output_names(before)


def test_relinting_after_the_safe_fix_reports_no_pw001(safely_fixed):
    _, original, model, report = safely_fixed
    assert "PW001" in codes(lint(original))
    assert "PW001" not in codes(report)
    assert "PW001" not in codes(lint(model))


def test_the_fixed_file_is_a_keras_zip_that_loads_safely(safely_fixed):
    _, _, model, report = safely_fixed
    assert zipfile.is_zipfile(model)
    with zipfile.ZipFile(model) as archive:
        assert {"config.json", "model.weights.h5"} <= set(archive.namelist())
    load(model)
    assert leftovers(model.parent) == []
    fix = fix_report(report)
    assert fix["verified"] and fix["written"] == str(model)
    assert fix["before"]["params"] == fix["after"]["params"]


def test_sequential_without_an_input_layer(tmp_path):
    """A Sequential built with ``build(shape)`` instead of an Input: no InputLayer in its config."""
    model = keras.Sequential([
        layers.Conv2D(4, 3, name="conv"),
        layers.Flatten(name="flat"),
        layers.Dense(5, name="fc"),
    ], name="open")
    model.build((None, 6, 6, 3))
    path = save(randomise(model), tmp_path / "m.keras")
    original = tmp_path / "original.keras"
    original.write_bytes(path.read_bytes())
    fix_json(path, "--fix")
    assert_same_outputs(original, path)
    fixed = load(path)
    conv = fixed.get_layer("fc_conv")
    assert type(conv).__name__ == "Conv2D" and tuple(conv.kernel_size) == (4, 4)
    assert output_names(fixed) == ["fc"]


# PW001 unsafe: global pooling + pointwise ------------------------------------------------

@pytest.mark.parametrize("name", ["vgg-sequential", "functional", "nested", "channels-first-flatten-first"])
def test_unsafe_pool_fix_cuts_the_first_layer_by_hxw(name, tmp_path):
    original = save(randomise(MODELS[name]()), tmp_path / "original.keras")
    model = tmp_path / "model.keras"
    model.write_bytes(original.read_bytes())
    run, report = fix_json(model, "--fix", "--unsafe-fixes")
    applied = fix_report(report)["applied"]
    assert [(o["code"], o["applicability"]) for o in applied] == [("PW001", "unsafe")]
    first, (height, width), later = HEADS[name]
    before, after = load(original), load(model)
    dense = layer_at(before, first)
    fan_in, units = dense.kernel.shape
    channels = fan_in // (height * width)
    # the weights fall by H*W, the bias stays
    assert params(dense) == height * width * channels * units + units
    assert params(layer_at(after, conv_of(first, name))) == channels * units + units
    for name_ in later:
        assert params(layer_at(after, conv_of(name_, name))) == params(layer_at(before, name_))
    assert after.count_params() == before.count_params() - (height * width - 1) * channels * units
    pools = [layer for layer in _leaves(after) if type(layer).__name__ == "GlobalAveragePooling2D"]
    assert len(pools) == 1 and pools[0].keepdims
    # same output shapes, different values (the fix is not exact on random maps)
    x = sample(before, 0)
    expected, got = outputs(before, x), outputs(after, x)
    assert [a.shape for a in got] == [b.shape for b in expected]
    assert any(not np.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in zip(got, expected))
    assert "PW001" not in codes(lint(model))


def test_unsafe_pool_fix_is_exact_on_a_spatially_constant_map(tmp_path):
    original = save(randomise(pointwise_map()), tmp_path / "original.keras")
    model = tmp_path / "model.keras"
    model.write_bytes(original.read_bytes())
    fix_json(model, "--fix", "--unsafe-fixes")
    before, after = load(original), load(model)
    pixel = np.random.default_rng(1).standard_normal((2, 1, 1, 3)).astype("float32")
    x = np.broadcast_to(pixel, (2, 4, 5, 3)).copy()  # every position the same
    (expected,), (got,) = outputs(before, x), outputs(after, x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# PW004 safe: fold the conv bias into the BatchNorm ---------------------------------------

def nested_bias():
    """Conv2D(use_bias=True) -> BN inside a nested Functional backbone, and again inside a
    Sequential block nested in that backbone (same Keras names at different depths)."""
    inner = keras.Input((8, 8, 3), name="backbone_in")
    x = layers.Conv2D(4, 3, use_bias=True, name="conv")(inner)
    x = layers.BatchNormalization(name="bn")(x)
    block = keras.Sequential([layers.Conv2D(5, 1, name="conv"), layers.BatchNormalization(name="bn")], name="block")
    backbone = keras.Model(inner, block(x), name="backbone")
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    return keras.Model(inputs, layers.Dense(3, name="fc")(x), name="nested_bias")


#: (builder, the (conv, norm) pairs folded)
FOLDS = {
    "functional": (keras_models.conv_bias_bn, [("conv", "bn")]),
    "sequential": (bias_then_norm, [("conv", "bn"), ("conv2", "bn2")]),
    "nested": (nested_bias, [("backbone/conv", "backbone/bn"), ("backbone/block/conv", "backbone/block/bn")]),
}


@pytest.mark.parametrize("name", list(FOLDS))
def test_bias_fold_is_exact_and_moves_the_bias_into_the_running_mean(name, tmp_path):
    builder, pairs = FOLDS[name]
    original = save(randomise(builder()), tmp_path / "original.keras")
    model = tmp_path / "model.keras"
    model.write_bytes(original.read_bytes())
    _, report = fix_json(model, "--fix")
    applied = [(o["code"], o["applicability"]) for o in fix_report(report)["applied"]]
    assert applied.count(("PW004", "safe")) == len(pairs)  # all in one round
    assert_same_outputs(original, model)
    before, after = load(original), load(model)
    dropped = 0
    for conv_path, norm_path in pairs:
        conv_before, conv_after = layer_at(before, conv_path), layer_at(after, conv_path)
        assert conv_before.use_bias and not conv_after.use_bias
        np.testing.assert_array_equal(conv_after.get_weights()[0], conv_before.get_weights()[0])
        bias = keras.ops.convert_to_numpy(conv_before.bias)
        mean_before = keras.ops.convert_to_numpy(layer_at(before, norm_path).moving_mean)
        mean_after = keras.ops.convert_to_numpy(layer_at(after, norm_path).moving_mean)
        assert not np.allclose(bias, 0) and not np.allclose(mean_before, 0)
        np.testing.assert_allclose(mean_after, mean_before - bias, rtol=1e-6, atol=1e-7)
        dropped += conv_before.filters
    assert after.count_params() == before.count_params() - dropped
    remaining = codes(lint(model))
    assert "PW004" not in remaining and "PW001" not in remaining


# PW002 unsafe: factorise by truncated SVD ------------------------------------------------

def _pw002_config(folder, **options):
    options = {"max-params": 2000, **options}
    lines = ["[tool.pwlint.rules.PW002]"] + [f"{key} = {value}" for key, value in options.items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")


def test_factorise_reaches_the_target_parameter_count(tmp_path):
    _pw002_config(tmp_path, **{"svd-target-params": 3000})
    original = save(randomise(big_dense()), tmp_path / "original.keras")
    model = tmp_path / "model.keras"
    model.write_bytes(original.read_bytes())
    _, report = fix_json(model, "--fix", "--unsafe-fixes")
    (outcome,) = [o for o in fix_report(report)["applied"] if o["code"] == "PW002"]
    before, after = load(original), load(model)
    weight = keras.ops.convert_to_numpy(before.get_layer("big").kernel)
    rows, cols = weight.shape
    rank = (3000 - cols) // (rows + cols)  # the bias stays
    first, second = after.get_layer("big_u"), after.get_layer("big_v")
    assert tuple(first.kernel.shape) == (rows, rank) and not first.use_bias
    assert tuple(second.kernel.shape) == (rank, cols) and second.use_bias
    assert second.activation.__name__ == "relu" and first.activation.__name__ == "linear"
    assert params(first) + params(second) == rank * (rows + cols) + cols <= 3000
    # the reported error is the truncated SVD's
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    error = np.sqrt(np.sum(s[rank:] ** 2)) / np.sqrt(np.sum(s**2))
    assert f"rank {rank}" in outcome["note"] and f"relative weight error {error:.3g}" in outcome["note"]
    product = keras.ops.convert_to_numpy(first.kernel) @ keras.ops.convert_to_numpy(second.kernel)
    assert np.linalg.norm(product - weight) / np.linalg.norm(weight) == pytest.approx(error, rel=1e-3)
    x = sample(before, 0)
    assert [a.shape for a in outputs(after, x)] == [b.shape for b in outputs(before, x)]


def test_factorise_reports_the_error_of_the_factors_in_the_file_not_of_the_svd(tmp_path, monkeypatch):
    """A slip between the SVD and the written kernels (here: the second factor halved on
    its way) must show in the reported error, which is measured from what was written."""
    import dataclasses
    import re

    import pwlint.formats.keras.fixes as keras_fixes
    from pwlint.fix.plans import FactorisePlan

    real = keras_fixes.factorise
    monkeypatch.setattr(keras_fixes, "factorise", lambda w, plan: dataclasses.replace(
        real(w, plan), second=real(w, plan).second * 0.5))
    _pw002_config(tmp_path, **{"svd-target-params": 3000})
    original = save(randomise(big_dense()), tmp_path / "original.keras")
    model = tmp_path / "model.keras"
    model.write_bytes(original.read_bytes())
    _, report = fix_json(model, "--fix", "--unsafe-fixes")
    (outcome,) = [o for o in fix_report(report)["applied"] if o["code"] == "PW002"]
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))
    weight = keras.ops.convert_to_numpy(load(original).get_layer("big").kernel).astype(np.float64)
    after = load(model)
    product = keras.ops.convert_to_numpy(after.get_layer("big_u").kernel) @ keras.ops.convert_to_numpy(
        after.get_layer("big_v").kernel)
    in_file = np.linalg.norm(weight - product) / np.linalg.norm(weight)
    assert reported == pytest.approx(in_file, rel=6e-3)
    assert in_file > 1.05 * real(weight, FactorisePlan("big", target_params=3000)).error  # the slip is visible


def test_factorise_by_energy_keeps_the_smallest_rank_holding_it(tmp_path):
    _pw002_config(tmp_path, **{"svd-energy": 0.8, "max-params": 5000, "rank-multiple-of": 1})
    original = save(randomise(big_dense()), tmp_path / "original.keras")
    model = tmp_path / "model.keras"
    model.write_bytes(original.read_bytes())
    fix_json(model, "--fix", "--unsafe-fixes")
    weight = keras.ops.convert_to_numpy(load(original).get_layer("big").kernel)
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    rank = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.8 - 1e-12) + 1)
    assert tuple(load(model).get_layer("big_u").kernel.shape) == (64, rank)


# writing, verification, formats ----------------------------------------------------------

def test_output_option_leaves_the_source_untouched(tmp_path):
    source = save(randomise(keras_models.vgg()), tmp_path / "vgg.keras")
    before = source.read_bytes()
    target = tmp_path / "out" / "fixed.keras"
    target.parent.mkdir()
    _, report = fix_json(source, "--fix", "-o", str(target))
    assert source.read_bytes() == before
    assert fix_report(report)["written"] == str(target)
    assert_same_outputs(source, target)
    assert "PW001" not in codes(lint(target))
    assert leftovers(tmp_path) == [] and leftovers(target.parent) == []


def test_diff_writes_nothing(tmp_path):
    source = save(randomise(keras_models.vgg()), tmp_path / "vgg.keras")
    before = source.read_bytes()
    _, report = fix_json(source, "--diff")
    fix = fix_report(report)
    assert fix["dry_run"] and fix["written"] is None
    assert [o["code"] for o in fix["applied"]] == ["PW001"]
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg.keras"]


@pytest.fixture
def wrong_weights(monkeypatch):
    """Make the safe PW001 action write a wrong conv kernel, as a bug would."""
    from pwlint.formats.keras import fixes as keras_fixes

    real = keras_fixes.KerasRewriter.rewrite_head

    def perturbed(rewriter, plan):
        real(rewriter, plan)
        for path, values in rewriter.edit.weights.items():
            rewriter.edit.weights[path] = [v * 1.05 for v in values]

    monkeypatch.setattr(keras_fixes.KerasRewriter, "rewrite_head", perturbed)


def test_safe_fix_that_changes_the_outputs_is_not_written(tmp_path, wrong_weights):
    source = save(randomise(keras_models.vgg()), tmp_path / "vgg.keras")
    before = source.read_bytes()
    _, report = fix_json(source, "--fix")
    assert source.read_bytes() == before
    fix = fix_report(report)
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = fix["not_applied"]
    assert outcome["code"] == "PW001" and "outputs differ" in outcome["note"]
    assert outcome["max_abs_diff"] > 1e-3
    assert "PW001" in codes(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg.keras"]


def test_a_failed_rename_leaves_the_source_byte_identical(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    source = save(randomise(keras_models.vgg()), tmp_path / "vgg.keras")
    before = source.read_bytes()
    real = os.replace

    def broken(src, dst):
        if Path(dst) == source:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", broken)
    run = run_inprocess("check", str(source), "--fix")
    assert run.code == 2 and "No space left" in run.err
    assert source.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_legacy_h5_is_fixed_in_place_as_h5(tmp_path):
    import h5py

    model = randomise(functional_head())
    source = tmp_path / "model.h5"
    model.save(str(source))
    original = tmp_path / "original.h5"
    original.write_bytes(source.read_bytes())
    _, report = fix_json(source, "--fix")
    assert [o["code"] for o in fix_report(report)["applied"]] == ["PW001"]
    assert h5py.is_hdf5(source) and not zipfile.is_zipfile(source)
    with h5py.File(source, "r") as h5:
        assert "model_config" in h5.attrs
    assert_same_outputs(original, source)
    assert "PW001" not in codes(lint(source))


def test_legacy_h5_can_be_written_as_keras(tmp_path):
    source = tmp_path / "model.h5"
    randomise(keras_models.conv_bias_bn()).save(str(source))
    before = source.read_bytes()
    target = tmp_path / "model.keras"
    fix_json(source, "--fix", "-o", str(target))
    assert source.read_bytes() == before
    assert zipfile.is_zipfile(target)
    assert_same_outputs(source, target)
    assert "PW004" not in codes(lint(target))


def test_writing_a_keras_model_as_onnx_is_refused(tmp_path):
    source = save(randomise(keras_models.vgg()), tmp_path / "vgg.keras")
    before = source.read_bytes()
    run = run_inprocess("check", str(source), "--fix", "-o", str(tmp_path / "vgg.onnx"))
    assert run.code == 2 and ".keras, .h5 or .hdf5" in run.err
    assert source.read_bytes() == before
    assert not (tmp_path / "vgg.onnx").exists() and leftovers(tmp_path) == []


def test_compile_settings_are_kept(tmp_path):
    model = randomise(keras_models.vgg())
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    source = save(model, tmp_path / "vgg.keras")
    fix_json(source, "--fix")
    with zipfile.ZipFile(source) as archive:
        config = json.loads(archive.read("config.json"))
    assert config["compile_config"]["loss"] == "mse"
    assert keras.saving.load_model(str(source), safe_mode=True).compiled


def test_legacy_h5_training_config_is_kept_as_stored(tmp_path):
    import h5py

    model = randomise(keras_models.vgg())
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    source = tmp_path / "vgg.h5"
    model.save(str(source))
    with h5py.File(source, "r") as h5:
        stored = h5.attrs["training_config"]
    fix_json(source, "--fix")
    with h5py.File(source, "r") as h5:
        assert h5.attrs["training_config"] == stored
        assert "optimizer_weights" not in h5  # the old optimizer state does not fit the new layers
    assert type(load(source).get_layer("fc1")).__name__ == "Conv2D"


@pytest.mark.parametrize("kind", ["python-lambda", "named-function"])
def test_lambda_layer_is_never_run_and_the_fix_is_not_applied(kind, tmp_path):
    """A Lambda's code is stored in the file (a Python lambda as bytecode, a named function
    by name); pwlint refuses both before Keras sees the config, so the fix is reported as
    not applied."""
    marker = tmp_path / "marker"

    def touch(x):
        open(marker, "w").close()
        return x

    function = (lambda x, path=str(marker): (open(path, "w").close(), x)[1]) if kind == "python-lambda" else touch
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Lambda(function, name="hook")(inputs)
    x = layers.Conv2D(4, 3, name="conv")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(5, name="fc")(x)
    source = save(keras.Model(inputs, x), tmp_path / "lambda.keras")
    marker.unlink()  # building the model ran the function; loading it must not
    before = source.read_bytes()
    assert "PW001" in codes(lint(source))  # linted without running it
    _, report = fix_json(source, "--fix", "--no-verify")
    fix = fix_report(report)
    assert fix["applied"] == []
    (outcome,) = fix["not_applied"]
    # refused from pwlint's reading of the config (issue 15): never deserialised at all
    assert outcome["note"] == ("cannot fix: layer 'hook' is a Lambda layer; pwlint fixes only models "
                               "built from Keras's own layers")
    assert not marker.exists()
    assert source.read_bytes() == before
    _, report = fix_json(source, "--fix")  # with verification: the model cannot even be run
    assert "is a Lambda layer" in fix_report(report)["not_applied"][0]["note"]
    assert not marker.exists() and source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lambda.keras"]


def _tripwire_identity(path):
    """What unpickling a :class:`Tripwire` calls: it leaves a marker file."""
    import torch

    open(path, "w").close()
    return torch.nn.Identity()


def _tripwire(path):
    import torch

    class Tripwire(torch.nn.Module):
        def forward(self, x):
            return x

        def __reduce__(self):
            return (_tripwire_identity, (path,))

    return Tripwire()


def test_torch_module_wrapper_is_never_unpickled(tmp_path):
    """A TorchModuleWrapper stores its torch module as a pickle, which ``torch.load`` would
    run; pwlint does not rebuild that class, so the fix is not applied and nothing runs."""
    marker = tmp_path / "marker"
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.TorchModuleWrapper(_tripwire(str(marker)), name="wrapped", output_shape=(None, 6, 6, 3))(inputs)
    x = layers.Conv2D(4, 3, name="conv")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(5, name="fc")(x)
    source = save(keras.Model(inputs, x), tmp_path / "wrapped.keras")
    assert not marker.exists()
    before = source.read_bytes()
    for args in (("--fix",), ("--fix", "--no-verify")):
        _, report = fix_json(source, *args)
        (outcome,) = fix_report(report)["not_applied"]
        assert "layer 'wrapped' is a TorchModuleWrapper layer" in outcome["note"]
        assert not marker.exists() and source.read_bytes() == before
    # the tripwire is armed: an unsafe load would have run it
    keras.saving.load_model(str(source), safe_mode=False)
    assert marker.exists()


def test_shared_dense_layer_is_not_rewritten(tmp_path):
    source = save(randomise(keras_models.nested()), tmp_path / "nested.keras")
    before = source.read_bytes()
    _, report = fix_json(source, "--fix")
    (outcome,) = [o for o in fix_report(report)["not_applied"] if o["code"] == "PW001"]
    assert "called 2 times" in outcome["note"] or "shares its weights" in outcome["note"]
    assert source.read_bytes() == before


def test_keras_backend_is_registered_without_importing_keras(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from pwlint.plugins import get_registry; "
        "backend = get_registry(False).backends['keras']; print(backend.name); "
        "print('keras' in sys.modules or 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["keras", "False"], proc.stderr


def test_fix_as_a_command_without_keras_backend_set(tmp_path):
    """The real command, in a fresh process with no KERAS_BACKEND: the backend picks torch."""
    import os
    import subprocess
    import sys

    source = save(randomise(keras_models.lenet()), tmp_path / "lenet.keras")
    original = tmp_path / "original.keras"
    original.write_bytes(source.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run(
        [sys.executable, "-m", "pwlint", str(source), "--fix", "--format", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode in (0, 1) and proc.stderr == "", proc.stderr
    report = json.loads(proc.stdout)
    assert [o["code"] for o in fix_report(report)["applied"]] == ["PW001"]
    assert_same_outputs(original, source)


def test_an_hdf5_named_model_is_fixed_in_its_own_format(tmp_path):
    """``.hdf5`` is Keras 2's ModelCheckpoint suffix for the same HDF5 format as ``.h5``:
    --fix rewrites it in place, and Keras loads the result with a conv head."""
    model = randomise(keras_models.lenet())
    path = tmp_path / "lenet.hdf5"
    model.save(tmp_path / "lenet.h5")
    (tmp_path / "lenet.h5").rename(path)
    run, report = fix_json(path, "--fix")
    assert run.code in (0, 1), run.err
    (entry,) = report["files"]
    assert [o["code"] for o in entry["fix"]["applied"]] == ["PW001"]
    assert entry["fix"]["written"] == str(path)
    fixed = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    assert any(type(layer).__name__ == "Conv2D" and layer.name.startswith("fc1") for layer in fixed.layers)
    assert leftovers(tmp_path) == []


def test_functional_head_of_one_dense_layer_is_convolutionalised(tmp_path):
    """Conv -> Flatten -> Dense(10) as a Functional model: the only dense layer is also the
    last one (its conv is renamed `<name>_conv`, the final Flatten takes its name); the
    safe fix applies and the outputs stay the same."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.Flatten(name="flat")(x)
    logits = layers.Dense(10, name="logits")(x)
    model = randomise(keras.Model(inputs, logits, name="one_dense"))
    path = tmp_path / "one_dense.keras"
    model.save(path)
    run, report = fix_json(path, "--fix")
    assert run.code in (0, 1), run.err
    (entry,) = report["files"]
    assert [o["code"] for o in entry["fix"]["applied"]] == ["PW001"], entry["fix"]
    fixed = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    assert fixed.layers[-1].name == "logits"  # the output keeps its name
    sample = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(fixed.predict(sample, verbose=0), model.predict(sample, verbose=0), rtol=1e-4, atol=1e-5)
