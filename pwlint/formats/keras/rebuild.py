"""The model a Keras fix works on, rebuilt from pwlint's own validated reading of the
file: ``keras.saving.load_model`` is never called on it.

``load_model(safe_mode=True)`` is not a sandbox: its safe mode has been bypassed
again and again (CVE-2025-1550, CVE-2025-8747, CVE-2025-9906), each time through
something the file names (a module to import, a function to call, a config that a
built-in class passes on), and ``--fix`` runs on files from pull requests. So the
backend works as the ``.pt2`` one does (:mod:`pwlint.formats.pytorch.pt2.sanitize`):

1. The file is read without Keras (:mod:`pwlint.formats.keras.read`: zip, JSON,
   h5py; Keras 1 and 2.0-2.1 configs translated by :mod:`~pwlint.formats.keras.legacy`).
2. :func:`sanitised` builds a **new** config from the one stored, taking over only
   what it knows: layers of the classes in :data:`LAYER_KEYS` (Keras's own layers)
   with only their known config keys, each value a plain JSON value; activations,
   initializers, regularizers, constraints and dtype policies by built-in name only;
   tensor references as ``[layer, call, output]`` and ``__keras_tensor__`` entries
   of a shape and a dtype. Every ``module`` is written by pwlint (``keras.layers``,
   ``keras.initializers``...) and every ``registered_name`` is None, so nothing the
   file names is imported or looked up. Anything else (a Lambda, a custom or
   registered class, a module other than Keras's, a ``function``/``__lambda__``/
   ``__passive_serialization__`` entry, a key pwlint does not know) refuses the fix
   with one line saying which layer and why. The compile config is never read here.
3. Keras builds the model from that config (``deserialize_keras_object(...,
   safe_mode=True)``, the ``from_config`` of ``Sequential``/``Model``).
4. The weights are read with h5py by pwlint (hard links only; no external or
   virtual storage, which could pull another file's bytes into the written model;
   numeric datasets of exactly the shape the layer's variable has) and assigned:
   for a ``.keras`` file each layer's ``vars`` group, found the way Keras names
   them (snake-cased class, numbered per model), through the layer's own
   ``load_own_variables``; for a legacy ``.h5`` file each layer's group under
   ``model_weights``, in the order of its ``weight_names`` attribute, onto the
   layer's trainable then non-trainable weights (as Keras's HDF5 loader does).

The optimizer's state is never read: a rewritten layer no longer fits its slots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pwlint.errors import FixNotApplicable, LoadError, ModelRefused
from pwlint.formats.keras.legacy import STORED_CLASS

#: the end of every refusal: what pwlint fixes
ONLY_OWN = "pwlint fixes only models built from Keras's own layers"
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
MAX_DEPTH = 16
MAX_TEXT = 4096

# what a layer config may hold ---------------------------------------------------------------

#: keys every layer takes (keras.layers.Layer's arguments, and Keras 2's input shapes)
BASE_KEYS = frozenset({
    "name", "trainable", "dtype", "autocast", "input_shape", "batch_input_shape", "input_dim",
    "activity_regularizer",
})
_INITS = ("kernel_initializer", "bias_initializer")
_REGS = ("kernel_regularizer", "bias_regularizer")
_CONSTRAINTS = ("kernel_constraint", "bias_constraint")
_CONV = frozenset({"filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
                   "activation", "use_bias", *_INITS, *_REGS, *_CONSTRAINTS})
_TRANSPOSE = (_CONV - {"groups"}) | {"output_padding"}
_DEPTHWISE = frozenset({"kernel_size", "strides", "padding", "depth_multiplier", "data_format", "dilation_rate",
                        "activation", "use_bias", "depthwise_initializer", "bias_initializer",
                        "depthwise_regularizer", "bias_regularizer", "depthwise_constraint", "bias_constraint"})
_SEPARABLE = _DEPTHWISE | {"filters", "pointwise_initializer", "pointwise_regularizer", "pointwise_constraint"}
_POOL = frozenset({"pool_size", "strides", "padding", "data_format"})
_GLOBAL_POOL = frozenset({"data_format", "keepdims"})
_NORM = frozenset({"axis", "epsilon", "center", "scale", "beta_initializer", "gamma_initializer", "beta_regularizer",
                   "gamma_regularizer", "beta_constraint", "gamma_constraint"})
_DROPOUT = frozenset({"rate", "noise_shape", "seed"})

#: Keras's own layer classes pwlint rebuilds, and the config keys each may have besides
#: BASE_KEYS. Layers holding other layers (RNNs and their cells, wrappers, attention) and
#: layers whose config names code (Lambda) are not here.
LAYER_KEYS: dict[str, frozenset] = {
    "InputLayer": frozenset({"shape", "batch_size", "batch_shape", "sparse", "ragged", "optional"}),
    "Dense": frozenset({"units", "activation", "use_bias", *_INITS, *_REGS, *_CONSTRAINTS, "lora_rank", "lora_alpha",
                        "quantization_config"}),
    **{f"Conv{n}D": _CONV for n in (1, 2, 3)},
    **{f"Conv{n}DTranspose": _TRANSPOSE for n in (1, 2, 3)},
    **{f"SeparableConv{n}D": _SEPARABLE for n in (1, 2)},
    **{f"DepthwiseConv{n}D": _DEPTHWISE for n in (1, 2)},
    **{f"{kind}Pooling{n}D": _POOL for kind in ("Max", "Average") for n in (1, 2, 3)},
    **{f"Global{kind}Pooling{n}D": _GLOBAL_POOL for kind in ("Max", "Average") for n in (1, 2, 3)},
    "Flatten": frozenset({"data_format"}),
    "Reshape": frozenset({"target_shape"}),
    "Permute": frozenset({"dims"}),
    "RepeatVector": frozenset({"n"}),
    "Dropout": _DROPOUT, "AlphaDropout": _DROPOUT, "GaussianDropout": frozenset({"rate", "seed"}),
    "GaussianNoise": frozenset({"stddev", "seed"}),
    "SpatialDropout1D": frozenset({"rate", "seed"}),
    **{f"SpatialDropout{n}D": frozenset({"rate", "seed", "data_format"}) for n in (2, 3)},
    "ActivityRegularization": frozenset({"l1", "l2"}),
    "Activation": frozenset({"activation"}),
    "ReLU": frozenset({"max_value", "negative_slope", "threshold"}),
    "LeakyReLU": frozenset({"negative_slope", "alpha"}),
    "PReLU": frozenset({"alpha_initializer", "alpha_regularizer", "alpha_constraint", "shared_axes"}),
    "ELU": frozenset({"alpha"}),
    "Softmax": frozenset({"axis"}),
    "BatchNormalization": _NORM | {"momentum", "moving_mean_initializer", "moving_variance_initializer", "renorm",
                                   "renorm_clipping", "renorm_momentum", "synchronized"},
    "LayerNormalization": _NORM | {"rms_scaling"},
    "GroupNormalization": _NORM | {"groups"},
    "UnitNormalization": frozenset({"axis"}),
    **{merge: frozenset() for merge in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")},
    "Concatenate": frozenset({"axis"}),
    "Dot": frozenset({"axes", "normalize"}),
    **{f"ZeroPadding{n}D": frozenset({"padding", "data_format"}) for n in (1, 2, 3)},
    "Cropping1D": frozenset({"cropping"}),
    **{f"Cropping{n}D": frozenset({"cropping", "data_format"}) for n in (2, 3)},
    "UpSampling1D": frozenset({"size"}),
    "UpSampling2D": frozenset({"size", "data_format", "interpolation"}),
    "UpSampling3D": frozenset({"size", "data_format"}),
    "Embedding": frozenset({"input_dim", "output_dim", "embeddings_initializer", "embeddings_regularizer",
                            "embeddings_constraint", "mask_zero", "input_length", "lora_rank", "lora_alpha",
                            "quantization_config"}),
    "Identity": frozenset(),
    "Rescaling": frozenset({"scale", "offset"}),
}
#: config keys that must be None when present (a quantised layer's weights are not float)
MUST_BE_NONE = frozenset({"quantization_config"})

# Keras objects a layer config may name, by built-in name only ---------------------------------

ACTIVATIONS = frozenset({
    "celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish",
    "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu", "relu6", "selu", "sigmoid",
    "silu", "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax",
    "squareplus", "swish", "tanh", "tanh_shrink", "threshold",
})
INITIALIZERS = frozenset({
    "Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity", "IdentityInitializer",
    "LecunNormal", "LecunUniform", "Ones", "Orthogonal", "OrthogonalInitializer", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "Zeros",
    "constant", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "identity", "lecun_normal",
    "lecun_uniform", "ones", "orthogonal", "random_normal", "random_uniform", "truncated_normal",
    "variance_scaling", "zeros",
})
REGULARIZERS = frozenset({"L1", "L1L2", "L2", "OrthogonalRegularizer", "l1", "l1_l2", "l2", "orthogonal_regularizer"})
CONSTRAINTS = frozenset({"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "max_norm", "min_max_norm", "non_neg",
                         "unit_norm"})
#: the object kinds, by the ending of the config key that holds one
OBJECT_KINDS = {"_initializer": ("initializers", INITIALIZERS), "_regularizer": ("regularizers", REGULARIZERS),
                "_constraint": ("constraints", CONSTRAINTS)}
DTYPES = frozenset({"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
                    "uint16", "uint32", "uint64", "bool", "string"})
DTYPE_POLICIES = frozenset({"float16", "float32", "float64", "bfloat16", "mixed_float16", "mixed_bfloat16"})
POLICY_CLASSES = frozenset({"DTypePolicy", "FloatDTypePolicy", "Policy"})

#: keys of a layer entry (around its config) and of a model config
ENTRY_KEYS = frozenset({"module", "class_name", "config", "registered_name", "name", "inbound_nodes", "build_config",
                        "compile_config", "shared_object_id", STORED_CLASS})
MODEL_KEYS = frozenset({"name", "trainable", "dtype", "layers", "input_layers", "output_layers", "build_input_shape"})
TOP_KEYS = ENTRY_KEYS | {"keras_version", "backend"}


def refuse(why: str) -> ModelRefused:
    return ModelRefused(f"cannot fix: {why}; {ONLY_OWN}")


# the config -------------------------------------------------------------------------------

def sanitised(entry: Any) -> dict:
    """A new model entry for Keras to build, made from the validated parts of ``entry``
    (the stored config, as :mod:`pwlint.formats.keras.read` returns it)."""
    if not isinstance(entry, dict) or entry.get("class_name") not in MODEL_CLASSES:
        cls = entry.get("class_name") if isinstance(entry, dict) else None
        raise refuse(f"the model is a {_describe(entry)}" if isinstance(cls, str) else "the model has no layer graph")
    _check_keys(entry, TOP_KEYS, "the model")
    return _model(entry, "the model")


def _model(entry: dict, where: str) -> dict:
    cls = entry["class_name"]
    _check_origin(entry, where)
    config = entry.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise refuse(f"{where} has no list of layers")
    _check_keys(config, MODEL_KEYS, where)
    sequential = cls == "Sequential"
    new: dict[str, Any] = {"name": _text(config.get("name") or entry.get("name") or cls.lower(), where)}
    for key in ("trainable", "build_input_shape", "input_layers", "output_layers"):
        if key in config:
            new[key] = _plain(config[key], f"'{key}' of {where}")
    if "dtype" in config:
        new["dtype"] = _dtype(config["dtype"], where)
    new["layers"] = [_layer(item, not sequential, where) for item in config["layers"]]
    if not sequential and not ("input_layers" in new and "output_layers" in new):
        raise refuse(f"{where} names no inputs or outputs")
    model = {"module": "keras", "class_name": "Sequential" if sequential else "Model", "config": new,
             "registered_name": None}
    if "build_config" in entry:
        model["build_config"] = _build_config(entry["build_config"], where)
    return model


def _layer(entry: Any, functional: bool, model: str) -> dict:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        raise refuse(f"{model} holds a layer entry that is not a layer config")
    config = entry.get("config")
    name = entry.get("name") or (config.get("name") if isinstance(config, dict) else None)
    where = f"layer '{_text(name, model)}'" if isinstance(name, str) else f"a layer of {model}"
    cls = entry["class_name"]
    _check_keys(entry, ENTRY_KEYS, where)
    if cls == "Lambda":
        raise refuse(f"{where} is a Lambda layer")
    _check_origin(entry, where)
    if cls in MODEL_CLASSES:
        new = _model(entry, where)
    elif cls in LAYER_KEYS:
        if not isinstance(config, dict):
            raise refuse(f"{where} has no config")
        new = {"module": "keras.layers", "class_name": cls, "config": _layer_config(cls, config, where, "module" not in entry),
               "registered_name": None}
        if "build_config" in entry:
            new["build_config"] = _build_config(entry["build_config"], where)
    else:
        raise refuse(f"{where} is a {_describe(entry)} layer, which pwlint does not rebuild")
    if functional:
        if not isinstance(name, str):
            raise refuse(f"{where} has no name")
        nodes = entry.get("inbound_nodes", [])
        if not isinstance(nodes, list):
            raise refuse(f"{where} has malformed inbound_nodes")
        new["name"] = name
        new["inbound_nodes"] = [_node(node, where) for node in nodes]
    return new


def _layer_config(cls: str, config: dict, where: str, legacy: bool) -> dict:
    allowed = BASE_KEYS | LAYER_KEYS[cls]
    _check_keys(config, allowed, f"{where} ({cls})")
    new: dict[str, Any] = {}
    for key, value in config.items():
        if key in MUST_BE_NONE:
            if value is not None:
                raise refuse(f"{where} is quantised")
            continue
        if key == "dtype":
            new[key] = _dtype(value, where)
        elif key == "activation":
            new[key] = _activation(value, where)
        elif key.endswith(tuple(OBJECT_KINDS)) or key == "activity_regularizer":
            new[key] = _object(key, value, where)
        else:
            new[key] = _plain(value, f"'{key}' of {where}")
    if legacy:  # as Keras's own reader of configs without "module" (HDF5 files) does
        shape = new.pop("batch_input_shape", None)
        if shape is not None:
            new["batch_shape" if cls == "InputLayer" else "input_shape"] = shape
        axis = new.get("axis")
        if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
            new["axis"] = axis[0]
    return new


def _check_keys(mapping: dict, allowed: frozenset, where: str) -> None:
    for key in mapping:
        if key not in allowed:
            shown = key if isinstance(key, str) and len(key) <= 80 else f"{str(key)[:77]}..."
            raise refuse(f"{where} has a config key '{shown}' pwlint does not know")


def _check_origin(entry: dict, where: str) -> None:
    """Keras's own classes are stored with a ``keras`` module (or none, in HDF5 files)
    and no registered name of a package."""
    module, registered = entry.get("module"), entry.get("registered_name")
    if module is not None and not (isinstance(module, str) and (module == "keras" or module.startswith("keras."))):
        raise refuse(f"{where} is a {_describe(entry)} (a custom object)")
    if registered is not None and registered != entry.get("class_name"):
        raise refuse(f"{where} is a custom class registered as {_short(registered)}")


def _describe(entry: Any) -> str:
    if not isinstance(entry, dict):
        return type(entry).__name__
    cls, module = _short(entry.get("class_name")), entry.get("module")
    if isinstance(module, str) and not (module == "keras" or module.startswith("keras.")):
        return f"{cls} from module '{_short(module)}'"
    return cls


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise refuse(f"{where} has a name that is not a short string")
    return value


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """A copy of a plain JSON value: numbers, strings, booleans, None and lists of them."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise refuse(f"{where} is a string of {len(value)} characters")
        return value
    if isinstance(value, (list, tuple)) and depth < MAX_DEPTH:
        return [_plain(item, where, depth + 1) for item in value]
    if isinstance(value, dict):
        raise refuse(f"{where} holds an object ({_describe(value)}) where Keras's own layers keep plain values")
    raise refuse(f"{where} is not a plain value")


