"""Coverage: pwlint never calls a model clean that it did not understand.

Every read model reports how many layers it has, how many were recognised, how many
shapes are known and which operators were not; where the rules could not look, the text
summary says so instead of "All checks passed", and a model with nothing recognised is
an error.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.conftest import init, one_line_error

CUSTOM = '<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>'
SARIF_SCHEMA = "tests/reporters/sarif-schema-2.1.0.json"


@pytest.fixture
def custom_only(onnx_text):
    """A model made only of operators of a custom domain: pwlint knows none of them."""
    return onnx_text(f"""{CUSTOM}
    g (float[1,3,8,8] x) => (float[1,10] y) {{
        h = com.example.Backbone(x)
        y = com.example.Head(h)
    }}""", check=False)


@pytest.fixture
def custom_dense(onnx_text):
    """A conv net whose classifier is a custom operator holding a 2560x10 weight: a dense
    layer may be hidden there, and no rule can judge it."""
    return onnx_text(f"""{CUSTOM}
    g (float[1,3,8,8] x) => (float[1,10] y)
    <{init("w", 4, 3, 3, 3)}, {init("fc", 256, 10)}> {{
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        r = Relu(c)
        f = Flatten(r)
        y = com.example.FusedDense(f, fc)
    }}""", check=False)


def test_a_model_of_unknown_operators_is_never_reported_as_passing(pwlint, custom_only):
    run = pwlint(str(custom_only))
    line = one_line_error(run)
    assert run.code == 2
    assert "Backbone" in line and "Head" in line and "cannot check" in line
    assert "All checks passed" not in run.out


def test_unknown_operator_with_weights_is_named_and_the_summary_says_so(pwlint, custom_dense):
    run = pwlint(str(custom_dense))
    # no finding at or above fail-on: the exit code stays 0, but the text is not "clean"
    assert run.code == 0, run.err
    assert "All checks passed" not in run.out
    note = next(line for line in run.out.splitlines() if "not fully checked" in line)
    assert "FusedDense" in note and "2.6k parameters" in note and "conv or dense" in note
    assert run.out.splitlines()[-1] == "No findings in 1 model, 1 not fully checked (see the notes above)."


def test_json_coverage_counts_layers_recognised_and_unknown(pwlint, custom_dense):
    run = pwlint(str(custom_dense), "--format", "json")
    coverage = json.loads(run.out)["files"][0]["coverage"]
    # Conv, Relu, Flatten and the custom op: four layers, three recognised
    assert coverage["layers"] == 4
    assert coverage["recognised"] == 3
    assert coverage["unknown_ops"] == {"FusedDense": 1}
    assert len(coverage["unchecked"]) == 1


def test_a_fully_understood_model_has_complete_coverage(pwlint, cnn_file):
    run = pwlint(str(cnn_file()), "--format", "json")
    coverage = json.loads(run.out)["files"][0]["coverage"]
    assert coverage["layers"] == coverage["recognised"] == coverage["shapes_known"] > 0
    assert coverage["unknown_ops"] == {} and coverage["unchecked"] == []


def test_flatten_of_unknown_shape_before_a_dense_layer_is_a_blind_spot(pwlint, onnx_text):
    """The feature map comes out of a custom operator with no declared shape: PW001 cannot
    know whether the flatten throws away a spatial map, and says so."""
    path = onnx_text(f"""{CUSTOM}
    g (float[1,3,8,8] x) => (float[1,10] y) <{init("fc", 256, 10)}> {{
        h = com.example.Backbone(x)
        f = Flatten(h)
        y = Gemm(f, fc)
    }}""", check=False)
    run = pwlint(str(path))
    assert "All checks passed" not in run.out
    assert "input shape of 'Flatten_1' is unknown" in run.out


def test_ci_formats_carry_the_coverage_note(pwlint, custom_dense, tmp_path):
    github = pwlint(str(custom_dense), "--format", "github").out
    assert github.startswith("::notice file=") and "FusedDense" in github
    sarif = json.loads(pwlint(str(custom_dense), "--format", "sarif").out)
    with open(SARIF_SCHEMA) as schema:
        jsonschema.validate(sarif, json.load(schema))
    (note,) = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert note["level"] == "note" and "FusedDense" in note["message"]["text"]
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is True


def test_readme_coverage_sample_is_real_output(pwlint, custom_dense, monkeypatch):
    """The README's "not fully checked" sample is what pwlint prints for this model."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^\$ pwlint custom\.onnx\n(.*?)\n```", readme, re.M | re.S).group(1)
    monkeypatch.chdir(custom_dense.parent)
    custom_dense.rename("custom.onnx")
    assert pwlint("custom.onnx").out.strip() == block.strip()
