"""The fix plans carried out on an ONNX ModelProto (see :mod:`pwlint.fix.actions`).

:class:`OnnxRewriter` reads a plan's layers as numpy arrays, lets the shared
arithmetic (:mod:`pwlint.fix.head`, :mod:`pwlint.fix.fold`, :mod:`pwlint.fix.lowrank`)
compute the new weights and writes them as ONNX nodes and initializers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import Factorised
from pwlint.fix.fold import folded_mean
from pwlint.fix.head import dense_terms, head_kernels
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import FactorisePlan, FoldBiasPlan, HeadPlan
from pwlint.formats.onnx.edit import Editor
from pwlint.ir import Layer, ModelGraph


@dataclass
class DenseWeights:
    """A dense layer as ``y = x @ weight + bias`` whatever its ONNX form."""

    nodes: list  # NodeProtos of the layer
    data_input: str
    output: str
    weight: np.ndarray  # [in, out]
    bias: np.ndarray | None  # [out]
    #: the initializers holding weight and bias, dropped once read
    constants: tuple[str, ...] = ()


def _dense(editor: Editor, layer: Layer) -> DenseWeights:
    first = layer.source[0].proto
    # the layer may also hold the nodes that make its weights (a Cast, an Identity): those
    # go when nothing reads them any more (Editor.remove_dead)
    add = next((m.proto for m in layer.source[1:] if m.op == "Add" and first.output[0] in m.proto.input), None)
    nodes = [first] if add is None else [first, add]
    if first.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        if attrs.get("transA", 0):
            raise FixNotApplicable(f"'{layer.name}' is a Gemm with transA=1")
        weight = editor.array(_constant_source(editor, first.input[1]))
        weight = weight.T if attrs.get("transB", 0) else weight  # a view: no copy of a big matrix
        raw = None
        if len(first.input) > 2 and first.input[2]:
            raw = editor.array(_constant_source(editor, first.input[2]))
        weight, bias = dense_terms(weight, raw, layer.name, attrs.get("alpha", 1.0), attrs.get("beta", 1.0))
        return DenseWeights(nodes, first.input[0], first.output[0], weight, bias, tuple(first.input[1:3]))
    if first.op_type == "MatMul":
        weight = editor.array(_constant_source(editor, first.input[1]))
        raw = None
        if add is not None:
            bias_name = next(t for t in add.input if t != first.output[0])
            raw = editor.array(_constant_source(editor, bias_name))
        weight, bias = dense_terms(weight, raw, layer.name)
        constants = (first.input[1], bias_name) if add is not None else (first.input[1],)
        return DenseWeights(nodes, first.input[0], nodes[-1].output[0], weight, bias, constants)
    raise FixNotApplicable(f"'{layer.name}' is a {first.op_type}, not a Gemm or MatMul")


def _dtype_of(editor: Editor, layer: Layer) -> np.dtype:
    proto = layer.source[0].proto
    return numpy_dtype(editor.initializer(_constant_source(editor, proto.input[1])))


def numpy_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))


def _conv(editor: Editor, name: str, data: str, output: str, weight: np.ndarray, bias, dtype) -> onnx.NodeProto:
    """A Conv that takes the place (and the name) of the dense layer ``name``."""
    inputs = [data, editor.add_initializer(f"{name}.weight", weight.astype(dtype))]
    if bias is not None:
        inputs.append(editor.add_initializer(f"{name}.bias", bias.astype(dtype)))
    return helper.make_node("Conv", inputs, [output], name=name, kernel_shape=list(weight.shape[2:]))


def _feature_map(editor: Editor, graph: ModelGraph, plan: HeadPlan) -> str:
    """The NCHW tensor the head's first conv reads: the flatten's input, or for a
    channels-last flatten the input of the NCHW -> NHWC Transpose before it."""
    flat = graph.layer(plan.flatten)
    node = flat.source[0].proto
    tensor = node.input[0]
    if not plan.channels_last:
        return tensor
    transpose = editor.producer(tensor)
    rank = len(plan.positions) + 2
    if transpose is None or transpose.op_type != "Transpose":
        raise FixNotApplicable("the channels-last flatten is not fed by a layout Transpose")
    perm = [a for a in transpose.attribute if a.name == "perm"]
    if not perm or list(perm[0].ints) != [0, *range(2, rank), 1]:
        raise FixNotApplicable("the channels-last flatten is not fed by an NCHW -> NHWC Transpose")
    return transpose.input[0]


def _constant_source(editor: Editor, name: str) -> str:
    """The initializer behind ``name``, seen through Identity nodes: the legacy torch
    exporter stores equal weights once (a BatchNorm's zero running mean and zero bias)
    and gives the other name by an Identity."""
    seen = set()
    while editor.initializer(name) is None and name not in seen:
        seen.add(name)
        node = editor.producer(name)
        if node is None or node.op_type != "Identity":
            break
        name = node.input[0]
    return name


class OnnxRewriter:
    """Carries plans out on an in-memory ModelProto through an :class:`Editor`; ``graph``
    is the lint graph of the same proto (layer sources point at its nodes)."""

    def __init__(self, editor: Editor, graph: ModelGraph) -> None:
        self.editor = editor
        self.graph = graph

    def rewrite_head(self, plan: HeadPlan) -> None:
        editor = self.editor
        layers = [self.graph.layer(name) for name in plan.denses]
        denses = [_dense(editor, layer) for layer in layers]
        dtype = _dtype_of(editor, layers[0])
        data = _feature_map(editor, self.graph, plan)
        kernels = head_kernels([d.weight for d in denses], plan.channels, plan.positions, plan.order, plan.pool)
        # everything is read and checked: from here on the model changes. The old weights
        # go first, so that a 100M-parameter layer is not held twice while the new one is built.
        editor.drop_initializers(name for dense in denses for name in dense.constants)
        new_first = []
        if plan.pool:
            pooled = editor.fresh(f"{layers[0].name}_pooled")
            new_first.append(helper.make_node(
                "GlobalAveragePool", [data], [pooled], name=editor.fresh(f"{layers[0].name}_pool")))
            data = pooled
        last_output = denses[-1].output
        for index, (layer, dense, kernel) in enumerate(zip(layers, denses, kernels)):
            is_last = index == len(denses) - 1
            output = editor.fresh(f"{dense.output}_map") if is_last else dense.output
            source = data if index == 0 else dense.data_input
            new = (new_first if index == 0 else []) + [_conv(editor, layer.name, source, output, kernel, dense.bias, dtype)]
            if is_last:
                new.append(helper.make_node(
                    "Flatten", [output], [last_output], name=editor.fresh(f"{layer.name}_flatten"), axis=1))
            editor.replace_nodes(dense.nodes, new)
        # activations between the dense layers now see [N, F, 1, 1]: recorded shapes are stale
        editor.drop_value_info(None)
        editor.remove_dead()

    def fold_bias(self, plan: FoldBiasPlan) -> None:
        editor = self.editor
        conv = self.graph.layer(plan.conv).source[0].proto
        norm = self.graph.layer(plan.norm).source[0].proto
        if len(conv.input) < 3 or not conv.input[2]:
            raise FixNotApplicable(f"'{plan.conv}' has no bias")
        bias = editor.array(_constant_source(editor, conv.input[2]))
        if plan.folds_mean:
            if [a for a in norm.attribute if a.name == "training_mode" and a.i]:
                raise FixNotApplicable("the BatchNormalization runs in training mode")
            mean_source = _constant_source(editor, norm.input[3])
            folded = folded_mean(editor.array(mean_source), bias, plan.conv, plan.norm)
            # a use count, not a consumer count: one BatchNorm may pass the same tensor as
            # scale, bias, mean and variance
            uses = sum(list(node.input).count(norm.input[3]) for node in editor.consumers(norm.input[3]))
            if mean_source != norm.input[3] or uses > 1:
                norm.input[3] = editor.add_initializer(f"{norm.input[3]}_folded", folded)
            else:
                editor.replace_initializer(norm.input[3], folded)
        del conv.input[2]
        editor.remove_dead()

    def factorise(self, plan: FactorisePlan) -> Factorised:
        editor = self.editor
        layer = self.graph.layer(plan.dense)
        dense = _dense(editor, layer)
        dtype = _dtype_of(editor, layer)
        rows, cols = dense.weight.shape
        low = factorise(dense.weight, plan)
        # the factors as stored; the reported error is measured from these
        first, second = low.first.astype(dtype), low.second.astype(dtype)
        low = as_written(low, dense.weight, first, second)
        middle = editor.fresh(f"{dense.output}_low_rank")
        product = dense.output if dense.bias is None else editor.fresh(f"{dense.output}_v")
        nodes = [
            helper.make_node("MatMul", [dense.data_input, editor.add_initializer(f"{layer.name}.u", first)],
                             [middle], name=editor.fresh(f"{layer.name}_u")),
            helper.make_node("MatMul", [middle, editor.add_initializer(f"{layer.name}.v", second)],
                             [product], name=editor.fresh(f"{layer.name}_v")),
        ]
        if dense.bias is not None:
            nodes.append(helper.make_node(
                "Add", [product, editor.add_initializer(f"{layer.name}.bias", dense.bias.astype(dtype))],
                [dense.output], name=editor.fresh(f"{layer.name}_bias")))
        editor.replace_nodes(dense.nodes, nodes)
        editor.remove_dead()
        return Factorised(rows, cols, low)
