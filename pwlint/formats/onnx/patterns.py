"""Groups of ONNX nodes that form one layer: MatMul+Add dense layers (float and
quantized), decomposed normalisations (LayerNorm/RMSNorm from ReduceMean
arithmetic, frozen BatchNorm as a per-channel Mul+Add), and the nodes that only
make a layer's weights (``Cast``/``DequantizeLinear``/``Transpose`` of a constant),
which join the layer they feed.

Each matcher returns groups as lists of node indices; the first index names the layer.
"""

from __future__ import annotations

from collections import deque

from pwlint.formats.onnx.quant import DENSE_FORMS
from pwlint.formats.onnx.read import FLOAT_TYPES, Node, OnnxModel
from pwlint.formats.onnx.weights import WeightResolver

#: elementwise arithmetic that may sit between a ReduceMean and the Div/Mul of a decomposed norm
NORM_ARITHMETIC = {"Pow", "Mul", "Add", "Sqrt", "Reciprocal", "Div", "Sub", "Cast", "ReduceMean", "ReduceSumSquare", "ReduceSum", "Identity"}
MAX_NORM_DEPTH = 8


class NodeIndex:
    """Producer and consumer look-ups over the nodes of an :class:`OnnxModel`."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        #: the graph outputs, for membership tests (the model keeps them in order)
        self.outputs = frozenset(model.outputs)
        self.producer: dict[str, Node] = {}
        self.consumers: dict[str, list[Node]] = {}
        producer, consumers = self.producer, self.consumers
        for node in model.nodes:
            for out in node.outputs:
                if out:
                    producer[out] = node
            for inp in node.inputs:
                if inp:
                    users = consumers.get(inp)
                    if users is None:
                        consumers[inp] = [node]
                    else:
                        users.append(node)
        #: the constant behind a tensor (initializer, Constant, or a chain of conversions of one)
        self.weight = WeightResolver(model, producer)

    def is_weight(self, tensor: str) -> bool:
        """A constant the consumer receives as floats: a trainable value."""
        weight = self.weight(tensor)
        return weight is not None and weight.dtype in FLOAT_TYPES

    def sole_consumer(self, tensor: str) -> Node | None:
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and tensor not in self.outputs:
            return users[0]
        return None


#: dense-like operators that take one data input and a 2-D weight [in, out], and
#: the domain each is defined in
MATMUL_DOMAINS = {
    "MatMul": ("", "ai.onnx"), "QLinearMatMul": ("", "ai.onnx"),
    "MatMulIntegerToFloat": ("com.microsoft",), "DynamicQuantizeMatMul": ("com.microsoft",),
}
#: bias additions after a MatMul, and the inputs that may hold the bias
BIAS_ADDS = {"Add": (0, 1), "QLinearAdd": (0, 3)}


def dense_groups(index: NodeIndex, taken: set[int]) -> list[list[int]]:
    """MatMul(x, W) followed by Add(., b), W and b constant: one dense layer. The
    quantized forms (QLinearMatMul + QLinearAdd, MatMulIntegerToFloat,
    DynamicQuantizeMatMul) are matched alike."""
    groups = []
    for node in index.model.nodes:
        domains = MATMUL_DOMAINS.get(node.op)
        if domains is None or node.domain not in domains or node.index in taken:
            continue
        position = DENSE_FORMS[node.op][0]
        weight = index.weight(node.inputs[position]) if len(node.inputs) > position else None
        if weight is None or len(weight.dims) != 2 or not node.outputs:
            continue
        group = [node.index]
        product, between = _through_qdq(index, node.outputs[0], taken)
        add = index.sole_consumer(product)
        if add is not None and add.op in BIAS_ADDS and add.index not in taken:
            operands = [add.inputs[i] for i in BIAS_ADDS[add.op] if i < len(add.inputs)]
            other = [t for t in operands if t != product]
            bias = index.weight(other[0]) if len(other) == 1 and len(operands) == 2 else None
            if bias is not None and bias.size == weight.dims[1]:
                group += [add.index, *between]
        groups.append(group)
        taken.update(group)
    return groups


def _through_qdq(index: NodeIndex, tensor: str, taken: set[int]) -> tuple[str, list[int]]:
    """``tensor`` after the QuantizeLinear -> DequantizeLinear pair a QDQ model puts on
    it (between a MatMul and its bias Add), and that pair's nodes; or ``tensor`` itself."""
    quantize = index.sole_consumer(tensor)
    if quantize is None or quantize.op != "QuantizeLinear" or quantize.index in taken or not quantize.outputs:
        return tensor, []
    dequantize = index.sole_consumer(quantize.outputs[0])
    if dequantize is None or dequantize.op != "DequantizeLinear" or dequantize.index in taken or not dequantize.outputs:
        return tensor, []
    return dequantize.outputs[0], [quantize.index, dequantize.index]


