"""The ONNX loader: an ``.onnx`` file to a :class:`~pwlint.ir.ModelGraph`.

Node names are kept as written in the file; nodes without a name are called
``<OpType>_<index>``, and a node that records its source module (dynamo exports)
gets it as the layer's ``module``. Weight payloads are never read: parameter
counts come from the dims of the constant behind each weight operand
(initializer, ``Constant``, or a ``Cast``/``DequantizeLinear``/``Transpose``...
of one: :mod:`onnx_weights`), and external data is not touched. Quantized models
read as their float originals (:mod:`onnx_quant`).
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

from pwlint.ir import Layer, ModelGraph, UniqueNames
from pwlint.walk import is_layout_perm
from pwlint.formats.onnx.names import module_path
from pwlint.formats.onnx.patterns import (
    BIAS_ADDS,
    NodeIndex,
    decomposed_norm_groups,
    dense_groups,
    frozen_batchnorm_groups,
    weight_helpers,
)
from pwlint.formats.onnx.quant import (
    CONV_FORMS,
    DENSE_FORMS,
    QUANT_ACTIVATIONS,
    QUANT_KINDS,
    QUANTIZED_OPS,
    integer_groups,
    param_inputs,
    qdq_pairs,
)
from pwlint.formats.onnx.read import FLOAT_TYPES, Node, OnnxModel, describe_model, read_onnx

OP_KINDS = {
    "Conv": "conv", "ConvTranspose": "conv", "ConvInteger": "conv", "QLinearConv": "conv",
    "Gemm": "dense",
    "Flatten": "flatten",
    "Reshape": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape",
    "BatchNormalization": "norm", "InstanceNormalization": "norm",
    "LayerNormalization": "norm", "GroupNormalization": "norm",
    "SimplifiedLayerNormalization": "norm", "SkipLayerNormalization": "norm",
    "RMSNormalization": "norm",
    "MaxPool": "pool", "AveragePool": "pool", "LpPool": "pool",
    "GlobalAveragePool": "global_pool", "GlobalMaxPool": "global_pool", "GlobalLpPool": "global_pool",
    "Add": "add", "Sum": "add", "Mul": "mul", "Concat": "concat", "Transpose": "transpose",
    "Dropout": "dropout", "Identity": "identity", "Cast": "identity", "CastLike": "identity",
    **QUANT_KINDS,
}
ACTIVATIONS = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid", "Tanh": "tanh", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Gelu": "gelu", "FastGelu": "gelu", "BiasGelu": "gelu", "HardSwish": "hard_swish",
    "Softplus": "softplus", "Softsign": "softsign", "Clip": "clip", "Mish": "mish",
    "Swish": "swish", "QuickGelu": "gelu", "Softmax": "softmax", "LogSoftmax": "log_softmax",
    "ThresholdedRelu": "thresholded_relu", "Erf": "erf",
    **QUANT_ACTIVATIONS,
}
NORM_TYPES = {
    "BatchNormalization": "batch", "InstanceNormalization": "instance",
    "LayerNormalization": "layer", "GroupNormalization": "group",
    "SimplifiedLayerNormalization": "rms", "SkipLayerNormalization": "layer",
    "RMSNormalization": "rms",
}
#: operator domains whose operators pwlint knows the meaning of (the standard ones and
#: onnxruntime's contrib operators); anything else is a custom operator it cannot judge
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"})
#: operators whose constant operands are weights: the nodes that make those join the layer
WEIGHT_BEARING = frozenset({*CONV_FORMS, *DENSE_FORMS, *NORM_TYPES, *QUANTIZED_OPS})
#: domains whose operators OP_KINDS names (onnxruntime's contrib operators include QGemm)
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})


class _Builder:
    def __init__(self, model: OnnxModel, path: str) -> None:
        self.model = model
        self.index = NodeIndex(model)
        self.graph = ModelGraph(path, "onnx")
        self.graph.meta["opset"] = model.opset
        # eval-mode exporters fold Conv+BatchNorm: a conv without a norm may have had one
        self.graph.meta["norm_folding"] = "possible"
        proto = model.proto
        producer = f"{getattr(proto, 'producer_name', '')} {getattr(proto, 'producer_version', '')}".strip()
        if producer:
            self.graph.meta["producer"] = producer
        self.unique = UniqueNames()
        self.producer_layer: dict[str, str] = {}
        self.trainable: dict[str, int] = {}
        self.weight = self.index.weight
        #: nodes that only make a weight, each in the layer of the node it feeds
        self.helpers: dict[int, int] = {}
        #: nodes whose constant inputs are quantization scales, not parameters
        self.scale_nodes: set[int] = set()

    def build(self) -> ModelGraph:
        groups = self._groups()
        for name in self.model.inputs:
            layer = Layer(self.unique(name), "input", "Input", output_shapes=[self.model.shapes.get(name)], layout="NCHW")
            self.graph.add_layer(layer)
            self.producer_layer[name] = layer.name
        layers = []
        all_nodes, producer_layer = self.model.nodes, self.producer_layer
        for kind_hint, group in groups:
            nodes = [all_nodes[i] for i in group]
            layer = self._layer(kind_hint, nodes)
            self.graph.add_layer(layer)
            layers.append(layer)
            for node in nodes:
                for out in node.outputs:
                    if out:
                        producer_layer[out] = layer.name
        for layer in layers:
            self._connect(layer)
        for name in self.model.outputs:
            out = Layer(self.unique(name), "output", "Output", input_shapes=[self.model.shapes.get(name)], layout="NCHW")
            self.graph.add_layer(out)
            if name in self.producer_layer:
                self.graph.connect(self.producer_layer[name], out.name, name, self.model.shapes.get(name), data=True)
        self.graph.total_params = sum(self.trainable.values())
        return self.graph

    def _groups(self) -> Iterator[tuple[str | None, list[int]]]:
        """Fused groups and single nodes, in the order of each one's first node; the
        nodes that make a layer's weights follow that layer's own nodes."""
        self.helpers = weight_helpers(self.index)
        taken: set[int] = set(self.helpers)
        fused: list[tuple[str | None, list[int]]] = []
        for kind, group, scales in integer_groups(self.index, taken):
            fused.append((kind, group))
            self.scale_nodes |= scales
        fused += [("dense", g) for g in dense_groups(self.index, taken)]
        fused += [("norm", g) for g in decomposed_norm_groups(self.index, taken)]
        fused += [("frozen_norm", g) for g in frozen_batchnorm_groups(self.index, taken)]
        fused += qdq_pairs(self.index, taken)
        in_fused = {member for _, group in fused for member in group}
        nodes = self.model.nodes
        for helper, owner in list(self.helpers.items()):
            if owner not in in_fused and nodes[owner].op not in WEIGHT_BEARING:
                # a constant made for an Add, an Expand...: it stays a layer of its own,
                # so that what it makes keeps its name
                del self.helpers[helper]
                taken.discard(helper)
        if not self.helpers:
            fused_at = {group[0]: (hint, group) for hint, group in fused}
            for node in self.model.nodes:
                if node.index in fused_at:
                    yield fused_at[node.index]
                elif node.index not in taken:
                    yield None, [node.index]
            return
        groups: dict[int, tuple[str | None, list[int]]] = {}
        group_of: dict[int, list[int]] = {}
        for hint, group in fused:
            groups[group[0]] = (hint, group)
            group_of.update((member, group) for member in group)
        for node in self.model.nodes:
            if node.index not in taken:
                groups[node.index] = (None, [node.index])
                group_of[node.index] = groups[node.index][1]
        for helper, owner in sorted(self.helpers.items()):
            group_of[owner].append(helper)
        for first in sorted(groups):
            yield groups[first]

    def _group_io(self, nodes: list[Node]) -> tuple[list[str], list[str]]:
        if len(nodes) == 1:
            internal = nodes[0].outputs
            inputs = [t for t in nodes[0].inputs if t and t not in internal]
        else:
            internal = {out for node in nodes for out in node.outputs}
            inputs = []
            for node in nodes:
                # deduplicated across the group's nodes, not within one (Add(x, x) lists x twice)
                earlier = set(inputs)
                inputs += [t for t in node.inputs if t and t not in internal and t not in earlier]
        members = {n.index for n in nodes}
        consumers, graph_outputs = self.index.consumers, self.index.outputs
        outputs = []
        for node in nodes:
            for out in node.outputs:
                if not out:
                    continue
                users = consumers.get(out)
                if not users or out in graph_outputs:
                    outputs.append(out)
                else:
                    for user in users:
                        if user.index not in members:
                            outputs.append(out)
                            break
        return inputs, outputs

    def _layer(self, kind_hint: str | None, nodes: list[Node]) -> Layer:
        first = nodes[0]
        name = self.unique(first.display_name)
        inputs, outputs = self._group_io(nodes)
        shapes, weight_of = self.model.shapes, self.weight
        data_inputs = [t for t in inputs if weight_of(t) is None]
        # a layer that only makes a constant (a weight conversion that several layers read)
        # holds no parameters of its own: its readers count them
        makes_constant = bool(outputs) and all(weight_of(t) is not None for t in outputs)
        params, shared, quantized = 0, False, False
        members = None  # built for the first weight only: most layers of a large graph have none
        for node in nodes if not makes_constant else ():
            if node.index in self.helpers or node.index in self.scale_nodes:
                continue  # helpers are counted through the operand they make
            positions = param_inputs(node)
            for position, tensor in enumerate(node.inputs):
                if not tensor or (positions is not None and position not in positions):
                    continue
                weight = weight_of(tensor)
                if weight is None or not weight.dims or (positions is None and weight.dtype not in FLOAT_TYPES):
                    continue
                params += weight.size
                quantized = quantized or weight.quantized
                self.trainable[weight.root] = weight.size
                members = members or {n.index for n in nodes}
                shared = shared or any(u.index not in members for u in self.index.consumers.get(weight.root, []))
        main = [n for n in nodes if n.index not in self.helpers] or nodes
        if makes_constant:
            kind, attrs = "identity", {"constant": True}
        else:
            kind, attrs = self._describe(kind_hint, main, data_inputs)
        attrs["inputs"] = inputs
        attrs["outputs"] = outputs
        if shared:
            attrs["shared_weights"] = True
        if quantized or any(n.op in QUANTIZED_OPS for n in nodes):
            attrs["quantized"] = True
        if len(main) > 1:
            attrs["ops"] = [n.op for n in main]
        if first.graph_depth:
            attrs["subgraph_depth"] = first.graph_depth
        single = len(nodes) == 1
        input_shapes = [shapes.get(t) for t in data_inputs]
        output_shapes = [shapes.get(t) for t in outputs]
        if kind == "dense" and output_shapes[:1] == [None] and input_shapes and input_shapes[0]:
            # onnx's shape inference does not know onnxruntime's QGemm: the layer says it
            output_shapes[0] = (*input_shapes[0][:-1], attrs.get("out_features"))
        return Layer(
            name=name, kind=kind, op=first.op if len(main) == 1 else "+".join(dict.fromkeys(n.op for n in main)),
            attrs=attrs, params=params,
            input_shapes=input_shapes,
            output_shapes=output_shapes,
            layout="NCHW", members=(name,) if single else (name, *(n.display_name for n in nodes[1:])),
            source=nodes, understood=all(n.domain in KNOWN_DOMAINS for n in nodes),
            module=module_path(first.proto, name),
        )

    def _describe(self, kind_hint: str | None, nodes: list[Node], data_inputs: list[str]) -> tuple[str, dict]:
        node = nodes[0]
        if kind_hint == "dense":
            position, bias_position = DENSE_FORMS[node.op]
            dims = self.weight.dims(node.inputs[position])
            rank = len(self.model.shapes.get(node.inputs[0]) or ())
            return "dense", {
                "in_features": dims[0], "out_features": dims[1],
                "bias": any(n.op in BIAS_ADDS for n in nodes[1:]) or self._has_input(node, bias_position),
                "per_position": rank > 2,
            }
        if kind_hint == "conv":  # a dynamically quantized conv: ConvInteger, rescale, bias Add
            attrs = self._conv_attrs(node)
            attrs["bias"] = any(n.op == "Add" for n in nodes[1:])
            return "conv", attrs
        if kind_hint == "relu":  # a quantize-dequantize pair that clips like the ReLU it replaced
            return "act", {"activation": "relu", "quantized": True}
        if kind_hint == "norm":
            return "norm", {"norm_type": "decomposed"}
        if kind_hint == "frozen_norm":
            return "norm", {"norm_type": "frozen_batch"}
        if node.op in ACTIVATIONS:
            return "act", {"activation": ACTIVATIONS[node.op]}
        kind = OP_KINDS.get(node.op, "other") if node.domain in STANDARD_DOMAINS else "other"
        attrs: dict = {}
        if kind == "conv":
            attrs = self._conv_attrs(node)
        elif kind == "dense" and node.attrs.get("transA", 0):
            kind = "other"  # a Gemm that transposes its data input is no per-sample dense layer
        elif kind == "dense":
            attrs = self._gemm_attrs(node)
        elif kind == "norm":
            attrs = {"norm_type": NORM_TYPES[node.op]}
        elif kind in ("pool",):
            attrs = {"kernel": tuple(node.attrs.get("kernel_shape", ())), "stride": tuple(node.attrs.get("strides", ()))}
        elif kind == "transpose":
            perm = node.attrs.get("perm")
            attrs = {"perm": tuple(perm) if perm else None, "layout_change": is_layout_perm(perm)}
        elif node.op in ("ReduceMean", "ReduceMax") and self._reduces_spatial(node):
            kind = "global_pool"
        return kind, attrs

    def _has_input(self, node: Node, position: int | None) -> bool:
        """Whether ``node`` has a constant operand at ``position`` (a bias, say)."""
        return position is not None and len(node.inputs) > position and self.weight(node.inputs[position]) is not None

    def _is_bias(self, tensor: str | None) -> bool:
        """A constant bias operand; zeros made in the graph (ConstantOfShape, dynamo's
        Expand for bias=False) are no bias."""
        weight = self.weight(tensor) if tensor else None
        return weight is not None and not weight.zeros

    def _operand_dims(self, node: Node, position: int) -> tuple | None:
        """Dims of a weight operand: of the constant behind it, else as inferred."""
        if len(node.inputs) <= position or not node.inputs[position]:
            return None
        tensor = node.inputs[position]
        dims = self.weight.dims(tensor)
        return dims if dims is not None else self.model.shapes.get(tensor)

    def _conv_attrs(self, node: Node) -> dict:
        weight_index, bias_index = CONV_FORMS.get(node.op, (1, 2))
        dims = self._operand_dims(node, weight_index)
        groups = node.attrs.get("group", 1)
        # a bias computed in the graph (dynamo's zeros for bias=False) is not a parameter
        bias = node.inputs[bias_index] if bias_index is not None and len(node.inputs) > bias_index else None
        attrs = {
            "groups": groups,
            "stride": tuple(node.attrs.get("strides", ())),
            "dilation": tuple(node.attrs.get("dilations", ())),
            "transposed": node.op == "ConvTranspose",
            "bias": self._is_bias(bias),
            "bias_input": bias or None,
        }
        if dims and len(dims) >= 3 and all(d is not None for d in dims):
            if node.op == "ConvTranspose":
                attrs.update(in_channels=dims[0], out_channels=dims[1] * groups)
            else:
                attrs.update(out_channels=dims[0], in_channels=dims[1] * groups)
            attrs["kernel"] = tuple(dims[2:])
        return attrs

    def _gemm_attrs(self, node: Node) -> dict:
        position, bias_position = DENSE_FORMS.get(node.op, (1, 2))
        dims = self._operand_dims(node, position)
        has_bias = len(node.inputs) > bias_position and bool(node.inputs[bias_position])
        attrs: dict = {"bias": has_bias, "per_position": False}
        if dims and len(dims) == 2 and None not in dims:
            k, n = (dims[1], dims[0]) if node.attrs.get("transB", 0) else dims
            attrs.update(in_features=k, out_features=n)
        if len(node.inputs) <= position or self.weight(node.inputs[position]) is None:
            attrs["weight_is_input"] = True
        return attrs

    def _reduces_spatial(self, node: Node) -> bool:
        shape = self.model.shapes.get(node.inputs[0]) if node.inputs else None
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            const = self.model.constants.get(node.inputs[1])
            axes = const.values if const is not None else None
        if shape is None or not axes or len(shape) < 3:
            return False
        rank = len(shape)
        normalised = sorted(a % rank for a in axes)
        return normalised == list(range(2, rank))

    def _connect(self, layer: Layer) -> None:
        inputs = layer.attrs["inputs"]
        shapes, producer_layer = self.model.shapes, self.producer_layer
        data_tensor = None
        for tensor in inputs:
            if self.weight(tensor) is None:
                data_tensor = tensor
                break
        for tensor in inputs:
            producer = producer_layer.get(tensor)
            if producer is not None:
                self.graph.connect(producer, layer.name, tensor, shapes.get(tensor), data=tensor == data_tensor)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Reading a model allocates a few objects per node that all live on; the cyclic
    collector would scan the growing heap again and again and find nothing to free
    (a third of the load time of a 100k-node model)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # file what was built with the oldest objects (freeze, then unfreeze into the
            # oldest generation), or the next young collection scans all of it at once
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def load(path: str) -> ModelGraph:
    with _collector_paused():
        return _Builder(read_onnx(path), path).build()


def load_proto(model, path: str = "") -> ModelGraph:
    """The graph of an in-memory ModelProto (used to lint a model again after fixing it)."""
    with _collector_paused():
        return _Builder(describe_model(model), path).build()


class OnnxLoader:
    name = "onnx"
    suffixes = (".onnx",)

    @staticmethod
    def sniff(path: str, head: bytes) -> bool:
        """A protobuf ModelProto, whatever the file is called."""
        from pwlint.formats.sniff import formats

        return "onnx" in formats(path, head)

    @staticmethod
    def load(path: str) -> ModelGraph:
        """The graph; external data that is absent (or a Git LFS pointer) is named in
        ``graph.meta["missing_weights"]``, which the engine refuses unless allowed."""
        from pwlint.formats.onnx.guard import collecting_missing_data, describe_missing_data

        with collecting_missing_data() as missing:
            graph = load(path)
        if missing:
            graph.meta["missing_weights"] = describe_missing_data(missing)
        return graph
