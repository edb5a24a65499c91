"""The fix plans carried out on an ONNX ModelProto (see :mod:`pwlint.fix.actions`).

:class:`OnnxRewriter` reads a plan's layers as numpy arrays, lets the shared
arithmetic (:mod:`pwlint.fix.head`, :mod:`pwlint.fix.fold`, :mod:`pwlint.fix.lowrank`,
:mod:`pwlint.fix.convsplit`, :mod:`pwlint.fix.merge`) compute the new weights and writes
them as ONNX nodes and initializers. Convolutions are rewritten in
:mod:`pwlint.formats.onnx.fix_convs`, linear chains merged in
:mod:`pwlint.formats.onnx.fix_merge`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import ConvFactorised, Factorised, Merged
from pwlint.fix.fold import folded_mean
from pwlint.fix.head import head_kernels
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan, FoldBiasPlan, HeadPlan, MergeChainPlan
from pwlint.formats.onnx import fix_convs, fix_merge
from pwlint.formats.onnx.edit import Editor
from pwlint.formats.onnx.fix_read import (  # noqa: F401  (numpy_dtype, DenseWeights: read from here)
    DenseWeights, constant_source, numpy_dtype, read_dense, weight_dtype,
)
from pwlint.ir import ModelGraph


# the readers live in fix_read (fix_convs and fix_merge share them); the old names stay
_dense, _dtype_of, _constant_source = read_dense, weight_dtype, constant_source


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
        if layer.kind == "conv":  # two convs: the kernel's window on the first, 1x1 on the second
            return fix_convs.factorise_matrix(editor, layer, plan)
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

    def factorise_conv(self, plan: ConvFactorisePlan) -> ConvFactorised:
        return fix_convs.split_conv(self.editor, self.graph.layer(plan.conv), plan)

    def merge_chain(self, plan: MergeChainPlan) -> Merged:
        return fix_merge.merge_chain(self.editor, self.graph, plan)
