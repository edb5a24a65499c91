"""Keras layer classes to the IR's kinds and attributes.

A class without a kind of its own here (an RNN, an Embedding, a padding or
preprocessing layer, a Lambda, a custom or subclassed layer) becomes an ``other``
layer with ``op`` = its class name; its config is never turned back into code.
Whether pwlint *understood* a layer is a separate question (:func:`is_known`):
every layer class Keras itself ships (Keras 1 to 3, tf.keras) is understood, even
one that is only ``other`` to the rules; a Lambda, a wrapped foreign function
(``TFOpLambda``, ``TorchModuleWrapper``) or a custom class is not.
"""

from __future__ import annotations

import re
from math import prod
from typing import Any

from pwlint.ir import channels
from pwlint.walk import is_layout_perm

CONV_CLASS = re.compile(r"^(Conv|Convolution|DepthwiseConv|SeparableConv|SeparableConvolution)([123])D(Transpose)?$")

SIMPLE_KINDS = {
    "Dense": "dense", "Flatten": "flatten", "Reshape": "reshape", "Permute": "transpose",
    "Add": "add", "Multiply": "mul", "Concatenate": "concat",
    "Dropout": "dropout", "SpatialDropout1D": "dropout", "SpatialDropout2D": "dropout",
    "SpatialDropout3D": "dropout", "GaussianNoise": "dropout", "GaussianDropout": "dropout",
    "AlphaDropout": "dropout", "ActivityRegularization": "dropout",
    "InputLayer": "input", "Identity": "identity", "Masking": "identity",
}
POOL_CLASS = re.compile(r"^(Max|Average|Avg)Pool(ing)?([123])D$")
GLOBAL_POOL_CLASS = re.compile(r"^Global(Max|Average|Avg)Pool(ing)?([123])D$")
NORM_TYPES = {
    "BatchNormalization": "batch", "SyncBatchNormalization": "batch",
    "LayerNormalization": "layer", "GroupNormalization": "group",
    "UnitNormalization": "unit", "RMSNormalization": "rms", "InstanceNormalization": "instance",
}
#: Keras activation names (strings in configs) in the ONNX loader's vocabulary
ACTIVATIONS = {
    "relu": "relu", "sigmoid": "sigmoid", "hard_sigmoid": "hard_sigmoid", "softmax": "softmax",
    "log_softmax": "log_softmax", "tanh": "tanh", "elu": "elu", "selu": "selu", "celu": "celu",
    "gelu": "gelu", "silu": "swish", "swish": "swish", "hard_silu": "hard_swish",
    "hard_swish": "hard_swish", "softplus": "softplus", "softsign": "softsign",
    "leaky_relu": "leaky_relu", "relu6": "clip", "hard_tanh": "clip", "mish": "mish",
    "exponential": "exp", "glu": "glu", "sparse_plus": "sparse_plus", "squareplus": "squareplus",
    "tanh_shrink": "tanh_shrink", "soft_shrink": "soft_shrink", "hard_shrink": "hard_shrink",
    "threshold": "thresholded_relu", "sparsemax": "sparsemax", "linear": None,
}
#: activation layer classes and the activation they compute
ACTIVATION_LAYERS = {
    "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu", "Softmax": "softmax",
    "ThresholdedReLU": "thresholded_relu",
}


