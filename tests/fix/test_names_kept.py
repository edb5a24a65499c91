"""Every ONNX fix keeps the model's interface: the graph's input names, its output names
and their order. Code that serves a model reads ``session.run(["logits"], ...)`` or
indexes the outputs by position; a fix that renamed ``logits`` would break it while
every number stayed right.

The fixed files are run here with onnxruntime asking for outputs *by name*; and the
fixer's own verification compares outputs by name, so that a fix that renames or
reorders outputs is rolled back, safe or unsafe.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import pwlint.formats.onnx.fixes as onnx_fixes
from tests.conftest import copy_model, fix_json, randomised

#: the graph's outputs, in an order that is not the order they are computed in
OUTPUTS = ["probs", "logits"]
INPUT = "image"
C, S, HIDDEN, K = 4, 8, 32, 10


def _model() -> onnx.ModelProto:
    """image -> Conv(with bias) -> BatchNorm -> Relu -> Flatten -> Gemm(256 -> 32) -> Relu
    -> Gemm(32 -> 10) = 'logits' -> Softmax = 'probs'; outputs listed as probs, logits.
    PW001 (the head), PW002 (fc1 with the config below) and PW004 (the conv bias) all fire."""
    nodes = [
        helper.make_node("Conv", [INPUT, "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="fc1_relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    zeros = lambda name, *shape: numpy_helper.from_array(np.zeros(shape, np.float32), name)
    inits = [zeros("cw", C, 3, 3, 3), zeros("cb", C), *(zeros(f"bn_{p}", C) for p in "sbmv"),
             zeros("w1", HIDDEN, C * S * S), zeros("b1", HIDDEN), zeros("w2", K, HIDDEN), zeros("b2", K)]
    graph = helper.make_graph(
        nodes, "named", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, S, S])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, K]) for name in OUTPUTS], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return randomised(model, seed=4)


@pytest.fixture
def named_model(tmp_path):
    original = tmp_path / "named.onnx"
    onnx.save(_model(), original)
    work = copy_model(original, tmp_path / "work")
    # fc1 has 256 * 32 + 32 = 8224 parameters: over 4000, factorised to at most 3000
    (work.parent / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 4000\nsvd-target-params = 3000\n")
    return original, work


def run_by_name(path, image: np.ndarray) -> dict[str, np.ndarray]:
    """The model's outputs, asked for by name (onnxruntime raises on a name it does not have)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = ["logits", "probs"]
    return dict(zip(wanted, session.run(wanted, {INPUT: image})))


def interface(path) -> tuple[list[str], list[str]]:
    graph = onnx.load(str(path)).graph
    initializers = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


#: (flags, codes applied, whether every applied fix is safe)
FIXES = {
    "convolutionalise": (["--fix", "--select", "PW001"], ["PW001"], True),
    "pool-pointwise": (["--fix", "--unsafe-fixes", "--select", "PW001"], ["PW001"], False),
    "low-rank": (["--fix", "--unsafe-fixes", "--select", "PW002"], ["PW002"], False),
    "fold-bias": (["--fix", "--select", "PW004"], ["PW004"], True),
    "head-and-fold": (["--fix", "--unsafe-fixes"], ["PW001", "PW004"], False),
    "low-rank-and-fold": (["--fix", "--unsafe-fixes", "--select", "PW002,PW004"], ["PW002", "PW004"], False),
    "safe-head-and-fold": (["--fix"], ["PW001", "PW004"], True),
}


@pytest.mark.parametrize("fix", sorted(FIXES))
def test_fixed_model_keeps_its_input_and_output_names_and_order(named_model, fix):
    original, model = named_model
    flags, applied, safe = FIXES[fix]
    _, report = fix_json(model, *flags)
    outcome = report["files"][0]["fix"]
    assert sorted(o["code"] for o in outcome["applied"]) == applied, outcome["not_applied"]
    assert outcome["written"] == str(model)
    assert model.read_bytes() != original.read_bytes()
    assert interface(model) == interface(original) == ([INPUT], OUTPUTS)
    image = np.random.default_rng(8).standard_normal((1, 3, S, S)).astype(np.float32)
    before, after = run_by_name(original, image), run_by_name(model, image)
    # by position too: whoever indexes run(None, ...) gets probs first, then logits
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    by_position = session.run(None, {INPUT: image})
    np.testing.assert_array_equal(by_position[0], after["probs"])
    np.testing.assert_array_equal(by_position[1], after["logits"])
    np.testing.assert_allclose(after["probs"].sum(axis=1), 1.0, rtol=1e-5)
    if safe:
        for name in ("logits", "probs"):
            np.testing.assert_allclose(after[name], before[name], rtol=1e-4, atol=1e-5)
    else:
        assert after["logits"].shape == before["logits"].shape
        assert not np.allclose(after["logits"], before["logits"], rtol=1e-4, atol=1e-5)


# the verification compares outputs by name ----------------------------------------------

def _renaming(action):
    """``action``, followed by what a bug would do: give the output 'logits' a new name."""
    def renamed(rewriter, plan):
        note = action(rewriter, plan)
        editor = rewriter.editor
        for node in editor.graph.node:
            node.output[:] = ["logits_out" if t == "logits" else t for t in node.output]
            node.input[:] = ["logits_out" if t == "logits" else t for t in node.input]
        for output in editor.graph.output:
            if output.name == "logits":
                output.name = "logits_out"
        return note
    return renamed


def _reordering(action):
    """``action``, followed by swapping the graph's two outputs."""
    def reordered(rewriter, plan):
        note = action(rewriter, plan)
        editor = rewriter.editor
        outputs = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in editor.graph.output]
        del editor.graph.output[:]
        editor.graph.output.extend(reversed(outputs))
        return note
    return reordered


@pytest.mark.parametrize("breakage, why", [
    (_renaming, "outputs changed names (missing 'logits'; new 'logits_out')"),
    (_reordering, "outputs changed order (logits, probs instead of probs, logits)"),
])
@pytest.mark.parametrize("action, flags", [
    ("convolutionalise-head", ["--fix"]),
    ("pool-pointwise-head", ["--fix", "--unsafe-fixes"]),
])
def test_a_fix_that_renames_or_reorders_the_outputs_is_rolled_back(named_model, monkeypatch, breakage, why, action,
                                                                   flags):
    """Safe or unsafe: the numbers may move for an unsafe fix, the interface may not."""
    original, model = named_model
    # both head actions go through the ONNX rewriter's rewrite_head
    monkeypatch.setattr(onnx_fixes.OnnxRewriter, "rewrite_head", breakage(onnx_fixes.OnnxRewriter.rewrite_head))
    _, report = fix_json(model, *flags, "--select", "PW001")
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = fix["not_applied"]
    assert outcome["code"] == "PW001"
    assert outcome["note"] == f"not applied: the fixed model's {why}"
    assert model.read_bytes() == original.read_bytes()
