"""The ONNX loader: an ``.onnx`` file to a :class:`~pwlint.ir.ModelGraph`.

Node names are kept as written in the file; nodes without a name are called
``<OpType>_<index>``. Weight payloads are never read: parameter counts come
from initializer dims, and external data is not touched.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

from pwlint.hookspecs import hookimpl
from pwlint.ir import Layer, ModelGraph, UniqueNames
from pwlint.loaders.onnx_patterns import (
    NodeIndex,
    decomposed_norm_groups,
    dense_groups,
    frozen_batchnorm_groups,
)
from pwlint.loaders.onnx_read import FLOAT_TYPES, Node, OnnxModel, describe_model, read_onnx

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
}
ACTIVATIONS = {
    "Relu": "relu", "LeakyRelu": "leaky_relu", "PRelu": "prelu", "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid", "Tanh": "tanh", "Elu": "elu", "Selu": "selu", "Celu": "celu",
    "Gelu": "gelu", "FastGelu": "gelu", "BiasGelu": "gelu", "HardSwish": "hard_swish",
    "Softplus": "softplus", "Softsign": "softsign", "Clip": "clip", "Mish": "mish",
    "Swish": "swish", "QuickGelu": "gelu", "Softmax": "softmax", "LogSoftmax": "log_softmax",
    "ThresholdedRelu": "thresholded_relu", "Erf": "erf",
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
#: BatchNormalization inputs that are running statistics, not trainable values
NON_TRAINABLE_INPUTS = {"BatchNormalization": frozenset({3, 4})}


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
        """Fused groups and single nodes, in the order of each one's first node."""
        taken: set[int] = set()
        fused = [("dense", g) for g in dense_groups(self.index, taken)]
        fused += [("norm", g) for g in decomposed_norm_groups(self.index, taken)]
        fused += [("frozen_norm", g) for g in frozen_batchnorm_groups(self.index, taken)]
        fused_at = {group[0]: (hint, group) for hint, group in fused}
        for node in self.model.nodes:
            if node.index in fused_at:
                yield fused_at[node.index]
            elif node.index not in taken:
                yield None, [node.index]

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
        constants, shapes = self.model.constants, self.model.shapes
        data_inputs = [t for t in inputs if t not in constants]
        params, shared = 0, False
        members = None  # built for the first weight only: most layers of a large graph have none
        for node in nodes:
            skip = NON_TRAINABLE_INPUTS.get(node.op, ())
            for position, tensor in enumerate(node.inputs):
                const = constants.get(tensor)
                if const is None or const.dtype not in FLOAT_TYPES or position in skip or len(const.dims) == 0:
                    continue
                params += const.size
                self.trainable[tensor] = const.size
                members = members or {n.index for n in nodes}
                shared = shared or any(u.index not in members for u in self.index.consumers.get(tensor, []))
        kind, attrs = self._describe(kind_hint, nodes, data_inputs)
        attrs["inputs"] = inputs
        attrs["outputs"] = outputs
        if shared:
            attrs["shared_weights"] = True
        if len(nodes) > 1:
            attrs["ops"] = [n.op for n in nodes]
        if first.graph_depth:
            attrs["subgraph_depth"] = first.graph_depth
        single = len(nodes) == 1
        return Layer(
            name=name, kind=kind, op=first.op if single else "+".join(dict.fromkeys(n.op for n in nodes)),
            attrs=attrs, params=params,
            input_shapes=[shapes.get(t) for t in data_inputs],
            output_shapes=[shapes.get(t) for t in outputs],
            layout="NCHW", members=(name,) if single else (name, *(n.display_name for n in nodes[1:])),
            source=nodes, understood=all(n.domain in KNOWN_DOMAINS for n in nodes),
        )

    def _describe(self, kind_hint: str | None, nodes: list[Node], data_inputs: list[str]) -> tuple[str, dict]:
        node = nodes[0]
        if kind_hint == "dense":
            weight = self.model.constants[node.inputs[1]]
            rank = len(self.model.shapes.get(node.inputs[0]) or ())
            return "dense", {
                "in_features": weight.dims[0], "out_features": weight.dims[1],
                "bias": len(nodes) > 1, "per_position": rank > 2,
            }
        if kind_hint == "norm":
            return "norm", {"norm_type": "decomposed"}
        if kind_hint == "frozen_norm":
            return "norm", {"norm_type": "frozen_batch"}
        if node.op in ACTIVATIONS:
            return "act", {"activation": ACTIVATIONS[node.op]}
        kind = OP_KINDS.get(node.op, "other") if node.domain in ("", "ai.onnx", "com.microsoft") else "other"
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
            attrs = {"perm": tuple(perm) if perm else None, "layout_change": _is_layout_perm(perm)}
        elif node.op in ("ReduceMean", "ReduceMax") and self._reduces_spatial(node):
            kind = "global_pool"
        return kind, attrs

    def _conv_attrs(self, node: Node) -> dict:
        weight_index = 3 if node.op == "QLinearConv" else 1
        weight = self.model.constants.get(node.inputs[weight_index]) if len(node.inputs) > weight_index else None
        dims = weight.dims if weight else self.model.shapes.get(node.inputs[weight_index]) if len(node.inputs) > weight_index else None
        groups = node.attrs.get("group", 1)
        # a bias computed in the graph (dynamo's zeros for bias=False) is not a parameter
        bias = node.inputs[2] if len(node.inputs) > 2 and node.op in ("Conv", "ConvTranspose") else None
        attrs = {
            "groups": groups,
            "stride": tuple(node.attrs.get("strides", ())),
            "dilation": tuple(node.attrs.get("dilations", ())),
            "transposed": node.op == "ConvTranspose",
            "bias": self.index.is_weight(bias) if bias else False,
            "bias_input": bias,
        }
        if dims and len(dims) >= 3 and all(d is not None for d in dims):
            if node.op == "ConvTranspose":
                attrs.update(in_channels=dims[0], out_channels=dims[1] * groups)
            else:
                attrs.update(out_channels=dims[0], in_channels=dims[1] * groups)
            attrs["kernel"] = tuple(dims[2:])
        return attrs

    def _gemm_attrs(self, node: Node) -> dict:
        weight = self.model.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
        dims = weight.dims if weight else self.model.shapes.get(node.inputs[1])
        attrs: dict = {"bias": len(node.inputs) > 2 and bool(node.inputs[2]), "per_position": False}
        if dims and len(dims) == 2 and None not in dims:
            k, n = (dims[1], dims[0]) if node.attrs.get("transB", 0) else dims
            attrs.update(in_features=k, out_features=n)
        if weight is None:
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
        constants, shapes, producer_layer = self.model.constants, self.model.shapes, self.producer_layer
        data_tensor = None
        for tensor in inputs:
            if tensor not in constants:
                data_tensor = tensor
                break
        for tensor in inputs:
            producer = producer_layer.get(tensor)
            if producer is not None:
                self.graph.connect(producer, layer.name, tensor, shapes.get(tensor), data=tensor == data_tensor)


