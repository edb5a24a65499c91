"""The fix plans carried out on the ``torch.fx.GraphModule`` of an exported program
(see :mod:`pwlint.fix.actions`).

:class:`Pt2Rewriter` works on the GraphModule (``ExportedProgram.module()``) and the
model's :class:`~pwlint.ir.ModelGraph` as the torch loader reads the same program; how
layers are found in it and written into it is :mod:`pwlint.formats.pytorch.pt2.edit`. A
rewrite reads and checks everything first and raises :class:`FixNotApplicable` before
the first change; then it edits the graph and the module's parameters. The numbers are
computed by the shared arithmetic (:mod:`pwlint.fix.head`, :mod:`pwlint.fix.fold`,
:mod:`pwlint.fix.lowrank`, :mod:`pwlint.fix.convsplit`, :mod:`pwlint.fix.merge`) in
numpy and stored back in the parameters' dtype. Convolutions factorised (PW002 on a
conv, PW005) are :mod:`~pwlint.formats.pytorch.pt2.fix_convs`, merged chains (PW006)
:mod:`~pwlint.formats.pytorch.pt2.fix_merge`.

New nodes take the ``nn_module_stack`` of the node they replace, so that the program
exported again names them as before: the conv that replaces ``classifier.1`` is still
``classifier.1``, the factors of ``classifier.1`` are ``classifier.1.u`` and
``classifier.1.v``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from pwlint.errors import FixNotApplicable
from pwlint.formats.pytorch.pt2 import fix_convs, fix_merge
from pwlint.formats.pytorch.pt2.edit import (
    BATCH_NORMS, COPIES, FLATTEN_TARGETS, CONV_TARGETS, INSTANCE_NORMS, LINEAR_CLASS, aten, add_layer, as_numpy,
    as_torch, call, child_stack, constant, fetch, finish, get_attr, layer_nodes, module_path, only, outer_stack,
    owner_of, prefix_of, read_dense, readers, set_param, stack_of, stored,
)
from pwlint.fix.actions import ConvFactorised, Factorised, Merged
from pwlint.fix.fold import folded_mean
from pwlint.fix.head import head_kernels
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan, FoldBiasPlan, HeadPlan, MergeChainPlan
from pwlint.ir import ModelGraph


def _feature_map(flat: fx.Node, plan: HeadPlan, name: str) -> fx.Node:
    data = flat.args[0]
    if not plan.channels_last:
        return data
    while isinstance(data, fx.Node) and data.target in COPIES:
        data = data.args[0]
    perm = [0, *range(2, len(plan.positions) + 2), 1]
    if not (isinstance(data, fx.Node) and data.target is aten.permute.default and list(data.args[1]) == perm):
        raise FixNotApplicable(f"the channels-last flatten '{name}' is not fed by an NCHW -> NHWC permute")
    return data.args[0]


class Pt2Rewriter:
    """Carries plans out on the GraphModule ``gm``; ``graph`` is the torch loader's lint
    graph of the same program."""

    def __init__(self, gm: fx.GraphModule, graph: ModelGraph) -> None:
        self.gm = gm
        self.graph = graph

    # PW001 ------------------------------------------------------------------------------
    def rewrite_head(self, plan: HeadPlan) -> None:
        gm = self.gm
        flat_layer = self.graph.layer(plan.flatten)
        flat = only(layer_nodes(gm, flat_layer), FLATTEN_TARGETS, flat_layer, "flatten or reshape")
        denses = [read_dense(gm, self.graph.layer(name)) for name in plan.denses]
        feature = _feature_map(flat, plan, flat_layer.name)
        value = feature.meta.get("val")
        if value is not None and (len(value.shape) != 4 or value.shape[1] != plan.channels
                                  or tuple(value.shape[2:]) != plan.positions):
            size = "x".join(map(str, [plan.channels, *plan.positions]))
            raise FixNotApplicable(f"the map '{flat_layer.name}' flattens is not {size}")
        kernels = head_kernels([d.weight for d in denses], plan.channels, plan.positions, plan.order, plan.pool)
        # everything is read and checked: from here on the module changes
        outer = outer_stack(flat)
        data = feature
        if plan.pool:
            data = call(gm, aten.adaptive_avg_pool2d.default, (feature, [1, 1]), outer, denses[0].node)
        for index, (dense, kernel) in enumerate(zip(denses, kernels)):
            set_param(gm, dense.weight_attr, torch.from_numpy(kernel).to(dense.dtype), fetch(gm, dense.weight_attr))
            source = data if index == 0 else dense.data
            weight_node = get_attr(gm, dense.weight_attr, dense.node)
            bias_node = None
            if dense.bias is not None:
                old_bias = fetch(gm, dense.bias_attr)
                set_param(gm, dense.bias_attr, as_torch(dense.bias, old_bias.dtype), old_bias)
                bias_node = get_attr(gm, dense.bias_attr, dense.node)
            conv = call(gm, aten.conv2d.default, (source, weight_node, bias_node), stack_of(dense.node), dense.node)
            replacement = conv
            if index == len(denses) - 1:
                replacement = call(gm, aten.flatten.using_ints, (conv, 1), outer, dense.node)
            dense.output.replace_all_uses_with(replacement)
            for node in dense.removed:
                gm.graph.erase_node(node)
        finish(gm)

    # PW004 ------------------------------------------------------------------------------
    def fold_bias(self, plan: FoldBiasPlan) -> None:
        gm = self.gm
        conv, add, bias_node = self._conv_bias(plan)
        bias_attr = stored(bias_node)
        norm_layer = self.graph.layer(plan.norm)
        norm = only(layer_nodes(gm, norm_layer), set(BATCH_NORMS) | set(INSTANCE_NORMS), norm_layer, "normalisation")
        mean_node, folded = self._folded_mean(norm, plan, as_numpy(constant(gm, bias_node)))
        # everything is read and checked: from here on the module changes
        if mean_node is not None:
            self._store_mean(norm, mean_node, folded)
        if add is not None:
            add.replace_all_uses_with(conv)
            gm.graph.erase_node(add)
        else:
            args = list(conv.args)
            if len(args) > 2:
                args[2] = None
                conv.args = tuple(args)
            else:
                conv.kwargs = {**conv.kwargs, "bias": None}
        finish(gm, [bias_attr])

    def _conv_bias(self, plan: FoldBiasPlan) -> tuple[fx.Node, fx.Node | None, fx.Node]:
        """The conv node, the separate add of its bias (or None) and the bias's node: a
        stored parameter no other layer reads."""
        gm, conv_layer = self.gm, self.graph.layer(plan.conv)
        conv_nodes = layer_nodes(gm, conv_layer)
        conv = only(conv_nodes, CONV_TARGETS, conv_layer, "convolution")
        bias_node = conv.args[2] if len(conv.args) > 2 else conv.kwargs.get("bias")
        add = None
        if bias_node is None:  # conv without bias, then a separate add of a stored bias
            adds = [u for u in conv.users if u.target is aten.add.Tensor and u in conv_nodes]
            if len(adds) != 1 or len(conv.users) != 1:
                raise FixNotApplicable(f"'{plan.conv}' has no bias")
            add = adds[0]
            bias_node = next(a for a in add.args[:2] if a is not conv)
        bias_attr = stored(bias_node)
        if bias_attr is None:
            raise FixNotApplicable(f"the bias of '{plan.conv}' is not a stored parameter")
        if len(readers(gm, bias_attr)) > 1:
            raise FixNotApplicable(f"the bias of '{plan.conv}' is shared with another layer")
        return conv, add, bias_node

    def _folded_mean(self, norm: fx.Node, plan: FoldBiasPlan, bias: np.ndarray):
        """For a BatchNorm in inference, its running mean's node and the mean with the bias
        folded in; for an InstanceNorm on its input's statistics, ``(None, None)``."""
        if norm.target not in BATCH_NORMS:
            uses_input_stats = norm.args[INSTANCE_NORMS[norm.target]] if len(norm.args) > 5 else True
            if not uses_input_stats:
                raise FixNotApplicable(f"the InstanceNorm '{plan.norm}' uses running statistics")
            return None, None
        mean_index, training_index = BATCH_NORMS[norm.target]
        if training_index is not None and len(norm.args) > training_index and norm.args[training_index]:
            raise FixNotApplicable(f"the BatchNorm '{plan.norm}' runs in training mode")
        mean_node = norm.args[mean_index]
        if not isinstance(mean_node, fx.Node) or mean_node.op != "get_attr":
            raise FixNotApplicable(f"the BatchNorm '{plan.norm}' has no stored running mean")
        mean = constant(self.gm, mean_node)
        return mean_node, as_torch(folded_mean(as_numpy(mean), bias, plan.conv, plan.norm), mean.dtype)

    def _store_mean(self, norm: fx.Node, mean_node: fx.Node, folded: torch.Tensor) -> None:
        """The norm reads ``folded`` as its running mean: in place, or as a new buffer when
        another node reads the old one."""
        gm = self.gm
        owner, name = owner_of(gm, mean_node.target)
        if len(readers(gm, mean_node.target)) > 1:
            new_name = name + "_folded"
            while hasattr(owner, new_name):
                new_name += "_"
            owner.register_buffer(new_name, folded)
            path = mean_node.target.rpartition(".")[0]
            norm.replace_input_with(mean_node, get_attr(gm, f"{path}.{new_name}" if path else new_name, norm))
        elif name in owner._buffers:
            owner._buffers[name] = folded
        else:
            delattr(owner, name)
            owner.register_buffer(name, folded)

    # PW002 ------------------------------------------------------------------------------
    def factorise(self, plan: FactorisePlan) -> Factorised:
        layer = self.graph.layer(plan.dense)
        if layer.kind == "conv":  # a conv's kernel is factorised as a matrix: two convs
            return fix_convs.factorise_conv_matrix(self.gm, layer, plan, factorise)
        gm = self.gm
        dense = read_dense(gm, layer)
        low = factorise(dense.weight, plan)  # [in, out] = first @ second
        # everything is read and checked: from here on the module changes
        prefix = prefix_of(dense.weight_attr)
        layer_path = module_path(dense.node) or prefix
        source, targets = dense.data, []
        for base, factor, bias in (("u", low.first.T, None), ("v", low.second.T, dense.bias)):
            name, target = add_layer(gm, prefix, base, as_torch(factor, dense.dtype),
                                     None if bias is None else as_torch(bias, dense.dtype))
            stack = child_stack(dense.node, target, f"{layer_path}.{name}" if layer_path else name, LINEAR_CLASS)
            weight = get_attr(gm, f"{target}.weight", dense.node)
            bias_node = get_attr(gm, f"{target}.bias", dense.node) if bias is not None else None
            source = call(gm, aten.linear.default, (source, weight, bias_node), stack, dense.node)
            targets.append(target)
        dense.output.replace_all_uses_with(source)
        for node in dense.removed:
            gm.graph.erase_node(node)
        finish(gm, [dense.weight_attr, dense.bias_attr])
        # the error of the parameters the program now holds ([rank, in] and [out, rank]), which
        # are what torch.export saves: a slip between the SVD and the module shows in the report
        written = [fetch(gm, f"{target}.weight").detach().double().numpy().T for target in targets]
        rows, cols = dense.weight.shape
        return Factorised(rows, cols, as_written(low, dense.weight, *written))

    # PW005 ------------------------------------------------------------------------------
    def factorise_conv(self, plan: ConvFactorisePlan) -> ConvFactorised:
        return fix_convs.split_conv(self.gm, self.graph.layer(plan.conv), plan)

    # PW006 ------------------------------------------------------------------------------
    def merge_chain(self, plan: MergeChainPlan) -> Merged:
        return fix_merge.merge_chain(self.gm, self.graph, plan)
