"""Normalisations written out in operators, found in a PyTorch program so that the graph
builder (:mod:`pwlint.formats.pytorch.graph`) can make each one a single ``norm`` layer.

Two shapes are recognised, as the ONNX loader does (:mod:`pwlint.formats.onnx.patterns`):

- ``decomposed``: ``x / f(reduce(g(x)))`` or ``x * f(...)`` where ``f`` takes a square
  root: ConvNeXt's channels-first LayerNorm (``(x - u) / sqrt(mean((x - u)^2) + eps)``),
  RMSNorm (``x * rsqrt(mean(x^2) + eps)``), a GroupNorm written with views, a standardisation
  with ``std``. The centring ``x - mean(x)``, views or dtype casts of ``x`` before it, and the
  elementwise affine after it (``weight * y + bias``, through views and casts) join the group.
  A softmax (``exp / sum``: no square root), a global mean, or attention's
  ``q @ k.T / sqrt(d)`` (the divisor is not computed from the dividend) is not a norm.
- ``frozen_batch``: ``x * scale + shift`` with ``scale`` and ``shift`` stored (or computed
  from stored tensors only, as torchvision's ``FrozenBatchNorm2d`` does from its buffers),
  one value per channel of a channels-first tensor.

A group is only formed when it is a closed piece of dataflow: its computed input is the
tensor normalised (and views or casts of it), every intermediate result is read only
inside the group, and it has one output.
So the layer that replaces it keeps the graph's data edges exactly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pwlint.formats.pytorch.program import OpNode, Tensors

#: reductions a decomposed norm computes its statistics with
REDUCTIONS = frozenset({"mean", "sum", "var", "std", "var_mean", "std_mean"})
#: square roots that turn a second moment into a scale (``pow`` with exponent +-0.5 too)
ROOTS = frozenset({"sqrt", "rsqrt", "std", "std_mean"})
ELEMENTWISE = frozenset({"add", "sub", "mul", "div", "pow", "sqrt", "rsqrt", "reciprocal", "clamp", "clamp_min"})
#: operators that change how a tensor is stored, not what it holds
CONVERSIONS = frozenset({"to", "_to_copy", "type_as", "clone", "contiguous", "alias", "detach"})
VIEWS = frozenset({"view", "reshape", "_unsafe_view", "unflatten", "flatten", "view_as", "reshape_as"})
#: what may lie between the statistic's reductions and the scale the input is divided by
STATISTIC_OPS = REDUCTIONS | ELEMENTWISE | CONVERSIONS | {"getitem"}
#: how far back from the divisor the statistic is followed
MAX_DEPTH = 10
#: how many views, casts and affine operators before and after the core may join
MAX_AROUND = 4


@dataclass
class NormGroup:
    """Node indices of one written-out normalisation and its ``norm_type``."""

    members: list[int]
    norm_type: str


class _Finder:
    def __init__(self, nodes: list[OpNode], tensors: Tensors, consumers: dict[str, list[int]], outputs) -> None:
        self.nodes = nodes
        self.tensors = tensors
        self.consumers = consumers
        self.outputs = frozenset(outputs)
        self.taken: set[int] = set()

    # helpers ----------------------------------------------------------------------
    def _base(self, index: int) -> str:
        node = self.nodes[index]
        if node.namespace == "_operator" and node.base == "getitem":
            return "getitem"
        return node.base if node.namespace in ("aten", "prims") else ""

    def _producer(self, tensor: str | None) -> int | None:
        return self.tensors.producer.get(tensor) if tensor is not None else None

    def _computed(self, node: OpNode) -> list[str]:
        """The tensor arguments of ``node`` that are not stored values, in order, without repeats."""
        return list(dict.fromkeys(t for _, t in node.tensor_args() if not self.tensors.is_const(t)))

    def _sole_consumer(self, tensor: str) -> int | None:
        users = set(self.consumers.get(tensor, []))
        if len(users) != 1 or tensor in self.outputs:
            return None
        return next(iter(users))

    def _read_inside(self, index: int, members: set[int]) -> bool:
        """Every output of node ``index`` is read only by ``members``."""
        return all(
            out not in self.outputs and all(u in members for u in self.consumers.get(out, []))
            for out in self.nodes[index].outputs
        )

    def _is_root(self, index: int) -> bool:
        base = self._base(index)
        if base in ROOTS:
            return True
        if base == "pow":
            exponent = next((v for k, v in self.nodes[index].args.items()
                             if k != "self" and isinstance(v, (int, float)) and not isinstance(v, bool)), None)
            return exponent in (0.5, -0.5)
        return False

    # decomposed norms -------------------------------------------------------------
    def _statistic(self, scale: str, stop: str) -> set[int] | None:
        """The nodes that compute ``scale`` from ``stop`` alone (and stored values), if they
        take a reduction and a square root; None otherwise."""
        nodes: set[int] = set()
        queue, seen = deque([(scale, 0)]), {scale}
        reached = False
        while queue:
            tensor, depth = queue.popleft()
            if tensor == stop:
                reached = True
                continue
            if self.tensors.is_const(tensor):
                continue
            index = self._producer(tensor)
            if index is None or index in self.taken or self._base(index) not in STATISTIC_OPS or depth >= MAX_DEPTH:
                return None  # the divisor depends on something other than the input
            nodes.add(index)
            for _, arg in self.nodes[index].tensor_args():
                if arg not in seen:
                    seen.add(arg)
                    queue.append((arg, depth + 1))
        if not reached or not any(self._base(i) in REDUCTIONS for i in nodes) or not any(self._is_root(i) for i in nodes):
            return None
        return nodes

    def _centre(self, data: str) -> tuple[str, list[int]]:
        """``(x, [sub, mean])`` when ``data`` is ``x - mean(x)``, else ``(data, [])``."""
        sub = self._producer(data)
        if sub is None or sub in self.taken or self._base(sub) != "sub":
            return data, []
        args = self._computed(self.nodes[sub])
        if len(args) != 2:
            return data, []
        source, mean = args
        reduce = self._producer(mean)
        if reduce is None or reduce in self.taken or self._base(reduce) not in REDUCTIONS:
            return data, []
        if self._computed(self.nodes[reduce]) != [source]:
            return data, []
        return source, [sub, reduce]

    def _core(self, index: int) -> tuple[str, set[int]] | None:
        """The normalised tensor and the nodes of ``data / scale`` (or ``data * scale``) at ``index``."""
        node = self.nodes[index]
        if self._base(index) not in ("div", "mul"):
            return None
        args = self._computed(node)
        if len(args) != 2:
            return None
        orders = [args] if self._base(index) == "div" else [args, args[::-1]]
        for data, scale in orders:
            if self._base(index) == "div" and node.tensor("self") != data:
                continue
            source, centre = self._centre(data)
            statistic = self._statistic(scale, stop=source)
            if statistic is not None:
                return source, {index, *centre, *statistic}
        return None

    def _views_of(self, source: str) -> list[str]:
        """``source`` and the tensors it is a view or cast of, nearest first."""
        chain = [source]
        for _ in range(MAX_AROUND):
            index = self._producer(chain[-1])
            if index is None or index in self.taken or self._base(index) not in VIEWS | CONVERSIONS:
                break
            args = self._computed(self.nodes[index])
            if len(args) != 1:
                break
            chain.append(args[0])
        return chain

    def _extend_back(self, chain: list[str], members: set[int]) -> None:
        """Views and casts of the input that only the group reads join it."""
        for tensor in chain[:-1]:
            index = self._producer(tensor)
            if not self._read_inside(index, members):
                break
            members.add(index)

    def _extend_forward(self, out: str, inputs: list[str], members: set[int]) -> None:
        """The affine ``weight * y + bias`` after the core, and views or casts around it."""
        for _ in range(MAX_AROUND):
            index = self._sole_consumer(out)
            if index is None or index in self.taken or index in members:
                break
            base = self._base(index)
            if base not in VIEWS | CONVERSIONS | {"add", "sub", "mul", "div"}:
                break
            node = self.nodes[index]
            # the other operands are stored (weight, bias) or the input itself (``type_as(x)``)
            others = [t for t in self._computed(node) if t != out]
            if any(t not in inputs for t in others) or len(node.outputs) != 1:
                break
            if base == "div" and node.tensor("self") != out:
                break
            if base in ("add", "sub", "mul", "div") and (others or not all(
                    self._vector(t) for _, t in node.tensor_args() if t != out)):
                # ``y + x`` (a residual) or ``y + position_embedding`` is the model's next
                # step, not the norm's shift
                break
            members.add(index)
            out = node.outputs[0]

    def _vector(self, tensor: str) -> bool:
        """A stored operand with at most one dimension above 1 (a weight or bias per
        channel), or one whose shape is not known."""
        shape = self.tensors.shape(tensor)
        return shape is None or sum(1 for d in shape if d is None or d > 1) <= 1

    def decomposed(self) -> list[NormGroup]:
        groups = []
        for index in range(len(self.nodes)):
            if index in self.taken:
                continue
            core = self._core(index)
            if core is None:
                continue
            source, members = core
            if not all(self._read_inside(i, members) for i in members if i != index):
                continue  # a statistic used elsewhere too: not a self-contained norm
            # forward first: a cast back to the input's dtype (``type_as(x)``) reads the input
            chain = self._views_of(source)
            self._extend_forward(self.nodes[index].outputs[0], chain, members)
            self._extend_back(chain, members)
            groups.append(NormGroup(sorted(members), "decomposed"))
            self.taken |= members
        return groups

    # frozen batch norm ------------------------------------------------------------
    def _per_channel(self, const: str, rank: int | None) -> bool:
        """One stored value per channel of a channels-first tensor: ``(C, 1, 1)`` or ``(1, C, 1, 1)``."""
        shape = self.tensors.shape(const)
        if not self.tensors.is_const(const) or shape is None or None in shape:
            return False
        shape = tuple(shape)
        if rank is None:
            rank = len(shape) + (shape[:1] != (1,)) if len(shape) >= 2 else None
        if rank is None or rank < 3 or len(shape) > rank:
            return False
        full = (1,) * (rank - len(shape)) + tuple(shape)
        return full[1] > 1 and all(d == 1 for i, d in enumerate(full) if i != 1)

    def _operands(self, node: OpNode) -> tuple[str | None, str | None]:
        """``(computed, stored)`` operands of a binary operator, or Nones."""
        args = [t for _, t in node.tensor_args()]
        if len(args) != 2:
            return None, None
        stored = [t for t in args if self.tensors.is_const(t)]
        computed = [t for t in args if not self.tensors.is_const(t)]
        if len(stored) != 1 or len(computed) != 1:
            return None, None
        return computed[0], stored[0]

    def frozen(self) -> list[NormGroup]:
        groups = []
        for index, node in enumerate(self.nodes):
            if index in self.taken or self._base(index) != "mul":
                continue
            data, scale = self._operands(node)
            if data is None:
                continue
            data_shape = self.tensors.shape(data)
            rank = len(data_shape) if data_shape is not None else None
            shift_index = self._sole_consumer(node.outputs[0])
            if shift_index is None or shift_index in self.taken or self._base(shift_index) not in ("add", "sub"):
                continue
            product, shift = self._operands(self.nodes[shift_index])
            if product != node.outputs[0] or not self._per_channel(scale, rank) or not self._per_channel(shift, rank):
                continue
            groups.append(NormGroup([index, shift_index], "frozen_batch"))
            self.taken |= {index, shift_index}
        return groups


def norm_groups(nodes: list[OpNode], tensors: Tensors, consumers: dict[str, list[int]], outputs) -> list[NormGroup]:
    """Written-out normalisations in ``nodes``: decomposed ones first (their affine would
    otherwise look like a frozen BatchNorm of its own), then frozen BatchNorms."""
    finder = _Finder(nodes, tensors, consumers, outputs)
    return finder.decomposed() + finder.frozen()
