"""PW006's fix on Keras models: two linear layers with nothing non-linear between them
(Dropout, an eval BatchNormalization, reshapes that keep the channels) merged into one
layer of the first's kind writing the second's output under the second's name. Safe:
the outputs must not change. Each written file is loaded back with Keras and run on
the same inputs as the original."""

from __future__ import annotations

import numpy as np
import pytest

from pwlint.errors import FixNotApplicable
from pwlint.fix.plans import MergeChainPlan
from tests.conftest import codes, lint
from tests.formats.keras.fix_helpers import apply_plan, fix_report, load, outcomes, params, randomise, run, sample, save

keras = pytest.importorskip("keras")
layers = keras.layers
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]

#: what "outputs unchanged" means for a safe fix (float32 sums in a different order)
RTOL, ATOL = 1e-4, 1e-5


def merge(path, first, second, between=(), norm=None) -> str:
    return apply_plan(path, "merge-linear-chain", MergeChainPlan(first, second, between, norm), "safe")


def assert_same_outputs(model, fixed, seeds=(0, 1)):
    for seed in seeds:
        x = sample(model, seed)
        expected, got = run(model, x), run(fixed, x)
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def output_names(model) -> list[str]:
    return list(getattr(model, "output_names", None) or [model.layers[-1].name])


# dense -> dense ------------------------------------------------------------------------------

def dense_sequential():
    return keras.Sequential([
        keras.Input((20,), name="features"),
        layers.Dense(64, name="fc1"),
        layers.Dropout(0.3, name="drop"),
        layers.Dense(10, activation="relu", name="fc2"),
        layers.Dense(3, name="out"),
    ], name="dense_chain")


def dense_functional():
    """fc2 is a model output and is read by another layer too."""
    inputs = keras.Input((20,), name="features")
    x = layers.Dense(64, name="fc1")(inputs)
    x = layers.Dropout(0.3, name="drop")(x)
    hidden = layers.Dense(10, activation="relu", name="fc2")(x)
    logits = layers.Dense(3, name="out")(hidden)
    return keras.Model(inputs, [hidden, logits], name="dense_chain")


@pytest.mark.parametrize("make, suffix", [(dense_sequential, ".keras"), (dense_functional, ".h5")],
                         ids=["sequential-keras", "functional-h5"])
def test_dense_then_dense_is_one_dense_with_the_same_outputs(tmp_path, make, suffix):
    model = randomise(make())
    path = save(model, tmp_path / f"model{suffix}")

    note = merge(path, "fc1", "fc2", ("drop",))

    fixed = load(path)
    assert [layer.name for layer in fixed.layers if layer.weights] == ["fc2", "out"]
    merged = fixed.get_layer("fc2")
    assert type(merged).__name__ == "Dense" and merged.units == 10 and merged.activation.__name__ == "relu"
    assert tuple(merged.kernel.shape) == (20, 10)
    before = (20 * 64 + 64) + (64 * 10 + 10)
    assert params(merged) == 20 * 10 + 10
    assert f"{before} -> {20 * 10 + 10} weights" in note
    assert output_names(fixed) == output_names(model)
    assert_same_outputs(model, fixed)


# conv -> norm -> 1x1 conv ------------------------------------------------------------------------

