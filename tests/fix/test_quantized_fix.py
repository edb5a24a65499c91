"""``--fix`` on a quantized model says it cannot apply and leaves the file alone.

A fix rewrites float weights; a quantized layer's integer weights, scales and zero
points would need quantizing again, which is the quantizer's job. Each model is
quantized in the test run by onnxruntime.
"""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import fix_json, leftovers
from tests.formats.onnx.quantized_models import float_model, quantize

NOTE = "the model is quantized: fix the float model, then quantize again"


@pytest.fixture(scope="module")
def float_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("float")
    files = {}
    for norm in (False, True):
        files[norm] = folder / f"float{'-bn' if norm else ''}.onnx"
        onnx.save(float_model("gemm", norm), files[norm])
    return files


@pytest.mark.parametrize("form", ["qdq", "qoperator", "dynamic"])
@pytest.mark.parametrize("flags", [["--fix"], ["--fix", "--unsafe-fixes"]], ids=["safe", "unsafe"])
def test_a_quantized_head_is_not_rewritten(float_files, tmp_path, form, flags):
    path = quantize(float_files[False], tmp_path / f"{form}.onnx", form)
    config = tmp_path / "pwlint.toml"
    config.write_text("[rules.PW002]\nmax-params = 1000\n")  # fc1 (16.4k) is reported too
    before = path.read_bytes()
    _, report = fix_json(path, *flags, "--config", str(config))
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and fix["written"] is None
    outcomes = {o["code"]: o for o in fix["not_applied"]}
    expected = {"PW001", "PW002"} if "--unsafe-fixes" in flags else {"PW001"}
    assert set(outcomes) >= expected
    assert all(outcomes[code]["note"] == NOTE for code in expected), outcomes
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    # the finding itself says so, before any --fix
    head = next(f for f in report["findings"] if f["code"] == "PW001")
    assert NOTE in head["fix"]["description"]


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_the_backend_refuses_any_plan_on_quantized_layers(float_files, tmp_path, form):
    """PW004's fold (a rule that does not know about quantization) reaches the ONNX
    backend, which refuses it rather than editing integer weights."""
    path = quantize(float_files[True], tmp_path / f"{form}-bn.onnx", form)
    before = path.read_bytes()
    _, report = fix_json(path, "--fix", "--select", "PW004")
    fix = report["files"][0]["fix"]
    (outcome,) = fix["not_applied"]
    assert (outcome["code"], outcome["note"]) == ("PW004", NOTE)
    assert path.read_bytes() == before


def test_the_float_model_is_still_fixed(float_files, tmp_path):
    """The same head in float is rewritten: the refusal is about quantization only."""
    path = tmp_path / "float.onnx"
    path.write_bytes(float_files[False].read_bytes())
    _, report = fix_json(path, "--fix")
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
