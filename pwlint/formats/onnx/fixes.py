"""The four fix actions, carried out on an ONNX ModelProto.

Each takes the model's :class:`~pwlint.ir.ModelGraph` (built from the same
in-memory proto, so layer sources point at its nodes) and a fix plan, edits the
model and returns a one-line note, or raises :class:`FixNotApplicable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from pwlint.fix.lowrank import as_written, factorise, factorised_note
from pwlint.formats.onnx.edit import Editor
from pwlint.errors import FixNotApplicable
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
        if attrs.get("alpha", 1.0) != 1.0:
            weight = weight * attrs["alpha"]
        bias = None
        if len(first.input) > 2 and first.input[2]:
            raw = editor.array(_constant_source(editor, first.input[2])) * attrs.get("beta", 1.0)
            if raw.size not in (1, weight.shape[1]):
                raise FixNotApplicable(f"the bias of '{layer.name}' does not broadcast per unit")
            bias = np.broadcast_to(raw.reshape(-1), (weight.shape[1],)).copy()
        return DenseWeights(nodes, first.input[0], first.output[0], weight, bias, tuple(first.input[1:3]))
    if first.op_type == "MatMul":
        weight = editor.array(_constant_source(editor, first.input[1]))
        bias = None
        if add is not None:
            bias_name = next(t for t in add.input if t != first.output[0])
            bias = editor.array(_constant_source(editor, bias_name)).reshape(-1)
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


def _feature_map(editor: Editor, graph: ModelGraph, plan: dict) -> str:
    """The NCHW tensor the head's first conv reads: the flatten's input, or for a
    channels-last flatten the input of the NCHW -> NHWC Transpose before it."""
    flat = graph.layer(plan["flatten"])
    node = flat.source[0].proto
    tensor = node.input[0]
    if plan["layout"] == "NCHW":
        return tensor
    transpose = editor.producer(tensor)
    rank = len(plan["positions"]) + 2
    if transpose is None or transpose.op_type != "Transpose":
        raise FixNotApplicable("the channels-last flatten is not fed by a layout Transpose")
    perm = [a for a in transpose.attribute if a.name == "perm"]
    if not perm or list(perm[0].ints) != [0, *range(2, rank), 1]:
        raise FixNotApplicable("the channels-last flatten is not fed by an NCHW -> NHWC Transpose")
    return transpose.input[0]


def _first_weight(dense: DenseWeights, plan: dict) -> np.ndarray:
    """The first dense layer's weights as a conv kernel [out, C, *positions], in the
    order the source flattened them."""
    units = dense.weight.shape[1]
    channels, positions = plan["channels"], plan["positions"]
    if dense.weight.shape[0] != channels * int(np.prod(positions)):
        raise FixNotApplicable("the dense layer's inputs do not match the flattened map")
    if plan["layout"] == "NHWC":
        kernel = dense.weight.T.reshape(units, *positions, channels)
        return np.moveaxis(kernel, -1, 1)
    return dense.weight.T.reshape(units, channels, *positions)


def _rewrite_head(editor: Editor, graph: ModelGraph, plan: dict, pool: bool) -> str:
    layers = [graph.layer(name) for name in plan["denses"]]
    denses = [_dense(editor, layer) for layer in layers]
    dtype = _dtype_of(editor, layers[0])
    spatial = len(plan["positions"])
    data = _feature_map(editor, graph, plan)
    kernel = _first_weight(denses[0], plan)
    # everything is read and checked: from here on the model changes. The old weights
    # go first, so that a 100M-parameter layer is not held twice while the new one is built.
    editor.drop_initializers(name for dense in denses for name in dense.constants)
    if pool:
        pooled = editor.fresh(f"{layers[0].name}_pooled")
        pool_node = helper.make_node("GlobalAveragePool", [data], [pooled], name=editor.fresh(f"{layers[0].name}_pool"))
        kernel = kernel.sum(axis=tuple(range(2, 2 + spatial)), keepdims=True)
        data = pooled
    last_output = denses[-1].output
    for index, (layer, dense) in enumerate(zip(layers, denses)):
        weight = kernel if index == 0 else dense.weight.T.reshape(*dense.weight.T.shape, *[1] * spatial)
        is_last = index == len(denses) - 1
        output = editor.fresh(f"{dense.output}_map") if is_last else dense.output
        source = data if index == 0 else dense.data_input
        new = [_conv(editor, layer.name, source, output, weight, dense.bias, dtype)]
        if index == 0 and pool:
            new.insert(0, pool_node)
        if is_last:
            new.append(helper.make_node("Flatten", [output], [last_output], name=editor.fresh(f"{layer.name}_flatten"), axis=1))
        editor.replace_nodes(dense.nodes, new)
    # activations between the dense layers now see [N, F, 1, 1]: recorded shapes are stale
    editor.drop_value_info(None)
    editor.remove_dead()
    later = f", and {len(denses) - 1} later dense layer(s) by 1x1 convs" if len(denses) > 1 else ""
    if pool:
        return f"'{layers[0].name}' replaced by global average pooling + a 1x1 conv{later}"
    kernel = "x".join(map(str, plan["positions"]))
    return f"'{layers[0].name}' replaced by a {kernel} conv{later}"


def convolutionalise_head(editor: Editor, graph: ModelGraph, plan: dict) -> str:
    return _rewrite_head(editor, graph, plan, pool=False)


def pool_pointwise_head(editor: Editor, graph: ModelGraph, plan: dict) -> str:
    return _rewrite_head(editor, graph, plan, pool=True)


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


def fold_bias_into_norm(editor: Editor, graph: ModelGraph, plan: dict) -> str:
    conv = graph.layer(plan["conv"]).source[0].proto
    norm = graph.layer(plan["norm"]).source[0].proto
    if len(conv.input) < 3 or not conv.input[2]:
        raise FixNotApplicable(f"'{plan['conv']}' has no bias")
    bias = editor.array(_constant_source(editor, conv.input[2]))
    if plan["norm_type"] == "batch":
        training = [a for a in norm.attribute if a.name == "training_mode" and a.i]
        if training:
            raise FixNotApplicable("the BatchNormalization runs in training mode")
        mean_source = _constant_source(editor, norm.input[3])
        mean = editor.array(mean_source)
        folded = (mean.astype(np.float64) - bias.astype(np.float64)).astype(mean.dtype)
        # a use count, not a consumer count: one BatchNorm may pass the same tensor as
        # scale, bias, mean and variance
        uses = sum(list(node.input).count(norm.input[3]) for node in editor.consumers(norm.input[3]))
        if mean_source != norm.input[3] or uses > 1:
            norm.input[3] = editor.add_initializer(f"{norm.input[3]}_folded", folded)
        else:
            editor.replace_initializer(norm.input[3], folded)
    del conv.input[2]
    editor.remove_dead()
    return f"bias of '{plan['conv']}' folded into '{plan['norm']}'"


def factorise_dense(editor: Editor, graph: ModelGraph, plan: dict) -> str:
    layer = graph.layer(plan["dense"])
    dense = _dense(editor, layer)
    dtype = _dtype_of(editor, layer)
    rows, cols = dense.weight.shape
    low = factorise(dense.weight, plan)
    # the factors as stored; the reported error is measured from these
    first, second = low.first.astype(dtype), low.second.astype(dtype)
    low = as_written(low, dense.weight, first, second)
    middle = editor.fresh(f"{dense.output}_low_rank")
    nodes = [
        helper.make_node("MatMul", [dense.data_input, editor.add_initializer(f"{layer.name}.u", first)],
                         [middle], name=editor.fresh(f"{layer.name}_u")),
    ]
    if dense.bias is None:
        nodes.append(helper.make_node("MatMul", [middle, editor.add_initializer(f"{layer.name}.v", second)],
                                      [dense.output], name=editor.fresh(f"{layer.name}_v")))
    else:
        product = editor.fresh(f"{dense.output}_v")
        nodes += [
            helper.make_node("MatMul", [middle, editor.add_initializer(f"{layer.name}.v", second)],
                             [product], name=editor.fresh(f"{layer.name}_v")),
            helper.make_node("Add", [product, editor.add_initializer(f"{layer.name}.bias", dense.bias.astype(dtype))],
                             [dense.output], name=editor.fresh(f"{layer.name}_bias")),
        ]
    editor.replace_nodes(dense.nodes, nodes)
    editor.remove_dead()
    return factorised_note(layer.name, rows, cols, low)


ACTIONS = {
    "convolutionalise-head": convolutionalise_head,
    "pool-pointwise-head": pool_pointwise_head,
    "fold-bias-into-norm": fold_bias_into_norm,
    "factorise-dense": factorise_dense,
}
