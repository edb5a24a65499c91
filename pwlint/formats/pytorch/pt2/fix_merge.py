"""PW006: two linear layers of an exported program merged into one
(:func:`pwlint.fix.merge.merge_linear`).

``first`` is a dense layer or a conv (groups 1, any kernel), ``second`` a dense layer or
a pointwise conv reading ``first``'s output through nodes that keep values as they are:
Dropout in eval form, copies (``clone``, ``alias``, ``contiguous``, ``detach``),
reshapes that leave the tensor's shape as it is or only drop or add unit axes where the
channels are all there is per sample (``(N, C, 1, 1) <-> (N, C)``: a conv over its whole
map read by a dense layer, or back), and at most one BatchNorm in eval form on the
channels (folded into ``first`` first). Everything on that path must be read by the
next node alone. The merged layer is of ``first``'s kind (a conv keeps its window,
stride, padding and dilation), a child ``merged`` of the module holding ``first``'s
weights, with fresh parameters; it writes what ``second`` wrote (through a flatten or
unsqueezes where the unit axes differ, so no size is written into the program), so the
readers of ``second`` and the program's outputs are unchanged. ``first``, the norm and
``second`` and their parameters are dropped.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from pwlint.errors import FixNotApplicable
from pwlint.formats.pytorch.pt2.edit import (
    BATCH_NORMS, COPIES, FLATTEN_TARGETS, LINEAR_CLASS, aten, add_layer, as_numpy, as_torch, call, child_stack,
    constant, erase, fetch, finish, get_attr, layer_nodes, live_readers, module_path, prefix_of, read_dense,
    stack_of, stored,
)
from pwlint.formats.pytorch.pt2.fix_convs import CONV_CLASSES, read_conv, write_conv
from pwlint.fix.actions import Merged
from pwlint.fix.merge import merge_linear, norm_affine
from pwlint.fix.plans import MergeChainPlan
from pwlint.ir import Layer, ModelGraph

DROPOUTS = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default}
PASS_THROUGH = COPIES | {aten.detach.default}
#: the most nodes looked through between the two layers
LONGEST = 32


@dataclass
class Side:
    """One layer of the chain: ``y = weight . x + bias`` with ``weight`` ``(out, in, *K)``."""

    layer: Layer
    node: fx.Node  # the operator
    data: fx.Node  # what it reads
    output: fx.Node  # what holds its output (a separate bias add, if there is one)
    weight: np.ndarray  # float64
    bias: np.ndarray | None
    dtype: torch.dtype
    attrs: tuple[str | None, ...]
    removed: tuple[fx.Node, ...]  # its nodes, readers first
    conv: object = None  # the fix_convs.Conv of a conv

    @property
    def is_conv(self) -> bool:
        return self.conv is not None


def read_side(gm: fx.GraphModule, layer: Layer) -> Side:
    if layer.kind == "conv":
        conv = read_conv(gm, layer)
        if conv.groups != 1:
            raise FixNotApplicable(f"'{layer.name}' is a grouped convolution ({conv.groups} groups)")
        return Side(layer, conv.node, conv.data, conv.node, conv.kernel, conv.bias, conv.dtype,
                    (conv.weight_attr, conv.bias_attr), (conv.node,), conv)
    if layer.kind == "dense":
        dense = read_dense(gm, layer)
        return Side(layer, dense.node, dense.data, dense.output, np.asarray(dense.weight, np.float64).T,
                    dense.bias, dense.dtype, (dense.weight_attr, dense.bias_attr), dense.removed)
    raise FixNotApplicable(f"'{layer.name}' is not a dense layer or a convolution")


def _dims(node) -> tuple[str, ...] | None:
    """A node's shape as text (symbolic sizes by name), None when unknown."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(str(d) for d in shape)


@dataclass
class Norm:
    node: fx.Node
    affine: tuple[np.ndarray, np.ndarray]
    attrs: tuple[str | None, ...]


