"""The fix plans carried out on a Keras model's config and weights (see :mod:`pwlint.fix.actions`).

A Keras model is rewritten the way Keras itself saves and loads it: the model is
serialised to its config (a tree of plain dicts), the config is edited (a Dense
entry becomes a Conv2D entry of the same name, a Flatten is dropped, a new one
is inserted and the calls that read the old tensors are pointed at the new
ones), and a new model is deserialised from it with ``safe_mode=True``. Weights
are then copied layer by layer from the old model, by layer path, except for the
layers the fix computed new weights for.

:class:`KerasRewriter` works on a :class:`ModelEdit` (the old model, the lint graph
of the same state, the config being edited): it edits the config and records new
weights, computed by the shared arithmetic (:mod:`pwlint.fix.head`,
:mod:`pwlint.fix.fold`, :mod:`pwlint.fix.lowrank`), or raises
:class:`FixNotApplicable`. The old model is never changed: a rewrite that fails
half-way leaves nothing to undo.

Layers are found through the lint graph: ``graph.layer(name).source`` is the
loader's :class:`~pwlint.formats.keras.loader.KerasSource`, whose ``path`` is the
layer's name inside the nested models that hold it.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import ConvFactorised, Factorised, Merged
from pwlint.fix.fold import folded_mean
from pwlint.fix.head import head_kernels
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan, FoldBiasPlan, HeadPlan, MergeChainPlan, flatten_order
from pwlint.formats.keras import fix_convs, fix_merge
from pwlint.formats.keras.fix_layers import is_conv
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
    conv_class = getattr(keras.layers, f"Conv{len(kernel)}D")
    conv = conv_class(
        filters=config["units"], kernel_size=kernel, padding="valid", name=name,
        data_format="channels_last" if layout == "NHWC" else "channels_first",
    )
    entry = edit.new_entry(conv, dense)
    for key in SHARED_KEYS:
        if key in config:
            entry["config"][key] = copy.deepcopy(config[key])
    return entry


def _flatten_order(flatten: dict, layout: str, spatial: int) -> tuple[int, ...]:
    """The axes of the ``(C, *positions)`` map in the order the Flatten reads them: its
    memory order (channels last for NHWC), and Keras' Flatten with
    ``data_format="channels_first"`` moves the first memory axis last before flattening."""
    memory = flatten_order(spatial, layout == "NHWC")
    if (flatten.get("config") or {}).get("data_format") == "channels_first":
        memory = (*memory[1:], memory[0])
    return memory


def _keras_kernel(kernel: np.ndarray) -> np.ndarray:
    """A ``[out, in, *kernel]`` kernel in Keras' ``[*kernel, in, out]`` order (either data format)."""
    return kernel.transpose(*range(2, kernel.ndim), 1, 0)


