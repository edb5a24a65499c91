"""Small Keras models for the loader tests, and a way to write a legacy file the way
tf.keras 2 did (no recorded shapes, ``[name, node, index, kwargs]`` inbound nodes).

Importing this module imports nothing heavy; each builder imports keras itself
(with ``KERAS_BACKEND=torch``, set by conftest)."""

from __future__ import annotations

import json
from math import prod


def lenet():
    """LeNet: Conv-ReLU-Pool x2, Flatten, three Dense layers (PW001 on flatten -> fc1)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1), name="image"),
        layers.Conv2D(6, 5, activation="relu", name="conv1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(16, 5, activation="relu", name="conv2"),
        layers.MaxPooling2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(120, activation="relu", name="fc1"),
        layers.Dense(84, activation="relu", name="fc2"),
        layers.Dense(10, activation="softmax", name="fc3"),
    ], name="lenet")


def vgg():
    """VGG-style: Conv-BN-ReLU blocks without conv bias, Flatten + Dense head with Dropout."""
    import keras
    from keras import layers

    stack = [keras.Input((16, 16, 3), name="image")]
    for block, width in enumerate((8, 16), start=1):
        for i in (1, 2):
            stack += [
                layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{i}"),
                layers.BatchNormalization(name=f"block{block}_bn{i}"),
                layers.ReLU(name=f"block{block}_relu{i}"),
            ]
        stack.append(layers.MaxPooling2D(name=f"block{block}_pool"))
    stack += [
        layers.Flatten(name="flatten"),
        layers.Dense(32, activation="relu", name="fc1"),
        layers.Dropout(0.5, name="drop1"),
        layers.Dense(10, name="predictions"),
    ]
    return keras.Sequential(stack, name="vgg")


def _conv_bn(x, filters, kernel, name, strides=1, relu=True):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def resnet():
    """ResNet-style: residual blocks, GlobalAveragePooling2D head (nothing to report)."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), name="image")
    x = _conv_bn(inputs, 8, 3, "stem")
    for block in (1, 2):
        y = _conv_bn(x, 8, 3, f"res{block}a")
        y = _conv_bn(y, 8, 3, f"res{block}b", relu=False)
        x = layers.Add(name=f"res{block}_add")([x, y])
        x = layers.ReLU(name=f"res{block}_out")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet")


def densenet():
    """DenseNet-style pre-activation block: BN -> ReLU -> Conv, concatenated features (growth 8,
    as real DenseNets keep channel counts multiples of 8: 8, 16, 24)."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    for i in (1, 2):
        y = layers.BatchNormalization(name=f"dense{i}_bn1")(x)
        y = layers.ReLU(name=f"dense{i}_relu1")(y)
        y = layers.Conv2D(16, 1, use_bias=False, name=f"dense{i}_conv1")(y)
        y = layers.BatchNormalization(name=f"dense{i}_bn2")(y)
        y = layers.ReLU(name=f"dense{i}_relu2")(y)
        y = layers.Conv2D(8, 3, padding="same", use_bias=False, name=f"dense{i}_conv2")(y)
        x = layers.Concatenate(name=f"dense{i}_concat")([x, y])
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    return keras.Model(inputs, outputs, name="densenet")


def squeeze_excite():
    """Squeeze-excite (GAP -> Reshape -> Dense(relu) -> Dense(sigmoid) -> Multiply) and a
    spatial attention gate (Conv2D(sigmoid) over the whole map -> Multiply), BN elsewhere."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), name="image")
    x = _conv_bn(inputs, 16, 3, "stem")
    s = layers.GlobalAveragePooling2D(name="se_squeeze")(x)
    s = layers.Reshape((1, 1, 16), name="se_reshape")(s)
    s = layers.Dense(4, activation="relu", name="se_reduce")(s)
    s = layers.Dense(16, activation="sigmoid", name="se_expand")(s)
    x = layers.Multiply(name="se_scale")([x, s])
    a = layers.Conv2D(1, 7, padding="same", activation="sigmoid", name="attention_conv")(x)
    x = layers.Multiply(name="attention_scale")([x, a])
    x = _conv_bn(x, 16, 3, "block")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    return keras.Model(inputs, outputs, name="se_net")


