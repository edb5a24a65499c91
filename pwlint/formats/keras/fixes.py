"""The four fix actions, carried out on a Keras model's config and weights.

A Keras model is rewritten the way Keras itself saves and loads it: the model is
serialised to its config (a tree of plain dicts), the config is edited (a Dense
entry becomes a Conv2D entry of the same name, a Flatten is dropped, a new one
is inserted and the calls that read the old tensors are pointed at the new
ones), and a new model is deserialised from it with ``safe_mode=True``. Weights
are then copied layer by layer from the old model, by layer path, except for the
layers the fix computed new weights for.

Each action takes a :class:`ModelEdit` (the old model, the lint graph of the
same state, the config being edited) and a fix plan, edits the config and
records new weights, and returns a one-line note, or raises
:class:`FixNotApplicable`. The old model is never changed: an action that fails
half-way leaves nothing to undo.

Layers are found through the lint graph: ``graph.layer(name).source`` is the
loader's :class:`~pwlint.formats.keras.loader.KerasSource`, whose ``path`` is the
layer's name inside the nested models that hold it.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np

from pwlint.fix.lowrank import as_written, factorise, factorised_note
from pwlint.errors import FixNotApplicable
from pwlint.ir import ModelGraph, unique_name

#: classes of the layers that may sit in a head between the flatten and the dense
#: layers, and between dense layers, and work unchanged on a [N, 1, 1, F] map
PER_FEATURE = frozenset({
    "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "Identity", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "ThresholdedReLU",
    "BatchNormalization", "Softmax",
})
#: activations that work across the last axis (right for NHWC, wrong for NCHW maps)
AXIS_ACTIVATIONS = frozenset({"softmax", "log_softmax", "sparsemax", "glu"})
#: Dense config keys that a Conv config takes over as they are
SHARED_KEYS = (
    "trainable", "dtype", "activation", "use_bias", "kernel_initializer", "bias_initializer",
    "kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint",
)
MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})


def _activation_name(value: Any) -> str:
    if isinstance(value, dict):
        inner = value.get("config")
        value = inner if isinstance(inner, str) else value.get("class_name", "")
    return str(value or "linear").rpartition(".")[2].lower()


class Container:
    """One (sub)model's config: a Sequential's ``layers`` list, or a Functional's
    ``layers`` with their ``inbound_nodes`` and ``input_layers``/``output_layers``."""

    def __init__(self, config: dict, sequential: bool, prefix: tuple) -> None:
        self.config = config
        self.sequential = sequential
        self.prefix = prefix

    @property
    def layers(self) -> list:
        return self.config["layers"]

    def index(self, name: str) -> int:
        for position, entry in enumerate(self.layers):
            if _entry_name(entry) == name:
                return position
        raise FixNotApplicable(f"layer '{'/'.join(self.prefix + (name,))}' is not in the model's config")

    def entry(self, name: str) -> dict:
        return self.layers[self.index(name)]

    # Functional wiring --------------------------------------------------------------
    def inputs_of(self, entry: dict) -> list[list]:
        """The keras_history ``[layer, node, index]`` of every tensor each call reads."""
        return [ref["config"]["keras_history"] for node in entry.get("inbound_nodes", []) for ref in _tensor_refs(node)]

    def consumers(self, name: str) -> list[dict]:
        return [entry for entry in self.layers if any(h[0] == name for h in self.inputs_of(entry))]

    def is_output(self, name: str) -> bool:
        return any(ref[0] == name for ref in _history_lists(self.config.get("output_layers")))

    def rewire(self, old: list, new: list, entries: list[dict] | None = None, outputs: bool = True) -> None:
        """Point the calls (and, with ``outputs``, the model outputs) that read tensor
        ``old`` at tensor ``new`` (both ``[layer, node, index]``)."""
        for entry in self.layers if entries is None else entries:
            for node in entry.get("inbound_nodes", []):
                for ref in _tensor_refs(node):
                    history = ref["config"]["keras_history"]
                    if list(history[:3]) == list(old):
                        # the recorded shape only shapes a placeholder: Keras replaces it by
                        # the tensor it computes when the model is rebuilt
                        ref["config"]["keras_history"] = [*new, *history[3:]]
        if outputs:
            for ref in _history_lists(self.config.get("output_layers")):
                if list(ref[:3]) == list(old):
                    ref[:3] = list(new)

    def single_input(self, entry: dict) -> list:
        """The one tensor a layer called once reads."""
        name = _entry_name(entry)
        nodes = entry.get("inbound_nodes", [])
        if len(nodes) != 1:
            raise FixNotApplicable(f"'{name}' is called {len(nodes)} times in the model")
        refs = self.inputs_of(entry)
        if len(refs) != 1:
            raise FixNotApplicable(f"'{name}' reads {len(refs)} tensors")
        return list(refs[0][:3])


def _plain(value: Any) -> Any:
    """A deep copy of a serialised config with tuples as lists, as it reads from JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _entry_name(entry: dict) -> str:
    return entry.get("name") or (entry.get("config") or {}).get("name")