#: built-in Keras layer classes that have no kind of their own (``other`` to the rules) but
#: whose meaning is known: Keras 3's ``keras.layers``, tf.keras 2 and Keras 1 (the classes
#: with a kind are known through :func:`kind_of`). Lambda, TFOpLambda, TensorFlowOpLayer,
#: TorchModuleWrapper, JaxLayer, FlaxLayer and TFSMLayer run code or graphs from elsewhere:
#: they are not here.
KNOWN_OTHER_CLASSES = frozenset({
    # Keras 3 (keras.layers)
    "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
    "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D",
    "AdditiveAttention", "Attention", "AugMix", "AutoContrast", "Average", "Bidirectional",
    "CategoryEncoding", "CenterCrop", "ContrastLimitedAdaptiveHistogramEqualization", "ConvLSTM1D",
    "ConvLSTM2D", "ConvLSTM3D", "Cropping1D", "Cropping2D", "Cropping3D", "CutMix", "Discretization",
    "Dot", "EinsumDense", "Embedding", "Equalization", "GRU", "GRUCell", "GroupQueryAttention",
    "HashedCrossing", "Hashing", "IntegerLookup", "LSTM", "LSTMCell", "MaxNumBoundingBoxes", "Maximum",
    "MelSpectrogram", "Minimum", "MixUp", "MultiHeadAttention", "Normalization", "Pipeline", "RNN",
    "RandAugment", "RandomBrightness", "RandomColorDegeneration", "RandomColorJitter", "RandomContrast",
    "RandomCrop", "RandomElasticTransform", "RandomErasing", "RandomFlip", "RandomGaussianBlur",
    "RandomGrayscale", "RandomHue", "RandomInvert", "RandomPerspective", "RandomPosterization",
    "RandomRotation", "RandomSaturation", "RandomSharpness", "RandomShear", "RandomTranslation",
    "RandomZoom", "RepeatVector", "Rescaling", "Resizing", "ReversibleEmbedding", "STFTSpectrogram",
    "SimpleRNN", "SimpleRNNCell", "Solarization", "SpectralNormalization", "StackedRNNCells",
    "StringLookup", "Subtract", "TextVectorization", "TimeDistributed", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "LayerScale", "StochasticDepth",
    # tf.keras 2 and Keras 2.0-2.1
    "LocallyConnected1D", "LocallyConnected2D", "CuDNNGRU", "CuDNNLSTM", "PeepholeLSTMCell",
    "RandomHeight", "RandomWidth", "CategoryCrossing", "DenseFeatures",
    # Keras 1 (and Keras 2's keras.legacy.layers)
    "Highway", "MaxoutDense", "TimeDistributedDense", "ParametricSoftplus", "SReLU", "Merge",
})


#: the modules Keras 3 and tf.keras record for their own layers (``"module": "keras.layers"``)
BUILTIN_MODULES = ("keras", "tf_keras", "tensorflow")


def is_known(class_name: str, config: dict, entry: dict | None = None) -> bool:
    """Whether a layer is one of the classes Keras ships, so that pwlint knows what it
    computes. A class of the same name from another module (the ``module`` and
    ``registered_name`` a Keras 3 config records for a custom class) is not. A Keras 1
    ``Merge`` is known only with a mode Keras later named (``sum``, ``concat``...):
    :mod:`keras_legacy` has then translated it, and a ``Merge`` left is a lambda's."""
    if class_name == "Merge":
        return False
    entry = entry or {}
    module, registered = entry.get("module"), entry.get("registered_name")
    if isinstance(module, str) and module.partition(".")[0] not in BUILTIN_MODULES:
        return False
    if isinstance(registered, str) and registered != class_name:
        return False
    return kind_of(class_name, config) != "other" or class_name in KNOWN_OTHER_CLASSES


def activation_name(value: Any) -> str | None:
    """The normalised name of a config's ``activation`` (None for linear or absent).
    A serialised function (``{"class_name": "function", "config": "relu"}``) gives its
    name; a custom one gives its registered or class name, lower-cased."""
    if value is None:
        return None
    if isinstance(value, dict):
        inner = value.get("config")
        value = inner if isinstance(inner, str) else value.get("registered_name") or value.get("class_name") or "custom"
    name = str(value).rpartition(">")[2].rpartition(".")[2].lower()
    return ACTIVATIONS.get(name, name)


def _ints(value: Any, rank: int) -> tuple:
    if isinstance(value, int):
        return (value,) * rank
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return ()


def conv_rank(class_name: str) -> int | None:
    match = CONV_CLASS.match(class_name)
    return int(match.group(2)) if match else None


def kind_of(class_name: str, config: dict) -> str:
    if conv_rank(class_name):
        return "conv"
    if class_name in SIMPLE_KINDS:
        return SIMPLE_KINDS[class_name]
    if class_name in NORM_TYPES:
        return "norm"
    if class_name in ACTIVATION_LAYERS or class_name == "ReLU":
        return "act"
    if class_name == "Activation":
        return "identity" if activation_name(config.get("activation")) is None else "act"
    if GLOBAL_POOL_CLASS.match(class_name):
        return "global_pool"
    if POOL_CLASS.match(class_name):
        return "pool"
    return "other"