def convnext():
    """ConvNeXt-style block: DepthwiseConv2D -> LayerNorm -> Dense on the rank-4 map
    (pointwise) -> Dense, residual Add; GAP -> LayerNorm -> Dense head."""
    import keras
    from keras import layers

    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(16, 4, strides=4, name="stem_conv")(inputs)
    x = layers.LayerNormalization(epsilon=1e-6, name="stem_norm")(x)
    y = layers.DepthwiseConv2D(7, padding="same", name="block_dwconv")(x)
    y = layers.LayerNormalization(epsilon=1e-6, name="block_norm")(y)
    y = layers.Dense(64, activation="gelu", name="block_pwconv1")(y)
    y = layers.Dense(16, name="block_pwconv2")(y)
    x = layers.Add(name="block_add")([x, y])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="head_norm")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    return keras.Model(inputs, outputs, name="convnext")


def conv_bias_bn():
    """Conv2D(use_bias=True) -> BatchNormalization (PW004)."""
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=True, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    return keras.Model(inputs, outputs, name="conv_bias_bn")


def nested():
    """A Functional backbone and a Sequential block used as layers of a Functional model,
    and a Dense layer called twice (shared)."""
    import keras
    from keras import layers

    block = keras.Sequential([
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
    ], name="block")
    inner_in = keras.Input((16, 16, 3), name="backbone_in")
    x = _conv_bn(inner_in, 8, 3, "stem")
    x = block(x)
    x = layers.MaxPooling2D(name="pool")(x)
    backbone = keras.Model(inner_in, x, name="backbone")

    inputs = keras.Input((16, 16, 3), name="image")
    features = backbone(inputs)
    flat = layers.Flatten(name="flatten")(features)
    shared = layers.Dense(16, activation="relu", name="shared_fc")
    a = shared(flat)
    b = shared(layers.Dropout(0.1, name="drop")(flat))
    x = layers.Concatenate(name="join")([a, b])
    outputs = layers.Dense(10, name="predictions")(x)
    return keras.Model(inputs, outputs, name="outer")


MODELS = {
    "lenet": lenet, "vgg": vgg, "resnet": resnet, "densenet": densenet,
    "squeeze_excite": squeeze_excite, "convnext": convnext, "conv_bias_bn": conv_bias_bn, "nested": nested,
}


def trainable_params(layer) -> int:
    return sum(prod(w.shape) for w in layer.trainable_weights)


# tf.keras 2 legacy files ------------------------------------------------------------------

def _keras2_nodes(nodes: list) -> list:
    """Keras 3 ``{"args", "kwargs"}`` inbound nodes as tf.keras 2 ``[[name, node, index, {}]]``."""
    converted = []
    for node in nodes:
        refs = []
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, dict) and item.get("class_name") == "__keras_tensor__":
                refs.append([*item["config"]["keras_history"], {}])
            elif isinstance(item, dict):
                stack.extend(reversed(list(item.values())))
            elif isinstance(item, list):
                stack.extend(reversed(item))
        converted.append(refs)
    return converted


def keras2_config(entry: dict) -> dict:
    """A Keras 3 layer or model config rewritten as tf.keras 2 wrote it: no build_config,
    no recorded shapes, ``batch_input_shape``, list-style inbound nodes and input/output refs."""
    entry = {k: v for k, v in entry.items() if k not in ("build_config", "compile_config", "module", "registered_name")}
    config = dict(entry.get("config") or {})
    if "batch_shape" in config:
        config["batch_input_shape"] = config.pop("batch_shape")
    config.pop("build_input_shape", None)
    if isinstance(config.get("layers"), list):
        config["layers"] = [keras2_config(layer) for layer in config["layers"]]
        for key in ("input_layers", "output_layers"):
            if key in config and config[key] and isinstance(config[key][0], str):
                config[key] = [config[key]]
    entry["config"] = config
    if "inbound_nodes" in entry:
        entry["inbound_nodes"] = _keras2_nodes(entry["inbound_nodes"])
    return entry


