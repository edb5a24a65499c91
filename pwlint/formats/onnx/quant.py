"""Quantized ONNX, seen as the float model it was made from.

``onnxruntime.quantization`` writes three forms, and pwlint reads each as the
layers of the float original, so that rules give the same findings:

- **QDQ**: weights are ``DequantizeLinear(int8 initializer, scale, zero point)``
  feeding an ordinary Conv/Gemm/MatMul (the weight resolver sees through them),
  and every activation passes through a ``QuantizeLinear -> DequantizeLinear``
  pair, which becomes one ``identity`` layer that rules see through.
- **QOperator**: ``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``...
  carry their weight, scales and zero points as inputs; :data:`PARAM_INPUTS`
  says which inputs hold trainable values (scales and zero points do not).
- **dynamic**: ``DynamicQuantizeLinear`` (an ``identity`` layer) feeds
  ``ConvInteger``/``MatMulInteger``, whose integer result is cast, rescaled by a
  ``Mul`` and biased by an ``Add``: :func:`integer_groups` makes one conv or
  dense layer of them.

Parameter counts come from the integer weights' dims, which are the float
weights' dims. Layers built from these operators are marked ``quantized``: a fix
rewrites float weights, so on these it says to fix the float model instead.
"""

from __future__ import annotations

from pwlint.formats.onnx.read import Node

#: the layer kind of each quantized operator that has one
QUANT_KINDS = {
    "QLinearConv": "conv", "ConvInteger": "conv",
    "QGemm": "dense",
    "QLinearAdd": "add", "QLinearMul": "mul", "QLinearConcat": "concat",
    "QLinearGlobalAveragePool": "global_pool", "QLinearAveragePool": "pool",
    "QuantizeLinear": "identity", "DequantizeLinear": "identity", "DynamicQuantizeLinear": "identity",
}
QUANT_ACTIVATIONS = {"QLinearSigmoid": "sigmoid", "QLinearLeakyRelu": "leaky_relu", "QLinearSoftmax": "softmax"}
#: operators that compute on integers or (de)quantize: a layer holding one is quantized
QUANTIZED_OPS = frozenset({
    *QUANT_KINDS, *QUANT_ACTIVATIONS, "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QAttention", "QLinearReduceMean", "QLinearWhere", "QEmbedLayerNormalization",
})

#: inputs that hold trainable values, for operators where the others are data,
#: scales, zero points or running statistics (operators not listed: every float constant)
PARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "BatchNormalization": (1, 2),
    "QuantizeLinear": (0,), "DequantizeLinear": (0,), "DynamicQuantizeLinear": (),
    "QLinearConv": (3, 8), "ConvInteger": (1,),
    "QLinearMatMul": (0, 3), "QGemm": (0, 3, 6), "MatMulInteger": (0, 1),
    "DynamicQuantizeMatMul": (1, 4), "MatMulIntegerToFloat": (1, 6), "QAttention": (1, 2),
    "QLinearAdd": (0, 3), "QLinearMul": (0, 3),
    "QLinearGlobalAveragePool": (0,), "QLinearAveragePool": (0,),
    "QLinearSigmoid": (0,), "QLinearLeakyRelu": (0,), "QLinearSoftmax": (0,),
}

#: dense-like operators: (weight input, bias input or None); the weight is [in, out]
#: except for a Gemm-like one with transB
DENSE_FORMS = {
    "Gemm": (1, 2), "QGemm": (3, 6),
    "MatMul": (1, None), "QLinearMatMul": (3, None), "MatMulInteger": (1, None),
    "DynamicQuantizeMatMul": (1, 4), "MatMulIntegerToFloat": (1, 6),
}
#: conv operators: (weight input, bias input or None)
CONV_FORMS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "QLinearConv": (3, 8), "ConvInteger": (1, None)}


def param_inputs(node: Node) -> tuple[int, ...] | None:
    """Positions of ``node``'s inputs that hold parameters, or None for "every float constant"."""
    positions = PARAM_INPUTS.get(node.op)
    if positions is not None:
        return positions
    if node.op == "QLinearConcat":  # Y_scale, Y_zero_point, then (X, scale, zero point) per input
        return tuple(range(2, len(node.inputs), 3))
    if node.op.startswith("QLinear"):  # an unlisted quantized operator: no weights we know of
        return ()
    return None


