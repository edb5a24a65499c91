"""The graph builder of the Keras loader: a parsed config and stored weight shapes to a
:class:`~pwlint.ir.ModelGraph`. How the graph looks is described in :mod:`keras_loader`."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from pwlint.errors import LoadError
from pwlint.ir import Layer, ModelGraph, UniqueNames
from pwlint.formats.keras.config import LayerSpec, ModelSpec, as_shape, input_layer_shape
from pwlint.formats.keras.layers import activation_name, config_params, describe, is_known, is_trainable
from pwlint.formats.keras.read import KerasFile
from pwlint.formats.keras.shapes import output_shape
from pwlint.formats.keras.weights import WeightIndex


@dataclass
class KerasSource:
    """What a Keras fix backend needs to find a layer in the config."""

    path: tuple  # nested model names and the layer name, e.g. ("backbone", "conv2d")
    class_name: str
    config: dict = field(repr=False)  # the layer's config dict, as stored (never deserialised)
    entry: dict = field(default_factory=dict, repr=False)  # the whole serialised layer
    role: str = "layer"  # "layer", "activation" (split from a conv/dense), "input", "output"


@dataclass
class Tensor:
    producer: str | None  # the IR layer that makes it
    name: str
    shape: tuple | None


class GraphBuilder:
    def __init__(self, model: KerasFile, spec: ModelSpec | None, weights: WeightIndex) -> None:
        self.path = model.path
        self.config = model.config
        self.spec = spec
        self.weights = weights
        self.graph = ModelGraph(model.path, "keras")
        self.graph.meta.update(container=model.container, keras_version=model.metadata.get("keras_version"))
        self._unique = UniqueNames()
        self.created: dict[tuple, tuple[str, str]] = {}  # layer path -> (layer, last layer of it)
        self.unknown: list[str] = []

    def build(self) -> ModelGraph:
        if self.spec is None:
            self._opaque()
        else:
            for tensor in self._expand(self.spec, (), None):
                self._output(tensor)
        self.graph.meta["unknown_shapes"] = self.unknown
        self.graph.total_params = self._total_params()
        return self.graph

    def _total_params(self) -> int:
        total = sum(layer.params for layer in self.graph.layers())
        stray = [w for path, ws in self.weights.by_layer.items() if path not in self.created for w in ws]
        return total + _trainable(stray + self.weights.unassigned)

    def _opaque(self) -> None:
        config = self.config.get("config") if isinstance(self.config.get("config"), dict) else {}
        name = self._unique(str(config.get("name") or "model"))
        cls = str(self.config.get("class_name"))
        params = _trainable(self.weights.unassigned)
        self.weights.unassigned = []
        source = KerasSource((name,), cls, config, self.config)
        # a subclassed model's call() is Python code: nothing in it was understood
        self.graph.add_layer(Layer(name, "other", cls, params=params, layout="NHWC", source=source, understood=False))
        self.unknown.append(name)
        self.graph.meta["opaque_model"] = True

    # models --------------------------------------------------------------------------
    def _expand(self, spec: ModelSpec, prefix: tuple, inputs: list[Tensor] | None) -> list[Tensor]:
        if spec.kind == "sequential":
            return self._sequential(spec, prefix, inputs)
        return self._functional(spec, prefix, inputs)

    def _sequential(self, spec: ModelSpec, prefix: tuple, inputs: list[Tensor] | None) -> list[Tensor]:
        layers = list(spec.layers)
        if layers and layers[0].class_name == "InputLayer":
            first = layers.pop(0)
            current = inputs[:1] if inputs is not None else [self._input(prefix, first.name, input_layer_shape(first.config), first)]
        elif inputs is not None:
            current = inputs[:1]
        else:
            shape = as_shape(spec.build_input_shape)
            if shape is None and layers:
                shape = input_layer_shape(layers[0].config) or as_shape(layers[0].build_input_shape)
            current = [self._input(prefix, "input", shape, None)]
        for position, layer in enumerate(layers):
            following = layers[position + 1] if position + 1 < len(layers) else None
            recorded = as_shape(following.build_input_shape) if following is not None and following.model is None else None
            current = list(self._call(layer, prefix, current, 0, {0: recorded}).values())
        return current

    def _functional(self, spec: ModelSpec, prefix: tuple, inputs: list[Tensor] | None) -> list[Tensor]:
        tensors: dict[tuple, Tensor] = {}
        for position, ref in enumerate(spec.inputs):
            layer = spec.by_name[ref[0]]
            if inputs is not None and position < len(inputs):
                tensors[ref] = inputs[position]
            elif layer.class_name == "InputLayer":
                shape = input_layer_shape(layer.config) or spec.recorded.get(ref)
                tensors[ref] = self._input(prefix, layer.name, shape, layer)
        for layer in spec.layers:  # inputs the model does not list
            if layer.class_name == "InputLayer" and (layer.name, 0, 0) not in tensors:
                tensors[(layer.name, 0, 0)] = self._input(prefix, layer.name, input_layer_shape(layer.config), layer)
        # only the outputs something reads are made: a config may name output 9999 of every call
        wanted: dict[tuple, set[int]] = {}
        for ref in [r for layer in spec.layers for call in layer.calls for r in call.inputs] + spec.outputs:
            wanted.setdefault((ref[0], ref[1]), {0}).add(ref[2])
        calls = [(layer, k) for layer in spec.layers if layer.class_name != "InputLayer" for k in range(len(layer.calls))]
        makes = [(layer.name, k) for layer, k in calls]
        for index in _schedule(makes, [layer.calls[k].inputs for layer, k in calls], tensors):
            if index < 0:
                layer, k = calls[-index - 1]
                missing = next(r for r in layer.calls[k].inputs if r not in tensors)
                raise LoadError(
                    f"{self.path}: model '{spec.name}': layer '{layer.name}' reads '{missing[0]}', "
                    "which is never computed (a cycle or a missing call)"
                )
            layer, k = calls[index]
            refs = layer.calls[k].inputs
            recorded = {i: spec.recorded.get((layer.name, k, i)) for i in sorted(wanted.get((layer.name, k), {0}))}
            for i, tensor in self._call(layer, prefix, [tensors[r] for r in refs], k, recorded).items():
                tensors[(layer.name, k, i)] = tensor
        missing = [ref for ref in spec.outputs if ref not in tensors]
        if missing:
            raise LoadError(f"{self.path}: model '{spec.name}': output '{missing[0][0]}' is never computed")
        return [tensors[ref] for ref in spec.outputs]

    # layers --------------------------------------------------------------------------
    def _call(self, layer: LayerSpec, prefix: tuple, inputs: list[Tensor], k: int, recorded: dict) -> dict[int, Tensor]:
        """Call ``k`` of ``layer`` on ``inputs``: its output tensors by index. ``recorded``
        holds the output indices wanted, with the shapes Keras recorded for them (or None)."""
        if layer.model is not None:
            outs = self._expand(layer.model, prefix + (layer.name,), inputs)
            return {
                i: Tensor(t.producer, t.name, t.shape if t.shape is not None else recorded.get(i))
                for i, t in enumerate(outs)
            }
        path = prefix + (layer.name,)
        in_shapes = [t.shape for t in inputs]
        if k == 0 and (not in_shapes or in_shapes[0] is None):
            built = as_shape(layer.build_input_shape)
            if built is not None:
                in_shapes = [built, *in_shapes[1:]]
        computed = output_shape(layer.class_name, layer.config, in_shapes)
        out_shape = recorded.get(0) if recorded.get(0) is not None else computed
        if path not in self.created:
            self._create(layer, path, in_shapes, out_shape)
        elif self.graph.layer(self.created[path][0]).params:
            # called again: one set of weights serves two places, as shared ONNX weights do
            self.graph.layer(self.created[path][0]).attrs["shared_weights"] = True
        main, tail = self.created[path]
        for position, tensor in enumerate(inputs):
            if tensor.producer is not None:
                self.graph.connect(tensor.producer, main, tensor.name, tensor.shape, data=position == 0)
        base = "/".join(path)
        return {
            i: Tensor(tail, f"{base}[{k}][{i}]", shape if shape is not None else (out_shape if i == 0 else None))
            for i, shape in (recorded or {0: None}).items()
        }

    def _create(self, spec: LayerSpec, path: tuple, in_shapes: list, out_shape) -> None:
        name = self._unique("/".join(path))
        weights = self.weights.of(path) or []
        config = spec.config
        layout = "NCHW" if config.get("data_format") == "channels_first" else "NHWC"
        kind, attrs = describe(spec.class_name, config, in_shapes, weights, layout)
        if weights:
            params = _trainable(weights, spec.class_name)
        else:
            params = config_params(spec.class_name, config, kind, attrs, in_shapes[0] if in_shapes else None)
        activation = activation_name(config.get("activation")) if kind in ("conv", "dense") else None
        if activation:
            attrs["activation"] = activation
        source = KerasSource(path, spec.class_name, config, spec.entry)
        self.graph.add_layer(Layer(
            name, kind, spec.stored_class or spec.class_name, attrs=attrs, params=params,
            input_shapes=list(in_shapes), output_shapes=[out_shape], layout=layout, source=source,
            understood=is_known(spec.class_name, config, spec.entry),
        ))
        if out_shape is None or not in_shapes or in_shapes[0] is None:
            self.unknown.append(name)
        tail = name
        if activation:
            tail = self._unique(f"{name}/activation")
            self.graph.add_layer(Layer(
                tail, "act", "Activation", attrs={"activation": activation, "fused_into": name},
                input_shapes=[out_shape], output_shapes=[out_shape], layout=layout,
                source=KerasSource(path, spec.class_name, config, spec.entry, role="activation"),
            ))
            self.graph.connect(name, tail, f"{name}/pre_activation", out_shape, data=True)
        self.created[path] = (name, tail)

    def _input(self, prefix: tuple, keras_name: str, shape, spec: LayerSpec | None) -> Tensor:
        name = self._unique("/".join(prefix + (keras_name,)))
        config = spec.config if spec is not None else {}
        source = KerasSource(prefix + (keras_name,), "InputLayer", config, spec.entry if spec else {}, role="input")
        self.graph.add_layer(Layer(name, "input", "InputLayer", output_shapes=[shape], layout="NHWC", source=source))
        return Tensor(name, f"{name}[0][0]", shape)

    def _output(self, tensor: Tensor) -> None:
        if tensor.producer is None:
            return
        producer = self.graph.layer(tensor.producer)
        base = producer.attrs.get("fused_into", producer.name)
        name = self._unique(f"{base}/output")
        source = KerasSource(tuple(base.split("/")), "Output", {}, role="output")
        self.graph.add_layer(Layer(name, "output", "Output", input_shapes=[tensor.shape], layout=producer.layout, source=source))
        self.graph.connect(tensor.producer, name, tensor.name, tensor.shape, data=True)


def _trainable(weights: list, class_name: str = "") -> int:
    """Trainable values among stored weights (of one layer when ``class_name`` is given)."""
    return sum(
        w.size for i, w in enumerate(weights) if w.numeric and is_trainable(class_name, w.name, i, len(weights))
    )


def _schedule(makes: list[tuple], reads: list[list], made: dict):
    """The order to run calls in: yields the index of each call once the tensors it
    ``reads`` are ``made`` (the caller adds the outputs of call ``makes[index]`` to
    ``made``), then ``-1 - index`` of the first call that can never run.

    Calls are taken in config order, pass after pass, as a naive loop would, but a call
    is looked at again only when a call it waits for has run: a config that lists a long
    chain backwards must not cost quadratic time."""
    waiting: dict[tuple, list[int]] = {}
    missing = []
    for index, refs in enumerate(reads):
        absent = {ref[:2] for ref in refs if ref not in made}
        missing.append(len(absent))
        for call in absent:
            waiting.setdefault(call, []).append(index)
    this_pass = [index for index, count in enumerate(missing) if count == 0]
    next_pass: list[int] = []
    done: set[int] = set()
    while this_pass or next_pass:
        if not this_pass:
            this_pass, next_pass = sorted(next_pass), []
        index = heapq.heappop(this_pass)
        if not all(ref in made for ref in reads[index]):
            continue  # reads an output its producer does not have
        yield index
        done.add(index)
        for waiter in waiting.pop(makes[index], ()):
            missing[waiter] -= 1
            if missing[waiter] == 0:
                if waiter > index:
                    heapq.heappush(this_pass, waiter)
                else:
                    next_pass.append(waiter)
    stuck = next((index for index in range(len(reads)) if index not in done), None)
    if stuck is not None:
        yield -1 - stuck
