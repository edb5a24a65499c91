"""Reading layers out of, and writing layers into, the ``torch.fx.GraphModule`` of an
exported program: what every ``.pt2`` rewrite (:mod:`pwlint.formats.pytorch.pt2.fixes`,
:mod:`~pwlint.formats.pytorch.pt2.fix_convs`, :mod:`~pwlint.formats.pytorch.pt2.fix_merge`)
shares.

Parameters and buffers are ``get_attr`` nodes, operators ATen calls. Layers are found by
the loader's names: a layer's ``members`` are the FX node names it was built from, and a
node's ``meta["nn_module_stack"]`` says which module call it belongs to. New layers are
new child modules holding fresh parameters (:func:`add_layer`), named in the stack of
the node they replace (:func:`child_stack`), so that the program exported again saves
them under those names and the loader names the layers after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from pwlint.errors import FixNotApplicable
from pwlint.fix.head import dense_terms
from pwlint.ir import Layer

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

def module_path(node: fx.Node) -> str | None:
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
    if module and nodes and not any(module_path(n) == module for n in nodes):
        nodes = []  # the names moved: trust the module stack
    if not nodes and module:
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and module_path(n) == module]
    if not nodes:
        raise FixNotApplicable(f"'{layer.name}' is not in the exported program")
    return nodes


def only(nodes: list[fx.Node], targets, layer: Layer, what: str) -> fx.Node:
    found = [n for n in nodes if n.target in targets]
    if len(found) != 1:
        raise FixNotApplicable(f"'{layer.name}' is not a single {what} operator")
    return found[0]


def fetch(gm: fx.GraphModule, target: str) -> torch.Tensor:
    value = gm
    for atom in target.split("."):
        value = getattr(value, atom)
    return value


def owner_of(gm: fx.GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def constant(gm: fx.GraphModule, node, depth: int = 0) -> torch.Tensor:
    """The value of a node computed from stored tensors only (a weight, ``t(weight)``)."""
    if not isinstance(node, fx.Node):
        return node
    if node.op == "get_attr":
        value = fetch(gm, node.target)
        if not isinstance(value, torch.Tensor):
            raise FixNotApplicable(f"'{node.target}' is not a tensor")
        return value.detach()
    if node.op != "call_function" or depth > 8 or not isinstance(node.target, torch._ops.OpOverload):
        raise FixNotApplicable(f"'{node.name}' is not computed from stored weights alone")
    args = fx.node.map_arg(node.args, lambda n: constant(gm, n, depth + 1))
    kwargs = fx.node.map_arg(node.kwargs, lambda n: constant(gm, n, depth + 1))
    with torch.no_grad():
        return node.target(*args, **kwargs)


def stored(node) -> str | None:
    """The attribute a weight node reads, directly or through a transpose or view."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in WEIGHT_VIEWS:
        node = node.args[0]
    return node.target if isinstance(node, fx.Node) and node.op == "get_attr" else None


def readers(gm: fx.GraphModule, target: str) -> list[fx.Node]:
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
    node = only(nodes, targets, layer, "dense")
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
    weight_attr = stored(weight_node)
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
        if len(readers(gm, attr)) > 1:
            raise FixNotApplicable(f"'{attr}' is shared with another layer")
    removed = (output, node) if output is not node else (node,)
    return Dense(node, data, output, matrix, bias, weight.dtype, weight_attr, bias_attr, removed)


# writing ------------------------------------------------------------------------------

def set_param(gm: fx.GraphModule, target: str, value: torch.Tensor, like: torch.Tensor | None = None) -> None:
    owner, name = owner_of(gm, target)
    requires_grad = bool(like.requires_grad) if like is not None else True
    if hasattr(owner, name) and name not in owner._parameters:
        delattr(owner, name)
    owner.register_parameter(name, torch.nn.Parameter(value.detach().clone().contiguous(), requires_grad=requires_grad))


def drop_unused(gm: fx.GraphModule, targets) -> None:
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
            owner, name = owner_of(gm, target)
            if hasattr(owner, name):
                delattr(owner, name)


def finish(gm: fx.GraphModule, dropped=()) -> None:
    drop_unused(gm, dropped)
    gm.graph.lint()
    gm.recompile()


def call(gm: fx.GraphModule, target, args: tuple, stack: dict | None, before: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        node = gm.graph.call_function(target, args)
    if stack is not None:
        node.meta["nn_module_stack"] = dict(stack)
    return node


def get_attr(gm: fx.GraphModule, target: str, before: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(target)


def stack_of(node: fx.Node) -> dict:
    return dict(node.meta.get("nn_module_stack") or {})


def outer_stack(node: fx.Node) -> dict:
    """The module calls around ``node`` without the leaf module it belongs to (an
    ``nn.Flatten``): where a pooling or flatten that replaces it is named."""
    stack = stack_of(node)
    if len(stack) > 1:
        stack.pop(list(stack)[-1])
    return stack


def child_stack(node: fx.Node, target: str, path: str, cls: str) -> dict:
    """``node``'s module stack with the call of a child module ``path`` (of class ``cls``,
    stored at ``target``) added: the loader names the new node's layer ``path``."""
    stack = stack_of(node)
    stack[target] = (path, cls)
    return stack


def fresh_name(owner: torch.nn.Module, base: str) -> str:
    """``base``, with underscores added until ``owner`` has no attribute of that name."""
    name = base
    while hasattr(owner, name):
        name += "_"
    return name


def add_layer(gm: fx.GraphModule, prefix: str, base: str, weight: torch.Tensor,
              bias: torch.Tensor | None = None) -> tuple[str, str]:
    """A new child module of ``prefix`` (a module path, ``""`` for the top) holding
    ``weight`` and ``bias`` as parameters, under a fresh name made from ``base``:
    ``(name, target)``, the target being the child's full path."""
    owner = gm.get_submodule(prefix) if prefix else gm
    name = fresh_name(owner, base)
    module = torch.nn.Module()
    module.register_parameter("weight", torch.nn.Parameter(weight.detach().clone().contiguous()))
    if bias is not None:
        module.register_parameter("bias", torch.nn.Parameter(bias.detach().clone().contiguous()))
    owner.add_module(name, module)
    return name, f"{prefix}.{name}" if prefix else name


def prefix_of(target: str) -> str:
    """The module path holding the attribute ``target`` (``""`` at the top)."""
    return target.rpartition(".")[0]


def live_readers(node: fx.Node) -> list[fx.Node]:
    """The nodes reading ``node`` whose value is used (the program's output, or a node read
    in turn): a ``getitem`` of a statistic nothing reads does not count."""
    return [u for u in node.users if u.op == "output" or u.users or u.is_impure()]


def erase(gm: fx.GraphModule, nodes) -> None:
    """Erase ``nodes``, each read by none but the ones erased before it and nodes whose
    values nothing reads (erased first)."""
    for node in nodes:
        for user in list(node.users):
            if user not in live_readers(node):
                gm.graph.erase_node(user)
        gm.graph.erase_node(node)
