"""The fix plans carried out on the ``torch.fx.GraphModule`` of an exported program
(see :mod:`pwlint.fix.actions`).

:class:`Pt2Rewriter` works on the GraphModule (``ExportedProgram.module()``: parameters
and buffers are ``get_attr`` nodes, operators ATen calls) and the model's
:class:`~pwlint.ir.ModelGraph` as the torch loader reads the same program. Layers are
found by the loader's names: a layer's ``members`` are the FX node names it was built
from, and a node's ``meta["nn_module_stack"]`` says which module call it belongs to. A
rewrite reads and checks everything first and raises :class:`FixNotApplicable` before
the first change; then it edits the graph and the module's parameters. The numbers are
computed by the shared arithmetic (:mod:`pwlint.fix.head`, :mod:`pwlint.fix.fold`,
:mod:`pwlint.fix.lowrank`) in numpy and stored back in the parameters' dtype.

New nodes take the ``nn_module_stack`` of the node they replace, so that the program
exported again names them as before: the conv that replaces ``classifier.1`` is still
``classifier.1``, the factors of ``classifier.1`` are ``classifier.1.u`` and
``classifier.1.v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import Factorised
from pwlint.fix.fold import folded_mean
from pwlint.fix.head import dense_terms, head_kernels
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import FactorisePlan, FoldBiasPlan, HeadPlan
from pwlint.ir import Layer, ModelGraph

aten = torch.ops.aten

CONV_TARGETS = {aten.conv2d.default, aten.convolution.default, aten.conv1d.default, aten.conv3d.default}
FLATTEN_TARGETS = {
    aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
    aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default,
}
#: ops between a layout permute and the flatten that change nothing
COPIES = {aten.contiguous.default, aten.clone.default, aten.alias.default}
#: batch norms: (running_mean index, training index or None)
BATCH_NORMS = {
    aten.batch_norm.default: (3, 5),
    aten.native_batch_norm.default: (3, 5),
    aten._native_batch_norm_legit.default: (3, 5),
    aten._native_batch_norm_legit_no_training.default: (3, None),
    aten.cudnn_batch_norm.default: (3, 5),
}
INSTANCE_NORMS = {aten.instance_norm.default: 5}
#: what may lie between a stored weight and the operator reading it
WEIGHT_VIEWS = {
    aten.t.default, aten.permute.default, aten.transpose.int, aten.view.default, aten.reshape.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
}
LINEAR_CLASS = "torch.nn.modules.linear.Linear"


# reading ------------------------------------------------------------------------------

def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1]
    return path[0] if isinstance(path, tuple) else None


def layer_nodes(gm: fx.GraphModule, layer: Layer) -> list[fx.Node]:
    """The FX nodes of a layer: by the node names the loader folded into it, else by the
    module call (``nn_module_stack``) the layer is named after."""
    names = set(layer.members[1:])
    module = layer.attrs.get("module")
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.name in names]
    if module and nodes and not any(_module_path(n) == module for n in nodes):
        nodes = []  # the names moved: trust the module stack
    if not nodes and module:
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and _module_path(n) == module]
    if not nodes:
        raise FixNotApplicable(f"'{layer.name}' is not in the exported program")
    return nodes


def _only(nodes: list[fx.Node], targets, layer: Layer, what: str) -> fx.Node:
    found = [n for n in nodes if n.target in targets]
    if len(found) != 1:
        raise FixNotApplicable(f"'{layer.name}' is not a single {what} operator")
    return found[0]


def _fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    value = gm
    for atom in target.split("."):
        value = getattr(value, atom)
    return value


def _owner(gm: fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def constant(gm: fx.GraphModule, node, depth: int = 0) -> torch.Tensor:
    """The value of a node computed from stored tensors only (a weight, ``t(weight)``)."""
    if not isinstance(node, fx.Node):
        return node
    if node.op == "get_attr":
        value = _fetch(gm, node.target)
        if not isinstance(value, torch.Tensor):
            raise FixNotApplicable(f"'{node.target}' is not a tensor")
        return value.detach()
    if node.op != "call_function" or depth > 8 or not isinstance(node.target, torch._ops.OpOverload):
        raise FixNotApplicable(f"'{node.name}' is not computed from stored weights alone")
    args = fx.node.map_arg(node.args, lambda n: constant(gm, n, depth + 1))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: constant(gm, n, depth + 1))
    with torch.no_grad():
        return node.target(*args, **kwargs)


def _stored(node) -> str | None:
    """The attribute a weight node reads, directly or through a transpose or view."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in WEIGHT_VIEWS:
        node = node.args[0]
    return node.target if isinstance(node, fx.Node) and node.op == "get_attr" else None