def _read_norm(gm: fx.GraphModule, node: fx.Node, channels: int, where: str) -> Norm:
    normal = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    args = normal.kwargs if normal is not None else {}
    if args.get("training"):
        raise FixNotApplicable(f"the BatchNorm {where} runs in training mode")
    mean_node, var_node = args.get("running_mean"), args.get("running_var")
    eps = args.get("eps", args.get("epsilon"))
    if mean_node is None or var_node is None or not isinstance(eps, float):
        raise FixNotApplicable(f"the BatchNorm {where} has no stored running statistics")
    mean, var = as_numpy(constant(gm, mean_node)), as_numpy(constant(gm, var_node))
    weight, bias = args.get("weight"), args.get("bias")
    gamma = np.ones(channels) if weight is None else as_numpy(constant(gm, weight))
    beta = np.zeros(channels) if bias is None else as_numpy(constant(gm, bias))
    if any(np.shape(v) != (channels,) for v in (mean, var, gamma, beta)):
        raise FixNotApplicable(f"the BatchNorm {where} does not normalise the {channels} channels")
    attrs = tuple(stored(n) for n in (weight, bias, mean_node, var_node))
    prefix = prefix_of(stored(mean_node) or "")
    tracked = f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"
    return Norm(node, norm_affine(gamma, beta, mean, var, eps), (*attrs, tracked))


class Chain:
    """The nodes from ``first``'s output to what ``second`` reads, checked to keep values."""

    def __init__(self, gm: fx.GraphModule, first: Side, second: Side, plan: MergeChainPlan,
                 norm_layer: Layer | None) -> None:
        self.gm, self.first, self.second, self.plan, self.norm_layer = gm, first, second, plan, norm_layer
        self.channels = first.weight.shape[0]
        self.where = f"between '{plan.first}' and '{plan.second}'"
        self.nodes = self._path()
        self.first_dims = _dims(first.output)
        self.norm: Norm | None = None
        #: whether a reshape between changed the unit axes: the merged output is reshaped to
        #: ``second``'s shape
        self.reshaped = False
        self._check_readers()
        self._classify()

    def _path(self) -> list[fx.Node]:
        path, node = [], self.second.data
        while node is not self.first.output:
            if not isinstance(node, fx.Node) or node.op != "call_function" or len(path) >= LONGEST \
                    or not node.args or not isinstance(node.args[0], fx.Node):
                raise FixNotApplicable(f"'{self.plan.second}' does not read the output of '{self.plan.first}'")
            path.append(node)
            node = node.args[0]
        return path[::-1]

    def _check_readers(self) -> None:
        if len(live_readers(self.first.output)) != 1:
            raise FixNotApplicable(f"the output of '{self.plan.first}' has other readers than '{self.plan.second}'")
        for node in self.nodes:
            if len(live_readers(node)) != 1:
                raise FixNotApplicable(f"'{node.name}' {self.where} has other readers")

    def _classify(self) -> None:
        for node in self.nodes:
            if node.target in DROPOUTS:
                normal = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
                if normal is None or normal.kwargs.get("train") is not False:
                    raise FixNotApplicable(f"the dropout '{node.name}' {self.where} runs in training mode")
            elif node.target in BATCH_NORMS:
                self._norm(node)
            elif node.target is operator.getitem:
                if not (self.norm is not None and node.args[0] is self.norm.node and node.args[1] == 0):
                    raise FixNotApplicable(f"'{node.name}' {self.where} does not keep values as they are")
            elif node.target in FLATTEN_TARGETS:
                self._reshape(node)
            elif node.target not in PASS_THROUGH:
                raise FixNotApplicable(f"'{node.name}' ({node.target}) {self.where} does not keep values as they are")
        want = self.second.weight.shape[1]
        if want != self.channels:
            raise FixNotApplicable(f"'{self.plan.second}' reads {want} channels, '{self.plan.first}' writes "
                                   f"{self.channels}")
        read = _dims(self.second.data)
        axis = 1 if self.second.is_conv else -1
        # without a reshape, a conv's channels (axis 1) are what a dense layer reads (the last) nowhere
        if read is None or read[axis] != str(self.channels) \
                or (not self.reshaped and self.first.is_conv != self.second.is_conv):
            raise FixNotApplicable(f"'{self.plan.second}' does not read the channels '{self.plan.first}' writes")
        if self.reshaped and _dims(self.second.output) is None:
            raise FixNotApplicable(f"the shape '{self.plan.second}' writes is not known")

    def _unit(self, dims) -> bool:
        """A ``(N, C, 1, ...)`` or ``(N, C)`` shape: the channels are all there is per sample."""
        return dims is not None and len(dims) >= 2 and dims[1] == str(self.channels) \
            and all(d == "1" for d in dims[2:])

    def _norm(self, node: fx.Node) -> None:
        where = f"'{node.name}' {self.where}"
        if self.norm is not None:
            raise FixNotApplicable(f"more than one BatchNorm {self.where}")
        if self.norm_layer is not None:
            names = {n.name for n in layer_nodes(self.gm, self.norm_layer)}
            if node.name not in names:
                raise FixNotApplicable(f"the BatchNorm {self.where} is not '{self.plan.norm}'")
        dims = _dims(node.args[0])
        # a BatchNorm normalises axis 1: a conv's channels as it wrote them, a dense layer's
        # only in a (N, C) tensor, or either once the channels are all there is per sample
        on_axis = dims is not None and len(dims) >= 2 and dims[1] == str(self.channels) and dims == self.first_dims \
            and (self.first.is_conv or len(dims) == 2)
        if not (on_axis or (self._unit(dims) and self._unit(self.first_dims))):
            raise FixNotApplicable(f"the BatchNorm {where} does not normalise the channels '{self.plan.first}' writes")
        self.norm = _read_norm(self.gm, node, self.channels, where)

    def _reshape(self, node: fx.Node) -> None:
        before, after = _dims(node.args[0]), _dims(node)
        if before is not None and before == after:
            return  # the shape stays: the values do too
        # (N, C, 1, 1) <-> (N, C): each channel stays itself; the merged output is reshaped to match
        if self._unit(before) and self._unit(after) and before[0] == after[0]:
            self.reshaped = True
            return
        raise FixNotApplicable(f"the reshape '{node.name}' {self.where} changes which values are read together")

    def dropped(self) -> list[str | None]:
        return [*self.first.attrs, *self.second.attrs, *(self.norm.attrs if self.norm else ())]