def _tensor_refs(value: Any) -> Iterator[dict]:
    """The serialised KerasTensors (``__keras_tensor__``) inside a call's args and kwargs."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value
        else:
            for item in value.values():
                yield from _tensor_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _tensor_refs(item)


def _history_lists(value: Any) -> Iterator[list]:
    """The ``[layer, node, index]`` lists of ``input_layers``/``output_layers`` (one
    list, or a list of them)."""
    if isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
            yield value
        else:
            for item in value:
                yield from _history_lists(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _history_lists(item)


def _tensor(name: str, dtype: Any = None) -> dict:
    # the shape is a placeholder's (see Container.rewire)
    return {"class_name": "__keras_tensor__", "config": {"shape": [None], "dtype": dtype, "keras_history": [name, 0, 0]}}


class ModelEdit:
    """The config of a model being rewritten, and the weights of the layers it changes."""

    def __init__(self, keras, model, graph: ModelGraph) -> None:
        self.keras = keras
        self.model = model
        self.graph = graph
        self.entry = _plain(keras.saving.serialize_keras_object(model))
        if self.entry.get("class_name") not in MODEL_CLASSES or "layers" not in (self.entry.get("config") or {}):
            raise FixNotApplicable(f"a {self.entry.get('class_name')} model is not a graph of layers pwlint can rewrite")
        #: layer path -> the new weights of a layer the fix changed
        self.weights: dict[tuple, list[np.ndarray]] = {}
        self.names = set(self._all_names(self.entry))

    # finding layers -------------------------------------------------------------------
    def _all_names(self, entry: dict) -> Iterator[str]:
        for layer in (entry.get("config") or {}).get("layers", []):
            yield _entry_name(layer)
            if layer.get("class_name") in MODEL_CLASSES:
                yield from self._all_names(layer)

    def path(self, name: str) -> tuple:
        """The Keras path of a lint-graph layer: the nested models' names and its own."""
        if name not in self.graph:
            raise FixNotApplicable(f"layer '{name}' is not in the model")
        source = self.graph.layer(name).source
        if source is None or getattr(source, "role", "layer") != "layer":
            raise FixNotApplicable(f"'{name}' is not a layer of the model's config")
        return tuple(source.path)

    def container(self, prefix: tuple) -> Container:
        entry = self.entry
        for name in prefix:
            entry = Container(entry["config"], entry["class_name"] == "Sequential", ()).entry(name)
            if entry.get("class_name") not in MODEL_CLASSES:
                raise FixNotApplicable(f"'{'/'.join(prefix)}' is not a model")
        return Container(entry["config"], entry["class_name"] == "Sequential", prefix)

    def locate(self, names: list[str]) -> tuple[Container, list[str]]:
        """The (sub)model holding all the named layers, and their Keras names in it."""
        paths = [self.path(name) for name in names]
        prefixes = {p[:-1] for p in paths}
        if len(prefixes) != 1:
            raise FixNotApplicable("the layers of the fix are in different nested models")
        return self.container(prefixes.pop()), [p[-1] for p in paths]

    def layer(self, path: tuple):
        """The live layer of the old model at ``path``."""
        current = self.model
        for name in path:
            current = current.get_layer(name)
        return current

    def fresh(self, name: str) -> str:
        return unique_name(name, self.names, sep="_")

    # new config entries ---------------------------------------------------------------
    def new_entry(self, layer, like: dict | None = None, dtype: Any = None) -> dict:
        """The config entry of a new layer object, called like ``like`` (in a Functional
        model), with the serialised dtype policy ``dtype`` if given."""
        entry = _plain(self.keras.saving.serialize_keras_object(layer))
        entry.pop("build_config", None)
        if dtype is not None:
            entry["config"]["dtype"] = copy.deepcopy(dtype)
        if like is not None and "inbound_nodes" in like:
            entry["name"] = layer.name
            entry["inbound_nodes"] = copy.deepcopy(like["inbound_nodes"])
        return entry

    # building -------------------------------------------------------------------------
    def build(self):
        """The new model from the edited config, with the old model's weights and the new ones."""
        keras = self.keras
        try:
            model = keras.saving.deserialize_keras_object(self.entry, safe_mode=True)
        except Exception as exc:
            raise FixNotApplicable(f"Keras cannot build the rewritten model: {_first_line(exc)}") from exc
        self._copy_weights(model, ())
        return model

    def _copy_weights(self, new, prefix: tuple) -> None:
        for layer in new.layers:
            path = prefix + (layer.name,)
            if hasattr(layer, "layers") and path not in self.weights:
                self._copy_weights(layer, path)
                continue
            if not layer.weights:
                continue
            if path in self.weights:
                values = self.weights[path]
            else:
                try:
                    values = self.layer(path).get_weights()
                except ValueError:
                    raise FixNotApplicable(f"the rewritten model has a layer '{'/'.join(path)}' with no weights to take") from None
            shapes = [tuple(w.shape) for w in layer.weights]
            if len(values) != len(shapes):
                raise FixNotApplicable(f"'{'/'.join(path)}' has {len(shapes)} weights after the rewrite, {len(values)} before")
            fitted = []
            for value, shape in zip(values, shapes):
                value = np.asarray(value)
                if value.shape != shape:
                    if value.size != int(np.prod(shape)):
                        raise FixNotApplicable(
                            f"a weight of '{'/'.join(path)}' is {value.shape} before the rewrite and {shape} after"
                        )
                    value = value.reshape(shape)  # a per-feature weight on a [N, 1, 1, F] map (PReLU)
                fitted.append(value)
            layer.set_weights(fitted)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _weight(layer, name: str) -> int:
    """The position of the weight called ``name`` (``kernel``, ``bias``, ``moving_mean``)."""
    for position, variable in enumerate(layer.weights):
        if variable.path.rpartition("/")[2].partition(":")[0] == name:
            return position
    raise FixNotApplicable(f"'{layer.name}' has no {name}")