def _readers(gm: fx.GraphModule, target: str) -> list[fx.Node]:
    return [u for n in gm.graph.nodes if n.op == "get_attr" and n.target == target for u in n.users]


@dataclass
class Dense:
    """A dense layer as ``y = x @ weight + bias`` whatever its ATen form."""

    node: fx.Node  # linear / addmm / mm / matmul
    data: fx.Node
    output: fx.Node  # the node whose value is the layer's output (the bias add, if separate)
    weight: np.ndarray  # [in, out]
    bias: np.ndarray | None  # [out]
    dtype: torch.dtype
    weight_attr: str
    bias_attr: str | None
    removed: tuple[fx.Node, ...]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as numpy (sharing memory where the dtype allows; bfloat16, which
    numpy lacks, as float32)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def as_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def read_dense(gm: fx.GraphModule, layer: Layer) -> Dense:
    nodes = layer_nodes(gm, layer)
    targets = {aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default}
    node = _only(nodes, targets, layer, "dense")
    bias_node, output, alpha, beta = None, node, 1.0, 1.0
    if node.target is aten.linear.default:
        data, weight_node = node.args[0], node.args[1]
        bias_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        weight = constant(gm, weight_node)  # [out, in]
    elif node.target is aten.addmm.default:
        bias_node, data, weight_node = node.args[:3]
        alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
        weight = constant(gm, weight_node)
    else:
        data, weight_node = node.args[:2]
        weight = constant(gm, weight_node)
        adds = [u for u in node.users if u.target is aten.add.Tensor and u in nodes]
        if len(adds) == 1 and len(node.users) == 1:
            output = adds[0]
            bias_node = next(a for a in output.args[:2] if a is not node)
    if not isinstance(data, fx.Node) or weight.dim() != 2:
        raise FixNotApplicable(f"'{layer.name}' does not multiply an activation by a weight matrix")
    if node.target is aten.linear.default:
        weight = weight.T  # [in, out], as every other form has it
    weight_attr = _stored(weight_node)
    if weight_attr is None:
        raise FixNotApplicable(f"the weights of '{layer.name}' are not a stored parameter")
    bias, bias_attr = None, None
    if bias_node is not None:
        bias = as_numpy(constant(gm, bias_node))
        bias_attr = bias_node.target if isinstance(bias_node, fx.Node) and bias_node.op == "get_attr" else None
        if bias_attr is None:
            raise FixNotApplicable(f"the bias of '{layer.name}' is not a stored parameter")
    matrix, bias = dense_terms(as_numpy(weight), bias, layer.name, alpha, beta)
    for attr in filter(None, (weight_attr, bias_attr)):
        if len(_readers(gm, attr)) > 1:
            raise FixNotApplicable(f"'{attr}' is shared with another layer")
    removed = (output, node) if output is not node else (node,)
    return Dense(node, data, output, matrix, bias, weight.dtype, weight_attr, bias_attr, removed)


# writing ------------------------------------------------------------------------------

def _set_param(gm: fx.GraphModule, target: str, value: torch.Tensor, like: torch.Tensor | None = None) -> None:
    owner, name = _owner(gm, target)
    requires_grad = bool(like.requires_grad) if like is not None else True
    if hasattr(owner, name) and name not in owner._parameters:
        delattr(owner, name)
    owner.register_parameter(name, torch.nn.Parameter(value.detach().clone().contiguous(), requires_grad=requires_grad))