def _dtype(value: Any, where: str) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in DTYPES | DTYPE_POLICIES:
            raise refuse(f"{where} has an unknown dtype {_short(value)!r}")
        return value
    if isinstance(value, dict) and value.get("class_name") in POLICY_CLASSES:
        _check_keys(value, frozenset({"module", "class_name", "config", "registered_name", "shared_object_id"}), where)
        _check_origin({**value, "registered_name": None}, where)
        inner = value.get("config")
        name = inner.get("name") if isinstance(inner, dict) else None
        if not isinstance(inner, dict) or set(inner) - {"name"} or name not in DTYPE_POLICIES:
            raise refuse(f"{where} has a dtype policy pwlint does not rebuild ({_short(name)}, quantised?)")
        return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}, "registered_name": None}
    raise refuse(f"{where} has a dtype that is a {_describe(value)}")


def _activation(value: Any, where: str) -> str | None:
    """A built-in activation, by name (``keras.activations.<name>``)."""
    if value is None:
        return None
    name = value
    if isinstance(value, dict):  # a function serialised by name: {"class_name": "function", "config": "relu"}
        module = value.get("module")
        own = module is None or (isinstance(module, str) and (module == "keras" or module.startswith("keras.")))
        name = value.get("config") if own and value.get("class_name") == "function" else None
    if isinstance(name, str) and name in ACTIVATIONS:
        return name
    raise refuse(f"{where} has an activation that is not one of Keras's own ({_describe(value) if isinstance(value, dict) else _short(value)})")


