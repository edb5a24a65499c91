"""Convolutions of an exported program rewritten from smaller convolutions.

- :func:`factorise_conv_matrix` (PW002's ``factorise-dense`` on a conv): the kernel read
  as a ``[Cin*K, Cout]`` matrix (rows in ``(Cin, *K)`` order) is split by
  :func:`pwlint.fix.lowrank.factorise`; the first factor becomes a ``Cin -> r`` conv with
  the original kernel size, stride, padding and dilation (``u``), the second a 1x1
  ``r -> Cout`` conv carrying the bias (``v``). For a pointwise conv that is a pointwise
  bottleneck: two 1x1 convs.
- :func:`split_conv` (PW005): Tucker-2 (1x1 ``Cin -> R1`` ``first``, KxK ``R1 -> R2``
  ``core`` with the original stride, padding and dilation, 1x1 ``R2 -> Cout`` ``last``
  with the bias) or separable (depthwise KxK ``depthwise``, groups ``Cin``, with the
  original stride, padding and dilation, then 1x1 ``Cin -> Cout`` ``pointwise`` with the
  bias), by :mod:`pwlint.fix.convsplit`.

The new convs are children of the module holding the old kernel (``features.0.u``,
``features.0.core``...), with fresh parameters; the old kernel and bias are dropped.
Every error reported is measured from the parameters as stored, in their dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from pwlint.errors import FixNotApplicable
from pwlint.formats.pytorch.pt2.edit import (
    CONV_TARGETS, aten, add_layer, as_numpy, as_torch, call, child_stack, constant, fetch, finish, get_attr,
    layer_nodes, module_path, only, prefix_of, readers, stored,
)
from pwlint.fix.actions import ConvFactorised, Factorised
from pwlint.fix.convsplit import (
    Separable, Tucker2, relative_error, separable, separable_kernel, tucker2, tucker2_kernel,
)
from pwlint.fix.lowrank import LowRank, as_written
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan
from pwlint.ir import Layer

#: convolutions with a padding given as a string (``"same"``, ``"valid"``)
PADDED_BY_NAME = {aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding}
CONVS = CONV_TARGETS | PADDED_BY_NAME
#: the ATen conv written for each spatial rank: (numeric padding, padding by name)
WRITTEN = {
    1: (aten.conv1d.default, aten.conv1d.padding),
    2: (aten.conv2d.default, aten.conv2d.padding),
    3: (aten.conv3d.default, aten.conv3d.padding),
}
CONV_CLASSES = {rank: f"torch.nn.modules.conv.Conv{rank}d" for rank in WRITTEN}


def _per_axis(value, rank: int, what: str, name: str) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    if len(values) == 1:
        values *= rank
    if len(values) != rank or not all(isinstance(v, int) for v in values):
        raise FixNotApplicable(f"the {what} of '{name}' is not {rank} whole numbers")
    return values


@dataclass
class Conv:
    """A convolution as the pieces a rewrite needs; ``kernel`` is ``(Cout, Cin/groups, *K)``."""

    node: fx.Node
    data: fx.Node
    kernel: np.ndarray  # float64
    bias: np.ndarray | None
    dtype: torch.dtype
    weight_attr: str
    bias_attr: str | None
    stride: list[int]
    #: per axis, or by name (``"same"``, ``"valid"``)
    padding: list[int] | str
    dilation: list[int]
    groups: int

    @property
    def rank(self) -> int:
        return self.kernel.ndim - 2

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(self.kernel.shape[2:])

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 conv, stride 1, no padding, groups 1: a dense layer at every position."""
        no_padding = self.padding in ("same", "valid") or not any(self.padding)
        return all(k == 1 for k in self.window) and all(s == 1 for s in self.stride) and no_padding \
            and self.groups == 1


