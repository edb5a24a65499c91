"""A small AlexNet/VGG-like float ONNX model, and the same model quantized by
``onnxruntime.quantization`` the ways people deploy it.

Float model (random weights, seeded), 3x16x16 input::

    Conv 3x3 (3 -> 8, pad 1) -> [BatchNorm] -> ReLU -> MaxPool 2
    Conv 3x3 (8 -> 16, pad 1) -> ReLU -> MaxPool 2            (16 x 4 x 4)
    Flatten -> dense (256 -> 64) -> ReLU -> dense (64 -> 10)

The dense layers are Gemm nodes, or MatMul + Add (``head="matmul"``), which the
quantizer turns into different operators (QGemm vs QLinearMatMul + QLinearAdd).
``head="gap"`` is a ResNet-like head instead: a 1x1 conv added to its input, global
average pooling, Flatten, dense (16 -> 10) (QLinearAdd, QLinearGlobalAveragePool).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIDE, C1, C2, HIDDEN, CLASSES = 16, 8, 16, 64, 10
#: the flattened map: C2 channels at (SIDE / 4) x (SIDE / 4) positions
POSITIONS = (SIDE // 4) ** 2
FEATURES = C2 * POSITIONS

FORMS = (
    "qdq", "qdq-per-channel", "qoperator", "qoperator-per-channel",
    "dynamic", "dynamic-per-channel", "dynamic-ort-optimised",
)


def float_model(head: str = "gemm", norm: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    first = "c1"
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4)]
    inits = [init("w1", C1, 3, 3, 3), init("b1", C1), init("w2", C2, C1, 3, 3), init("b2", C2)]
    if norm:
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn1"))
        ones = numpy_helper.from_array(np.ones(C1, np.float32), "var")
        inits += [init("g", C1), init("beta", C1), init("mean", C1), ones]
        first = "n1"
    nodes += [
        helper.make_node("Relu", [first], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
    ]
    if head == "gap":
        nodes[-1] = helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], name="conv3", kernel_shape=[1, 1])
        nodes += [
            helper.make_node("Add", ["c3", "p2"], ["s"], name="residual"),
            helper.make_node("GlobalAveragePool", ["s"], ["g"], name="pool"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
        ]
        inits += [init("w3", C2, C2, 1, 1), init("b3", C2), init("fc_w", CLASSES, C2), init("fc_b", CLASSES)]
    elif head == "gemm":
        nodes += [
            helper.make_node("Gemm", ["f", "fc1_w", "fc1_b"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
            helper.make_node("Gemm", ["r3", "fc2_w", "fc2_b"], ["y"], name="fc2", transB=1),
        ]
        inits += [init("fc1_w", HIDDEN, FEATURES), init("fc2_w", CLASSES, HIDDEN)]
    else:
        nodes += [
            helper.make_node("MatMul", ["f", "fc1_w"], ["m1"], name="fc1"),
            helper.make_node("Add", ["m1", "fc1_b"], ["h"], name="fc1_bias"),
            helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
            helper.make_node("MatMul", ["r3", "fc2_w"], ["m2"], name="fc2"),
            helper.make_node("Add", ["m2", "fc2_b"], ["y"], name="fc2_bias"),
        ]
        inits += [init("fc1_w", FEATURES, HIDDEN), init("fc2_w", HIDDEN, CLASSES)]
    if head != "gap":
        inits += [init("fc1_b", HIDDEN), init("fc2_b", CLASSES)]
    graph = helper.make_graph(
        nodes, "alexnet_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def quantize(source: Path, target: Path, form: str) -> Path:
    """``source`` quantized by onnxruntime in ``form`` (one of :data:`FORMS`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice on pre-processing
    per_channel = form.endswith("per-channel")
    if form.startswith("dynamic"):
        quantize_dynamic(str(source), str(target), per_channel=per_channel)
        if form == "dynamic-ort-optimised":
            _ort_optimised(target)
        return target

    class Samples(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.samples = iter([{"x": rng.standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.samples, None)

    fmt = QuantFormat.QDQ if form.startswith("qdq") else QuantFormat.QOperator
    quantize_static(str(source), str(target), Samples(), quant_format=fmt, per_channel=per_channel)
    return target


def _ort_optimised(path: Path) -> None:
    """The model as onnxruntime's optimiser saves it: MatMulInteger + Cast + Mul become the
    contrib operator DynamicQuantizeMatMul (what a deployment cache ships)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    optimised = path.with_name(path.stem + "-optimised.onnx")
    options.optimized_model_filepath = str(optimised)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimised.replace(path)


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}
