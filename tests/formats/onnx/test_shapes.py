"""pwlint's own shapes (pwlint.formats.onnx.shapes) against onnx's shape inference.

Every model is read with the shapes the file states taken away (no ``value_info``,
graph outputs without a shape), so the shapes come from the inputs, the initializers
and the propagation alone; onnx's inference runs on the same stripped model. Where
both know a dim, they must agree. How many shapes each side knows is printed (run
with ``-s``) and, for the models pwlint's tests lint, the shapes the rules read must
be known without onnx.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pwlint.formats.onnx import read
from pwlint.formats.onnx.proto import parse_bytes
from pwlint.formats.onnx.shapes import missing_shapes
from tests.formats.onnx.quantized_models import FORMS, float_model, quantize

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
BACKEND_MODELS = sorted(glob.glob(os.path.join(DATA, "**", "*.onnx"), recursive=True))


def stripped(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the shapes it states beyond its inputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]
    for output in model.graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    return model


def compare(model: onnx.ModelProto):
    """(described model, ours, theirs, disagreements): the node outputs whose shape each
    side knows, and the names whose known dims differ, with both shapes and the
    operator that made them."""
    model = stripped(model)
    ours = read.describe_model(parse_bytes(model.SerializeToString()))  # no ``real``: no fallback
    theirs: dict = {}
    read._record_inferred_shapes(read._inferred(model, ours.opset), theirs, has_subgraphs=True)
    maker = {out: node.op for node in ours.nodes for out in node.outputs}
    disagreements = []
    for name, their_shape in theirs.items():
        our_shape = ours.shapes.get(name)
        if our_shape is None or their_shape is None:
            continue
        if len(our_shape) != len(their_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(our_shape, their_shape)
        ):
            disagreements.append((name, maker.get(name), our_shape, their_shape))
    # counted over what nodes make (onnx lists no initializer or Constant among its shapes)
    known = lambda shapes: sum(1 for name in maker if shapes.get(name) is not None)  # noqa: E731
    return ours, known(ours.shapes), known(theirs), disagreements


def test_backend_models_agree_with_onnx(capsys):
    assert BACKEND_MODELS
    total_ours = total_theirs = 0
    wrong = []
    for path in BACKEND_MODELS:
        _, ours, theirs, disagreements = compare(onnx.load(path))
        total_ours += ours
        total_theirs += theirs
        wrong += [(os.path.relpath(path, DATA), *d) for d in disagreements]
    with capsys.disabled():
        print(f"\nbackend data, {len(BACKEND_MODELS)} models: pwlint knows {total_ours} shapes, onnx {total_theirs}")
    assert not wrong, wrong[:20]
    assert total_ours >= 0.95 * total_theirs


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["lenet", "vgg", "resnet", "densenet", "se", "convnext", "plain"])
def test_zoo_exports_agree_with_onnx_and_need_no_fallback(exported, name, exporter, capsys):
    model = onnx.load(exported(name, exporter))
    described, ours, theirs, disagreements = compare(model)
    with capsys.disabled():
        print(f"\n{name} ({exporter}): pwlint knows {ours} shapes, onnx {theirs}")
    assert not disagreements, disagreements
    assert not missing_shapes(described)


@pytest.mark.parametrize("form", FORMS)
def test_quantized_models_agree_with_onnx(tmp_path, form, capsys):
    source = tmp_path / "float.onnx"
    onnx.save(float_model(), source)
    model = onnx.load(quantize(source, tmp_path / "q.onnx", form))
    described, ours, theirs, disagreements = compare(model)
    with capsys.disabled():
        print(f"\nquantized {form}: pwlint knows {ours} shapes, onnx {theirs}")
    assert not disagreements, disagreements
    assert not missing_shapes(described)


def _model(nodes, input_shape, weights=(), opset=17):
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in weights]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _zeros(*shape):
    return np.zeros(shape, np.float32)


CASES = {
    "conv-same-upper-strided": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
                                [1, 3, 15, 17], [("w", _zeros(4, 3, 3, 3))]),
    "conv-dilated-grouped": ([helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 3], group=3, pads=[1, 0, 2, 1])],
                             [2, 6, 20, 21], [("w", _zeros(9, 2, 3, 3))]),
    "conv-transpose": ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                                         output_padding=[1, 0], group=2)],
                       [1, 4, 7, 9], [("w", _zeros(4, 3, 3, 3))]),
    "maxpool-ceil": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
                     [1, 2, 14, 15], []),
    "maxpool-ceil-padded": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                                              ceil_mode=1)], [1, 2, 5, 6], []),
    "avgpool-valid": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], auto_pad="VALID", strides=[2])],
                      [1, 2, 11], []),
    "global-lp": ([helper.make_node("GlobalLpPool", ["x"], ["y"])], [1, 5, 3, 4], []),
    "reshape-zero-minus-one": ([helper.make_node("Reshape", ["x", "s"], ["y"])], [2, 3, 4, 5],
                               [("s", np.array([0, -1, 5], np.int64))]),
    "flatten-axis": ([helper.make_node("Flatten", ["x"], ["y"], axis=-1)], [2, 3, 4], []),
    "gemm-transposed": ([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, transB=1)], [6, 2],
                        [("w", _zeros(5, 6))]),
    "matmul-batched": ([helper.make_node("MatMul", ["x", "w"], ["y"])], [3, 1, 4, 6], [("w", _zeros(5, 6, 7))]),
    "matmul-vector": ([helper.make_node("MatMul", ["x", "w"], ["y"])], [6], [("w", _zeros(2, 6, 7))]),
    "squeeze-unsqueeze-inputs": ([helper.make_node("Unsqueeze", ["x", "a"], ["u"]), helper.make_node("Squeeze", ["u", "b"], ["y"])],
                                 [3, 1, 4], [("a", np.array([0, -1], np.int64)), ("b", np.array([2], np.int64))]),
    "transpose-concat": ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                          helper.make_node("Concat", ["t", "t"], ["y"], axis=-1)], [2, 3, 5], []),
    "pad-slice": ([helper.make_node("Pad", ["x", "p"], ["q"]), helper.make_node("Slice", ["q", "s", "e", "a", "st"], ["y"])],
                  [1, 2, 8, 8], [("p", np.array([0, 0, 1, 2, 0, 0, 3, 4], np.int64)), ("s", np.array([1, -1], np.int64)),
                                 ("e", np.array([100, 0], np.int64)), ("a", np.array([2, 3], np.int64)),
                                 ("st", np.array([2, -3], np.int64))]),
    "resize-scales": ([helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")], [1, 2, 5, 7],
                      [("sc", np.array([1, 1, 2.0, 1.5], np.float32))]),
    "split-equal": ([helper.make_node("Split", ["x"], ["y", "z"], axis=1, num_outputs=2)], [1, 7, 3], [], 18),
    "reduce-and-broadcast": ([helper.make_node("ReduceMean", ["x", "ax"], ["m"], keepdims=0),
                              helper.make_node("Add", ["m", "b"], ["y"])], [2, 3, 4, 5],
                             [("ax", np.array([2, 3], np.int64)), ("b", _zeros(4, 1, 1))], 18),
    "shape-chain-reshape": ([helper.make_node("Shape", ["x"], ["sh"]),
                             helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
                             helper.make_node("Unsqueeze", ["n", "a0"], ["n1"]),
                             helper.make_node("Concat", ["n1", "m1"], ["target"], axis=0),
                             helper.make_node("Reshape", ["x", "target"], ["y"])], [2, 3, 4, 4],
                            [("i0", np.array(0, np.int64)), ("a0", np.array([0], np.int64)), ("m1", np.array([-1], np.int64))]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_operator_form_agrees_with_onnx(case):
    nodes, shape, weights, *opset = CASES[case]
    model = _model(nodes, shape, weights, *opset)  # checked below by strict inference
    described, _, _, disagreements = compare(model)
    assert not disagreements, disagreements
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    output = next(v for v in inferred.graph.output if v.name == "y")
    expected = tuple(d.dim_value for d in output.type.tensor_type.shape.dim)
    assert described.shapes["y"] == expected
