"""Output shapes of onnxruntime's quantized contrib operators, which ONNX's own
shape inference does not know.

A QOperator model runs ``QLinearAdd``, ``QLinearGlobalAveragePool``, ``QGemm``...
from the ``com.microsoft`` domain; inference stops at the first of them, and every
tensor after it has no shape (a Flatten after a quantized global pool could not
be told from one after a 7x7 map). :func:`infer_with_contrib` runs ONNX inference,
gives the contrib operators whose inputs are now known their output shapes (as
``value_info``), and runs it again, until nothing more is learnt.
"""

from __future__ import annotations

from math import ceil, floor

#: at most this many rounds of inference: each one gets past one more contrib operator
#: on every path (a quantized ResNet-50 has 16 QLinearAdds in a row)
MAX_ROUNDS = 24
CONTRIB = "com.microsoft"
UNARY = frozenset({"QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"})
FLOAT = 1


def infer_with_contrib(light, infer):
    """``infer(light)`` (ONNX shape inference), repeated with the contrib operators'
    outputs added as value_info while that teaches it something. ``light`` is a
    throw-away copy of the model and is changed."""
    inferred = infer(light)
    if not any(node.domain == CONTRIB for node in light.graph.node):
        return inferred
    for _ in range(MAX_ROUNDS):
        known = _known(inferred.graph)
        added = _contrib_outputs(light.graph, known)
        if not added:
            break
        light.graph.value_info.extend(added)
        inferred = infer(light)
    return inferred


def _known(graph) -> dict[str, tuple[int, list]]:
    """Element type and dims (an int, or None for unknown) of every tensor inference typed."""
    known = {}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        dims = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        known[value.name] = (tensor_type.elem_type, dims)
    for init in graph.initializer:
        known[init.name] = (init.data_type, list(init.dims))
    return known


def _contrib_outputs(graph, known: dict) -> list:
    from onnx import helper

    added = []
    for node in graph.node:
        if node.domain != CONTRIB or not node.output or not node.output[0]:
            continue
        output = node.output[0]
        if known.get(output, (0, None))[1] is not None:
            continue
        result = _output(node, known)
        if result is None:
            continue
        elem_type, dims = result
        added.append(helper.make_tensor_value_info(output, elem_type, [d if d is not None else None for d in dims]))
        known[output] = (elem_type, dims)
    return added


def _dims(known: dict, node, position: int):
    if position >= len(node.input) or not node.input[position]:
        return None, None
    elem_type, dims = known.get(node.input[position], (0, None))
    return elem_type, dims


def _attrs(node) -> dict:
    from pwlint.formats.onnx.proto import attribute_value

    return {a.name: attribute_value(a) for a in node.attribute}


def _output(node, known: dict) -> tuple[int, list] | None:
    op = node.op_type
    elem_type, x = _dims(known, node, 0)
    if x is None:
        return None
    attrs = _attrs(node)
    if op in UNARY:
        return elem_type, list(x)
    if op in ("QLinearAdd", "QLinearMul"):
        _, other = _dims(known, node, 3)
        return (elem_type, _broadcast(x, other)) if other is not None else None
    if op == "QLinearGlobalAveragePool":
        if len(x) < 3:
            return None
        return elem_type, ([x[0], *[1] * (len(x) - 2), x[-1]] if attrs.get("channels_last") else [*x[:2], *[1] * (len(x) - 2)])
    if op == "QLinearAveragePool":
        return _pooled(elem_type, x, attrs)
    if op == "QLinearConcat":
        return _concatenated(node, known, attrs)
    if op == "QGemm":
        _, b = _dims(known, node, 3)
        if b is None or len(x) != 2 or len(b) != 2:
            return None
        rows = x[1] if attrs.get("transA") else x[0]
        cols = b[0] if attrs.get("transB") else b[1]
        zero_type, _ = _dims(known, node, 8)
        return (zero_type or FLOAT), [rows, cols]
    if op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
        _, b = _dims(known, node, 1)
        if b is None or len(b) != 2 or not x:
            return None
        return FLOAT, [*x[:-1], b[1]]
    return None


def _broadcast(a: list, b: list) -> list:
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    return [x if y == 1 else y if x == 1 else x if x == y else None for x, y in zip(a, b)]


def _pooled(elem_type: int, x: list, attrs: dict) -> tuple[int, list] | None:
    kernel = list(attrs.get("kernel_shape", ()))
    spatial = len(kernel)
    if not spatial or len(x) != spatial + 2:
        return None
    channels_last = attrs.get("channels_last")
    sizes = x[1:-1] if channels_last else x[2:]
    strides = list(attrs.get("strides", [1] * spatial))
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    rounding = ceil if attrs.get("ceil_mode") else floor
    out = []
    for i, size in enumerate(sizes):
        if size is None:
            out.append(None)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(ceil(size / strides[i]))
        else:
            padded = size + (0 if auto_pad == "VALID" else pads[i] + pads[i + spatial])
            out.append(rounding((padded - kernel[i]) / strides[i]) + 1)
    dims = [x[0], *out, x[-1]] if channels_last else [x[0], x[1], *out]
    return elem_type, dims


def _concatenated(node, known: dict, attrs: dict) -> tuple[int, list] | None:
    parts = [_dims(known, node, position) for position in range(2, len(node.input), 3)]
    if not parts or any(dims is None for _, dims in parts):
        return None
    rank = len(parts[0][1])
    axis = attrs.get("axis", 0) % rank if rank else 0
    if any(len(dims) != rank for _, dims in parts):
        return None
    dims = list(parts[0][1])
    sizes = [d[axis] for _, d in parts]
    dims[axis] = None if None in sizes else sum(sizes)
    return parts[0][0], dims