# convolutionalise / pool-pointwise -------------------------------------------------------

def _chain(container: Container, start: str, end: str) -> list[str]:
    """The layers strictly between ``start`` and ``end`` along ``end``'s input."""
    if container.sequential:
        first, last = container.index(start), container.index(end)
        if not first < last:
            raise FixNotApplicable(f"'{end}' does not follow '{start}'")
        return [_entry_name(e) for e in container.layers[first + 1:last]]
    between, current, seen = [], end, {end}
    while True:
        source = container.single_input(container.entry(current))[0]
        if source == start:
            return list(reversed(between))
        if source in seen:
            raise FixNotApplicable(f"'{end}' is not reached from '{start}'")
        seen.add(source)
        between.append(source)
        current = source


def _check_passthrough(container: Container, names: list[str], layout: str) -> None:
    """Layers that will see a [N, 1, 1, F] map instead of [N, F]: per-feature only, and
    (in a Functional model) read by nothing else."""
    for name in names:
        entry = container.entry(name)
        cls = entry.get("class_name")
        if cls not in PER_FEATURE:
            raise FixNotApplicable(f"the {cls} '{name}' in the head would see a feature map, not a vector")
        config = entry.get("config") or {}
        if cls == "BatchNormalization":
            axis = config.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
            if axis not in (-1, 1):
                raise FixNotApplicable(f"the BatchNormalization '{name}' normalises axis {axis}")
            config["axis"] = -1 if layout == "NHWC" else 1
        elif cls == "Softmax" or _activation_name(config.get("activation")) in AXIS_ACTIVATIONS:
            if layout != "NHWC" or config.get("axis", -1) not in (-1, [-1]):
                raise FixNotApplicable(f"'{name}' works across the features, which a channels-first map holds on axis 1")
        entry.pop("build_config", None)


