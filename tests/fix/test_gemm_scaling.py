"""ONNX fixes on Gemm layers with ``alpha`` and ``beta`` other than 1, stored both ways
(``transB`` 0 and 1): ``Y = alpha * A @ B + beta * C``. A fix that read only ``B`` and
``C`` would write weights off by ``alpha`` and biases off by ``beta``; verification rolls
back a safe fix that does so, but not an unsafe one, so each fix is checked here against
onnxruntime on the original model, where it is exact.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import assert_same_outputs, copy_model, fix_json, float_params, run_onnx

C, S, HIDDEN, K = 4, 5, 16, 10
#: (alpha, beta) of fc1 and fc2: none is 1, and fc1's scale differs from fc2's
FC1, FC2 = (0.5, 2.0), (3.0, 0.25)


def _gemm(name: str, data: str, output: str, scale: tuple[float, float], trans_b: int) -> onnx.NodeProto:
    alpha, beta = scale
    return helper.make_node("Gemm", [data, f"{name}.w", f"{name}.b"], [output], name=name,
                            alpha=alpha, beta=beta, transB=trans_b)


def _weight(rng, name: str, units: int, inputs: int, trans_b: int) -> onnx.TensorProto:
    """A dense weight stored as Gemm reads it: [units, inputs] with transB=1, else [inputs, units]."""
    values = rng.standard_normal((units, inputs)) / np.sqrt(inputs)
    return numpy_helper.from_array((values if trans_b else values.T).astype(np.float32), name)


def head_model(path, trans_b: int, spatially_constant: bool = False):
    """conv (3 -> C) -> ReLU -> Flatten -> Gemm fc1 (C*S*S -> 16, alpha/beta FC1) -> ReLU ->
    Gemm fc2 (16 -> 10, alpha/beta FC2). With ``spatially_constant`` the input is one pixel,
    broadcast by Expand to S x S and read by a 1x1 conv, so that the map the head flattens is
    the same at every position; otherwise a 3x3 conv reads an (S+2) x (S+2) input."""
    rng = np.random.default_rng(21 + trans_b)
    if spatially_constant:
        stem = [helper.make_node("Expand", ["x", "shape"], ["wide"], name="broadcast"),
                helper.make_node("Conv", ["wide", "cw", "cb"], ["c"], name="conv", kernel_shape=[1, 1])]
        kernel, side = 1, 1
    else:
        stem = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3])]
        kernel, side = 3, S + 2
    nodes = stem + [
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        _gemm("fc1", "f", "h", FC1, trans_b),
        helper.make_node("Relu", ["h"], ["hr"], name="fc1_relu"),
        _gemm("fc2", "hr", "y", FC2, trans_b),
    ]
    array = lambda name, values: numpy_helper.from_array(np.asarray(values, np.float32), name)
    inits = [
        numpy_helper.from_array(np.array([1, 3, S, S], np.int64), "shape"),
        array("cw", rng.standard_normal((C, 3, kernel, kernel))), array("cb", rng.standard_normal(C) + 0.5),
        _weight(rng, "fc1.w", HIDDEN, C * S * S, trans_b), array("fc1.b", rng.standard_normal(HIDDEN)),
        _weight(rng, "fc2.w", K, HIDDEN, trans_b), array("fc2.b", rng.standard_normal(K)),
    ]
    if not spatially_constant:
        inits = inits[1:]
    graph = helper.make_graph(
        nodes, "scaled_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _applied(report) -> list[tuple[str, str]]:
    fix = report["files"][0]["fix"]
    return [(o["code"], o["applicability"]) for o in fix["applied"]]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_convolutionalise_keeps_gemm_alpha_and_beta(tmp_path, trans_b):
    original = head_model(tmp_path / "head.onnx", trans_b)
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--select", "PW001")
    assert _applied(report) == [("PW001", "safe")], report["files"][0]["fix"]["not_applied"]
    ops = [n.op_type for n in onnx.load(str(model)).graph.node]
    assert "Gemm" not in ops and ops.count("Conv") == 3
    assert_same_outputs(original, model, seeds=range(4))
    assert float_params(model) == float_params(original)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_pool_pointwise_keeps_gemm_alpha_and_beta_exact_on_a_constant_map(tmp_path, trans_b):
    """On a spatially constant map, global average pooling + the weights summed over
    positions computes exactly what the flattened dense layer did: the unsafe fix is exact
    here, so a wrong scale shows."""
    original = head_model(tmp_path / "constant.onnx", trans_b, spatially_constant=True)
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW001")
    assert _applied(report) == [("PW001", "unsafe")]
    assert "GlobalAveragePool" in [n.op_type for n in onnx.load(str(model)).graph.node]
    # fc1 lost a factor S*S of its weights, not of its bias
    assert float_params(original) - float_params(model) == C * S * S * HIDDEN - C * HIDDEN
    assert_same_outputs(original, model, seeds=range(5))
    assert report["files"][0]["fix"]["max_abs_diff"] < 1e-4


# PW002: the low-rank factors of alpha * W, and beta * b ----------------------------------

ROWS, COLS, TARGET = 64, 48, 1000
ALPHA, BETA = 2.5, -0.75


def dense_model(path, trans_b: int):
    rng = np.random.default_rng(5 + trans_b)
    weight = rng.standard_normal((ROWS, COLS))  # [in, out]
    bias = rng.standard_normal(COLS)
    stored = weight.T if trans_b else weight
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="dense", alpha=ALPHA, beta=BETA, transB=trans_b)],
        "scaled_dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ROWS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, COLS])],
        [numpy_helper.from_array(stored.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return weight.astype(np.float32).astype(np.float64), bias.astype(np.float32).astype(np.float64)


def written_factors(path):
    """(first, second, bias) as the fixed model stores them: MatMul, MatMul, Add."""
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    assert [n.op_type for n in model.graph.node] == ["MatMul", "MatMul", "Add"]
    first, second, add = model.graph.node
    assert second.input[0] == first.output[0] and second.output[0] in add.input
    bias = next(weights[t] for t in add.input if t in weights)
    return weights[first.input[1]], weights[second.input[1]], bias


@pytest.mark.parametrize("trans_b", [0, 1])
def test_low_rank_factors_are_of_alpha_times_the_weight(tmp_path, trans_b):
    path = tmp_path / "dense.onnx"
    weight, bias = dense_model(path, trans_b)
    (tmp_path / "pwlint.toml").write_text(f"[rules.PW002]\nmax-params = 2000\nsvd-target-params = {TARGET}\n")
    _, report = fix_json(path, "--fix", "--unsafe-fixes")
    assert _applied(report) == [("PW002", "unsafe")]
    note = report["files"][0]["fix"]["applied"][0]["note"]
    rank = (TARGET - COLS) // (ROWS + COLS)  # 8: 8 * 112 + 48 = 944 <= 1000 < 9 * 112 + 48
    assert f"rank {rank}:" in note
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", note).group(1))

    scaled = ALPHA * weight
    u, s, vt = np.linalg.svd(scaled, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vt[:rank]
    expected = np.linalg.norm(scaled - truncated) / np.linalg.norm(scaled)
    first, second, written_bias = written_factors(path)
    assert first.shape == (ROWS, rank) and second.shape == (rank, COLS)
    product = first @ second
    assert np.linalg.norm(scaled - product) / np.linalg.norm(scaled) == pytest.approx(expected, rel=1e-4)
    assert reported == pytest.approx(expected, rel=6e-3)
    np.testing.assert_allclose(product, truncated, atol=1e-5 * np.abs(truncated).max())
    np.testing.assert_allclose(written_bias, BETA * bias, rtol=1e-6)
    # and the model computes x @ (alpha W)_r + beta b
    x = np.random.default_rng(3).standard_normal((1, ROWS)).astype(np.float32)
    (y,) = run_onnx(path, {"x": x})
    np.testing.assert_allclose(y, x.astype(np.float64) @ truncated + BETA * bias, rtol=1e-4, atol=1e-4)
