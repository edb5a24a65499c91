"""PW001's safe fix: Flatten + dense layers become an HxW conv and 1x1 convs, with the
same parameters and the same outputs, checked here in onnxruntime, not in pwlint's report."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import (
    assert_same_outputs, codes, copy_model, fix_json, float_params, lint, randomised, run_onnx,
)

EXPORTERS = ["dynamo", "legacy", "dynamo-keep-norm", "legacy-keep-norm"]
#: the map each zoo model flattens into its first dense layer: (C, H, W)
FLATTENED = {"vgg": (32, 4, 4), "lenet": (16, 5, 5)}


def flatten_input_shape(path) -> tuple[int, ...]:
    """The shape of the tensor the model's only Flatten/Reshape reads, by ONNX shape inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    flats = [n for n in model.graph.node if n.op_type in ("Flatten", "Reshape")]
    assert len(flats) == 1, [n.op_type for n in model.graph.node]
    info = {v.name: v for v in model.graph.value_info}
    dims = info[flats[0].input[0]].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims)


@pytest.fixture(scope="module", params=[(m, e) for m in FLATTENED for e in EXPORTERS], ids=lambda p: f"{p[0]}-{p[1]}")
def safely_fixed(request, exported, tmp_path_factory):
    """(model name, original export, the same model after ``pwlint --fix``, the JSON report);
    fixed once per module, the tests only read it."""
    name, exporter = request.param
    original = exported(name, exporter)
    model = copy_model(original, tmp_path_factory.mktemp("safe"))
    _, report = fix_json(model, "--fix")
    return name, original, model, report


def test_fixed_model_passes_the_full_onnx_check(safely_fixed):
    _, original, model, _ = safely_fixed
    assert model.read_bytes() != original.read_bytes()
    onnx.checker.check_model(str(model), full_check=True)


def test_fixed_model_gives_the_same_outputs_in_onnxruntime(safely_fixed):
    _, original, model, _ = safely_fixed
    assert_same_outputs(original, model, seeds=(0, 1, 2, 3))


def test_relinting_the_fixed_model_reports_no_pw001(safely_fixed):
    _, original, model, report = safely_fixed
    assert "PW001" in codes(lint(original))
    assert "PW001" not in codes(report)
    assert "PW001" not in codes(lint(model))
    applied = report["files"][0]["fix"]["applied"]
    assert [o["code"] for o in applied if o["code"] == "PW001"] == ["PW001"]
    assert all(o["applicability"] == "safe" for o in applied)


def test_parameters_are_unchanged(safely_fixed):
    _, original, model, report = safely_fixed
    assert float_params(model) == float_params(original)
    fix = report["files"][0]["fix"]
    assert fix["before"]["params"] == fix["after"]["params"]


def test_the_dense_layers_became_an_hxw_conv_and_pointwise_convs(safely_fixed):
    name, original, model, _ = safely_fixed
    channels, height, width = FLATTENED[name]
    assert flatten_input_shape(original) == (1, channels, height, width)
    fixed = onnx.load(str(model))
    ops = [n.op_type for n in fixed.graph.node]
    assert "Gemm" not in ops and "MatMul" not in ops
    kernels = [
        tuple(a.ints) for n in fixed.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "kernel_shape"
    ]
    # the three zoo dense layers: one HxW conv over the whole map, then two 1x1 convs
    assert kernels[-3:] == [(height, width), (1, 1), (1, 1)]
    assert ops[-1] == "Flatten"  # the output keeps its [N, classes] shape


def test_output_shape_is_unchanged(safely_fixed):
    _, original, model, _ = safely_fixed

    def outputs(path):
        graph = onnx.load(str(path)).graph
        return [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in graph.output]

    assert outputs(model) == outputs(original) == [[1, 10]]


# graphs of other shapes --------------------------------------------------------------

def _head_model(batch="N", layout="NCHW", channels=4, side=5):
    """conv 3x3 without padding (3 -> C, a side x side map) -> ReLU [-> Transpose to NHWC]
    -> Flatten -> Gemm(16) -> ReLU -> Gemm(10), random weights."""
    c, s = channels, side
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    last = "r"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["r"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]))
        last = "t"
    nodes += [
        helper.make_node("Flatten", [last], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="fc1_relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    zeros = lambda name, *shape: numpy_helper.from_array(np.zeros(shape, np.float32), name)
    inits = [zeros("cw", c, 3, 3, 3), zeros("cb", c), zeros("w1", 16, c * s * s), zeros("b1", 16),
             zeros("w2", 10, 16), zeros("b2", 10)]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, s + 2, s + 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return randomised(model, seed=3)


def test_channels_last_flatten_gets_its_weights_permuted(tmp_path):
    """A Keras-style export flattens NHWC: the kernel must be read in that order."""
    original = tmp_path / "nhwc.onnx"
    onnx.save(_head_model(batch=1, layout="NHWC"), original)
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--select", "PW001")
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
    assert_same_outputs(original, model)
    assert float_params(model) == float_params(original)


def test_symbolic_batch_is_kept_and_other_batch_sizes_match(tmp_path):
    original = tmp_path / "batch.onnx"
    onnx.save(_head_model(batch="N"), original)
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--select", "PW001")
    assert report["files"][0]["fix"]["applied"]
    batch = onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N"
    for size in (1, 3):
        assert_same_outputs(original, model, symbolic=size)


def test_the_fixed_head_accepts_a_larger_input(tmp_path):
    """The point of convolutionalising: on a larger input the head slides over the feature
    map, and each window's scores are what the original model gives on that crop."""
    original = tmp_path / "head.onnx"
    onnx.save(_head_model(batch=1, side=5), original)  # 7x7 input, 5x5 map
    model = copy_model(original, tmp_path / "fixed")
    fix_json(model, "--fix", "--select", "PW001")
    fixed = onnx.load(str(model))
    # drop the final Flatten and free the spatial size, to get the map of scores
    flatten = fixed.graph.node[-1]
    assert flatten.op_type == "Flatten"
    fixed.graph.node.remove(flatten)
    del fixed.graph.output[:]
    fixed.graph.output.append(helper.make_tensor_value_info(flatten.input[0], TensorProto.FLOAT, None))
    fixed.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"]))
    del fixed.graph.value_info[:]
    larger = tmp_path / "larger.onnx"
    onnx.save(fixed, larger)

    big = np.random.default_rng(5).standard_normal((1, 3, 9, 9)).astype(np.float32)
    scores = run_onnx(larger, {"x": big})[0]
    assert scores.shape == (1, 10, 3, 3)
    for i in range(3):
        for j in range(3):
            crop = np.ascontiguousarray(big[:, :, i:i + 7, j:j + 7])
            expected = run_onnx(original, {"x": crop})[0]
            np.testing.assert_allclose(scores[:, :, i, j], expected, rtol=1e-4, atol=1e-5)