def _weight_shape(weights: list, names: tuple, index: int):
    """The shape of a layer's weight by name (legacy h5) or position (.keras vars/N)."""
    for name in names:
        for weight in weights:
            if weight.name.rpartition("/")[2].partition(":")[0] == name:
                return weight.shape
    own = [w for w in weights if re.fullmatch(r"vars/\d+", w.name)]
    return own[index].shape if index < len(own) else None


def describe(class_name: str, config: dict, in_shapes: list, weights: list, layout: str) -> tuple[str, dict]:
    """The kind and attributes of a layer, from its config, input shapes and weight shapes."""
    kind = kind_of(class_name, config)
    in_shape = in_shapes[0] if in_shapes else None
    attrs: dict = {}
    if kind == "conv":
        attrs = _conv_attrs(class_name, config, in_shape, weights, layout)
    elif kind == "dense":
        kernel = _weight_shape(weights, ("kernel",), 0)
        fan_in = in_shape[-1] if in_shape else None
        if fan_in is None and kernel and len(kernel) == 2:
            fan_in = kernel[0]
        attrs = {
            "in_features": fan_in, "out_features": config.get("units"),
            "bias": bool(config.get("use_bias", True)),
            "per_position": bool(in_shape) and len(in_shape) > 2,
        }
    elif kind == "norm":
        norm_type = NORM_TYPES[class_name]
        if class_name == "GroupNormalization" and config.get("groups") == -1:
            norm_type = "instance"
        if class_name == "LayerNormalization" and config.get("rms_scaling"):
            norm_type = "rms"
        attrs = {"norm_type": norm_type, "axis": config.get("axis")}
        if "groups" in config:
            attrs["groups"] = config["groups"]
    elif kind == "act":
        attrs = {"activation": _layer_activation(class_name, config)}
    elif kind in ("pool", "global_pool"):
        match = (GLOBAL_POOL_CLASS if kind == "global_pool" else POOL_CLASS).match(class_name)
        rank = int(match.group(3))
        attrs = {"pool_type": "max" if match.group(1) == "Max" else "average"}
        if kind == "pool":
            size = _ints(config.get("pool_size", 2), rank)
            attrs.update(kernel=size, stride=_ints(config.get("strides") or size, rank), padding=config.get("padding", "valid"))
        else:
            attrs["keepdims"] = bool(config.get("keepdims", False))
    elif kind == "transpose":
        dims = _sequence(config.get("dims"))
        perm = (0, *dims) if dims else None
        attrs = {"perm": perm, "layout_change": is_layout_perm(perm)}
    elif kind == "reshape":
        attrs = {"target_shape": _sequence(config.get("target_shape"))}
    elif kind == "concat":
        attrs = {"axis": config.get("axis", -1)}
    return kind, _typed(attrs)


#: attributes rules compute with: a config is untrusted JSON, so a count written as a
#: string or a list must become "unknown" here, not a TypeError in a rule
COUNTS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "depth_multiplier")
SIZES = ("kernel", "stride", "dilation", "target_shape")


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count_or_one(value: Any) -> int | None:
    """A count from the config where absent or 0 means 1 (``groups``, ``depth_multiplier``);
    None, unknown, for anything that is not a whole number (a string, a list)."""
    if not value:
        return 1
    return value if is_count(value) else None


def _sequence(value: Any) -> tuple:
    """A list from the config as a tuple; anything else (a number, a string) as empty,
    which _typed then treats as unknown."""
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def _typed(attrs: dict) -> dict:
    for key in COUNTS:
        if key in attrs and not is_count(attrs[key]):
            attrs[key] = None
    for key in SIZES:
        if key in attrs and not all(is_count(v) for v in attrs[key]):
            attrs[key] = ()
    if "perm" in attrs and attrs["perm"] is not None and not all(is_count(v) for v in attrs["perm"]):
        attrs["perm"], attrs["layout_change"] = None, False
    for key in ("padding", "activation"):
        if key in attrs and not isinstance(attrs[key], str):
            attrs[key] = None
    return attrs