def _drop_unused(gm: fx.GraphModule, targets) -> None:
    """Delete nodes nothing reads, then the given attributes if no node reads them any more."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.op in ("call_function", "get_attr") and not node.users and not node.is_impure(impure_random=False):
                gm.graph.erase_node(node)
                changed = True
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for target in targets:
        if target and target not in used:
            owner, name = _owner(gm, target)
            if hasattr(owner, name):
                delattr(owner, name)


def _finish(gm: fx.GraphModule, dropped=()) -> None:
    _drop_unused(gm, dropped)
    gm.graph.lint()
    gm.recompile()


def _call(gm: fx.GraphModule, target, args: tuple, stack: dict | None, before: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        node = gm.graph.call_function(target, args)
    if stack is not None:
        node.meta["nn_module_stack"] = dict(stack)
    return node


def _get_attr(gm: fx.GraphModule, target: str, before: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(target)


def _stack_of(node: fx.Node) -> dict:
    return dict(node.meta.get("nn_module_stack") or {})


def _outer_stack(node: fx.Node) -> dict:
    """The module calls around ``node`` without the leaf module it belongs to (an
    ``nn.Flatten``): where a pooling or flatten that replaces it is named."""
    stack = _stack_of(node)
    if len(stack) > 1:
        stack.pop(list(stack)[-1])
    return stack


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
        flat = _only(layer_nodes(gm, flat_layer), FLATTEN_TARGETS, flat_layer, "flatten or reshape")
        denses = [read_dense(gm, self.graph.layer(name)) for name in plan.denses]
        feature = _feature_map(flat, plan, flat_layer.name)
        value = feature.meta.get("val")
        if value is not None and (len(value.shape) != 4 or value.shape[1] != plan.channels
                                  or tuple(value.shape[2:]) != plan.positions):
            size = "x".join(map(str, [plan.channels, *plan.positions]))
            raise FixNotApplicable(f"the map '{flat_layer.name}' flattens is not {size}")
        kernels = head_kernels([d.weight for d in denses], plan.channels, plan.positions, plan.order, plan.pool)
        # everything is read and checked: from here on the module changes
        outer = _outer_stack(flat)
        data = feature
        if plan.pool:
            data = _call(gm, aten.adaptive_avg_pool2d.default, (feature, [1, 1]), outer, denses[0].node)
        for index, (dense, kernel) in enumerate(zip(denses, kernels)):
            _set_param(gm, dense.weight_attr, torch.from_numpy(kernel).to(dense.dtype), _fetch(gm, dense.weight_attr))
            source = data if index == 0 else dense.data
            weight_node = _get_attr(gm, dense.weight_attr, dense.node)
            bias_node = None
            if dense.bias is not None:
                old_bias = _fetch(gm, dense.bias_attr)
                _set_param(gm, dense.bias_attr, as_torch(dense.bias, old_bias.dtype), old_bias)
                bias_node = _get_attr(gm, dense.bias_attr, dense.node)
            conv = _call(gm, aten.conv2d.default, (source, weight_node, bias_node), _stack_of(dense.node), dense.node)
            replacement = conv
            if index == len(denses) - 1:
                replacement = _call(gm, aten.flatten.using_ints, (conv, 1), outer, dense.node)
            dense.output.replace_all_uses_with(replacement)
            for node in dense.removed:
                gm.graph.erase_node(node)
        _finish(gm)

    # PW004 ------------------------------------------------------------------------------
    def fold_bias(self, plan: FoldBiasPlan) -> None:
        gm = self.gm
        conv, add, bias_node = self._conv_bias(plan)
        bias_attr = _stored(bias_node)
        norm_layer = self.graph.layer(plan.norm)
        norm = _only(layer_nodes(gm, norm_layer), set(BATCH_NORMS) | set(INSTANCE_NORMS), norm_layer, "normalisation")
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
        _finish(gm, [bias_attr])

    def _conv_bias(self, plan: FoldBiasPlan) -> tuple[fx.Node, fx.Node | None, fx.Node]:
        """The conv node, the separate add of its bias (or None) and the bias's node: a
        stored parameter no other layer reads."""
        gm, conv_layer = self.gm, self.graph.layer(plan.conv)
        conv_nodes = layer_nodes(gm, conv_layer)
        conv = _only(conv_nodes, CONV_TARGETS, conv_layer, "convolution")
        bias_node = conv.args[2] if len(conv.args) > 2 else conv.kwargs.get("bias")
        add = None
        if bias_node is None:  # conv without bias, then a separate add of a stored bias
            adds = [u for u in conv.users if u.target is aten.add.Tensor and u in conv_nodes]
            if len(adds) != 1 or len(conv.users) != 1:
                raise FixNotApplicable(f"'{plan.conv}' has no bias")
            add = adds[0]
            bias_node = next(a for a in add.args[:2] if a is not conv)
        bias_attr = _stored(bias_node)
        if bias_attr is None:
            raise FixNotApplicable(f"the bias of '{plan.conv}' is not a stored parameter")
        if len(_readers(gm, bias_attr)) > 1:
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
        owner, name = _owner(gm, mean_node.target)
        if len(_readers(gm, mean_node.target)) > 1:
            new_name = name + "_folded"
            while hasattr(owner, new_name):
                new_name += "_"
            owner.register_buffer(new_name, folded)
            path = mean_node.target.rpartition(".")[0]
            norm.replace_input_with(mean_node, _get_attr(gm, f"{path}.{new_name}" if path else new_name, norm))
        elif name in owner._buffers:
            owner._buffers[name] = folded
        else:
            delattr(owner, name)
            owner.register_buffer(name, folded)

    # PW002 ------------------------------------------------------------------------------
    def factorise(self, plan: FactorisePlan) -> Factorised:
        gm = self.gm
        dense = read_dense(gm, self.graph.layer(plan.dense))
        low = factorise(dense.weight, plan)  # [in, out] = first @ second
        prefix = dense.weight_attr.rpartition(".")[0]
        owner = gm.get_submodule(prefix) if prefix else gm
        names = []
        for base in ("u", "v"):
            name = base
            while hasattr(owner, name):
                name += "_"
            names.append(name)
        # everything is read and checked: from here on the module changes
        stack = _stack_of(dense.node)
        targets = []
        for name, factor, bias in ((names[0], low.first.T, None), (names[1], low.second.T, dense.bias)):
            module = torch.nn.Module()
            module.register_parameter("weight", torch.nn.Parameter(as_torch(factor, dense.dtype)))
            if bias is not None:
                module.register_parameter("bias", torch.nn.Parameter(as_torch(bias, dense.dtype)))
            owner.add_module(name, module)
            targets.append(f"{prefix}.{name}" if prefix else name)
        layer_path = _module_path(dense.node) or prefix
        source = dense.data
        for index, target in enumerate(targets):
            factor_stack = dict(stack)
            factor_stack[target] = (f"{layer_path}.{names[index]}" if layer_path else names[index], LINEAR_CLASS)
            weight = _get_attr(gm, f"{target}.weight", dense.node)
            bias = _get_attr(gm, f"{target}.bias", dense.node) if index == 1 and dense.bias is not None else None
            source = _call(gm, aten.linear.default, (source, weight, bias), factor_stack, dense.node)
        dense.output.replace_all_uses_with(source)
        for node in dense.removed:
            gm.graph.erase_node(node)
        _finish(gm, [dense.weight_attr, dense.bias_attr])
        # the error of the parameters the program now holds ([rank, in] and [out, rank]), which
        # are what torch.export saves: a slip between the SVD and the module shows in the report
        stored = [_fetch(gm, f"{target}.weight").detach().double().numpy().T for target in targets]
        rows, cols = dense.weight.shape
        return Factorised(rows, cols, as_written(low, dense.weight, *stored))