#: operators after which onnxruntime's QDQ quantizer drops a ReLU, letting the
#: QuantizeLinear's range (zero point at the type's minimum) clip the negatives instead
RELU_FUSERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "BatchNormalization"})
#: the smallest value of each integer type a zero point can have (uint8, int8, uint16, int16)
TYPE_MIN = {2: 0, 3: -128, 4: 0, 5: -32768}


def qdq_pairs(index, taken: set[int]) -> list[tuple[str | None, list[int]]]:
    """``QuantizeLinear -> DequantizeLinear`` on an activation: one layer, which rules
    see through (an identity), or a ReLU where the pair stands for one.

    onnxruntime's QDQ quantizer removes the ReLU after a Conv, Gemm, Add... and quantizes
    that node's output with a zero point at the type's minimum, which clips negatives
    just as the ReLU did: such a pair is the float model's activation (hint ``"relu"``).
    A pair on a weight is not matched here: the weight resolver folds it into the
    layer the weight feeds (its nodes are in ``taken`` already)."""
    groups = []
    for node in index.model.nodes:
        if node.op != "QuantizeLinear" or node.index in taken or not node.outputs:
            continue
        dequantize = index.sole_consumer(node.outputs[0])
        if dequantize is None or dequantize.op != "DequantizeLinear" or dequantize.index in taken:
            continue
        if not dequantize.inputs or dequantize.inputs[0] != node.outputs[0]:
            continue
        groups.append(("relu" if _clips_negatives(index, node) else None, [node.index, dequantize.index]))
        taken.update((node.index, dequantize.index))
    return groups


def _clips_negatives(index, quantize: Node) -> bool:
    producer = index.producer.get(quantize.inputs[0]) if quantize.inputs else None
    if producer is None or producer.op not in RELU_FUSERS or len(quantize.inputs) < 3:
        return False
    zero = index.model.constants.get(quantize.inputs[2])
    if zero is None or zero.dtype not in TYPE_MIN or not zero.values:
        return False
    return all(value == TYPE_MIN[zero.dtype] for value in zero.values)


def integer_groups(index, taken: set[int]) -> list[tuple[str, list[int], set[int]]]:
    """``ConvInteger``/``MatMulInteger`` with a constant weight, the ``Cast`` of its
    integer result, the ``Mul`` by the scales (and the ``Mul`` that makes them) and
    the bias ``Add``: one conv or dense layer, as ``quantize_dynamic`` writes it.

    Returns (kind, group, scale nodes): the scale nodes' constants are scales, not
    parameters."""
    groups = []
    weight_of = index.weight
    for node in index.model.nodes:
        if node.op not in ("ConvInteger", "MatMulInteger") or node.index in taken or len(node.inputs) < 2:
            continue
        weight = weight_of(node.inputs[1])
        conv = node.op == "ConvInteger"
        if weight is None or (len(weight.dims) < 3 if conv else len(weight.dims) != 2):
            continue
        group, scales = [node.index], set()
        tensor = node.outputs[0] if node.outputs else ""
        cast = _next(index, tensor, "Cast", taken)
        if cast is not None:
            group.append(cast.index)
            tensor = cast.outputs[0]
            rescale = _next(index, tensor, "Mul", taken)
            if rescale is not None:
                group.append(rescale.index)
                scales.add(rescale.index)
                factor = _other_input(rescale, tensor)
                maker = index.producer.get(factor) if factor else None
                if maker is not None and maker.op == "Mul" and maker.index not in taken and index.sole_consumer(factor) is rescale:
                    group.append(maker.index)
                    scales.add(maker.index)
                tensor = rescale.outputs[0]
                units = weight.dims[0] if conv else weight.dims[1]
                add = _next(index, tensor, "Add", taken)
                bias = weight_of(_other_input(add, tensor)) if add is not None else None
                if bias is not None and bias.size == units:
                    group.append(add.index)
        groups.append(("conv" if conv else "dense", group, scales))
        taken.update(group)
    return groups


def _next(index, tensor: str, op: str, taken: set[int]) -> Node | None:
    consumer = index.sole_consumer(tensor) if tensor else None
    if consumer is None or consumer.op != op or consumer.index in taken:
        return None
    return consumer


def _other_input(node: Node, tensor: str) -> str | None:
    others = [t for t in node.inputs if t != tensor]
    return others[0] if len(others) == 1 and len(node.inputs) == 2 else None