def _object(key: str, value: Any, where: str) -> Any:
    """A built-in initializer, regularizer or constraint: by name, or as a class of
    ``keras.<kind>`` with a config of plain values."""
    if value is None:
        return None
    kind, names = next(pair for suffix, pair in OBJECT_KINDS.items() if key.endswith(suffix))
    if isinstance(value, str):
        if value in names:
            return value
    elif isinstance(value, dict) and value.get("class_name") in names:
        _check_keys(value, frozenset({"module", "class_name", "config", "registered_name", "shared_object_id"}), where)
        _check_origin(value, f"the {key} of {where}")
        config = value.get("config", {})
        if not isinstance(config, dict):
            raise refuse(f"the {key} of {where} has no config")
        plain = {}
        for name, item in config.items():
            _text(name, f"the {key} of {where}")
            plain[name] = _plain(item, f"the {key} of {where}")
        return {"module": f"keras.{kind}", "class_name": value["class_name"], "config": plain, "registered_name": None}
    shown = _describe(value) if isinstance(value, dict) else _short(value)
    raise refuse(f"{where} has a {key} that is not one of Keras's own ({shown})")


def _build_config(value: Any, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise refuse(f"{where} has a malformed build_config")
    _check_keys(value, frozenset({"input_shape", "shapes_dict"}), f"the build_config of {where}")
    new: dict[str, Any] = {}
    if "input_shape" in value:
        new["input_shape"] = _plain(value["input_shape"], f"the build_config of {where}")
    if "shapes_dict" in value:
        shapes = value["shapes_dict"]
        if not isinstance(shapes, dict):
            raise refuse(f"{where} has a malformed build_config")
        new["shapes_dict"] = {_text(k, where): _plain(v, f"the build_config of {where}") for k, v in shapes.items()}
    return new


def _is_history(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value[1:]))