def read_conv(gm: fx.GraphModule, layer: Layer) -> Conv:
    """The layer's single convolution (any spatial rank, not transposed), its kernel and
    bias stored parameters no other layer reads."""
    node = only(layer_nodes(gm, layer), CONVS, layer, "convolution")
    normal = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if normal is None:
        raise FixNotApplicable(f"the arguments of '{layer.name}' cannot be read")
    args = normal.kwargs
    if args.get("transposed"):
        raise FixNotApplicable(f"'{layer.name}' is a transposed convolution")
    data, weight_node, bias_node = args["input"], args["weight"], args.get("bias")
    weight = constant(gm, weight_node)
    if not isinstance(data, fx.Node) or weight.dim() < 3:
        raise FixNotApplicable(f"'{layer.name}' does not convolve an activation with a stored kernel")
    weight_attr = stored(weight_node)
    if weight_attr is None:
        raise FixNotApplicable(f"the kernel of '{layer.name}' is not a stored parameter")
    bias, bias_attr = None, None
    if bias_node is not None:
        bias_attr = bias_node.target if isinstance(bias_node, fx.Node) and bias_node.op == "get_attr" else None
        if bias_attr is None:
            raise FixNotApplicable(f"the bias of '{layer.name}' is not a stored parameter")
        bias = as_numpy(constant(gm, bias_node)).astype(np.float64)
    for attr in filter(None, (weight_attr, bias_attr)):
        if len(readers(gm, attr)) > 1:
            raise FixNotApplicable(f"'{attr}' is shared with another layer")
    rank = weight.dim() - 2
    if rank not in WRITTEN:
        raise FixNotApplicable(f"'{layer.name}' has {rank} spatial dimensions; convs of 1 to 3 are rewritten")
    padding = args.get("padding", 0)
    if not isinstance(padding, str):
        padding = _per_axis(padding, rank, "padding", layer.name)
    groups = args.get("groups", 1)
    if not isinstance(groups, int):
        raise FixNotApplicable(f"the groups of '{layer.name}' are not a whole number")
    return Conv(node, data, as_numpy(weight).astype(np.float64), bias, weight.dtype, weight_attr, bias_attr,
                _per_axis(args.get("stride", 1), rank, "stride", layer.name), padding,
                _per_axis(args.get("dilation", 1), rank, "dilation", layer.name), groups)


def write_conv(gm: fx.GraphModule, data: fx.Node, target: str, has_bias: bool, stride, padding, dilation,
               groups: int, stack: dict, before: fx.Node) -> fx.Node:
    """A conv reading ``data`` with the kernel (and bias) of the module at ``target``."""
    rank = fetch(gm, f"{target}.weight").dim() - 2
    numeric, by_name = WRITTEN[rank]
    weight = get_attr(gm, f"{target}.weight", before)
    bias = get_attr(gm, f"{target}.bias", before) if has_bias else None
    operator = by_name if isinstance(padding, str) else numeric
    return call(gm, operator, (data, weight, bias, list(stride), padding if isinstance(padding, str) else
                               list(padding), list(dilation), groups), stack, before)


class ConvWriter:
    """Writes a chain of convs in place of ``conv``: each a child module of the module
    holding its kernel, named in the stack of the conv it replaces."""

    def __init__(self, gm: fx.GraphModule, conv: Conv) -> None:
        self.gm, self.conv = gm, conv
        self.prefix = prefix_of(conv.weight_attr)
        self.path = module_path(conv.node) or self.prefix
        self.source = conv.data
        self.targets: list[str] = []

    def add(self, base: str, kernel: np.ndarray, bias: np.ndarray | None = None, *, stride=None, padding=None,
            dilation=None, groups: int = 1) -> None:
        """The next conv of the chain; without ``stride``, ``padding``, ``dilation`` a
        pointwise one (1, 0, 1)."""
        conv, rank = self.conv, self.conv.rank
        name, target = add_layer(self.gm, self.prefix, base, as_torch(kernel, conv.dtype),
                                 None if bias is None else as_torch(bias, conv.dtype))
        stack = child_stack(conv.node, target, f"{self.path}.{name}" if self.path else name, CONV_CLASSES[rank])
        self.source = write_conv(self.gm, self.source, target, bias is not None, stride or [1] * rank,
                                 [0] * rank if padding is None else padding, dilation or [1] * rank, groups,
                                 stack, conv.node)
        self.targets.append(target)

    def add_spatial(self, base: str, kernel: np.ndarray, bias: np.ndarray | None = None, groups: int = 1) -> None:
        """The conv of the chain that keeps the original's stride, padding and dilation."""
        conv = self.conv
        self.add(base, kernel, bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=groups)

    def finish(self) -> list[np.ndarray]:
        """Replace the original conv by the chain; the kernels as stored, in float64."""
        conv = self.conv
        conv.node.replace_all_uses_with(self.source)
        self.gm.graph.erase_node(conv.node)
        finish(self.gm, [conv.weight_attr, conv.bias_attr])
        return [fetch(self.gm, f"{t}.weight").detach().double().numpy() for t in self.targets]


