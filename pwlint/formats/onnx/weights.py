"""The constant behind a tensor: weights as exporters and quantizers really write them.

A weight is not always an initializer read directly. paddle2onnx and spox keep
weights in ``Constant`` nodes; some graphs build them with ``ConstantOfShape``;
half-precision or quantized files store them compressed and convert them in the
graph (``Cast``, ``DequantizeLinear``); exporters transpose or reshape them
(``MatMul(x, Transpose(W))``). :class:`WeightResolver` follows such chains back
to the stored tensor and says what the consumer receives: its dims (permuted and
reshaped as the chain does), its element type, and what is stored (whose size is
the parameter count). Values are never read, except the small shape and
permutation operands the chain needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from pwlint.formats.onnx.read import Node, OnnxModel

FLOAT, UINT8 = 1, 2  # TensorProto data types
#: operators that turn one constant into another without mixing in data
CHAIN_OPS = frozenset({
    "Identity", "Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape",
    "Squeeze", "Unsqueeze", "ConstantOfShape",
})
#: domains in which those operators have their standard meaning
CHAIN_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})
#: a weight is seldom more than a few conversions away from its stored tensor
MAX_CHAIN = 16
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class Weight:
    """A constant operand as its consumer sees it."""

    #: dims as consumed (after any Transpose or Reshape in the chain)
    dims: tuple[int, ...]
    #: element type as consumed (after Cast or DequantizeLinear)
    dtype: int
    #: the stored tensor the values come from: one parameter set however many chains read it
    root: str
    #: elements stored (or, for ConstantOfShape, made)
    size: int
    #: indices of the nodes between the stored tensor and this one, root side first
    nodes: tuple[int, ...] = ()
    #: the chain dequantizes an integer tensor
    quantized: bool = False
    #: made by ConstantOfShape filled with zeros: a placeholder computed in the graph
    #: (a conv's "no bias"), though as a weight operand it still has its shape
    zeros: bool = False


class WeightResolver:
    """Answers "is this tensor a constant, and of what shape?" for every tensor of a
    model, memoised: each chain is walked once however many layers read it."""

    def __init__(self, model: OnnxModel, producer: dict[str, Node]) -> None:
        self.model = model
        self.producer = producer
        self._known: dict[str, Weight | None] = {}

    def __call__(self, tensor: str) -> Weight | None:
        """The constant behind ``tensor``, or None if its value depends on data."""
        known = self._known
        weight = known.get(tensor, _UNKNOWN)
        if weight is not _UNKNOWN:
            return weight
        if not tensor:
            return None
        # walk back to a stored tensor (or a ConstantOfShape), then forward through the chain
        chain: list[Node] = []
        current = tensor
        weight = None
        while True:
            if current in known:
                weight = known[current]
                break
            const = self.model.constants.get(current)
            if const is not None:
                weight = Weight(tuple(const.dims), const.dtype, current, const.size)
                break
            node = self.producer.get(current)
            if (
                node is None or node.op not in CHAIN_OPS or node.domain not in CHAIN_DOMAINS
                or not node.outputs or node.outputs[0] != current or len(chain) >= MAX_CHAIN
            ):
                break
            if node.op == "ConstantOfShape":
                weight = self._constant_of_shape(node)
                break
            chain.append(node)
            current = node.inputs[0] if node.inputs else ""
        for node in reversed(chain):
            if weight is not None:
                weight = self._through(node, weight)
            known[node.outputs[0]] = weight
        known[tensor] = weight
        return weight

    def dims(self, tensor: str) -> tuple[int, ...] | None:
        weight = self(tensor)
        return weight.dims if weight is not None else None

    # one step of a chain ------------------------------------------------------
    def _values(self, tensor: str) -> list | None:
        const = self.model.constants.get(tensor)
        return const.values if const is not None else None

    def _constant_of_shape(self, node: Node) -> Weight | None:
        dims = self._values(node.inputs[0]) if node.inputs else None
        if dims is None or any(not isinstance(d, int) or d < 0 for d in dims):
            return None
        value = node.attrs.get("value")
        dtype = value.t.data_type if value is not None and value.t is not None else FLOAT
        dims = tuple(dims)
        return Weight(dims, dtype, node.outputs[0], prod(dims), (node.index,), zeros=_is_zero(value))

    def _through(self, node: Node, weight: Weight) -> Weight | None:
        dims, dtype, quantized = weight.dims, weight.dtype, weight.quantized
        op = node.op
        if op == "Cast":
            dtype = node.attrs.get("to", dtype)
        elif op == "CastLike":
            like = self.model.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
            # the other operand is an activation in exported graphs: a float tensor
            dtype = like.dtype if like is not None else FLOAT
        elif op == "QuantizeLinear":
            # a float weight quantized in the graph (QAT exports): Q(W) -> DQ -> Conv
            zero = self.model.constants.get(node.inputs[2]) if len(node.inputs) > 2 else None
            dtype = zero.dtype if zero is not None else node.attrs.get("output_dtype") or UINT8
            quantized = True
        elif op == "DequantizeLinear":
            dtype = node.attrs.get("output_dtype") or FLOAT
            quantized = True
        elif op == "Transpose":
            perm = node.attrs.get("perm") or list(range(len(dims)))[::-1]
            if sorted(perm) != list(range(len(dims))):
                return None
            dims = tuple(dims[p] for p in perm)
        elif op == "Reshape":
            dims = self._reshaped(node, dims)
        elif op in ("Squeeze", "Unsqueeze"):
            dims = self._inferred(node)
        if dims is None:
            return None
        return Weight(dims, dtype, weight.root, weight.size, weight.nodes + (node.index,), quantized, weight.zeros)

    def _reshaped(self, node: Node, dims: tuple[int, ...]) -> tuple[int, ...] | None:
        target = self._values(node.inputs[1]) if len(node.inputs) > 1 else None
        if target is None or not all(isinstance(d, int) for d in target):
            return self._inferred(node)
        allow_zero = node.attrs.get("allowzero", 0)
        shape = [dims[i] if d == 0 and not allow_zero and i < len(dims) else d for i, d in enumerate(target)]
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            return None
        if -1 in shape:
            known = prod(d for d in shape if d != -1)
            if not known or prod(dims) % known:
                return None
            shape[shape.index(-1)] = prod(dims) // known
        return tuple(shape) if prod(shape) == prod(dims) else None

    def _inferred(self, node: Node) -> tuple[int, ...] | None:
        """The output shape shape inference found, when every dim of it is known."""
        shape = self.model.shapes.get(node.outputs[0])
        if shape is None or any(d is None for d in shape):
            return None
        return tuple(shape)


def _is_zero(value) -> bool:
    """Whether a ConstantOfShape ``value`` attribute fills with zeros (its default)."""
    if value is None:
        return True
    from pwlint.formats.onnx.proto import tensor_values

    values = tensor_values(value.t)
    # a malformed or unreadable fill value is not known to be zero
    return values is not None and not any(values)