def _layer_activation(class_name: str, config: dict) -> str:
    if class_name == "ReLU":
        if config.get("max_value") is not None:
            return "clip"
        if config.get("negative_slope"):
            return "leaky_relu"
        if config.get("threshold"):
            return "thresholded_relu"
        return "relu"
    if class_name == "Activation":
        return activation_name(config.get("activation")) or "linear"
    return ACTIVATION_LAYERS[class_name]


def _conv_attrs(class_name: str, config: dict, in_shape, weights: list, layout: str) -> dict:
    rank = conv_rank(class_name)
    match = CONV_CLASS.match(class_name)
    family, transposed = match.group(1), bool(match.group(3))
    depthwise, separable = family == "DepthwiseConv", family.startswith("Separable")
    kernel = _weight_shape(weights, ("depthwise_kernel", "kernel") if depthwise or separable else ("kernel",), 0)
    in_ch = channels(in_shape, layout)
    # a config is untrusted JSON: a count that is not a whole number is unknown (None)
    multiplier = _count_or_one(config.get("depth_multiplier"))
    groups = _count_or_one(config.get("groups"))
    if in_ch is None and kernel and len(kernel) == rank + 2:
        if transposed:
            in_ch = kernel[-1]
        elif depthwise or separable:
            in_ch = kernel[-2]
        elif groups is not None:
            in_ch = kernel[-2] * groups
    if depthwise:
        groups = in_ch if in_ch is not None else None
        out_ch = in_ch * multiplier if in_ch is not None and multiplier is not None else None
    else:
        out_ch = config.get("filters")
    attrs = {
        "kernel": _ints(config.get("kernel_size"), rank), "stride": _ints(config.get("strides", 1), rank),
        "dilation": _ints(config.get("dilation_rate", 1), rank), "groups": groups,
        "in_channels": in_ch, "out_channels": out_ch, "bias": bool(config.get("use_bias", True)),
        "transposed": transposed, "padding": config.get("padding", "valid"),
    }
    if separable:
        attrs.update(separable=True, depth_multiplier=multiplier)
    if depthwise:
        attrs["depth_multiplier"] = multiplier
    return attrs


def config_params(class_name: str, config: dict, kind: str, attrs: dict, in_shape) -> int:
    """Trainable parameters computed from the config, for a layer whose weights are not stored."""
    bias = 1 if config.get("use_bias", True) else 0
    if kind == "conv":
        k = prod(attrs.get("kernel") or (0,))
        cin, cout, groups = attrs.get("in_channels"), attrs.get("out_channels"), attrs.get("groups") or 1
        if cin is None or cout is None:
            return 0
        if attrs.get("separable"):
            if attrs.get("depth_multiplier") is None:
                return 0
            mid = cin * attrs["depth_multiplier"]
            return k * mid + mid * cout + bias * cout
        return k * cin // groups * cout + bias * cout
    if kind == "dense":
        fan_in, units = attrs.get("in_features"), attrs.get("out_features")
        return fan_in * units + bias * units if fan_in and units else 0
    if kind == "norm" and class_name != "UnitNormalization" and in_shape:
        axes = config.get("axis", -1)
        axes = axes if isinstance(axes, list) else [axes]
        try:
            size = prod(in_shape[a] for a in axes)
        except (IndexError, TypeError):
            return 0
        per = int(bool(config.get("center", True))) + int(bool(config.get("scale", True)))
        if class_name == "RMSNormalization" or config.get("rms_scaling"):
            per = 1
        return size * per if size else 0
    if class_name == "Embedding":
        sizes = (config.get("input_dim"), config.get("output_dim"))
        return sizes[0] * sizes[1] if all(is_count(v) for v in sizes) else 0
    return 0


def is_trainable(class_name: str, weight_name: str, index: int, count: int) -> bool:
    """Whether a stored weight is a trainable value: BatchNorm's running mean and variance
    (named in legacy files, the last two ``vars`` in ``.keras`` files) and a Normalization
    layer's statistics are not."""
    tail = weight_name.rpartition("/")[2].partition(":")[0]
    if tail in ("moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"):
        return False
    if "seed_generator" in weight_name:
        return False
    if class_name == "Normalization":
        return False
    if class_name in ("BatchNormalization", "SyncBatchNormalization") and weight_name.startswith("vars/"):
        return index < count - 2
    return True
