"""Keras 1.x and Keras 2.0-2.1 model configs, translated once, up front, into the form
the rest of the Keras loader reads (Keras 2.2+ / tf.keras 2 / Keras 3).

What changed between the formats, and what is translated here:

* **Sequential.** Up to Keras 2.1, ``Sequential.get_config()`` returned the bare list
  of layer configs; ``model_config`` is ``{"class_name": "Sequential", "config": [...]}``
  and a Sequential nested in a functional model keeps its name beside that list.
  Keras 2.2 made it ``{"name": ..., "layers": [...]}``.
* **Keras 1 layer classes and keys** (``keras/legacy/interfaces.py`` of Keras 2 lists
  the same renames): ``Convolution2D(nb_filter, nb_row, nb_col, subsample,
  border_mode, dim_ordering, bias)`` is ``Conv2D(filters, kernel_size, strides,
  padding, data_format, use_bias)``; likewise ``Convolution1D`` (``filter_length``,
  ``subsample_length``), ``Convolution3D`` (``kernel_dim1..3``), ``AtrousConvolution*``
  (``atrous_rate`` is ``dilation_rate``), ``SeparableConvolution2D``,
  ``Deconvolution2D/3D`` (``Conv*DTranspose``); ``Dense``/RNN ``output_dim`` is
  ``units``; pooling ``pool_length``/``stride``/``border_mode``; ``dim_ordering``
  ``"th"``/``"tf"`` is ``data_format`` ``channels_first``/``channels_last`` on every
  image layer; ``Dropout(p)`` is ``rate``; ``Merge(mode=...)`` is ``Add``,
  ``Multiply``, ``Concatenate(axis=concat_axis)``, ``Average``, ``Maximum`` or ``Dot``.
* **Input shapes.** Every Keras 1/2.0 layer built with an input shape records
  ``batch_input_shape``; a Keras 1 ``input_dim`` (and ``input_length``) alone is
  turned into one.
* ``inbound_nodes`` of ``[layer, node, tensor]`` (Keras 1) and ``[layer, node, tensor,
  kwargs]`` (Keras 2) need no translation: :mod:`keras_config` reads both, and the
  Keras 3 ``{"args", "kwargs"}`` form.

The translated entries are new dicts; the JSON as stored is left untouched. A
translated layer records its stored class name under :data:`STORED_CLASS`, so the
graph names the operator as the file does (``Convolution2D``). A modern config
passes through unchanged (the translations apply only to the legacy class names and
keys, which no Keras 2.2+ layer of the same class writes).
"""

from __future__ import annotations

from typing import Any

#: key of a translated layer entry holding the class name the file stores
STORED_CLASS = "pwlint_stored_class_name"
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
#: nested models deeper than this are left as stored (the config parser refuses them)
MAX_DEPTH = 80

#: Keras 1 class -> (Keras 2 class, rank) for convolutions
CONV_RENAMES = {
    "Convolution1D": ("Conv1D", 1), "Convolution2D": ("Conv2D", 2), "Convolution3D": ("Conv3D", 3),
    "AtrousConvolution1D": ("Conv1D", 1), "AtrousConvolution2D": ("Conv2D", 2),
    "SeparableConvolution2D": ("SeparableConv2D", 2),
    "Deconvolution2D": ("Conv2DTranspose", 2), "Deconvolution3D": ("Conv3DTranspose", 3),
}
#: Keras 2 convolution classes that Keras 1 configs may still name (via the old keys)
CONV_CLASSES = {
    "Conv1D": 1, "Conv2D": 2, "Conv3D": 3, "SeparableConv1D": 1, "SeparableConv2D": 2,
    "Conv2DTranspose": 2, "Conv3DTranspose": 3, "LocallyConnected1D": 1, "LocallyConnected2D": 2,
}
#: Keras 1 ``Merge`` modes and the layer class each became
MERGE_MODES = {
    "sum": "Add", "mul": "Multiply", "concat": "Concatenate", "ave": "Average",
    "max": "Maximum", "dot": "Dot", "cos": "Dot",
}
DIM_ORDERING = {"th": "channels_first", "tf": "channels_last"}
#: classes whose ``output_dim`` is Keras 2's ``units`` (not Embedding's, which kept the name)
UNITS_CLASSES = frozenset({
    "Dense", "SimpleRNN", "GRU", "LSTM", "Highway", "MaxoutDense", "TimeDistributedDense", "ConvLSTM2D",
})
#: classes a Keras 1 ``input_dim`` gives the last input dimension of (Embedding's is its vocabulary)
INPUT_DIM_CLASSES = UNITS_CLASSES | {"Convolution1D", "AtrousConvolution1D", "Conv1D"}


def normalise(entry: Any, depth: int = 0) -> Any:
    """``entry`` (a model or layer config as stored) in the Keras 2.2+ form; anything
    that is not a config is returned as it is, for the parser to judge."""
    if not isinstance(entry, dict) or depth > MAX_DEPTH:
        return entry
    cls = entry.get("class_name")
    if not isinstance(cls, str):  # a config is untrusted JSON: the parser says what is wrong
        return entry
    if cls in MODEL_CLASSES:
        return _model(entry, depth)
    config = entry.get("config")
    if not isinstance(config, dict):
        return entry
    new_cls, new_config = _layer(cls, config)
    if new_cls == cls and new_config is config:
        return entry
    translated = {**entry, "class_name": new_cls, "config": new_config}
    translated[STORED_CLASS] = cls
    return translated