def _single_consumer(container: Container, name: str) -> None:
    if container.sequential:
        return
    consumers = container.consumers(name)
    if len(consumers) != 1 or container.is_output(name):
        raise FixNotApplicable(f"the output of '{name}' is also read elsewhere in the model")


def _conv_entry(edit: ModelEdit, dense: dict, kernel: tuple, layout: str, name: str) -> dict:
    keras = edit.keras
    config = dense["config"]
    if config.get("quantization_config") or config.get("lora_rank"):
        raise FixNotApplicable(f"'{config['name']}' is quantised or has LoRA weights")
    rank = len(kernel)
    if rank not in (1, 2, 3):
        raise FixNotApplicable(f"a {rank}-d feature map has no Keras conv")
    conv_class = getattr(keras.layers, f"Conv{rank}D")
    conv = conv_class(
        filters=config["units"], kernel_size=kernel, padding="valid", name=name,
        data_format="channels_last" if layout == "NHWC" else "channels_first",
    )
    entry = edit.new_entry(conv, dense)
    for key in SHARED_KEYS:
        if key in config:
            entry["config"][key] = copy.deepcopy(config[key])
    return entry


def _first_kernel(edit: ModelEdit, plan: dict, flatten: dict, weight: np.ndarray) -> np.ndarray:
    """The first dense layer's [K, N] kernel as a conv kernel [*positions, C, N], row
    by row in the order the Flatten laid out the map."""
    positions, channels = list(plan["positions"]), plan["channels"]
    layout = plan["layout"]
    units = weight.shape[1]
    count = channels * int(np.prod(positions))
    if weight.shape[0] != count:
        raise FixNotApplicable("the dense layer's inputs do not match the flattened map")
    shape = (*positions, channels) if layout == "NHWC" else (channels, *positions)
    element = np.arange(count).reshape(shape)  # the map's elements, numbered in memory order
    if (flatten.get("config") or {}).get("data_format") == "channels_first":
        element = np.moveaxis(element, 0, -1)  # Keras' Flatten moves channels last first
    order = element.reshape(-1)  # row i of the dense kernel reads map element order[i]
    if np.array_equal(order, np.arange(count)):
        by_element = weight  # the usual case (NHWC, channels-last Flatten): no copy
    else:
        by_element = weight[np.argsort(order)]
    kernel = by_element.reshape(*shape, units)
    if layout != "NHWC":
        kernel = np.moveaxis(kernel, 0, len(positions))  # (C, *pos, N) -> (*pos, C, N)
    return kernel