def _node(node: Any, where: str) -> Any:
    """One call of a layer: Keras 3's ``{"args", "kwargs"}`` or Keras 2's list of
    ``[layer, call, output(, kwargs)]``."""
    if isinstance(node, dict):
        _check_keys(node, frozenset({"args", "kwargs"}), f"a call of {where}")
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise refuse(f"{where} has a malformed call")
        return {"args": [_argument(a, where) for a in args],
                "kwargs": {_text(k, where): _argument(v, where) for k, v in kwargs.items()}}
    if isinstance(node, list):
        calls = []
        for item in node:
            if not (isinstance(item, list) and len(item) in (3, 4) and _is_history(item[:3])):
                raise refuse(f"{where} has a malformed call")
            call = [_text(item[0], where), item[1], item[2]]
            if len(item) == 4:
                if not isinstance(item[3], dict):
                    raise refuse(f"{where} has a malformed call")
                call.append({_text(k, where): _plain(v, f"a call argument of {where}") for k, v in item[3].items()})
            calls.append(call)
        return calls
    raise refuse(f"{where} has a malformed call")


def _argument(value: Any, where: str, depth: int = 0) -> Any:
    """A call argument: a tensor reference, a plain value, or lists and dicts of them."""
    if depth > MAX_DEPTH:
        raise refuse(f"a call argument of {where} is nested too deeply")
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            config = value.get("config")
            if set(value) - {"class_name", "config"} or not isinstance(config, dict) or set(config) - {
                    "shape", "dtype", "keras_history"} or not _is_history(config.get("keras_history")):
                raise refuse(f"{where} reads a malformed tensor")
            dtype = config.get("dtype")
            if dtype is not None and dtype not in DTYPES:
                raise refuse(f"{where} reads a tensor of unknown dtype {_short(dtype)!r}")
            shape = config.get("shape")
            if shape is not None and not (isinstance(shape, list) and all(
                    d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape)):
                raise refuse(f"{where} reads a tensor of a malformed shape")
            return {"class_name": "__keras_tensor__",
                    "config": {"shape": shape, "dtype": dtype, "keras_history": list(config["keras_history"])}}
        if "class_name" in value or "config" in value or any(str(k).startswith("__") for k in value):
            raise refuse(f"a call argument of {where} is an object ({_describe(value)})")
        return {_text(k, where): _argument(v, where, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_argument(item, where, depth + 1) for item in value]
    return _plain(value, f"a call argument of {where}")


# the model and its weights -------------------------------------------------------------------

def old_keras_version(version: Any) -> str | None:
    """``version`` when it is older than Keras 2.2, whose configs Keras 3 does not read
    (bare-list Sequential, Keras 1 classes, Keras 1 weight layouts)."""
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if not isinstance(version, str):
        return None
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None
    return version if (major, minor) < (2, 2) else None


def rebuild(keras, path) -> Any:
    """The model stored at ``path``, built by Keras from pwlint's sanitised config and
    given the stored weights; FixNotApplicable (one line) when pwlint will not or
    cannot."""
    from pwlint.formats.keras.read import open_keras

    try:
        with open_keras(str(path)) as stored:
            old = old_keras_version(stored.metadata.get("keras_version")) if stored.container == "h5" else None
            if old:
                raise ModelRefused(
                    f"Keras 3 cannot load a file written by Keras {old}: open it with that Keras, save it "
                    "again (or export it), and fix the result"
                )
            entry = sanitised(stored.config)
            try:
                model = keras.saving.deserialize_keras_object(entry, safe_mode=True)
            except Exception as exc:  # a value a built-in layer does not accept
                raise ModelRefused(f"Keras cannot build the model from its config: {_first_line(exc)}") from exc
            if stored.container == "keras":
                _assign_keras(model, stored.weights_root)
            else:
                _assign_legacy(model, stored.weights_root)
    except LoadError as exc:
        raise FixNotApplicable(str(exc)) from exc
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).rpartition("Exception encountered: ")[2].strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = line.partition(" Full object config")[0]
    return line if len(line) <= 240 else line[:237] + "..."


