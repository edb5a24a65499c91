"""Verification before any write: the ONNX checker, then onnxruntime on the same inputs
before and after. A safe fix that changes the outputs is not written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import pwlint.formats.onnx.backend as onnx_backend
import pwlint.formats.onnx.fixes as onnx_fixes
from tests.conftest import (
    assert_same_outputs, codes, copy_model, fix_json, leftovers, randomised, run_inprocess,
)


@pytest.fixture
def lenet(exported, tmp_path):
    """(original export, a copy in its own folder to fix)."""
    original = exported("lenet", "legacy")
    return original, copy_model(original, tmp_path / "work")


@pytest.fixture
def wrong_kernel(monkeypatch):
    """Make the safe PW001 fix build a wrong conv kernel, as a bug would."""
    real = onnx_fixes.head_kernels

    def perturbed(*args):
        kernel, *rest = real(*args)
        noise = np.random.default_rng(0).standard_normal(kernel.shape).astype(kernel.dtype) * 0.05
        return [kernel + noise, *rest]

    monkeypatch.setattr(onnx_fixes, "head_kernels", perturbed)


def test_safe_fix_that_changes_the_outputs_is_not_written(lenet, wrong_kernel):
    original, model = lenet
    _, report = fix_json(model, "--fix")
    assert model.read_bytes() == original.read_bytes()
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = fix["not_applied"]
    assert outcome["code"] == "PW001" and outcome["applicability"] == "safe"
    assert "outputs differ" in outcome["note"]
    assert outcome["max_abs_diff"] > 1e-3  # the measured error
    assert "PW001" in codes(report)  # still reported: it was not fixed
    assert leftovers(model.parent) == []
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]


def test_text_output_gives_the_measured_error(lenet, wrong_kernel):
    original, model = lenet
    run = run_inprocess(str(model), "--fix")
    assert run.code == 1, run.err
    line = next(line for line in run.out.splitlines() if "not applied: PW001" in line)
    assert "outputs differ beyond rtol 0.0001 / atol 1e-05" in line
    measured = float(line.split("max abs diff ")[1].split(",")[0])
    assert measured > 1e-3
    assert model.read_bytes() == original.read_bytes()
    assert leftovers(model.parent) == []


def test_unsafe_fix_is_kept_despite_the_difference_and_says_so(lenet):
    original, model = lenet
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW001")
    fix = report["files"][0]["fix"]
    assert [o["applicability"] for o in fix["applied"]] == ["unsafe"]
    assert model.read_bytes() != original.read_bytes()
    assert fix["max_abs_diff"] > 0


# --no-verify -----------------------------------------------------------------------------

@pytest.fixture
def no_onnxruntime(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("onnxruntime is not available in this test")

    monkeypatch.setattr(onnx_backend.OnnxBackend, "run_model", staticmethod(refuse))
    return calls


def test_no_verify_does_not_run_onnxruntime(lenet, no_onnxruntime, monkeypatch):
    original, model = lenet
    checked = []
    real_check = onnx.checker.check_model

    def spy(*args, **kwargs):
        checked.append((args, kwargs))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", spy)
    _, report = fix_json(model, "--fix", "--no-verify")
    assert no_onnxruntime == []
    fix = report["files"][0]["fix"]
    assert [o["code"] for o in fix["applied"]] == ["PW001"]
    assert fix["verified"] is False and fix["max_abs_diff"] is None
    assert fix["applied"][0]["max_abs_diff"] is None
    # the checker still ran, with the full check, and the fix is right (checked here)
    assert checked and all(kwargs.get("full_check") for _, kwargs in checked)
    assert_same_outputs(original, model)


def _fix_unverifiable(path, *args):
    """``--fix`` on a model that cannot be run: the JSON report, after checking that the
    --no-verify hint is said once, on stderr and in the report (not in every note)."""
    import json

    run = run_inprocess("check", str(path), "--format", "json", "--fix", *args)
    assert run.code in (0, 1), run.err
    report = json.loads(run.out)
    fix = report["files"][0]["fix"]
    assert fix["hint"] == "--no-verify applies fixes without the numeric check"
    assert run.err.count("\n") == 1 and run.err.count("--no-verify") == 1, run.err
    assert not any("--no-verify" in o["note"] for o in fix["not_applied"])
    return report


def test_without_no_verify_a_model_that_cannot_be_run_is_reported(lenet, no_onnxruntime):
    original, model = lenet
    report = _fix_unverifiable(model)
    assert no_onnxruntime
    fix = report["files"][0]["fix"]
    assert fix["applied"] == []
    (outcome,) = fix["not_applied"]
    assert "onnxruntime is not available in this test" in outcome["note"]
    assert model.read_bytes() == original.read_bytes()
    assert leftovers(model.parent) == []


def test_no_verify_still_runs_the_checker(lenet, monkeypatch):
    original, model = lenet

    def reject(*args, **kwargs):
        raise onnx.checker.ValidationError("rejected by the test")

    monkeypatch.setattr(onnx.checker, "check_model", reject)
    _, report = fix_json(model, "--fix", "--no-verify")
    fix = report["files"][0]["fix"]
    assert fix["applied"] == []
    (outcome,) = fix["not_applied"]
    assert "checker" in outcome["note"] and "rejected by the test" in outcome["note"]
    assert model.read_bytes() == original.read_bytes()
    assert leftovers(model.parent) == []


def _custom_op_model(path):
    """A Flatten+Gemm head whose output goes through an operator onnxruntime does not know."""
    rng = np.random.default_rng(0)
    weight = lambda name, *shape: numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["h"], name="fc", transB=1),
        helper.make_node("Scale", ["h"], ["y"], name="custom", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weight("cw", 4, 3, 3, 3), weight("w", 10, 64), weight("b", 10)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), path)


def test_model_onnxruntime_cannot_load_is_reported_not_crashed_on(tmp_path):
    path = tmp_path / "custom.onnx"
    _custom_op_model(path)
    before = path.read_bytes()
    report = _fix_unverifiable(path)
    (outcome,) = report["files"][0]["fix"]["not_applied"]
    assert "onnxruntime cannot load the model" in outcome["note"]
    assert path.read_bytes() == before
    _, report = fix_json(path, "--fix", "--no-verify")
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
    assert "Conv" in [n.op_type for n in onnx.load(str(path)).graph.node if n.name == "fc"]


def test_nan_outputs_the_original_has_too_do_not_block_a_safe_fix(tmp_path):
    """A model with an output that is NaN on some inputs (a Sqrt of the raw input here):
    the fix leaves those NaNs as they are, which is not a difference."""
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1),
        helper.make_node("Sqrt", ["x"], ["root"], name="root"),
    ]
    zeros = lambda name, *shape: numpy_helper.from_array(np.zeros(shape, np.float32), name)
    graph = helper.make_graph(
        nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("root", TensorProto.FLOAT, [1, 3, 6, 6])],
        [zeros("cw", 4, 3, 3, 3), zeros("cb", 4), zeros("w", 10, 64), zeros("b", 10)],
    )
    model = randomised(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    original = tmp_path / "nan.onnx"
    onnx.save(model, original)
    path = copy_model(original, tmp_path / "work")
    _, report = fix_json(path, "--fix", "--select", "PW001")
    fix = report["files"][0]["fix"]
    assert [o["code"] for o in fix["applied"]] == ["PW001"], fix["not_applied"]
    assert fix["max_abs_diff"] < 1e-5
    assert_same_outputs(original, path)  # assert_allclose treats NaN == NaN


def test_a_model_whose_outputs_are_all_nan_is_not_called_verified(tmp_path):
    """A conv with NaN weights makes every output NaN: a fix cannot be checked against
    that, so it is not applied (unless --no-verify), instead of passing a comparison
    of NaN with NaN."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    C, S, K = 4, 3, 5
    inits = [
        numpy_helper.from_array(np.full((C, 3, 1, 1), np.nan, np.float32), "cw"),
        numpy_helper.from_array(np.ones((K, C * S * S), np.float32), "w"),
        numpy_helper.from_array(np.zeros((K,), np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, S, S])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K])], inits,
    )
    path = tmp_path / "nan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    before = path.read_bytes()
    report = _fix_unverifiable(path)
    (outcome,) = [o for o in report["files"][0]["fix"]["not_applied"] if o["code"] == "PW001"]
    assert "NaN" in outcome["note"]
    assert path.read_bytes() == before
    _, applied = fix_json(path, "--fix", "--no-verify")
    assert [o["code"] for o in applied["files"][0]["fix"]["applied"]] == ["PW001"]