def _plain(conv: Conv, name: str) -> None:
    if conv.groups != 1:
        raise FixNotApplicable(f"'{name}' is a grouped convolution ({conv.groups} groups)")


def factorise_conv_matrix(gm: fx.GraphModule, layer: Layer, plan: FactorisePlan,
                          factorise: Callable[[np.ndarray, FactorisePlan], LowRank]) -> Factorised:
    """PW002 on a conv: ``u`` (the original window, stride, padding, dilation; ``Cin -> r``)
    then the 1x1 conv ``v`` (``r -> Cout``, the bias). ``factorise`` is
    :func:`pwlint.fix.lowrank.factorise`."""
    conv = read_conv(gm, layer)
    _plain(conv, layer.name)
    cout, cin, *window = conv.kernel.shape
    matrix = conv.kernel.reshape(cout, -1).T  # [Cin*K, Cout], rows in (Cin, *K) order
    low = factorise(matrix, plan)
    rank, ones = low.rank, [1] * conv.rank
    # everything is read and checked: from here on the module changes
    writer = ConvWriter(gm, conv)
    writer.add_spatial("u", low.first.T.reshape(rank, cin, *window))
    writer.add("v", low.second.T.reshape(cout, rank, *ones), conv.bias)
    first, second = writer.finish()
    written = (first.reshape(rank, -1).T, second.reshape(cout, rank).T)
    return Factorised(*matrix.shape, as_written(low, matrix, *written))


def split_conv(gm: fx.GraphModule, layer: Layer, plan: ConvFactorisePlan) -> ConvFactorised:
    """PW005: the conv as Tucker-2 (``first``, ``core``, ``last``) or separable
    (``depthwise``, ``pointwise``) convs, ``plan.method``."""
    conv = read_conv(gm, layer)
    _plain(conv, layer.name)
    cout, cin, *window = conv.kernel.shape
    ones = [1] * conv.rank
    split = tucker2(conv.kernel, plan) if plan.method == "tucker2" else separable(conv.kernel)
    # everything is read and checked: from here on the module changes
    writer = ConvWriter(gm, conv)
    if isinstance(split, Tucker2):
        r1, r2 = split.ranks
        writer.add("first", split.first.reshape(r1, cin, *ones))
        writer.add_spatial("core", split.core)
        writer.add("last", split.last.reshape(cout, r2, *ones), conv.bias)
        first, core, last = writer.finish()
        first, last = first.reshape(r1, cin), last.reshape(cout, r2)
        written = Tucker2(first, core, last, relative_error(conv.kernel, tucker2_kernel(first, core, last)))
    else:
        writer.add_spatial("depthwise", split.depthwise.reshape(cin, 1, *window), groups=cin)
        writer.add("pointwise", split.pointwise.reshape(cout, cin, *ones), conv.bias)
        depthwise, pointwise = writer.finish()
        depthwise, pointwise = depthwise.reshape(cin, *window), pointwise.reshape(cout, cin)
        written = Separable(depthwise, pointwise,
                            relative_error(conv.kernel, separable_kernel(depthwise, pointwise)))
    return ConvFactorised(cout, cin, tuple(window), written)
