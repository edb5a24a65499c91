"""The Keras model config as plain data: models, layers, calls and tensor references.

Understands the config of Keras 3 (``inbound_nodes`` of ``{"args", "kwargs"}``
with ``__keras_tensor__`` entries that record shapes) and of tf.keras 2 / Keras 1
(``inbound_nodes`` of ``[layer, node, tensor, kwargs]`` or ``[layer, node, tensor]``
lists, no shapes); older configs (bare-list Sequentials, Keras 1 classes and keys)
arrive already translated by :mod:`keras_legacy`. Nothing is deserialised: a
Lambda's code or a custom class is kept as the JSON it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pwlint.errors import LoadError
from pwlint.formats.keras.legacy import STORED_CLASS

#: configs that describe a graph of layers the loader can flatten
MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
MAX_NESTING = 64
#: bounds on a tensor reference [layer, call, output]: a config is untrusted input
MAX_CALLS, MAX_OUTPUTS = 100_000, 10_000

#: a tensor made by call ``node`` of layer ``layer``, output number ``index``
Ref = tuple  # (layer name, node index, tensor index)


@dataclass
class Call:
    """One call of a layer: the tensors it reads, in order (the first is the data input)."""

    inputs: list[Ref]


@dataclass
class LayerSpec:
    name: str
    class_name: str
    config: dict
    entry: dict
    calls: list[Call] = field(default_factory=list)
    model: "ModelSpec | None" = None  # set for a nested Sequential or Functional model
    #: the class name the file stores, where a legacy one was translated (Convolution2D)
    stored_class: str | None = None

    @property
    def build_input_shape(self):
        build = self.entry.get("build_config")
        shape = build.get("input_shape") if isinstance(build, dict) else None
        return shape if shape is not None else self.config.get("batch_input_shape")


@dataclass
class ModelSpec:
    name: str
    kind: str  # "sequential" or "functional"
    layers: list[LayerSpec]
    inputs: list[Ref] = field(default_factory=list)
    outputs: list[Ref] = field(default_factory=list)
    build_input_shape: Any = None
    #: shapes Keras 3 recorded for tensors where they are consumed
    recorded: dict = field(default_factory=dict)
    entry: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {layer.name: layer for layer in self.layers}


def is_model_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
        return False
    if entry["class_name"] not in MODEL_CLASSES:
        return False
    config = entry.get("config")
    return isinstance(config, dict) and isinstance(config.get("layers"), list)


def parse_model(entry: dict, path: str, depth: int = 0) -> ModelSpec:
    if depth > MAX_NESTING:
        raise LoadError(f"{path}: models nested more than {MAX_NESTING} deep")
    config = entry["config"]
    name = str(config.get("name") or entry.get("class_name"))
    kind = "sequential" if entry["class_name"] == "Sequential" else "functional"
    layers = []
    for position, item in enumerate(config["layers"]):
        if not isinstance(item, dict) or not isinstance(item.get("class_name"), str):
            raise LoadError(f"{path}: layer {position} of model '{name}' is not a layer config")
        layers.append(_parse_layer(item, kind, path, depth, position))
    seen: set[str] = set()
    for layer in layers:
        if layer.name in seen:
            raise LoadError(f"{path}: model '{name}' has two layers named '{layer.name}'")
        seen.add(layer.name)
    spec = ModelSpec(name, kind, layers, entry=entry)
    if kind == "functional":
        spec.inputs = refs_in(config.get("input_layers"))
        spec.outputs = refs_in(config.get("output_layers"))
        for layer in layers:
            for node in layer.entry.get("inbound_nodes") or []:
                _record_shapes(node, spec.recorded)
        _skip_first_nodes(spec)
        for ref in spec.inputs + spec.outputs + [r for layer in layers for c in layer.calls for r in c.inputs]:
            if ref[0] not in spec.by_name:
                raise LoadError(f"{path}: model '{name}' refers to a layer '{ref[0]}' it does not have")
            if not (0 <= ref[1] < MAX_CALLS and 0 <= ref[2] < MAX_OUTPUTS):
                raise LoadError(f"{path}: model '{name}' refers to an impossible tensor {list(ref)}")
    else:
        build = entry.get("build_config")
        spec.build_input_shape = config.get("build_input_shape") or (build.get("input_shape") if isinstance(build, dict) else None)
    return spec


def _parse_layer(item: dict, model_kind: str, path: str, depth: int, position: int) -> LayerSpec:
    config = item.get("config") if isinstance(item.get("config"), dict) else {}
    name = item.get("name") or config.get("name") or f"{item['class_name']}_{position}"
    stored = item.get(STORED_CLASS)
    layer = LayerSpec(str(name), item["class_name"], config, item, stored_class=stored if isinstance(stored, str) else None)
    if is_model_entry(item):
        layer.model = parse_model(item, path, depth + 1)
    if model_kind == "functional":
        nodes = item.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise LoadError(f"{path}: layer '{name}' has malformed inbound_nodes")
        layer.calls = [Call(_node_refs(node)) for node in nodes]
    return layer


def _skip_first_nodes(spec: ModelSpec) -> None:
    """Keras 2 numbers the calls of a nested model from 1 in list-style configs (its node 0
    is the model's own, made again when the config is loaded: ``kept_nodes = 1`` in
    ``Network.get_config``), Keras 3 from 0. A reference one past a nested model's calls,
    where every reference to it is at least 1, is renumbered from 0."""
    nested = {layer.name: len(layer.calls) for layer in spec.layers if layer.model is not None}
    if not nested:
        return
    lists = [call.inputs for layer in spec.layers for call in layer.calls] + [spec.outputs]
    seen: dict[str, list[int]] = {}
    for refs in lists:
        for ref in refs:
            if ref[0] in nested:
                seen.setdefault(ref[0], []).append(ref[1])
    shifted = {name for name, nodes in seen.items() if min(nodes) >= 1 and max(nodes) == nested[name]}
    if not shifted:
        return
    for refs in lists:
        refs[:] = [(r[0], r[1] - 1, r[2]) if r[0] in shifted else r for r in refs]


def _is_ref(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple)) and len(value) in (3, 4) and isinstance(value[0], str)
        and isinstance(value[1], int) and isinstance(value[2], int)
        and (len(value) == 3 or isinstance(value[3], dict))
    )


def refs_in(value: Any) -> list[Ref]:
    """Tensor references in ``input_layers``/``output_layers``: one ``[name, node, index]``,
    a list of them, or a dict or nested list of them."""
    found: list[Ref] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if _is_ref(item):
            found.append((item[0], item[1], item[2]))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    return found


def _keras_tensors(value: Any) -> list[tuple[Ref, Any]]:
    """Keras 3 ``__keras_tensor__`` entries anywhere in a node's args or kwargs, in order."""
    found = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__keras_tensor__" and isinstance(item.get("config"), dict):
                history = item["config"].get("keras_history")
                if _is_ref(history):
                    found.append(((history[0], history[1], history[2]), item["config"].get("shape")))
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def _node_refs(node: Any) -> list[Ref]:
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return [ref for ref, _ in _keras_tensors([node.get("args"), node.get("kwargs")])]
    if isinstance(node, list):  # tf.keras 2 / Keras 1: [[name, node, index, kwargs], ...]
        refs = []
        for item in node:
            if _is_ref(item):
                refs.append((item[0], item[1], item[2]))
                if len(item) == 4:  # TFOpLambda keeps other tensors in kwargs
                    refs += refs_in(item[3])
        return refs
    return []


def _record_shapes(node: Any, recorded: dict) -> None:
    if not isinstance(node, dict):
        return
    for ref, shape in _keras_tensors([node.get("args"), node.get("kwargs")]):
        if isinstance(shape, list) and as_shape(shape) is not None:
            recorded.setdefault(ref, as_shape(shape))


def as_shape(value: Any):
    """A config shape as a tuple (None for unknown dims), or None if it is not one shape."""
    if isinstance(value, (list, tuple)) and all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in value):
        return tuple(value)
    if isinstance(value, dict) and isinstance(value.get("shape"), list):
        return as_shape(value["shape"])
    return None


def input_layer_shape(config: dict):
    """The batch shape an InputLayer (or a Keras 2 first layer) declares."""
    for key in ("batch_shape", "batch_input_shape"):
        shape = as_shape(config.get(key))
        if shape is not None:
            return shape
    shape = as_shape(config.get("input_shape") or config.get("shape"))
    return (None, *shape) if shape is not None else None