class KerasRewriter:
    """Carries plans out on a :class:`ModelEdit`: edits the config and records the new weights."""

    def __init__(self, edit: ModelEdit) -> None:
        self.edit = edit

    # PW001 ------------------------------------------------------------------------------
    def rewrite_head(self, plan: HeadPlan) -> None:
        edit = self.edit
        container, names = edit.locate([plan.flatten, *plan.denses])
        flat_name, dense_names = names[0], names[1:]
        flatten, denses = self._head_entries(container, flat_name, dense_names, plan.layout)
        before = self._check_chain(container, flat_name, dense_names, plan.layout)
        live = [edit.layer(container.prefix + (name,)) for name in dense_names]
        values = [layer.get_weights() for layer in live]
        weights = [v[_weight(layer, "kernel")] for layer, v in zip(live, values)]
        order = _flatten_order(flatten, plan.layout, len(plan.positions))
        kernels = head_kernels(weights, plan.channels, plan.positions, order, plan.pool)
        # the config: everything is read and checked, the edit starts here
        conv_names = self._replace_denses(container, plan, dense_names, denses, live, values, kernels)
        # with no layer between, the head is read by the first conv: a one-Dense head's conv is
        # already renamed `<name>_conv` (the Flatten appended last takes the dense layer's name)
        self._reroute_input(container, plan, flat_name, flatten, (before or conv_names)[0], dense_names[0])
        self._append_flatten(container, dense_names[-1], conv_names[-1], denses[-1]["config"].get("dtype"))
        # the head's later layers see [N, 1, 1, F]: their recorded build shapes are stale
        for name in conv_names:
            container.entry(name).pop("build_config", None)

    @staticmethod
    def _head_entries(container: Container, flat_name: str, dense_names: list[str], layout: str):
        """The Flatten's and the dense layers' config entries, checked to be what the plan says."""
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
                raise FixNotApplicable(
                    f"'{name}' has a {entry['config']['activation']} activation, which on a channels-first "
                    "map works across the wrong axis"
                )
        return flatten, denses

    @staticmethod
    def _check_chain(container: Container, flat_name: str, dense_names: list[str], layout: str) -> list[str]:
        """The layers between the flatten and the first dense (returned), and between the
        dense layers: per-feature, and read by nothing else."""
        before = _chain(container, flat_name, dense_names[0])
        between = [n for a, b in zip(dense_names, dense_names[1:]) for n in _chain(container, a, b)]
        _check_passthrough(container, before + between, layout)
        for name in before + dense_names[:-1] + between:
            _single_consumer(container, name)
        return before

    def _replace_denses(self, container: Container, plan: HeadPlan, dense_names, denses, live, values,
                        kernels) -> list[str]:
        """Each Dense entry replaced by a conv entry with its new kernel; the conv names.
        The last conv is ``<name>_conv``: the final Flatten takes the last dense layer's
        name, so the model's output names (what losses, metrics and predict() dicts are
        keyed by) do not change."""
        edit, spatial = self.edit, len(plan.positions)
        first_kernel = (1,) * spatial if plan.pool else plan.positions
        conv_names = dense_names[:-1] + [edit.fresh(f"{dense_names[-1]}_conv")]
        for index, (name, entry) in enumerate(zip(dense_names, denses)):
            size = first_kernel if index == 0 else (1,) * spatial
            container.layers[container.index(name)] = _conv_entry(edit, entry, size, plan.layout, conv_names[index])
            new = list(values[index])
            at = _weight(live[index], "kernel")
            new[at] = _keras_kernel(kernels[index]).astype(new[at].dtype, copy=False)
            edit.weights[container.prefix + (conv_names[index],)] = new
        return conv_names

    def _reroute_input(self, container: Container, plan: HeadPlan, flat_name: str, flatten: dict, head_reader: str,
                       first_dense: str) -> None:
        """The head reads the flatten's input (or, with ``plan.pool``, its global average);
        the Flatten goes once nothing else reads it."""
        keras, edit = self.edit.keras, self.edit
        dtype = flatten["config"].get("dtype")
        pool_layer = None
        if plan.pool:
            pool_layer = getattr(keras.layers, f"GlobalAveragePooling{len(plan.positions)}D")(
                data_format="channels_last" if plan.layout == "NHWC" else "channels_first", keepdims=True,
                name=edit.fresh(f"{first_dense}_pool"),
            )
        if container.sequential:
            position = container.index(flat_name)
            del container.layers[position]
            if pool_layer is not None:
                container.layers.insert(position, edit.new_entry(pool_layer, dtype=dtype))
            return
        source = container.single_input(flatten)
        if pool_layer is not None:
            container.layers.insert(container.index(flat_name) + 1, edit.new_entry(pool_layer, flatten, dtype))
            source = [pool_layer.name, 0, 0]
        container.rewire([flat_name, 0, 0], source, entries=[container.entry(head_reader)], outputs=False)
        if not container.consumers(flat_name) and not container.is_output(flat_name):
            del container.layers[container.index(flat_name)]

    def _append_flatten(self, container: Container, last: str, last_conv: str, dtype) -> None:
        """A final Flatten, so that the head's output is [N, units] again; it reads the last
        conv and, under the last dense layer's name, is read by what read that layer."""
        entry = self.edit.new_entry(self.edit.keras.layers.Flatten(name=last), dtype=dtype)
        if not container.sequential:
            entry["name"] = last
            entry["inbound_nodes"] = [{"args": [_tensor(last_conv)], "kwargs": {}}]
        container.layers.insert(container.index(last_conv) + 1, entry)

    # PW004 ------------------------------------------------------------------------------
    def fold_bias(self, plan: FoldBiasPlan) -> None:
        edit = self.edit
        container, (conv_name, norm_name) = edit.locate([plan.conv, plan.norm])
        conv_entry = container.entry(conv_name)
        if not conv_entry["config"].get("use_bias", False):
            raise FixNotApplicable(f"'{plan.conv}' has no bias")
        if not container.sequential and len(conv_entry.get("inbound_nodes", [])) != 1:
            raise FixNotApplicable(f"'{plan.conv}' is called more than once")
        conv = edit.layer(container.prefix + (conv_name,))
        conv_weights = conv.get_weights()
        bias_at = _weight(conv, "bias")
        if plan.folds_mean:
            norm = edit.layer(container.prefix + (norm_name,))
            norm_weights = norm.get_weights()
            mean_at = _weight(norm, "moving_mean")
            norm_weights[mean_at] = folded_mean(norm_weights[mean_at], conv_weights[bias_at], plan.conv, plan.norm)
            edit.weights[container.prefix + (norm_name,)] = norm_weights
        conv_entry["config"]["use_bias"] = False
        conv_entry.pop("build_config", None)  # rebuilt without a bias
        edit.weights[container.prefix + (conv_name,)] = [w for i, w in enumerate(conv_weights) if i != bias_at]

    # PW002 ------------------------------------------------------------------------------
    def factorise(self, plan: FactorisePlan) -> Factorised:
        edit, keras = self.edit, self.edit.keras
        container, (name,) = edit.locate([plan.dense])
        entry = container.entry(name)
        if is_conv(entry):  # two convs: the conv's geometry, then 1x1 (see fix_convs)
            return fix_convs.factorise_conv_matrix(edit, plan)
        if entry.get("class_name") != "Dense":
            raise FixNotApplicable(f"'{plan.dense}' is a {entry.get('class_name')}, not a Dense layer or a conv")
        config = entry["config"]
        if config.get("quantization_config") or config.get("lora_rank"):
            raise FixNotApplicable(f"'{plan.dense}' is quantised or has LoRA weights")
        if not container.sequential:
            container.single_input(entry)
        layer = edit.layer(container.prefix + (name,))
        values = layer.get_weights()
        weight = values[_weight(layer, "kernel")]
        rows, cols = weight.shape
        low = factorise(weight, plan)
        first_name, second_name = edit.fresh(f"{name}_u"), edit.fresh(f"{name}_v")
        first_entry = edit.new_entry(keras.layers.Dense(low.rank, use_bias=False, name=first_name), entry)
        second_entry = edit.new_entry(keras.layers.Dense(cols, name=second_name), entry)
        for key in SHARED_KEYS:
            if key in config:
                second_entry["config"][key] = copy.deepcopy(config[key])
        for key in ("trainable", "dtype", "kernel_initializer", "kernel_regularizer", "kernel_constraint"):
            if key in config:
                first_entry["config"][key] = copy.deepcopy(config[key])
        position = container.index(name)
        if not container.sequential:
            second_entry["inbound_nodes"] = [{"args": [_tensor(first_name)], "kwargs": {}}]
        container.layers[position:position + 1] = [first_entry, second_entry]
        if not container.sequential:
            container.rewire([name, 0, 0], [second_name, 0, 0])
        stored = low.first.astype(weight.dtype), low.second.astype(weight.dtype)
        low = as_written(low, weight, *stored)  # the reported error is the written factors'
        edit.weights[container.prefix + (first_name,)] = [stored[0]]
        second_values = [stored[1]]
        if config.get("use_bias", True):
            second_values.append(values[_weight(layer, "bias")])
        edit.weights[container.prefix + (second_name,)] = second_values
        return Factorised(rows, cols, low)

    # PW005 and PW006 (see fix_convs and fix_merge) --------------------------------------------
    def factorise_conv(self, plan: ConvFactorisePlan) -> ConvFactorised:
        return fix_convs.split_conv(self.edit, plan)

    def merge_chain(self, plan: MergeChainPlan) -> Merged:
        return fix_merge.merge_chain(self.edit, plan)