def conv_norm_pointwise():
    """3x3 stride-2 conv -> BN -> Dropout -> 1x1 conv(relu); the 1x1 conv is a model output
    and feeds pooling + a Dense."""
    inputs = keras.Input((9, 9, 6), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(epsilon=1e-2, name="bn")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    features = layers.Conv2D(8, 1, activation="relu", name="project")(x)
    pooled = layers.GlobalAveragePooling2D(name="gap")(features)
    return keras.Model(inputs, [features, layers.Dense(4, name="fc")(pooled)], name="conv_chain")


def conv_norm_pointwise_channels_first():
    return keras.Sequential([
        keras.Input((6, 9, 9), name="image"),
        layers.Conv2D(32, 3, dilation_rate=2, data_format="channels_first", use_bias=False, name="conv"),
        layers.BatchNormalization(axis=1, center=False, name="bn"),
        layers.Conv2D(8, 1, data_format="channels_first", name="project"),
        layers.Flatten(name="flat"),
    ], name="conv_chain_cf")


@pytest.mark.parametrize("make, suffix, between", [
    (conv_norm_pointwise, ".keras", ("bn", "drop")),
    (conv_norm_pointwise_channels_first, ".h5", ("bn",)),
], ids=["functional-keras", "channels-first-sequential-h5"])
def test_conv_norm_pointwise_is_one_conv_with_the_same_outputs(tmp_path, make, suffix, between):
    model = randomise(make())
    conv = model.get_layer("conv")
    path = save(model, tmp_path / f"model{suffix}")

    merge(path, "conv", "project", between, "bn")

    fixed = load(path)
    names = [layer.name for layer in fixed.layers]
    assert "conv" not in names and "bn" not in names and "drop" not in names
    merged = fixed.get_layer("project")
    assert type(merged).__name__ == "Conv2D" and merged.filters == 8
    assert (tuple(merged.kernel_size), tuple(merged.strides), merged.padding, tuple(merged.dilation_rate),
            merged.data_format) == (tuple(conv.kernel_size), tuple(conv.strides), conv.padding,
                                    tuple(conv.dilation_rate), conv.data_format)
    assert merged.use_bias and merged.activation.__name__ == model.get_layer("project").activation.__name__
    assert output_names(fixed) == output_names(model)
    assert_same_outputs(model, fixed)


# reshapes kept ----------------------------------------------------------------------------------

def conv_flatten_dense():
    """A valid conv over the whole 4x4 map (one position), Flatten, Dense: the Flatten stays."""
    inputs = keras.Input((4, 4, 5), name="image")
    x = layers.Conv2D(48, 4, name="conv")(inputs)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    return keras.Model(inputs, layers.Dense(6, name="logits")(x), name="conv_flat")


def conv_reshape_dense():
    """Positions as a sequence, a Dense per position: the Reshape stays, resized to the new width."""
    inputs = keras.Input((4, 4, 5), name="image")
    x = layers.Conv2D(24, 3, padding="same", name="conv")(inputs)
    x = layers.Reshape((16, 24), name="seq")(x)
    return keras.Model(inputs, layers.Dense(6, name="logits")(x), name="conv_seq")


@pytest.mark.parametrize("make, between, kept", [
    (conv_flatten_dense, ("flat", "drop"), "Flatten"),
    (conv_reshape_dense, ("seq",), "Reshape"),
], ids=["flatten", "reshape"])
def test_a_reshape_between_stays_after_the_merged_conv_under_the_second_layers_name(tmp_path, make, between, kept):
    model = randomise(make())
    path = save(model, tmp_path / "model.keras")

    merge(path, "conv", "logits", between)

    fixed = load(path)
    assert [type(layer).__name__ for layer in fixed.layers] == ["InputLayer", "Conv2D", kept]
    assert fixed.get_layer("conv").filters == 6
    assert type(fixed.get_layer("logits")).__name__ == kept
    assert output_names(fixed) == output_names(model) == ["logits"]
    assert_same_outputs(model, fixed)


# refused, the file untouched ------------------------------------------------------------------------

def second_reader():
    """The BatchNorm's output is also added to the 1x1 conv's input branch: the middle has a second reader."""
    inputs = keras.Input((6, 6, 8), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    y = layers.BatchNormalization(name="bn")(x)
    z = layers.Conv2D(8, 1, name="project")(y)
    return keras.Model(inputs, layers.Add(name="add")([y, z]), name="second_reader")


def relu_between():
    return keras.Sequential([keras.Input((20,), name="x"), layers.Dense(16, activation="relu", name="fc1"),
                             layers.Dense(4, name="fc2")])


def reshape_mixing_positions():
    """(4, 4, 8) read as 8 rows of 16 by a channels-first 1x1 Conv1D: widths match, channels do not."""
    return keras.Sequential([keras.Input((4, 4, 3), name="x"), layers.Conv2D(8, 3, padding="same", name="conv"),
                             layers.Reshape((8, 16), name="rows"),
                             layers.Conv1D(4, 1, data_format="channels_first", name="fc")])


def dense_on_channels_first():
    """A Dense after a channels-first conv reads the width axis (4, as many as the channels)."""
    return keras.Sequential([keras.Input((3, 4, 4), name="x"),
                             layers.Conv2D(4, 1, data_format="channels_first", name="conv"),
                             layers.Dense(5, name="fc")])


def unnamed_norm():
    return keras.Sequential([keras.Input((20,), name="x"), layers.Dense(16, name="fc1"),
                             layers.BatchNormalization(name="bn"), layers.Dense(4, name="fc2")])


def spatial_second():
    return keras.Sequential([keras.Input((6, 6, 3), name="x"), layers.Conv2D(8, 1, name="conv"),
                             layers.Conv2D(4, 3, name="conv2")])


@pytest.mark.parametrize("make, plan, reason", [
    (second_reader, ("conv", "project", ("bn",), "bn"), "also read elsewhere"),
    (relu_between, ("fc1", "fc2", (), None), "relu activation"),
    (reshape_mixing_positions, ("conv", "fc", ("rows",), None), "mixes the channels of different positions"),
    (dense_on_channels_first, ("conv", "fc", (), None), "would not read"),
    (unnamed_norm, ("fc1", "fc2", ("bn",), None), "BatchNormalization the plan does not name"),
    (spatial_second, ("conv", "conv2", (), None), "not a pointwise conv"),
], ids=["middle-read-twice", "relu", "reshape-mixing-positions", "dense-reading-width", "unnamed-norm",
                              "3x3-second"])
def test_a_chain_that_is_not_linear_or_not_alone_is_refused_and_the_file_untouched(tmp_path, make, plan, reason):
    model = randomise(make())
    path = save(model, tmp_path / "model.keras")
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match=reason):
        merge(path, *plan)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


# through the command line ------------------------------------------------------------------

@pytest.mark.parametrize("make, first, second", [
    (dense_sequential, "fc1", "fc2"),
    (conv_norm_pointwise, "conv", "project"),
], ids=["dense-dropout-dense", "conv-bn-dropout-pointwise"])
def test_pw006_merge_with_fix_is_verified_and_keeps_the_outputs(tmp_path, make, first, second):
    model = randomise(make())
    path = save(model, tmp_path / "model.keras")
    assert "PW006" in codes(lint(path))

    report = fix_report(path, "--select", "PW006")

    (outcome,) = outcomes(report, "PW006")
    assert outcome["applicability"] == "safe" and f"'{first}' and '{second}' merged" in outcome["note"]
    assert report["files"][0]["fix"]["verified"]
    fixed = load(path)
    assert first not in [layer.name for layer in fixed.layers]
    assert_same_outputs(model, fixed)
    assert "PW006" not in codes(lint(path))


def test_a_chain_whose_middle_has_a_second_reader_is_left_alone_by_fix(tmp_path):
    path = save(randomise(second_reader()), tmp_path / "model.keras")
    before = path.read_bytes()
    report = fix_report(path, "--select", "PW006")
    assert "PW006" not in codes(report)
    assert path.read_bytes() == before