def _is_layout_perm(perm) -> bool:
    """True for perms that only move the channel axis (NCHW <-> NHWC, [0,2,1])."""
    if not perm or len(perm) < 3 or perm[0] != 0:
        return False
    rest = list(perm[1:])
    n = len(rest)
    to_last = rest == list(range(2, n + 1)) + [1]
    to_first = rest == [n] + list(range(1, n))
    return to_last or to_first


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
        from pwlint.loaders.sniff import formats

        return "onnx" in formats(path, head)

    @staticmethod
    def load(path: str) -> ModelGraph:
        """The graph; external data that is absent (or a Git LFS pointer) is named in
        ``graph.meta["missing_weights"]``, which the engine refuses unless allowed."""
        from pwlint.loaders.onnx_guard import collecting_missing_data, describe_missing_data

        with collecting_missing_data() as missing:
            graph = load(path)
        if missing:
            graph.meta["missing_weights"] = describe_missing_data(missing)
        return graph


@hookimpl
def pwlint_register_loaders(register):
    register(OnnxLoader())


class _LazyOnnxBackend:
    """Registers the fix backend without importing it: linting never needs it."""

    name = "onnx"

    def __getattr__(self, attribute):
        from pwlint.backends.onnx_backend import OnnxBackend

        return getattr(OnnxBackend, attribute)


@hookimpl
def pwlint_register_backends(register):
    register(_LazyOnnxBackend())