def _model(entry: dict, depth: int) -> dict:
    config = entry.get("config")
    if isinstance(config, list):  # Keras 1 and 2.0-2.1 Sequential: the bare list of layers
        name = entry.get("name") if isinstance(entry.get("name"), str) else None
        config = {"name": name or "sequential", "layers": config}
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        return entry
    layers = config["layers"]
    new_layers = [normalise(layer, depth + 1) for layer in layers]
    sequential_shape = _first_input_shape(new_layers) if entry.get("class_name") == "Sequential" else None
    if config is entry.get("config") and all(a is b for a, b in zip(new_layers, layers)) and sequential_shape is None:
        return entry  # nothing legacy in it
    config = {**config, "layers": new_layers}
    if sequential_shape is not None:
        new_layers[0] = {**new_layers[0], "config": {**new_layers[0]["config"], "batch_input_shape": sequential_shape}}
    return {**entry, "config": config}


def _first_input_shape(layers: list):
    """A Keras 1 first layer's ``input_dim``/``input_length`` as ``batch_input_shape``,
    when it records no shape of its own (None otherwise)."""
    if not layers or not isinstance(layers[0], dict) or not isinstance(layers[0].get("config"), dict):
        return None
    config = layers[0]["config"]
    cls = layers[0].get(STORED_CLASS) or layers[0].get("class_name")
    if not isinstance(cls, str) or any(config.get(key) is not None for key in ("batch_input_shape", "input_shape", "batch_shape")):
        return None
    dim = config.get("input_dim")
    if cls not in INPUT_DIM_CLASSES or not _is_int(dim):
        return None
    length = config.get("input_length")
    if cls in UNITS_CLASSES - {"Dense", "Highway", "MaxoutDense"} or "Conv" in cls:
        return [None, length if _is_int(length) else None, dim]
    return [None, dim]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: config keys only Keras 1 wrote (or that Keras 2 renamed): a layer with none of them,
#: and a class Keras 2 did not rename, is left as it is without being copied
LEGACY_KEYS = frozenset({
    "nb_filter", "nb_row", "nb_col", "filter_length", "subsample", "subsample_length", "kernel_dim1",
    "atrous_rate", "border_mode", "dim_ordering", "output_dim", "bias", "p", "pool_length", "stride", "length",
})


def _layer(cls: str, config: dict) -> tuple[str, dict]:
    """The Keras 2 class and config of a layer; the same objects when nothing changes."""
    if cls not in CONV_RENAMES and cls != "Merge" and LEGACY_KEYS.isdisjoint(config):
        return cls, config
    new = dict(config)
    changed = False

    def move(old: str, key: str, convert=lambda v: v) -> None:
        nonlocal changed
        if old in new:
            value = new.pop(old)
            changed = True
            if key not in new:
                new[key] = convert(value)

    if cls in CONV_RENAMES or (cls in CONV_CLASSES and "nb_filter" in config):
        cls, rank = CONV_RENAMES.get(cls, (cls, CONV_CLASSES.get(cls)))
        changed = True
        move("nb_filter", "filters")
        if rank == 1:
            move("filter_length", "kernel_size", lambda v: [v])
            move("subsample_length", "strides", lambda v: [v])
        else:
            names = ("nb_row", "nb_col") if rank == 2 else ("kernel_dim1", "kernel_dim2", "kernel_dim3")
            if "kernel_size" not in new and all(name in new for name in names):
                new["kernel_size"] = [new[name] for name in names]
            for name in names:
                new.pop(name, None)
            move("subsample", "strides")
        move("atrous_rate", "dilation_rate", lambda v: [v] * rank if _is_int(v) else v)
    elif cls == "Merge":
        mode = config.get("mode")
        if isinstance(mode, str) and mode in MERGE_MODES and "layers" not in config:
            cls, changed = MERGE_MODES[mode], True
            if cls == "Concatenate":
                move("concat_axis", "axis")
            elif cls == "Dot":
                move("dot_axes", "axes")
                new["normalize"] = mode == "cos"
    if cls in UNITS_CLASSES:
        move("output_dim", "units")
    if cls in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"):
        move("p", "rate")
    if cls in ("MaxPooling1D", "AveragePooling1D"):
        move("pool_length", "pool_size", lambda v: [v] if _is_int(v) else v)
        move("stride", "strides", lambda v: [v] if _is_int(v) else v)
    if cls == "UpSampling1D":
        move("length", "size")
    move("border_mode", "padding")
    move("dim_ordering", "data_format", lambda v: DIM_ORDERING.get(v, v) if isinstance(v, str) else v)
    if isinstance(new.get("bias"), bool):
        move("bias", "use_bias")
    return (cls, new) if changed else (cls, config)