def _child(group, key: str, where: str):
    """``group[key]`` when it is stored in this file (a hard link), else None."""
    from pwlint.formats.keras.read import is_hard_link

    if group is None or not hasattr(group, "keys"):
        return None
    try:
        if key not in group or not is_hard_link(group, key):
            return None
        return group[key]
    except Exception as exc:  # a damaged entry
        raise FixNotApplicable(f"cannot read the weights of {where}: {_first_line(exc)}") from None


def _value(dataset, shape: tuple, where: str) -> np.ndarray:
    """A stored weight's values, when it is a numeric dataset of ``shape`` held in this
    file: external storage or a virtual dataset would read other files' bytes."""
    if dataset is None or not hasattr(dataset, "shape") or not hasattr(dataset, "dtype"):
        raise ModelRefused(f"cannot fix: the weights of {where} are missing from the file")
    try:
        if dataset.is_virtual or dataset.id.get_create_plist().get_external_count():
            raise ModelRefused(f"cannot fix: the weights of {where} are stored outside the file")
        stored_shape = tuple(int(d) for d in dataset.shape)
        if stored_shape != tuple(shape):
            raise FixNotApplicable(f"cannot fix: a weight of {where} is stored as {stored_shape}, the layer needs {tuple(shape)}")
        if dataset.dtype.kind not in "fiub":
            raise FixNotApplicable(f"cannot fix: a weight of {where} is not numeric")
        return np.asarray(dataset[()])
    except FixNotApplicable:
        raise
    except Exception as exc:  # h5py raises many kinds for damaged data
        raise FixNotApplicable(f"cannot read the weights of {where}: {_first_line(exc)}") from None