def _rewrite_head(edit: ModelEdit, graph: ModelGraph, plan: dict, pool: bool) -> str:
    keras = edit.keras
    container, names = edit.locate([plan["flatten"], *plan["denses"]])
    flat_name, dense_names = names[0], names[1:]
    layout = plan["layout"]
    positions = tuple(plan["positions"])
    if not positions:
        raise FixNotApplicable("the feature map's height and width are dynamic")
    flatten = container.entry(flat_name)
    if flatten.get("class_name") != "Flatten":
        raise FixNotApplicable(f"'{flat_name}' is a {flatten.get('class_name')}, not a Flatten")
    denses = [container.entry(name) for name in dense_names]
    for name, entry in zip(dense_names, denses):
        if entry.get("class_name") != "Dense":
            raise FixNotApplicable(f"'{name}' is a {entry.get('class_name')}, not a Dense layer")
        if not container.sequential:
            container.single_input(entry)
        if layout != "NHWC" and _activation_name(entry["config"].get("activation")) in AXIS_ACTIVATIONS:
            raise FixNotApplicable(f"'{name}' has a {entry['config']['activation']} activation, which on a channels-first map works across the wrong axis")
    # the layers between the flatten and the first dense, and between the dense layers
    before = _chain(container, flat_name, dense_names[0])
    between = [_chain(container, a, b) for a, b in zip(dense_names, dense_names[1:])]
    _check_passthrough(container, before + [n for chain in between for n in chain], layout)
    for name in before + dense_names[:-1] + [n for chain in between for n in chain]:
        _single_consumer(container, name)
    # weights
    live = [edit.layer(container.prefix + (name,)) for name in dense_names]
    values = [layer.get_weights() for layer in live]
    kernel = _first_kernel(edit, plan, flatten, values[0][_weight(live[0], "kernel")])
    spatial = len(positions)
    if pool:
        kernel = kernel.sum(axis=tuple(range(spatial)), keepdims=True)
    kernels = [kernel] + [
        v[_weight(layer, "kernel")].reshape(*[1] * spatial, *v[_weight(layer, "kernel")].shape)
        for layer, v in zip(live[1:], values[1:])
    ]
    # the config: everything is read and checked, the edit starts here
    first_kernel = (1,) * spatial if pool else positions
    last = dense_names[-1]
    # the final Flatten takes the last dense layer's name, so the model's output names
    # (what losses, metrics and predict() dicts are keyed by) do not change
    conv_names = dense_names[:-1] + [edit.fresh(f"{last}_conv")]
    for index, (name, entry) in enumerate(zip(dense_names, denses)):
        conv = _conv_entry(edit, entry, first_kernel if index == 0 else (1,) * spatial, layout, conv_names[index])
        container.layers[container.index(name)] = conv
        new = list(values[index])
        at = _weight(live[index], "kernel")
        new[at] = kernels[index].astype(new[at].dtype, copy=False)
        edit.weights[container.prefix + (conv_names[index],)] = new
    dtype = flatten["config"].get("dtype")
    data_format = "channels_last" if layout == "NHWC" else "channels_first"

    def _pool_layer():
        return getattr(keras.layers, f"GlobalAveragePooling{spatial}D")(
            data_format=data_format, keepdims=True, name=edit.fresh(f"{dense_names[0]}_pool"),
        )

    # what the head reads: the flatten's input (or its global average)
    head_reader = (before or dense_names)[0]
    if container.sequential:
        position = container.index(flat_name)
        del container.layers[position]
        if pool:
            container.layers.insert(position, edit.new_entry(_pool_layer(), dtype=dtype))
    else:
        source = container.single_input(flatten)
        if pool:
            pool_layer = _pool_layer()
            container.layers.insert(container.index(flat_name) + 1, edit.new_entry(pool_layer, flatten, dtype))
            source = [pool_layer.name, 0, 0]
        container.rewire([flat_name, 0, 0], source, entries=[container.entry(head_reader)], outputs=False)
        if not container.consumers(flat_name) and not container.is_output(flat_name):
            del container.layers[container.index(flat_name)]
    # a final Flatten, so that the head's output is [N, units] again; it reads the last
    # conv and, under the last dense layer's name, is read by what read that layer
    flat_out = keras.layers.Flatten(name=last)
    out_dtype = denses[-1]["config"].get("dtype")
    if container.sequential:
        container.layers.insert(container.index(conv_names[-1]) + 1, edit.new_entry(flat_out, dtype=out_dtype))
    else:
        entry = edit.new_entry(flat_out, dtype=out_dtype)
        entry["name"] = last
        entry["inbound_nodes"] = [{"args": [_tensor(conv_names[-1])], "kwargs": {}}]
        container.layers.insert(container.index(conv_names[-1]) + 1, entry)
    # the head's later layers see [N, 1, 1, F]: their recorded build shapes are stale
    for name in conv_names:
        container.entry(name).pop("build_config", None)
    later = f", and {len(dense_names) - 1} later dense layer(s) by 1x1 convs" if len(dense_names) > 1 else ""
    if pool:
        return f"'{plan['denses'][0]}' replaced by global average pooling + a 1x1 conv{later}"
    return f"'{plan['denses'][0]}' replaced by a {'x'.join(map(str, positions))} conv{later}"


def convolutionalise_head(edit: ModelEdit, graph: ModelGraph, plan: dict) -> str:
    return _rewrite_head(edit, graph, plan, pool=False)


def pool_pointwise_head(edit: ModelEdit, graph: ModelGraph, plan: dict) -> str:
    return _rewrite_head(edit, graph, plan, pool=True)


# fold-bias-into-norm --------------------------------------------------------------------

