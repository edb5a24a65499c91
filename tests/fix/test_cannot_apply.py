"""Fixes that cannot apply to a graph say why, in the report, instead of failing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import assert_same_outputs, codes, copy_model, fix_json, randomised

C, S, K = 4, 6, 10  # channels and side of the flattened map, classes


def _model(head_nodes, head_inits, tmp_path, name, input_shape=(1, 3, S + 2, S + 2), output_shape=(1, K),
           flatten=True):
    """conv 3x3 (3 -> C, no padding) -> ReLU ('r') [-> Flatten ('f')], then ``head_nodes``
    writing 'y'; random weights."""
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        *([helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1)] if flatten else []),
        *head_nodes,
    ]
    zeros = lambda n, *shape: numpy_helper.from_array(np.zeros(shape, np.float32), n)
    inits = [zeros("cw", C, 3, 3, 3), zeros("cb", C)] + [
        t if isinstance(t, onnx.TensorProto) else zeros(*t) for t in head_inits
    ]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))], inits,
    )
    model = randomised(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), seed=5)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _not_applied(report, code="PW001"):
    fix = report["files"][0]["fix"]
    assert fix["applied"] == []
    outcomes = [o for o in fix["not_applied"] if o["code"] == code]
    assert outcomes
    return outcomes


def test_shared_weights_are_not_rewritten(tmp_path):
    path = _model([
        helper.make_node("Gemm", ["f", "w", "b"], ["y1"], name="fc_a", transB=1),
        helper.make_node("Gemm", ["f", "w", "b"], ["y2"], name="fc_b", transB=1),
        helper.make_node("Add", ["y1", "y2"], ["y"], name="sum"),
    ], [("w", K, C * S * S), ("b", K)], tmp_path, "shared")
    before = path.read_bytes()
    for flags in (["--fix"], ["--fix", "--unsafe-fixes"]):
        _, report = fix_json(path, *flags)
        outcomes = _not_applied(report)
        assert len(outcomes) == 2
        assert all("shares its weights" in o["note"] for o in outcomes)
        assert path.read_bytes() == before
        assert codes(report).count("PW001") == 2


def test_gemm_with_transposed_input_is_left_alone(tmp_path):
    """The map reshaped to a column [C*S*S, 1], then Gemm(transA=1) reads it as the row.
    Such a Gemm is not a per-sample dense layer (it mixes the batch axis), so pwlint
    neither reports it as a head nor rewrites it, and says nothing false about its size."""
    path = _model([
        helper.make_node("Reshape", ["r", "column"], ["col"], name="to_column"),
        helper.make_node("Gemm", ["col", "w", "b"], ["y"], name="fc", transA=1, transB=1),
    ], [numpy_helper.from_array(np.array([C * S * S, 1], np.int64), "column"), ("w", K, C * S * S), ("b", K)],
        tmp_path, "trans_a", flatten=False)
    before = path.read_bytes()
    _, report = fix_json(path, "--fix")
    assert not [f for f in report["findings"] if f["code"] in ("PW001", "PW002")]
    assert path.read_bytes() == before


@pytest.mark.parametrize("flags, applicability", [(["--fix"], "safe"), (["--fix", "--unsafe-fixes"], "unsafe")])
def test_dynamic_spatial_dims_report_the_head_and_say_why_neither_fix_applies(tmp_path, flags, applicability):
    """Height and width unknown (only their product is, from the dense layer's 144
    inputs): the head is still reported, but the conv kernel of either fix would be a
    guess (6x6? 4x9? 3x12?), so neither is applied; the chosen fix says why, the file
    is left as it was and the run exits 1 for the finding."""
    path = _model([helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1)],
                  [("w", K, C * S * S), ("b", K)], tmp_path, "dynamic",
                  input_shape=("N", 3, "H", "W"), output_shape=("N", K))
    before = path.read_bytes()
    run, report = fix_json(path, *flags)
    assert run.code == 1
    assert path.read_bytes() == before
    assert [f["nodes"] for f in report["findings"] if f["code"] == "PW001"] == [["flatten", "fc"]]
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = _not_applied(report)
    assert outcome["applicability"] == applicability
    assert outcome["note"] == "the feature map's height and width are dynamic, so the conv kernel size is unknown"


@pytest.mark.parametrize("between", ["Softmax", "LayerNormalization"])
def test_the_head_stops_at_a_layer_across_the_features(tmp_path, between):
    """fc1 -> Softmax/LayerNorm -> fc2: as a 1x1 conv's [N, F, 1, 1] output, the layer in
    between would normalise the wrong axis, so only fc1 is rewritten, and the fix says why."""
    extra = [("ln_scale", 16), ("ln_bias", 16)] if between == "LayerNormalization" else []
    path = _model([
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node(between, ["h"] + [name for name, _ in extra], ["hn"], name="mid", axis=-1),
        helper.make_node("Gemm", ["hn", "w2", "b2"], ["y"], name="fc2", transB=1),
    ], [*extra, ("w1", 16, C * S * S), ("b1", 16), ("w2", K, 16), ("b2", K)], tmp_path, between)
    model = copy_model(path, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--select", "PW001")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert f"'fc2' stays dense: the {between} 'mid'" in outcome["description"]
    nodes = {n.name: n.op_type for n in onnx.load(str(model)).graph.node}
    assert nodes["fc1"] == "Conv" and nodes["fc2"] == "Gemm" and nodes["mid"] == between
    assert_same_outputs(path, model)
