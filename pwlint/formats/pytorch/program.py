"""A flat, format-neutral description of a PyTorch program: what the ``.pt2`` reader
(:mod:`pwlint.formats.pytorch.pt2.read`) and the TorchScript reader
(:mod:`pwlint.formats.pytorch.torchscript.read`) produce, and what
:mod:`pwlint.formats.pytorch.graph` turns into a :class:`~pwlint.ir.ModelGraph`.

Nothing here imports torch: tensors are names, shapes are tuples of ints with
``None`` for a dimension that is not known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorRef:
    """An argument that is a tensor, by name."""

    name: str


@dataclass(frozen=True)
class ModuleCall:
    """One call of an ``nn.Module``: ``key`` tells calls apart (``act`` and ``act@1``
    for a module called twice), ``path`` is the module path (``features.0``, ``""`` for
    the root) and ``cls`` its class (``torch.nn.modules.conv.Conv2d``)."""

    key: str
    path: str
    cls: str


@dataclass
class OpNode:
    """One operator call. ``op`` is ``namespace.name.overload`` without ``torch.ops.``
    (``aten.conv2d.default``); ``args`` maps argument names to :class:`TensorRef`, lists
    of them, or plain values; ``outputs`` lists the tensors it makes; ``stack`` holds the
    module calls it runs inside, outermost first; ``source`` is the serialized node."""

    name: str
    op: str
    args: dict[str, Any]
    outputs: list[str]
    stack: tuple[ModuleCall, ...] = ()
    source: Any = None

    @property
    def namespace(self) -> str:
        return self.op.split(".", 1)[0]

    @property
    def base(self) -> str:
        """The operator name without namespace, overload and in-place mark: ``relu_`` -> ``relu``."""
        parts = self.op.split(".")
        name = parts[1] if len(parts) > 1 else parts[0]
        if name.endswith("_") and not name.endswith("__") and len(name) > 1:
            name = name[:-1]
        return name

    @property
    def module(self) -> ModuleCall | None:
        """The innermost module call, None for code of the root module."""
        return self.stack[-1] if self.stack and self.stack[-1].path else None

    def tensor_args(self) -> list[tuple[str, str]]:
        """``(argument name, tensor name)`` for every tensor argument, in order."""
        found = []
        for key, value in self.args.items():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, TensorRef):
                    found.append((key, item.name))
        return found

    def tensor(self, *names: str) -> str | None:
        """The tensor passed as the first of ``names`` that is a tensor argument."""
        for key in names:
            value = self.args.get(key)
            if isinstance(value, TensorRef):
                return value.name
        return None


@dataclass
class Weight:
    """A tensor stored with the model: a parameter, a buffer or a constant."""

    fqn: str
    shape: tuple | None
    kind: str  # "parameter", "buffer" or "constant"

    @property
    def numel(self) -> int:
        if not self.shape:
            return 1 if self.shape == () else 0
        total = 1
        for dim in self.shape:
            if dim is None:
                return 0
            total *= dim
        return total


@dataclass
class Program:
    """Operator calls in execution order, with the tensors between them."""

    nodes: list[OpNode] = field(default_factory=list)
    shapes: dict[str, tuple | None] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    #: tensor name -> the stored tensor it is (parameters, buffers, constants)
    weights: dict[str, Weight] = field(default_factory=dict)
    #: every parameter of the model by fully qualified name, used or not
    parameters: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def dataflow_problem(program: Program) -> str | None:
    """What makes the operator list impossible to run in order, or None: an operator that
    reads a tensor computed only later (a cycle, or a node that reads itself), a tensor
    that nothing computes, a tensor computed twice. The graph builder would otherwise
    link such a file into a graph with cycles or silently missing edges."""
    made = {name: "an input" for name in program.inputs}
    made.update((name, "a stored tensor") for name in program.weights)
    later = {out: node.name for node in program.nodes for out in node.outputs}
    for node in program.nodes:
        for _, tensor in node.tensor_args():
            if tensor in made:
                continue
            if tensor in node.outputs:
                return f"operator '{node.name}' reads its own output '{tensor}' (a cycle)"
            if tensor in later:
                return f"operator '{node.name}' reads '{tensor}' before operator '{later[tensor]}' computes it (a cycle)"
            return f"operator '{node.name}' reads '{tensor}', which is neither an input nor computed by any operator"
        for out in node.outputs:
            if out in made:
                return f"operator '{node.name}' computes '{out}', which is already {made[out]}"
            made[out] = f"the output of operator '{node.name}'"
    for tensor in program.outputs:
        if tensor not in made:
            return f"the program's output '{tensor}' is never computed"
    return None


class Tensors:
    """Facts about a program's tensors: shapes, and which are computed from stored tensors
    only (a Linear's transposed weight is; anything downstream of an input is not)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.const: set[str] = set(program.weights)
        self.producer: dict[str, int] = {}
        for index, node in enumerate(program.nodes):
            for out in node.outputs:
                self.producer[out] = index
            if all(t in self.const for _, t in node.tensor_args()):
                self.const.update(node.outputs)
        self._sources: dict[str, frozenset[str]] = {}

    def shape(self, tensor: str | None) -> tuple | None:
        if tensor is None:
            return None
        shape = self.program.shapes.get(tensor)
        if shape is None and tensor in self.program.weights:
            shape = self.program.weights[tensor].shape
        return shape

    def is_const(self, tensor: str | None) -> bool:
        return tensor is not None and tensor in self.const

    def sources(self, tensor: str) -> frozenset[str]:
        """The stored tensors a constant tensor is computed from (iteratively, no recursion)."""
        if tensor not in self.const:
            return frozenset()
        if tensor in self._sources:
            return self._sources[tensor]
        stack, found, seen = [tensor], set(), set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in self.program.weights:
                found.add(current)
            elif current in self.producer:
                stack.extend(t for _, t in self.program.nodes[self.producer[current]].tensor_args())
        self._sources[tensor] = frozenset(found)
        return self._sources[tensor]

    def params(self, tensor: str) -> set[str]:
        weights = self.program.weights
        return {w for w in self.sources(tensor) if weights[w].kind == "parameter"}

    def has_param(self, tensor: str | None) -> bool:
        return tensor is not None and bool(self.params(tensor))
