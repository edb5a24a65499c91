"""The Keras loader: .keras and legacy .h5 files read statically into the IR, linted
like ONNX, without importing keras and without running code from the file."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import pytest

from tests.conftest import codes, findings, lint, one_line_error, run_inprocess
from tests.formats.keras.models import MODELS, make_keras2_h5, trainable_params

FORMATS = ["keras", "h5", "keras2.h5"]

# keras' torch backend warns about numpy 2's copy keyword when saving
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="session")
def keras_file(tmp_path_factory):
    """``keras_file(model_name, fmt)``: (path, keras model) of a zoo model saved as ``.keras``,
    as a Keras 3 legacy ``.h5``, or as a tf.keras 2 style ``.h5`` (``keras2.h5``). Cached."""
    import warnings

    folder = tmp_path_factory.mktemp("keras")
    built: dict = {}
    paths: dict = {}

    def get(name: str, fmt: str = "keras"):
        if name not in built:
            built[name] = MODELS[name]()
        model = built[name]
        key = (name, fmt)
        if key not in paths:
            path = folder / f"{name}.{fmt}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if fmt == "keras2.h5":
                    shutil.copyfile(get(name, "h5")[0], path)
                    make_keras2_h5(path)
                else:
                    model.save(path)
            paths[key] = path
        return paths[key], model

    return get


def load(path):
    from pwlint.formats.keras.loader import load as load_keras

    return load_keras(str(path))


def leaf_layers(model, prefix=""):
    """(IR name, keras layer) for every layer that is not itself a model."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer, f"{prefix}{layer.name}/")
        elif not isinstance(layer, keras.layers.InputLayer):
            yield f"{prefix}{layer.name}", layer


def finding_nodes(report: dict, code: str) -> list[list[str]]:
    return sorted(f["nodes"] for f in findings(report, code))


# the architectures of the issue, in every format ------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_lenet_flatten_dense_head_names_keras_layers(keras_file, fmt):
    path, _ = keras_file("lenet", fmt)
    report = lint(path)
    assert report["files"][0]["format"] == "keras"
    assert finding_nodes(report, "PW001") == [["flatten", "fc1"]]
    message = findings(report, "PW001")[0]["message"]
    assert "4x4x16" in message and "256 -> 120" in message  # channels-last, as the model lays it out


@pytest.mark.parametrize("fmt", FORMATS)
def test_vgg_head_is_reported_and_nothing_else(keras_file, fmt):
    path, _ = keras_file("vgg", fmt)
    report = lint(path)
    assert codes(report) == ["PW001"]
    assert finding_nodes(report, "PW001") == [["flatten", "fc1"]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["resnet", "densenet", "squeeze_excite", "convnext"])