def weight_helpers(index: NodeIndex) -> dict[int, int]:
    """Nodes that only make a weight (the Cast, DequantizeLinear, Transpose... between a
    stored tensor and the layer that reads it), each mapped to the node it feeds.

    Such a node joins that node's layer, so it neither counts as a layer of its own
    nor stands between layers. A chain node that another layer (or the graph's
    output) also reads stays a layer of its own."""
    owner: dict[int, int] = {}
    consumers, outputs, weight_of = index.consumers, index.outputs, index.weight
    for node in index.model.nodes:
        if node.outputs and weight_of(node.outputs[0]) is not None:
            continue  # a chain node itself, or a constant: it owns no chain
        for tensor in node.inputs:
            weight = weight_of(tensor) if tensor else None
            if weight is None or not weight.nodes:
                continue
            absorbed = {node.index}
            for helper in reversed(weight.nodes):  # from the reader back to the stored tensor
                chain_node = index.model.nodes[helper]
                exclusive = helper not in owner and all(
                    out not in outputs and all(u.index in absorbed for u in consumers.get(out, ()))
                    for out in chain_node.outputs if out
                )
                if not exclusive:
                    break
                absorbed.add(helper)
                owner[helper] = node.index
    return owner


def _ancestors(
    index: NodeIndex, tensor: str, allowed: set[str], depth: int, stop: str
) -> tuple[set[int], set[str]]:
    """Nodes (restricted to ``allowed`` ops) and tensors reachable backwards from
    ``tensor``, not walking past ``stop``."""
    nodes: set[int] = set()
    tensors: set[str] = {tensor}
    queue = deque([(tensor, 0)])
    while queue:
        current, level = queue.popleft()
        node = None if current == stop else index.producer.get(current)
        if node is None or node.op not in allowed or node.index in nodes or level >= depth:
            continue
        nodes.add(node.index)
        for inp in node.inputs:
            if inp and inp not in tensors:
                tensors.add(inp)
                queue.append((inp, level + 1))
    return nodes, tensors


def decomposed_norm_groups(index: NodeIndex, taken: set[int]) -> list[list[int]]:
    """``x / f(ReduceMean(g(x)))`` or ``x * 1/f(...)``: LayerNorm, RMSNorm and kin.

    The centred form ``Sub(x, ReduceMean(x))`` is folded in as well.
    """
    groups = []
    for node in index.model.nodes:
        if node.op not in ("Div", "Mul") or node.index in taken or len(node.inputs) != 2:
            continue
        for data, scale in (node.inputs, node.inputs[::-1]):
            if not data or not scale or index.weight(scale) is not None:
                continue
            chain, tensors = _ancestors(index, scale, NORM_ARITHMETIC, MAX_NORM_DEPTH, stop=data)
            reduces = [i for i in chain if index.model.nodes[i].op in ("ReduceMean", "ReduceSumSquare", "ReduceSum")]
            if not reduces or data not in tensors or chain & taken:
                continue
            if not any(_is_root(index, index.model.nodes[i]) for i in chain):
                continue  # exp(x) / sum(exp(x)) is a softmax, not a normalisation
            group = [node.index] + sorted(chain)
            centre = index.producer.get(data)
            if centre is not None and centre.op == "Sub" and centre.index not in taken and len(centre.inputs) == 2:
                mean = index.producer.get(centre.inputs[1])
                if mean is not None and mean.op == "ReduceMean" and mean.inputs[:1] == centre.inputs[:1]:
                    group = [centre.index, mean.index] + group
            group = list(dict.fromkeys(group))
            groups.append(group)
            taken.update(group)
            break
    return groups


def _is_root(index: NodeIndex, node) -> bool:
    """A square root in a norm's scale: Sqrt, or Pow by +-0.5 (std, rsqrt)."""
    if node.op == "Sqrt":
        return True
    if node.op != "Pow" or len(node.inputs) != 2:
        return False
    exponent = index.model.constants.get(node.inputs[1])
    values = exponent.values if exponent is not None else None
    return bool(values) and len(values) == 1 and abs(abs(float(values[0])) - 0.5) < 1e-6


def _per_channel(index: NodeIndex, tensor: str, rank: int | None) -> bool:
    const = index.weight(tensor)
    if const is None or const.dtype not in FLOAT_TYPES or rank != 4:
        return False
    dims = list(const.dims)
    if len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    return len(dims) == 3 and dims[0] > 1 and dims[1:] == [1, 1]


def frozen_batchnorm_groups(index: NodeIndex, taken: set[int]) -> list[list[int]]:
    """Mul by a per-channel constant, then Add of one: a BatchNorm folded to its affine form."""
    groups = []
    for node in index.model.nodes:
        if node.op != "Mul" or node.index in taken or len(node.inputs) != 2:
            continue
        data, scale = node.inputs
        if index.weight(data) is not None:
            data, scale = scale, data
        rank = len(index.model.shapes.get(data) or ()) or None
        if not _per_channel(index, scale, rank):
            continue
        add = index.sole_consumer(node.outputs[0])
        if add is None or add.op != "Add" or add.index in taken:
            continue
        shift = [t for t in add.inputs if t != node.outputs[0]]
        if len(shift) != 1 or not _per_channel(index, shift[0], rank):
            continue
        groups.append([node.index, add.index])
        taken.update((node.index, add.index))
    return groups