def fold_bias_into_norm(edit: ModelEdit, graph: ModelGraph, plan: dict) -> str:
    container, (conv_name, norm_name) = edit.locate([plan["conv"], plan["norm"]])
    conv_entry = container.entry(conv_name)
    if not conv_entry["config"].get("use_bias", False):
        raise FixNotApplicable(f"'{plan['conv']}' has no bias")
    if not container.sequential and len(conv_entry.get("inbound_nodes", [])) != 1:
        raise FixNotApplicable(f"'{plan['conv']}' is called more than once")
    conv = edit.layer(container.prefix + (conv_name,))
    norm = edit.layer(container.prefix + (norm_name,))
    conv_weights = conv.get_weights()
    bias_at = _weight(conv, "bias")
    bias = conv_weights[bias_at]
    new_conv = [w for i, w in enumerate(conv_weights) if i != bias_at]
    if plan["norm_type"] == "batch":
        norm_weights = norm.get_weights()
        mean_at = _weight(norm, "moving_mean")
        mean = norm_weights[mean_at]
        if mean.shape != bias.shape:
            raise FixNotApplicable(
                f"the bias of '{plan['conv']}' ({bias.shape}) does not match the running mean of "
                f"'{plan['norm']}' ({mean.shape})"
            )
        norm_weights[mean_at] = (mean.astype(np.float64) - bias.astype(np.float64)).astype(mean.dtype)
        edit.weights[container.prefix + (norm_name,)] = norm_weights
    conv_entry["config"]["use_bias"] = False
    conv_entry.pop("build_config", None)  # rebuilt without a bias
    edit.weights[container.prefix + (conv_name,)] = new_conv
    if plan["norm_type"] == "batch":
        return f"bias of '{plan['conv']}' folded into '{plan['norm']}'"
    return f"bias of '{plan['conv']}' dropped ('{plan['norm']}' subtracts it)"


# factorise-dense ------------------------------------------------------------------------

def factorise_dense(edit: ModelEdit, graph: ModelGraph, plan: dict) -> str:
    keras = edit.keras
    container, (name,) = edit.locate([plan["dense"]])
    entry = container.entry(name)
    if entry.get("class_name") != "Dense":
        raise FixNotApplicable(f"'{plan['dense']}' is a {entry.get('class_name')}, not a Dense layer")
    config = entry["config"]
    if config.get("quantization_config") or config.get("lora_rank"):
        raise FixNotApplicable(f"'{plan['dense']}' is quantised or has LoRA weights")
    if not container.sequential:
        container.single_input(entry)
    layer = edit.layer(container.prefix + (name,))
    values = layer.get_weights()
    kernel_at = _weight(layer, "kernel")
    weight = values[kernel_at]
    rows, cols = weight.shape
    low = factorise(weight, plan)
    first_name, second_name = edit.fresh(f"{name}_u"), edit.fresh(f"{name}_v")
    first = keras.layers.Dense(low.rank, use_bias=False, name=first_name)
    second = keras.layers.Dense(cols, name=second_name)
    first_entry, second_entry = edit.new_entry(first, entry), edit.new_entry(second, entry)
    for key in SHARED_KEYS:
        if key in config:
            second_entry["config"][key] = copy.deepcopy(config[key])
    for key in ("trainable", "dtype", "kernel_initializer", "kernel_regularizer", "kernel_constraint"):
        if key in config:
            first_entry["config"][key] = copy.deepcopy(config[key])
    position = container.index(name)
    if container.sequential:
        container.layers[position:position + 1] = [first_entry, second_entry]
    else:
        second_entry["inbound_nodes"] = [{"args": [_tensor(first_name)], "kwargs": {}}]
        container.layers[position:position + 1] = [first_entry, second_entry]
        container.rewire([name, 0, 0], [second_name, 0, 0])
    stored = low.first.astype(weight.dtype), low.second.astype(weight.dtype)
    low = as_written(low, weight, *stored)  # the reported error is the written factors'
    edit.weights[container.prefix + (first_name,)] = [stored[0]]
    second_values = [stored[1]]
    if config.get("use_bias", True):
        second_values.append(values[_weight(layer, "bias")])
    edit.weights[container.prefix + (second_name,)] = second_values
    return factorised_note(plan["dense"], rows, cols, low)


ACTIONS = {
    "convolutionalise-head": convolutionalise_head,
    "pool-pointwise-head": pool_pointwise_head,
    "fold-bias-into-norm": fold_bias_into_norm,
    "factorise-dense": factorise_dense,
}