def _snake(name: str) -> str:
    from pwlint.formats.keras.weights import snake_case

    return snake_case(name)


def _is_model(layer) -> bool:
    return type(layer).__name__ in ("Functional", "Sequential")


def _own_variables(layer) -> list:
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _assign_keras(model, root, prefix: str = "") -> None:
    """A ``.keras`` weights file: ``layers/<snake_case class>[_<n>]/vars/<i>`` per layer of
    each model, numbered as Keras numbers them when it saves (``model.layers`` order)."""
    layers_group = _child(root, "layers", prefix or "the model") if root is not None else None
    used: dict[str, int] = {}
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        used[base] = used.get(base, -1) + 1
        key = base if used[base] == 0 else f"{base}_{used[base]}"
        where = f"layer '{prefix}{layer.name}'"
        group = _child(layers_group, key, where)
        if _is_model(layer):
            _assign_keras(layer, group, f"{prefix}{layer.name}/")
            continue
        variables = _own_variables(layer)
        if not variables:
            continue
        vars_group = _child(group, "vars", where)
        if vars_group is None:
            raise ModelRefused(f"cannot fix: the weights of {where} are missing from the file")
        store = {}
        for index, variable in enumerate(variables):
            store[str(index)] = _value(_child(vars_group, str(index), where), tuple(variable.shape), where)
        try:
            layer.load_own_variables(store)
        except Exception as exc:
            raise FixNotApplicable(f"cannot fix: the stored weights of {where} do not fit it: {_first_line(exc)}") from None