def test_well_formed_architectures_have_no_findings(keras_file, name, fmt):
    path, _ = keras_file(name, fmt)
    assert codes(lint(path)) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_bias_before_batchnorm(keras_file, fmt):
    path, _ = keras_file("conv_bias_bn", fmt)
    report = lint(path)
    assert codes(report) == ["PW004"]
    assert finding_nodes(report, "PW004") == [["conv", "bn"]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_model_is_flattened_with_path_names(keras_file, fmt):
    path, model = keras_file("nested", fmt)
    graph = load(path)
    names = {layer.name for layer in graph.layers()}
    assert {"backbone/stem_conv", "backbone/stem_bn", "backbone/block/conv", "backbone/block/bn", "backbone/pool"} <= names
    assert "backbone" not in names and "backbone/block" not in names  # the models themselves are not layers
    assert "backbone/backbone_in" not in names  # nor their inner inputs
    assert [p.name for p in graph.producers(graph.layer("backbone/stem_conv"))] == ["image"]
    assert [p.name for p in graph.producers(graph.layer("backbone/block/conv"))] == ["backbone/stem_relu"]
    assert [p.name for p in graph.producers(graph.layer("flatten"))] == ["backbone/pool"]
    assert graph.layer("backbone/block/conv").input_shape == (None, 16, 16, 8)
    assert graph.layer("flatten").input_shape == (None, 8, 8, 8)
    report = lint(path)
    assert finding_nodes(report, "PW001") == [["flatten", "shared_fc"]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_shared_layer_is_one_layer_counted_once(keras_file, fmt):
    path, model = keras_file("nested", fmt)
    graph = load(path)
    shared = graph.layer("shared_fc")
    assert shared.params == 512 * 16 + 16
    assert {p.name for p in graph.producers(shared)} == {"flatten", "drop"}
    assert [c.name for c in graph.consumers(shared)] == ["shared_fc/activation"]
    join = graph.layer("join")
    assert graph.graph.edges["shared_fc/activation", "join"]["tensors"] == ["shared_fc[0][0]", "shared_fc[1][0]"]
    assert join.output_shape == (None, 32)
    assert graph.total_params == sum(trainable_params(layer) for _, layer in leaf_layers(model))
    # its weights serve two places: a fix may not rewrite it for one of them
    assert shared.attrs.get("shared_weights") is True
    assert not graph.layer("join").attrs.get("shared_weights")


# the IR ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_layers_kinds_shapes_and_layout(keras_file, fmt):
    path, _ = keras_file("lenet", fmt)
    graph = load(path)
    assert graph.format == "keras"
    assert all(layer.layout == "NHWC" for layer in graph.layers())
    conv = graph.layer("conv2")
    assert conv.kind == "conv" and conv.op == "Conv2D"
    assert conv.attrs.items() >= {"kernel": (5, 5), "stride": (1, 1), "groups": 1, "in_channels": 6, "out_channels": 16, "bias": True}.items()
    assert conv.input_shape == (None, 12, 12, 6) and conv.output_shape == (None, 8, 8, 16)
    assert graph.layer("pool2").kind == "pool" and graph.layer("pool2").output_shape == (None, 4, 4, 16)
    flat = graph.layer("flatten")
    assert flat.kind == "flatten" and flat.output_shape == (None, 256)
    fc1 = graph.layer("fc1")
    assert fc1.attrs.items() >= {"in_features": 256, "out_features": 120, "bias": True, "per_position": False}.items()
    assert graph.layer("image").kind == "input" and graph.layer("image").output_shape == (None, 28, 28, 1)
    out = graph.layer("fc3/output")
    assert out.kind == "output" and [p.name for p in graph.producers(out)] == ["fc3/activation"]
    assert graph.meta["unknown_shapes"] == []
    assert graph.layer("conv1").source.config["filters"] == 6  # the config, for a fix backend


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_activation_is_its_own_layer(keras_file, fmt):
    graph = load(keras_file("squeeze_excite", fmt)[0])
    gate = graph.layer("se_expand/activation")
    assert gate.kind == "act" and gate.attrs["activation"] == "sigmoid"
    assert [p.name for p in graph.producers(gate)] == ["se_expand"]
    assert [c.name for c in graph.consumers(gate)] == ["se_scale"]
    assert graph.data_producer(graph.layer("se_expand")).name == "se_reduce/activation"
    assert graph.layer("attention_conv/activation").attrs["activation"] == "sigmoid"
    assert "block_conv/activation" not in graph  # a linear activation adds no layer
    assert graph.layer("se_reduce").attrs["per_position"]  # a Dense on [N, 1, 1, C]


@pytest.mark.parametrize("fmt", FORMATS)
def test_convnext_dense_on_feature_map_is_per_position(keras_file, fmt):
    graph = load(keras_file("convnext", fmt)[0])
    for name in ("block_pwconv1", "block_pwconv2"):
        dense = graph.layer(name)
        assert dense.kind == "dense" and dense.attrs["per_position"], name
        assert dense.input_shape[1:3] == (8, 8)
    assert graph.layer("block_pwconv1/activation").attrs["activation"] == "gelu"
    assert not graph.layer("predictions").attrs["per_position"]
    dw = graph.layer("block_dwconv")
    assert dw.attrs.items() >= {"groups": 16, "in_channels": 16, "out_channels": 16, "kernel": (7, 7)}.items()
    assert graph.layer("block_norm").attrs["norm_type"] == "layer"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_computed_shapes_match_the_recorded_ones(keras_file, name):
    """A tf.keras 2 style file records no shapes: computing them gives the same graph."""
    recorded = load(keras_file(name, "keras")[0])
    computed = load(keras_file(name, "keras2.h5")[0])

    def view(graph):
        return {
            layer.name: (layer.kind, layer.op, layer.params, layer.input_shapes, layer.output_shapes,
                         sorted(p.name for p in graph.producers(layer)))
            for layer in graph.layers()
        }

    assert view(computed) == view(recorded)
    assert computed.meta["unknown_shapes"] == [] and computed.meta["container"] == "h5"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameters_are_counted_from_the_weights(keras_file, name, fmt):
    path, model = keras_file(name, fmt)
    graph = load(path)
    assert graph.total_params == trainable_params(model)
    for ir_name, layer in leaf_layers(model):
        assert graph.layer(ir_name).params == trainable_params(layer), ir_name
    if not any("BatchNormalization" in type(l).__name__ for _, l in leaf_layers(model)):
        assert graph.total_params == model.count_params()  # only BN has non-trainable weights


def test_batchnorm_statistics_are_not_parameters(keras_file):
    graph = load(keras_file("conv_bias_bn", "keras")[0])
    assert graph.layer("bn").params == 2 * 4  # gamma and beta; not the moving mean and variance
    assert graph.total_params == keras_file("conv_bias_bn")[1].count_params() - 2 * 4


def test_compressed_weights_member_is_read_too(keras_file, tmp_path):
    """Keras stores the weights uncompressed (read in place); a re-zipped file still loads."""
    source, model = keras_file("resnet", "keras")
    path = tmp_path / "deflated.keras"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    graph = load(path)
    assert graph.total_params == trainable_params(model)
    assert graph.layer("res2a_conv").params == 3 * 3 * 8 * 8


def test_links_in_an_hdf5_file_are_not_followed(keras_file, tmp_path):
    """An external link would make the loader open a file the model names, a soft or
    hard link cycle could make it loop: neither is followed or counted."""
    import h5py

    source, model = keras_file("lenet", "h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5.create_dataset("big", shape=(1000, 1000), dtype="f4")
    path = tmp_path / "linked.h5"
    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as h5:
        fc1 = h5["model_weights/fc1"]
        fc1["outside"] = h5py.ExternalLink(str(other), "/big")
        fc1["loop"] = h5py.SoftLink("/model_weights")
        fc1["again"] = fc1  # a hard link to the group itself
    graph = load(path)
    assert graph.total_params == model.count_params()
    assert graph.layer("fc1").params == 256 * 120 + 120


def test_channels_first_layers_are_nchw(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((3, 12, 12), name="x"),
        layers.Conv2D(4, 3, strides=2, data_format="channels_first", name="conv"),
        layers.MaxPooling2D(data_format="channels_first", name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(2, name="fc"),
    ])
    model.save(tmp_path / "cf.keras")
    graph = load(tmp_path / "cf.keras")
    conv = graph.layer("conv")
    assert conv.layout == "NCHW" and conv.output_shape == (None, 4, 5, 5)
    assert conv.attrs["in_channels"] == 3 and conv.attrs["out_channels"] == 4
    assert graph.layer("pool").output_shape == (None, 4, 2, 2)
    message = findings(lint(tmp_path / "cf.keras"), "PW001")[0]["message"]
    assert "4x2x2" in message and "16 -> 2" in message


# Sequential variants ------------------------------------------------------------------

def test_sequential_without_input_shape_loads(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([layers.Dense(8, activation="relu", name="a"), layers.Dense(2, name="b")])
    path = tmp_path / "unbuilt.keras"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    graph = load(path)
    assert [layer.name for layer in graph.layers()] == ["input", "a", "a/activation", "b", "b/output"]
    assert graph.total_params == 0  # never built: no weights
    assert "a" in graph.meta["unknown_shapes"]
    assert codes(lint(path)) == []


def test_sequential_built_later_gets_shapes_from_build_config(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([layers.Conv2D(4, 3, name="conv"), layers.Flatten(name="flat"), layers.Dense(3, name="fc")])
    model.build((None, 10, 10, 2))
    model.save(tmp_path / "built.keras")
    graph = load(tmp_path / "built.keras")
    assert next(graph.layers("input")).output_shape == (None, 10, 10, 2)  # Keras added an InputLayer
    assert graph.layer("flat").input_shape == (None, 8, 8, 4)
    assert graph.total_params == model.count_params()
    assert finding_nodes(lint(tmp_path / "built.keras"), "PW001") == [["flat", "fc"]]


def test_nested_sequential_inside_sequential(tmp_path):
    import keras
    from keras import layers

    inner = keras.Sequential([layers.Conv2D(4, 3, padding="same", name="c"), layers.ReLU(name="r")], name="features")
    model = keras.Sequential([keras.Input((6, 6, 1), name="x"), inner, layers.Flatten(name="flat"), layers.Dense(2, name="fc")])
    model.save(tmp_path / "seq.keras")
    graph = load(tmp_path / "seq.keras")
    assert [p.name for p in graph.producers(graph.layer("features/c"))] == ["x"]
    assert [p.name for p in graph.producers(graph.layer("flat"))] == ["features/r"]
    assert graph.total_params == model.count_params()
    assert finding_nodes(lint(tmp_path / "seq.keras"), "PW001") == [["flat", "fc"]]


# no code from the file is run --------------------------------------------------------

def _lambda_model(marker):
    import keras
    from keras import layers

    path = str(marker)
    return keras.Sequential([
        keras.Input((8, 8, 3), name="image"),
        layers.Conv2D(4, 3, name="conv"),
        layers.Lambda(lambda x: (open(path, "w").close(), x * 2)[1], name="scale"),
        layers.Flatten(name="flatten"),
        layers.Dense(5, name="fc"),
    ])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_linted_without_running_it(tmp_path, suffix):
    import warnings

    import keras

    marker = tmp_path / "lambda-ran"
    model = _lambda_model(marker)
    path = tmp_path / f"lambda{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    graph = load(path)
    report = lint(path)
    assert not marker.exists()
    scale = graph.layer("scale")
    assert scale.kind == "other" and scale.op == "Lambda"
    assert graph.total_params == model.count_params()
    if suffix == ".keras":  # the next layer's build_config records the lambda's output shape
        assert graph.layer("flatten").input_shape == (None, 6, 6, 4)
        assert graph.meta["unknown_shapes"] == []
    else:  # a legacy file does not: a static reader cannot know it, and says so
        assert graph.layer("scale").output_shape is None
        assert graph.meta["unknown_shapes"] == ["scale", "flatten", "fc"]
        (undecided,) = [f for f in report["findings"] if f["code"] == "PW001"]
        assert undecided["severity"] == "info" and undecided["nodes"] == ["flatten", "fc"]
        assert "could not decide" in undecided["message"]
    assert report["files"][0]["error"] is None
    # control: the file really carries code that Keras runs when told to trust it
    keras.saving.load_model(path, safe_mode=False)
    assert marker.exists()


def test_custom_layer_and_unknown_activation_are_kept_as_json(tmp_path):
    config = {
        "class_name": "Sequential",
        "config": {"name": "custom", "layers": [
            {"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "x"}},
            {"class_name": "my_package>Magic", "config": {"name": "magic", "code": "__import__('os').system('touch pwned')"}},
            {"class_name": "Dense", "config": {"name": "fc", "units": 3, "activation": {"module": "my_package", "class_name": "Snake", "config": {}, "registered_name": "my_package>Snake"}}},
        ]},
    }
    path = tmp_path / "custom.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
    graph = load(path)
    assert graph.layer("magic").kind == "other" and graph.layer("magic").op == "my_package>Magic"
    assert graph.layer("fc/activation").attrs["activation"] == "snake"
    assert graph.meta["unknown_shapes"] == ["magic", "fc"]
    assert not (tmp_path / "pwned").exists()


def test_subclassed_model_is_one_opaque_layer(tmp_path):
    path = tmp_path / "sub.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "MyModel", "config": {"name": "mine"}}))
    graph = load(path)
    assert [(layer.name, layer.kind, layer.op) for layer in graph.layers()] == [("mine", "other", "MyModel")]
    assert graph.meta["opaque_model"] and graph.meta["unknown_shapes"] == ["mine"]


# bad files -----------------------------------------------------------------------------

def _bad_files(tmp_path, keras_file):
    good, _ = keras_file("lenet", "keras")
    data = good.read_bytes()
    files = {
        "random.keras": os.urandom(300),
        "random.h5": os.urandom(300),
        "empty.keras": b"",
        "truncated.keras": data[: len(data) // 2],
        "fake-hdf5.h5": b"\x89HDF\r\n\x1a\n" + os.urandom(100),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "no-config.keras", "w") as zf:
        zf.writestr("metadata.json", "{}")
    with zipfile.ZipFile(tmp_path / "bad-json.keras", "w") as zf:
        zf.writestr("config.json", "{not json")
    with zipfile.ZipFile(tmp_path / "bad-weights.keras", "w") as zf, zipfile.ZipFile(good) as source:
        zf.writestr("config.json", source.read("config.json"))
        zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 200)
    with zipfile.ZipFile(tmp_path / "dangling.keras", "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Functional", "config": {
            "name": "m", "layers": [{"class_name": "Dense", "name": "d", "config": {"name": "d", "units": 1},
                                     "inbound_nodes": [[["ghost", 0, 0, {}]]]}],
            "input_layers": [], "output_layers": [["d", 0, 0]]}}))
    with zipfile.ZipFile(tmp_path / "huge-index.keras", "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Functional", "config": {
            "name": "m", "layers": [{"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []}],
            "input_layers": [["x", 0, 0]], "output_layers": [["x", 0, 10 ** 12]]}}))
    import h5py

    with h5py.File(tmp_path / "no-model-config.h5", "w") as h5:
        h5.create_dataset("x", data=[1.0])
    with h5py.File(tmp_path / "weights-only.h5", "w") as h5:
        h5.attrs["layer_names"] = [b"dense"]
    return sorted(p for p in tmp_path.iterdir())


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, keras_file):
    for path in _bad_files(tmp_path, keras_file):
        line = one_line_error(run_inprocess("check", str(path)))
        assert path.name in line, line
    assert "no config.json" in one_line_error(run_inprocess("check", str(tmp_path / "no-config.keras")))
    assert "no model_config" in one_line_error(run_inprocess("check", str(tmp_path / "no-model-config.h5")))
    assert "weights-only" in one_line_error(run_inprocess("check", str(tmp_path / "weights-only.h5")))
    assert "ghost" in one_line_error(run_inprocess("check", str(tmp_path / "dangling.keras")))
    assert "impossible tensor" in one_line_error(run_inprocess("check", str(tmp_path / "huge-index.keras")))


def test_oversized_config_is_refused(tmp_path, monkeypatch):
    from pwlint.formats.keras import read as keras_read

    monkeypatch.setattr(keras_read, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "big.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": [], "pad": "x" * 2000}}))
    line = one_line_error(run_inprocess("check", str(path)))
    assert "big.keras" in line and "larger than" in line


def test_loader_is_registered_for_keras_suffixes():
    from pwlint.plugins import get_registry

    registry = get_registry(False)
    assert registry.loaders["keras"].suffixes == (".keras", ".h5", ".hdf5")  # .hdf5: Keras 2 ModelCheckpoint
    assert registry.loader_for("M.KERAS").name == "keras"


# imports --------------------------------------------------------------------------------

def test_linting_keras_files_imports_no_framework(keras_file):
    from tests.test_lazy_imports import HEAVY, run_child

    for fmt in ("keras", "h5"):
        code, modules = run_child(str(keras_file("lenet", fmt)[0]))
        assert code == 1  # linted: the LeNet head is reported
        assert "h5py" in modules
        assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_linting_onnx_does_not_import_h5py(cnn_file):
    from tests.test_lazy_imports import run_child

    code, modules = run_child(str(cnn_file()))
    assert code == 1
    assert "h5py" not in modules