def merge_chain(gm: fx.GraphModule, graph: ModelGraph, plan: MergeChainPlan) -> Merged:
    """Replace ``plan.first`` .. ``plan.second`` by one layer of ``first``'s kind."""
    first, second = read_side(gm, graph.layer(plan.first)), read_side(gm, graph.layer(plan.second))
    if second.is_conv and not second.conv.is_pointwise:
        raise FixNotApplicable(f"'{plan.second}' is not a pointwise conv (1x1, stride 1, no padding)")
    chain = Chain(gm, first, second, plan, graph.layer(plan.norm) if plan.norm is not None else None)
    if plan.norm is not None and chain.norm is None:
        raise FixNotApplicable(f"'{plan.norm}' is not between '{plan.first}' and '{plan.second}'")
    weight, bias = merge_linear(first.weight, first.bias, second.weight, second.bias,
                                chain.norm.affine if chain.norm else None)
    # the parameters as the lint graph counts them (a BatchNorm's scale and shift), as every backend reports
    params_before = sum(graph.layer(name).params for name in plan.layers())
    # everything is read and checked: from here on the module changes
    prefix = prefix_of(first.attrs[0])
    path = module_path(first.node) or prefix
    name, target = add_layer(gm, prefix, "merged", as_torch(weight, first.dtype), as_torch(bias, first.dtype))
    path = f"{path}.{name}" if path else name
    before = second.output
    if first.is_conv:
        conv = first.conv
        stack = child_stack(first.node, target, path, CONV_CLASSES[conv.rank])
        output = write_conv(gm, first.data, target, True, conv.stride, conv.padding, conv.dilation, 1, stack, before)
    else:
        stack = child_stack(first.node, target, path, LINEAR_CLASS)
        args = (first.data, get_attr(gm, f"{target}.weight", before), get_attr(gm, f"{target}.bias", before))
        output = call(gm, aten.linear.default, args, stack, before)
    if chain.reshaped:  # (N, Cout, 1, 1) or (N, Cout) as second wrote it: no size is written in
        outer = stack_of(chain.nodes[-1])
        rank, wanted = len(chain.first_dims), len(_dims(second.output))
        if rank > 2 and wanted != rank:
            output, rank = call(gm, aten.flatten.using_ints, (output, 1), outer, before), 2
        for _ in range(wanted - rank):
            output = call(gm, aten.unsqueeze.default, (output, -1), outer, before)
    second.output.replace_all_uses_with(output)
    # readers before what they read: second, the path back to first, first
    erase(gm, [*second.removed, *chain.nodes[::-1], *first.removed])
    finish(gm, chain.dropped())
    merged = fetch(gm, f"{target}.weight").numel() + fetch(gm, f"{target}.bias").numel()
    return Merged(params_before, merged)