def _legacy_weights(layer) -> list:
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _assign_legacy(model, root) -> None:
    """A legacy ``.h5`` file: ``model_weights/<layer>`` per top-level layer, its datasets
    in the order its ``weight_names`` attribute lists them."""
    for layer in model.layers:
        variables = _legacy_weights(layer)
        if not variables:
            continue
        where = f"layer '{layer.name}'"
        group = _child(root, layer.name, where)
        if group is None:
            raise ModelRefused(f"cannot fix: the weights of {where} are missing from the file")
        try:
            names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n)
                     for n in np.asarray(group.attrs.get("weight_names", [])).ravel().tolist()]
        except Exception as exc:
            raise FixNotApplicable(f"cannot read the weights of {where}: {_first_line(exc)}") from None
        if len(names) != len(variables):
            raise FixNotApplicable(
                f"cannot fix: {where} has {len(variables)} weights, the file stores {len(names)}")
        for name, variable in zip(names, variables):
            dataset = group
            for part in name.split("/"):
                dataset = _child(dataset, part, where) if part else dataset
            variable.assign(_value(dataset, tuple(variable.shape), where))


def stored_optimizer(path) -> bool:
    """Whether the file holds an optimizer's state (a trained, compiled model): a
    ``.keras`` weights file's ``optimizer`` group, a legacy file's ``optimizer_weights``."""
    from pwlint.formats.keras.read import open_keras

    try:
        with open_keras(str(path)) as stored:
            if stored.container == "keras":
                return _child(stored.weights_root, "optimizer", "the optimizer") is not None
            import h5py

            with h5py.File(str(path), "r") as h5:
                return "optimizer_weights" in h5
    except (LoadError, FixNotApplicable, OSError):
        return False
