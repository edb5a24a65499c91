"""Keras 1.x and 2.0-2.1 files: bare-list Sequential configs, Keras 1 classes and keys,
list-style inbound nodes, per-layer data formats, old weight names; and configs pwlint
cannot check (no layers, no layer it knows) are errors, never a pass.

Every file is written with h5py the way Keras 1/2.0 wrote it (tests/formats/keras/models.py);
figures are computed here from the layer sizes, not read from pwlint's output."""

from __future__ import annotations

import json
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import codes, findings, lint, one_line_error, run_inprocess
from tests.hostile.harness import FUZZ_EXAMPLES, assert_handled_inprocess, fuzz_budget
from tests.hostile.test_fuzz_keras import _mutate
from tests.formats.keras.models import (
    keras2_conv, keras2_dense, legacy_layer, legacy_node, write_legacy_h5,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def load(path):
    from pwlint.formats.keras.loader import load as load_keras

    return load_keras(str(path))


def conv_params(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def keras2_weights(name: str, *shapes) -> list:
    """Keras 2.0 variable names: kernel, then bias."""
    return [(f"{name}/{part}:0", shape) for part, shape in zip(("kernel", "bias"), shapes)]


# the case: Keras 2.0.6 emotion model, Conv x4 without BatchNorm -> Flatten of 36x7 -> Dense

EMOTION_INPUT = (44, 15, 1)
EMOTION_FILTERS = (32, 32, 64, 64)


def emotion_model() -> tuple[dict, dict]:
    """(model_config, weights) of the issue's Keras 2.0.6 emotion model."""
    convs = [f"conv2d_{i}" for i in (1, 2, 3, 4)]
    layers = [
        keras2_conv(convs[0], 32, 3, batch_input_shape=[None, *EMOTION_INPUT], dtype="float32", activation="relu"),
        keras2_conv(convs[1], 32, 3, activation="relu"),
        legacy_layer("Dropout", "dropout_1", rate=0.25),
        keras2_conv(convs[2], 64, 3),
        legacy_layer("Activation", "activation_1", activation="relu"),
        keras2_conv(convs[3], 64, 3, activation="relu"),
        legacy_layer("Flatten", "flatten_1"),
        keras2_dense("dense_1", 7, activation="softmax"),
    ]
    weights, cin = {}, EMOTION_INPUT[-1]
    for name, cout in zip(convs, EMOTION_FILTERS):
        weights[name] = keras2_weights(name, (3, 3, cin, cout), (cout,))
        cin = cout
    weights["dense_1"] = keras2_weights("dense_1", (36 * 7 * 64, 7), (7,))
    return {"class_name": "Sequential", "config": layers}, weights


def write_emotion_model(path) -> None:
    write_legacy_h5(path, *emotion_model(), keras_version="2.0.6")


def test_keras2_bare_list_sequential_gives_the_flatten_dense_head(tmp_path):
    path = tmp_path / "emotion_model.h5"
    write_emotion_model(path)
    report = lint(path)
    (head,) = findings(report, "PW001")
    assert head["nodes"] == ["flatten_1", "dense_1"]
    # four valid 3x3 convs take 44x15 to 36x7; the last has 64 filters
    assert "36x7x64" in head["message"]
    assert f"{36 * 7 * 64} -> 7" in head["message"]
    assert "PW003" in codes(report)  # four convs and not one normalisation
    coverage = report["files"][0]["coverage"]
    assert coverage["layers"] == coverage["recognised"] == 8 + 4  # + the fused activations of 3 convs and the dense
    assert coverage["unknown_ops"] == {}
    assert run_inprocess("check", str(path)).code == 1


def test_keras2_bare_list_sequential_shapes_and_parameters(tmp_path):
    path = tmp_path / "emotion_model.h5"
    write_emotion_model(path)
    graph = load(path)
    assert graph.meta["keras_version"] == "2.0.6"
    expected, cin = {}, EMOTION_INPUT[-1]
    for i, cout in enumerate(EMOTION_FILTERS, start=1):
        expected[f"conv2d_{i}"] = conv_params(3, cin, cout)
        cin = cout
    expected["dense_1"] = 36 * 7 * 64 * 7 + 7
    assert {layer.name: layer.params for layer in graph.layers() if layer.params} == expected
    assert graph.total_params == sum(expected.values())
    assert graph.layer("conv2d_1").input_shape == (None, *EMOTION_INPUT)
    assert graph.layer("flatten_1").input_shape == (None, 36, 7, 64)
    assert graph.layer("dense_1").attrs["in_features"] == 36 * 7 * 64
    assert graph.meta["unknown_shapes"] == []
    assert all(layer.understood for layer in graph.layers())


def test_keras2_file_named_hdf5_is_linted(tmp_path):
    path = tmp_path / "emotion_model.hdf5"  # ModelCheckpoint's default suffix
    write_emotion_model(path)
    report = lint(path)
    assert report["files"][0]["format"] == "keras"
    assert [f["nodes"] for f in findings(report, "PW001")] == [["flatten_1", "dense_1"]]


# Keras 1: Convolution2D(nb_filter, nb_row, nb_col, subsample, border_mode, dim_ordering="th")

def keras1_conv(name, nb_filter, size, **config):
    return legacy_layer("Convolution2D", name, **{
        "nb_filter": nb_filter, "nb_row": size, "nb_col": size, "init": "glorot_uniform",
        "activation": "linear", "border_mode": "valid", "subsample": [1, 1], "dim_ordering": "th",
        "W_regularizer": None, "b_regularizer": None, "activity_regularizer": None,
        "W_constraint": None, "b_constraint": None, "bias": True, **config,
    })


def keras1_model() -> tuple[dict, dict]:
    """(model_config, weights) of a Keras 1.2 Theano-ordered CNN with BatchNormalization."""
    layers = [
        keras1_conv("convolution2d_1", 16, 3, batch_input_shape=[None, 3, 32, 32], input_dtype="float32",
                    border_mode="same"),
        legacy_layer("BatchNormalization", "batchnormalization_1", epsilon=0.001, mode=0, axis=1, momentum=0.99,
                     gamma_regularizer=None, beta_regularizer=None),
        legacy_layer("Activation", "activation_1", activation="relu"),
        legacy_layer("MaxPooling2D", "maxpooling2d_1", pool_size=[2, 2], strides=[2, 2], border_mode="valid",
                     dim_ordering="th"),
        keras1_conv("convolution2d_2", 32, 3, subsample=[2, 2], activation="relu"),
        legacy_layer("Dropout", "dropout_1", p=0.5),
        legacy_layer("Flatten", "flatten_1"),
        legacy_layer("Dense", "dense_1", output_dim=10, init="glorot_uniform", activation="softmax",
                     W_regularizer=None, b_regularizer=None, activity_regularizer=None, W_constraint=None,
                     b_constraint=None, bias=True, input_dim=None),
    ]
    weights = {
        # Theano ordering: (filters, channels, rows, cols)
        "convolution2d_1": [("convolution2d_1_W", (16, 3, 3, 3)), ("convolution2d_1_b", (16,))],
        "batchnormalization_1": [(f"batchnormalization_1_{part}", (16,))
                                 for part in ("gamma", "beta", "running_mean", "running_std")],
        "convolution2d_2": [("convolution2d_2_W", (32, 16, 3, 3)), ("convolution2d_2_b", (32,))],
        "dense_1": [("dense_1_W", (32 * 7 * 7, 10)), ("dense_1_b", (10,))],
    }
    return {"class_name": "Sequential", "config": layers}, weights


def write_keras1_model(path) -> None:
    write_legacy_h5(path, *keras1_model(), keras_version="1.2.2", backend="theano")


def test_keras1_convolution2d_model(tmp_path):
    path = tmp_path / "keras1.h5"
    write_keras1_model(path)
    graph = load(path)
    conv1, conv2 = graph.layer("convolution2d_1"), graph.layer("convolution2d_2")
    assert conv1.kind == conv2.kind == "conv" and conv1.op == "Convolution2D"
    assert conv1.layout == conv2.layout == graph.layer("maxpooling2d_1").layout == "NCHW"
    assert conv1.output_shape == (None, 16, 32, 32)  # border_mode="same"
    assert graph.layer("maxpooling2d_1").output_shape == (None, 16, 16, 16)
    # valid 3x3, subsample 2: (16 - 3) // 2 + 1 = 7
    assert conv2.output_shape == (None, 32, 7, 7)
    assert (conv2.attrs["in_channels"], conv2.attrs["out_channels"]) == (16, 32)
    assert conv2.attrs["kernel"] == (3, 3) and conv2.attrs["stride"] == (2, 2)
    assert graph.layer("dense_1").attrs["out_features"] == 10
    expected = {
        "convolution2d_1": conv_params(3, 3, 16), "convolution2d_2": conv_params(3, 16, 32),
        "batchnormalization_1": 2 * 16,  # gamma and beta; the running statistics are not trained
        "dense_1": 32 * 7 * 7 * 10 + 10,
    }
    assert {layer.name: layer.params for layer in graph.layers() if layer.params} == expected
    assert graph.total_params == sum(expected.values())
    report = lint(path)
    (head,) = findings(report, "PW001")
    assert head["nodes"] == ["flatten_1", "dense_1"] and "32x7x7" in head["message"]
    assert report["files"][0]["coverage"]["unknown_ops"] == {}


def test_keras1_theano_kernel_gives_the_channels_when_no_shape_is_recorded(tmp_path):
    """No input shape anywhere: the channel count comes from the stored kernel, which a
    "th" Convolution2D stores as (filters, channels, rows, cols)."""
    layers = [keras1_conv("convolution2d_1", 16, 5), legacy_layer("Activation", "activation_1", activation="relu")]
    weights = {"convolution2d_1": [("convolution2d_1_W", (16, 3, 5, 5)), ("convolution2d_1_b", (16,))]}
    path = tmp_path / "no-shape.h5"
    write_legacy_h5(path, {"class_name": "Sequential", "config": layers}, weights, keras_version="1.2.2")
    conv = load(path).layer("convolution2d_1")
    assert (conv.attrs["in_channels"], conv.attrs["out_channels"], conv.attrs["kernel"]) == (3, 16, (5, 5))
    assert conv.params == conv_params(5, 3, 16)


def test_keras1_input_dim_alone_gives_the_input_shape(tmp_path):
    layers = [
        legacy_layer("Dense", "dense_1", output_dim=64, input_dim=20, activation="relu", bias=True),
        legacy_layer("Dense", "dense_2", output_dim=3, bias=False),
    ]
    path = tmp_path / "mlp.h5"
    write_legacy_h5(path, {"class_name": "Sequential", "config": layers}, {}, keras_version="1.1.0")
    graph = load(path)
    assert graph.layer("dense_1").input_shape == (None, 20)
    # no weights stored: parameters from the config (bias=False is use_bias=False)
    assert graph.layer("dense_1").params == 20 * 64 + 64
    assert graph.layer("dense_2").params == 64 * 3
    assert graph.layer("dense_2").attrs["bias"] is False


# functional models with list-style inbound nodes and merges

def _call(*names, keras1=False):
    return [[[name, 0, 0] if keras1 else [name, 0, 0, {}] for name in names]]


def functional_model() -> tuple[dict, dict]:
    """(model_config, weights) of a Keras 2.1 functional model: Add and Concatenate merges,
    list-style inbound nodes of both Keras 2 (with kwargs) and Keras 1 (without)."""
    call = _call

    layers = [
        legacy_node("input_1", "InputLayer", [], batch_input_shape=[None, 16, 16, 3], dtype="float32", sparse=False),
        {**keras2_conv("conv2d_1", 8, 3, padding="same"), "name": "conv2d_1", "inbound_nodes": call("input_1")},
        {**keras2_conv("conv2d_2", 8, 3, padding="same"), "name": "conv2d_2", "inbound_nodes": call("conv2d_1")},
        legacy_node("add_1", "Add", call("conv2d_1", "conv2d_2")),
        # a Keras 1 style node (no kwargs) in the same file
        {**keras2_conv("conv2d_3", 4, 1), "name": "conv2d_3", "inbound_nodes": call("input_1", keras1=True)},
        legacy_node("concatenate_1", "Concatenate", call("add_1", "conv2d_3"), axis=-1),
        legacy_node("flatten_1", "Flatten", call("concatenate_1")),
        {**keras2_dense("dense_1", 10), "name": "dense_1", "inbound_nodes": call("flatten_1")},
    ]
    config = {"class_name": "Model", "config": {
        "name": "model_1", "layers": layers,
        "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}}
    weights = {
        "conv2d_1": keras2_weights("conv2d_1", (3, 3, 3, 8), (8,)),
        "conv2d_2": keras2_weights("conv2d_2", (3, 3, 8, 8), (8,)),
        "conv2d_3": keras2_weights("conv2d_3", (1, 1, 3, 4), (4,)),
        "dense_1": keras2_weights("dense_1", (16 * 16 * 12, 10), (10,)),
    }
    return config, weights


def test_keras2_functional_with_list_inbound_nodes_and_merges(tmp_path):
    path = tmp_path / "functional.h5"
    write_legacy_h5(path, *functional_model(), keras_version="2.1.6")
    graph = load(path)
    assert sorted(p.name for p in graph.producers(graph.layer("add_1"))) == ["conv2d_1", "conv2d_2"]
    assert sorted(p.name for p in graph.producers(graph.layer("concatenate_1"))) == ["add_1", "conv2d_3"]
    assert graph.layer("concatenate_1").output_shape == (None, 16, 16, 8 + 4)
    assert graph.total_params == (conv_params(3, 3, 8) + conv_params(3, 8, 8) + conv_params(1, 3, 4)
                                  + 16 * 16 * 12 * 10 + 10)
    report = lint(path)
    (head,) = findings(report, "PW001")
    assert head["nodes"] == ["flatten_1", "dense_1"] and "16x16x12" in head["message"]


def keras1_merge_model() -> dict:
    """The model_config of a Keras 1 functional model joining two convs with Merge layers."""
    def call(*names):
        return _call(*names, keras1=True)

    layers = [
        legacy_node("input_1", "InputLayer", [], batch_input_shape=[None, 3, 8, 8], input_dtype="float32"),
        {**keras1_conv("a", 4, 3, border_mode="same"), "name": "a", "inbound_nodes": call("input_1")},
        {**keras1_conv("b", 4, 3, border_mode="same"), "name": "b", "inbound_nodes": call("input_1")},
        legacy_node("sum", "Merge", call("a", "b"), mode="sum", concat_axis=-1, dot_axes=-1),
        legacy_node("cat", "Merge", call("sum", "a"), mode="concat", concat_axis=1, dot_axes=-1),
        legacy_node("flat", "Flatten", call("cat")),
        legacy_node("fc", "Dense", call("flat"), output_dim=5),
    ]
    return {"class_name": "Model", "config": {
        "name": "model_1", "layers": layers, "input_layers": [["input_1", 0, 0]], "output_layers": [["fc", 0, 0]]}}


def test_keras1_functional_merge_layers(tmp_path):
    path = tmp_path / "merge.h5"
    write_legacy_h5(path, keras1_merge_model(), {}, keras_version="1.2.2", backend="theano")
    graph = load(path)
    assert (graph.layer("sum").kind, graph.layer("sum").op) == ("add", "Merge")
    assert graph.layer("cat").kind == "concat"
    assert graph.layer("cat").output_shape == (None, 8, 8, 8)  # channels axis 1 of (None, 4, 8, 8) twice
    assert graph.layer("fc").attrs["in_features"] == 8 * 8 * 8
    assert all(layer.understood for layer in graph.layers())


def test_keras2_nested_bare_list_sequential(tmp_path):
    inner = [
        keras2_conv("conv2d_1", 8, 3, batch_input_shape=[None, 12, 12, 3]),
        legacy_layer("MaxPooling2D", "max_pooling2d_1", pool_size=[2, 2], strides=[2, 2], padding="valid",
                     data_format="channels_last"),
    ]
    layers = [
        legacy_node("input_1", "InputLayer", [], batch_input_shape=[None, 12, 12, 3]),
        {"name": "sequential_1", "class_name": "Sequential", "config": inner,
         "inbound_nodes": [[["input_1", 0, 0, {}]]]},
        legacy_node("flatten_1", "Flatten", [[["sequential_1", 1, 0, {}]]]),
        {**keras2_dense("dense_1", 4), "name": "dense_1", "inbound_nodes": [[["flatten_1", 0, 0, {}]]]},
    ]
    config = {"class_name": "Model", "config": {
        "name": "model_1", "layers": layers, "input_layers": [["input_1", 0, 0]], "output_layers": [["dense_1", 0, 0]]}}
    weights = {
        "sequential_1": keras2_weights("conv2d_1", (3, 3, 3, 8), (8,)),
        "dense_1": keras2_weights("dense_1", (5 * 5 * 8, 4), (4,)),
    }
    path = tmp_path / "nested.h5"
    write_legacy_h5(path, config, weights, keras_version="2.0.8")
    graph = load(path)
    assert graph.layer("sequential_1/conv2d_1").params == conv_params(3, 3, 8)
    assert graph.layer("flatten_1").input_shape == (None, 5, 5, 8)
    assert graph.total_params == conv_params(3, 3, 8) + 5 * 5 * 8 * 4 + 4


# a channels_first pooling between channels_last convs

def test_channels_first_pooling_between_channels_last_convs(tmp_path):
    import keras
    from keras import layers as kl

    side, cin = 16, 3
    stored = [
        keras2_conv("conv2d_1", 8, 3, padding="same", batch_input_shape=[None, side, side, cin]),
        legacy_layer("MaxPooling2D", "max_pooling2d_1", pool_size=[2, 2], strides=[2, 2], padding="valid",
                     data_format="channels_first"),
        keras2_conv("conv2d_2", 6, 3),
        legacy_layer("Flatten", "flatten_1"),
        keras2_dense("dense_1", 10),
    ]
    # the shapes Keras itself gives the same layers
    reference = keras.Sequential([
        keras.Input((side, side, cin)),
        kl.Conv2D(8, 3, padding="same"),
        kl.MaxPooling2D(2, data_format="channels_first"),
        kl.Conv2D(6, 3),
        kl.Flatten(),
        kl.Dense(10),
    ])
    shapes = [tuple(layer.output.shape) for layer in reference.layers]
    conv2_in = shapes[1][-1]  # the pooling halves the last two axes of the NHWC map: 16x16x8 -> 16x8x4
    weights = {
        "conv2d_1": keras2_weights("conv2d_1", (3, 3, cin, 8), (8,)),
        "conv2d_2": keras2_weights("conv2d_2", (3, 3, conv2_in, 6), (6,)),
        "dense_1": keras2_weights("dense_1", (shapes[3][-1], 10), (10,)),
    }
    path = tmp_path / "mixed.h5"
    write_legacy_h5(path, {"class_name": "Sequential", "config": stored}, weights)
    graph = load(path)
    names = ["conv2d_1", "max_pooling2d_1", "conv2d_2", "flatten_1", "dense_1"]
    assert [graph.layer(name).output_shape for name in names] == shapes
    assert [graph.layer(name).layout for name in names[:3]] == ["NHWC", "NCHW", "NHWC"]
    assert graph.layer("conv2d_2").attrs["in_channels"] == conv2_in
    assert graph.total_params == reference.count_params()
    (head,) = findings(lint(path), "PW001")
    h, w, c = shapes[2][1:]
    assert head["nodes"] == ["flatten_1", "dense_1"] and f"{h}x{w}x{c}" in head["message"]


# what pwlint cannot check is an error, never a pass

def test_config_without_layers_is_an_error(tmp_path):
    for name, config in {
        "empty-list.h5": {"class_name": "Sequential", "config": []},
        "empty-dict.h5": {"class_name": "Sequential", "config": {"name": "s", "layers": []}},
        "empty-model.h5": {"class_name": "Model", "config": {
            "name": "m", "layers": [], "input_layers": [], "output_layers": []}},
    }.items():
        path = tmp_path / name
        write_legacy_h5(path, config, {})
        line = one_line_error(run_inprocess("check", str(path)))
        assert name in line and "no layers" in line, line


def test_config_of_unknown_classes_only_is_an_error(tmp_path):
    layers = [
        legacy_layer("Lambda", "lambda_1", function=["4wEAAAAAAAAAAQAAAAIAAABDAAAAcwgAAAB8AGQBFABTACkCTg==", None, None],
                     function_type="lambda", batch_input_shape=[None, 8, 8, 3]),
        legacy_layer("MyAttention", "attention_1", heads=4),
    ]
    path = tmp_path / "custom.h5"
    write_legacy_h5(path, {"class_name": "Sequential", "config": layers}, {"attention_1": [("attention_1/w:0", (3, 3))]})
    line = one_line_error(run_inprocess("check", str(path)))
    assert "custom.h5" in line and "Lambda" in line and "MyAttention" in line, line


def test_subclassed_model_is_an_error_not_a_pass(tmp_path):
    path = tmp_path / "sub.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "MyModel", "config": {"name": "mine"}}))
    line = one_line_error(run_inprocess("check", str(path)))
    assert "sub.keras" in line and "MyModel" in line, line


def test_builtin_structural_layers_are_understood_and_custom_ones_are_not(tmp_path):
    import warnings

    import keras
    from keras import layers as kl

    @keras.saving.register_keras_serializable(package="pwlint_tests")
    class Dense(kl.Dense):
        pass

    OwnDense = Dense

    image = keras.Input((16, 16, 3))
    x = kl.ZeroPadding2D(1, name="pad")(image)
    x = kl.Conv2D(4, 3, name="conv")(x)
    x = kl.UpSampling2D(name="up")(x)
    x = kl.Cropping2D(2, name="crop")(x)
    x = kl.Lambda(lambda t: t * 2, name="double")(x)
    x = kl.GlobalAveragePooling2D(name="gap")(x)
    tokens = keras.Input((10,), dtype="int32")
    y = kl.Embedding(50, 8, name="embed")(tokens)
    y = kl.LSTM(6, name="lstm")(y)
    y = OwnDense(6, name="own")(y)  # a Dense by its class name, but the user's own class
    out = kl.Dense(2, name="fc")(kl.Concatenate(name="join")([x, y]))
    model = keras.Model([image, tokens], out)
    path = tmp_path / "mixed.keras"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    graph = load(path)
    understood = {layer.name: layer.understood for layer in graph.layers() if layer.kind not in ("input", "output")}
    assert understood == {name: name not in ("double", "own") for name in
                          ("pad", "conv", "up", "crop", "double", "gap", "embed", "lstm", "own", "join", "fc")}
    coverage = lint(path)["files"][0]["coverage"]
    assert coverage["unknown_ops"] == {"Lambda": 1, "Dense": 1}
    assert coverage["recognised"] == coverage["layers"] - 2


# fuzzing: the legacy configs above, mutated, with their weights

LEGACY_MODELS = {
    "emotion": emotion_model, "keras1": keras1_model, "functional": functional_model,
    "merge": lambda: (keras1_merge_model(), {}),
}


def _names(config: dict, weights: dict) -> list[str]:
    layers = config["config"] if isinstance(config["config"], list) else config["config"]["layers"]
    return [entry.get("name") or entry["config"]["name"] for entry in layers]


@settings(fuzz_budget(), max_examples=max(FUZZ_EXAMPLES // 2, 1))
@given(data=st.data())
def test_mutated_legacy_configs(tmp_path_factory, data):
    """Every mutation of a legacy config lints or is one error line naming the file (the
    weights stay those of the intact config)."""
    config, weights = LEGACY_MODELS[data.draw(st.sampled_from(sorted(LEGACY_MODELS)), label="model")]()
    path = tmp_path_factory.mktemp("legacy-fuzz") / "fuzz.h5"
    write_legacy_h5(path, _mutate(config, data), weights, layer_names=_names(config, weights))
    assert_handled_inprocess(path)


def test_fix_on_a_keras_2_0_file_says_keras_3_cannot_load_it(tmp_path, pwlint):
    """Linting reads the old config; fixing needs Keras 3 to load the file, which it cannot
    for a Keras 2.0 bare-list Sequential: the fix is not applied, the reason names the
    version and what to do, and the file is untouched."""
    path = tmp_path / "emotion_model.hdf5"
    write_emotion_model(path)
    before = path.read_bytes()
    run = pwlint(str(path), "--fix")
    assert "Traceback" not in run.err + run.out
    assert "Keras 3 cannot load a file written by Keras 2.0.6" in run.out
    assert "fixed 0 finding(s)" in run.out
    assert path.read_bytes() == before


def test_an_h5_model_behind_a_user_block_is_read(tmp_path):
    """HDF5 lets a file start with a user block (the signature then sits at 512, 1024...):
    the Keras loader reads such a file like any other, findings included."""
    import h5py

    plain = tmp_path / "emotion_model.h5"
    write_emotion_model(plain)
    blocked = tmp_path / "blocked.h5"
    with h5py.File(plain, "r") as src, h5py.File(blocked, "w", userblock_size=1024) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
    assert blocked.read_bytes()[:4] != b"\x89HDF"
    plain_report, blocked_report = lint(plain), lint(blocked)
    assert [f["message"] for f in blocked_report["findings"]] == [f["message"] for f in plain_report["findings"]]
    assert [f["code"] for f in blocked_report["findings"]].count("PW001") == 1