def make_keras2_h5(path) -> None:
    """Rewrite a legacy ``.h5`` written by Keras 3 into the tf.keras 2 layout, in place:
    its model_config as above (stored as bytes) and weight datasets named ``kernel:0``."""
    import h5py

    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        h5.attrs["model_config"] = json.dumps(keras2_config(config)).encode()
        h5.attrs["keras_version"] = b"2.13.1"
        h5.attrs["backend"] = b"tensorflow"
        datasets = []
        h5["model_weights"].visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in datasets:
            h5["model_weights"].move(name, f"{name}:0")


# Keras 1.x and 2.0-2.1 files ----------------------------------------------------------------
#
# Written with h5py the way their ``save_model`` wrote them: root attributes
# ``keras_version``, ``backend``, ``model_config`` (JSON, as bytes) and ``training_config``;
# a ``model_weights`` group with ``layer_names``, one group per layer (weightless ones
# too) with ``weight_names``, and each weight stored under its variable name: Keras 2.0
# ``conv2d_1/kernel:0`` (a subgroup per layer name), Keras 1 ``convolution2d_1_W``.
# Values are never written (HDF5 allocates nothing for them): linting needs shapes only.

def legacy_layer(class_name: str, name: str, **config) -> dict:
    """A layer of a Keras 1/2.0 Sequential: class and config, the name inside the config."""
    return {"class_name": class_name, "config": {"name": name, "trainable": True, **config}}


def legacy_node(name: str, class_name: str, inbound: list, **config) -> dict:
    """A layer of a Keras 1/2.0 functional model: ``inbound`` is a list of calls, each a
    list of ``[layer, node, tensor]`` (Keras 1) or ``[layer, node, tensor, {}]`` (Keras 2)."""
    return {"name": name, "class_name": class_name, "config": {"name": name, "trainable": True, **config},
            "inbound_nodes": inbound}


def keras2_conv(name: str, filters: int, kernel: int, **config) -> dict:
    """A Keras 2.0 ``Conv2D`` config with every key Keras 2.0.6 wrote."""
    return legacy_layer(
        "Conv2D", name, **{
            "filters": filters, "kernel_size": [kernel, kernel], "strides": [1, 1], "padding": "valid",
            "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": True,
            "kernel_initializer": {"class_name": "VarianceScaling", "config": {
                "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None, **config,
        })


def keras2_dense(name: str, units: int, **config) -> dict:
    return legacy_layer("Dense", name, **{
        "units": units, "activation": "linear", "use_bias": True,
        "kernel_initializer": {"class_name": "VarianceScaling", "config": {
            "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, **config,
    })


def _layer_names(model_config: dict) -> list[str]:
    layers = model_config["config"]
    layers = layers if isinstance(layers, list) else layers["layers"]
    return [entry.get("name") or entry["config"]["name"] for entry in layers]


def write_legacy_h5(path, model_config: dict, weights: dict, *, keras_version: str = "2.0.6",
                    backend: str = "tensorflow", layer_names: list[str] | None = None) -> None:
    """Write a whole-model file as Keras 1.x/2.0 did. ``weights`` maps a layer name to its
    ``[(variable name, shape), ...]``, e.g. ``{"conv2d_1": [("conv2d_1/kernel:0", (3, 3, 1, 32))]}``;
    ``layer_names`` (the weight groups, in order) defaults to the layers of ``model_config``."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5.attrs["keras_version"] = keras_version.encode()
        h5.attrs["backend"] = backend.encode()
        h5.attrs["model_config"] = json.dumps(model_config).encode("utf8")
        h5.attrs["training_config"] = json.dumps({
            "optimizer_config": {"class_name": "Adam", "config": {"lr": 0.001}},
            "loss": "categorical_crossentropy", "metrics": ["accuracy"], "sample_weight_mode": None,
            "loss_weights": None}).encode()
        group = h5.create_group("model_weights")
        names = layer_names if layer_names is not None else _layer_names(model_config)
        group.attrs["layer_names"] = [name.encode() for name in names]
        group.attrs["backend"] = backend.encode()
        group.attrs["keras_version"] = keras_version.encode()
        for name in names:
            layer = group.create_group(name)
            stored = weights.get(name, [])
            layer.attrs["weight_names"] = [weight.encode() for weight, _ in stored]
            for weight, shape in stored:
                layer.create_dataset(weight, shape=shape, dtype="float32")
