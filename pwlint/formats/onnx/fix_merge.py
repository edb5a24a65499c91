"""PW006's fix on ONNX: two linear layers with nothing non-linear between them merged
into one (:func:`pwlint.fix.merge.merge_linear`).

``first`` is a dense layer (Gemm, MatMul + Add) or a standard Conv (groups 1, any
window); ``second`` a dense layer or a pointwise Conv (1x1, stride 1, no padding). What
lies between them is read node by node before anything changes:

- Dropout (inference: no training mode, mask unread) and Identity pass values on and go;
- one BatchNormalization in eval form (the plan's ``norm``) on the channel axis is folded
  into ``first``;
- Flatten, Reshape, Squeeze and Unsqueeze stay, reading the merged layer's output, when
  every axis but the batch and the channel one has size 1 (a conv's 1x1 map flattened
  for a dense layer): they then move values without mixing channels. A Reshape's
  constant shape gets the merged channel count.

The merged layer is of ``first``'s kind and keeps ``first``'s node name; the last node
written keeps ``second``'s output tensor, so that readers and the model's outputs are
unchanged. Every tensor of the chain must have exactly one reader, or the merge is
refused: another reader would lose the value it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import Merged
from pwlint.fix.merge import merge_linear, norm_affine
from pwlint.fix.plans import MergeChainPlan
from pwlint.formats.onnx.edit import Editor, attributes
from pwlint.formats.onnx.fix_read import ConvWeights, conv_node, constant_source, read_conv, read_dense, weight_dtype
from pwlint.ir import Layer, ModelGraph

PASS_THROUGH = ("Identity", "Dropout")
SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


@dataclass
class Linear:
    """A layer of the chain as ``(out, in, *K)`` float64 weights and its ONNX nodes."""

    layer: Layer
    nodes: list
    data_input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray | None
    dtype: np.dtype
    #: the conv, for a conv; None for a dense layer
    conv: ConvWeights | None

    @property
    def channels(self) -> tuple[int, int]:
        """(out, in) channels or units."""
        return self.weight.shape[0], self.weight.shape[1]


def _linear(editor: Editor, layer: Layer, role: str) -> Linear:
    if layer.kind == "conv":
        conv = read_conv(editor, layer, "merging")
        weight = np.asarray(conv.weight, np.float64)
        return Linear(layer, [conv.node], conv.data_input, conv.output, weight, conv.bias, conv.dtype, conv)
    if layer.kind == "dense":
        dense = read_dense(editor, layer)
        weight = np.asarray(dense.weight, np.float64).T
        return Linear(layer, dense.nodes, dense.data_input, dense.output, weight, dense.bias,
                      weight_dtype(editor, layer), None)
    raise FixNotApplicable(f"'{layer.name}' ({layer.op}) is not a dense layer or a conv; it cannot be the {role} of a merge")


def _rank(layer: Layer, fallback: int | None) -> int | None:
    shape = layer.input_shape
    return len(shape) if shape is not None else fallback


@dataclass
class _Walk:
    """What the layers between ``first`` and ``second`` do to the values."""

    removed: list
    kept: list  # shape nodes, in order
    #: the axis holding the channels of the tensor reaching ``second`` (negative: from the end)
    axis: int
    rank: int | None
    affine: tuple[np.ndarray, np.ndarray] | None
    #: for each kept Reshape, the position of the channels in its output shape
    reshape_axes: dict


def _constant_input(editor: Editor, tensor: str, name: str) -> np.ndarray:
    source = constant_source(editor, tensor)
    if editor.initializer(source) is not None:
        return np.asarray(editor.array(source))
    node = editor.producer(source)
    if node is not None and node.op_type == "Constant":
        value = attributes(node).get("value")
        if isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
    raise FixNotApplicable(f"'{name}' reads '{tensor}', which is not a constant")


def _channel_position(shape, mid: int, name: str) -> int:
    """Where the ``mid`` channels sit in a shape whose other non-batch axes are all 1."""
    if shape is None or any(not isinstance(d, int) for d in shape[1:]):
        raise FixNotApplicable(f"the shapes around '{name}' are not known")
    rest = list(shape[1:])
    if prod(rest) != mid or mid not in rest:
        raise FixNotApplicable(f"'{name}' moves values across the channel axis (shape {tuple(shape)})")
    return 1 + rest.index(mid)


def _walk(editor: Editor, graph: ModelGraph, plan: MergeChainPlan, first: Linear) -> tuple[_Walk, str]:
    mid = first.channels[0]
    axis = 1 if first.conv is not None else -1
    rank = _rank(first.layer, 2 if first.nodes[0].op_type == "Gemm" else None)
    if first.conv is not None and first.layer.output_shape is not None:
        rank = len(first.layer.output_shape)
    walk = _Walk([], [], axis, rank, None, {})
    tensor, previous = first.output, plan.first
    for name in plan.between:
        layer = graph.layer(name)
        node = layer.source[0].proto
        if tensor not in node.input[:1]:
            raise FixNotApplicable(f"'{name}' does not read the output of '{previous}'")
        if editor.readers(tensor) != 1:
            raise FixNotApplicable(f"the output of '{previous}' has other readers")
        op = node.op_type
        if op in PASS_THROUGH:
            _check_dropout(editor, node, name)
            walk.removed.append(node)
        elif op == "BatchNormalization":
            _fold_norm(editor, node, name, plan, walk, mid)
            walk.removed.append(node)
        elif op in SHAPE_OPS:
            position = _channel_position(layer.output_shape, mid, name)
            _channel_position(layer.input_shape, mid, name)
            walk.axis, walk.rank = position, len(layer.output_shape)
            if op == "Reshape":
                walk.reshape_axes[id(node)] = position
            walk.kept.append(node)
        else:
            raise FixNotApplicable(f"'{name}' ({op}) between '{plan.first}' and '{plan.second}' is not linear "
                                   "or not known to keep values as they are")
        tensor, previous = node.output[0], name
    if editor.readers(tensor) != 1:
        raise FixNotApplicable(f"the output of '{previous}' has other readers")
    return walk, tensor


def _check_dropout(editor: Editor, node: onnx.NodeProto, name: str) -> None:
    if node.op_type != "Dropout":
        return
    if len(node.input) > 2 and node.input[2]:
        training = _constant_input(editor, node.input[2], name)
        if np.any(training):
            raise FixNotApplicable(f"'{name}' runs in training mode")
    if any(editor.readers(out) for out in node.output[1:] if out):
        raise FixNotApplicable(f"the mask of '{name}' is read")


def _fold_norm(editor: Editor, node: onnx.NodeProto, name: str, plan: MergeChainPlan, walk: _Walk, mid: int) -> None:
    if plan.norm is not None and name != plan.norm:
        raise FixNotApplicable(f"'{name}' is a BatchNormalization the plan does not name")
    if walk.affine is not None:
        raise FixNotApplicable("more than one BatchNormalization between the layers")
    attrs = attributes(node)
    if attrs.get("training_mode", 0) or any(editor.readers(out) for out in node.output[1:] if out):
        raise FixNotApplicable(f"'{name}' runs in training mode")
    # BatchNormalization normalises axis 1: it must be where the channels are
    if not (walk.axis == 1 or (walk.axis == -1 and walk.rank == 2)):
        raise FixNotApplicable(f"'{name}' normalises an axis other than the channels of the layer before it")
    gamma, beta, mean, var = (_constant_input(editor, t, name).reshape(-1) for t in node.input[1:5])
    if any(v.size != mid for v in (gamma, beta, mean, var)):
        raise FixNotApplicable(f"'{name}' does not hold one value per channel")
    walk.affine = norm_affine(gamma, beta, mean, var, float(attrs.get("epsilon", 1e-5)))


def _check_second(second: Linear, walk: _Walk, mid: int, name: str) -> None:
    if second.channels[1] != mid:
        raise FixNotApplicable(f"'{name}' does not read the {mid} channels of the first layer one position at a time")
    if second.conv is not None:
        if not second.conv.pointwise:
            raise FixNotApplicable(f"'{name}' is not a pointwise conv (1x1, stride 1, no padding)")
        if walk.axis != 1:
            raise FixNotApplicable(f"'{name}' reads another axis than the channels")
    elif not (walk.axis == -1 or (walk.rank is not None and walk.axis == walk.rank - 1)):
        raise FixNotApplicable(f"'{name}' reads another axis than the channels")


def merge_chain(editor: Editor, graph: ModelGraph, plan: MergeChainPlan) -> Merged:
    """Carry ``plan`` out (see the module docstring)."""
    first = _linear(editor, graph.layer(plan.first), "first")
    second = _linear(editor, graph.layer(plan.second), "second")
    mid = first.channels[0]
    walk, reaching = _walk(editor, graph, plan, first)
    if second.data_input != reaching:
        raise FixNotApplicable(f"'{plan.second}' does not read the output of the layers before it")
    _check_second(second, walk, mid, plan.second)
    weight, bias = merge_linear(first.weight, first.bias, second.weight, second.bias, walk.affine)
    out = weight.shape[0]
    reshapes = {id(node): _new_shape(editor, node, walk.reshape_axes[id(node)], mid, out)
                for node in walk.kept if node.op_type == "Reshape"}
    # everything is read and checked: from here on the model changes
    before = sum(graph.layer(name).params for name in plan.layers())
    target = editor.fresh(f"{second.output}_merged") if walk.kept else second.output
    merged = _write(editor, first, target, weight, bias)
    source = target
    for node in walk.kept:
        node.input[0] = source
        if reshapes.get(id(node)) is not None:
            node.input[1] = editor.add_initializer(f"{node.output[0]}_shape", reshapes[id(node)])
        source = node.output[0]
    if walk.kept:
        walk.kept[-1].output[0] = second.output
        editor.drop_value_info({node.output[0] for node in walk.kept})
    editor.replace_nodes(first.nodes + walk.removed + second.nodes, merged)
    editor.remove_dead()
    return Merged(before=before, after=weight.size + bias.size)


def _new_shape(editor: Editor, node: onnx.NodeProto, position: int, mid: int, out: int) -> np.ndarray | None:
    """The shape a Reshape that named ``mid`` channels must now give; None when it does
    not name them (-1 or 0 there) or their count stays."""
    shape = _constant_input(editor, node.input[1], node.name or node.output[0]).astype(np.int64).copy()
    if shape.ndim != 1 or position >= shape.size:
        raise FixNotApplicable(f"cannot read the shape of '{node.name}'")
    if shape[position] != mid or mid == out:
        return None
    shape[position] = out
    return shape


def _write(editor: Editor, first: Linear, target: str, weight: np.ndarray, bias: np.ndarray) -> list:
    node = first.nodes[0]
    name = node.name or editor.fresh(first.layer.name)
    dtype = first.dtype
    if first.conv is not None:
        return [conv_node(editor, name, first.data_input, target, weight, bias, dtype, first.conv.placement)]
    if node.op_type == "Gemm":  # torch's form: [out, in] read transposed
        inputs = [first.data_input, editor.add_initializer(f"{first.layer.name}.weight", weight.astype(dtype)),
                  editor.add_initializer(f"{first.layer.name}.bias", bias.astype(dtype))]
        return [helper.make_node("Gemm", inputs, [target], name=name, transB=1)]
    product = editor.fresh(f"{target}_product")
    return [
        helper.make_node("MatMul", [first.data_input, editor.add_initializer(f"{first.layer.name}.weight",
                                                                             weight.T.astype(dtype))],
                         [product], name=name),
        helper.make_node("Add", [product, editor.add_initializer(f"{first.layer.name}.bias", bias.astype(dtype))],
                         [target], name=editor.fresh(f"{name}_bias")),
    ]
