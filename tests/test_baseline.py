"""Baselines: ``--write-baseline FILE`` records today's findings, ``--baseline FILE`` hides
them so that a CI gate fails only on new ones, and lists the entries that went stale."""

from __future__ import annotations

import json
import re
import shutil

import onnx
import pytest

from tests.conftest import Run, init, leftovers, one_line_error, randomised, run_inprocess

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
CONV3X3 = "Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]>"


def classifier(*, classes: int = 10, stem_bias: bool = True, blocks: tuple[str, ...] = (),
               plain_conv: bool = False, prefix: str = "") -> str:
    """A 3x8x8 CNN in ONNX text syntax, built from parts that each give one finding:

    - ``stem``: Conv(3 -> 4) with a bias, then BatchNorm: PW004, unless ``stem_bias=False``;
    - ``blocks``: identical Conv(4 -> 4, bias) + BatchNorm blocks of these names, in
      this order: one PW004 each, all with the same signature;
    - ``plain_conv``: a Conv(4 -> 4) with no normalisation feeding the head: PW003;
    - ``flatten`` + ``fc``: Flatten of the 4x8x8 map into Gemm(256 -> classes): PW001.

    ``prefix`` goes in front of every layer name (an exporter that renames everything).
    """
    inits = [init("stem_w", 4, 3, 3, 3), init("stem_bn_p", 4), init("fc_w", classes, 256), init("fc_b", classes)]
    stem_inputs = "x, stem_w, stem_b" if stem_bias else "x, stem_w"
    if stem_bias:
        inits.append(init("stem_b", 4))
    lines = [f"[{prefix}stem] s0 = {CONV3X3} ({stem_inputs})",
             f"[{prefix}stem_bn] s1 = BatchNormalization (s0, stem_bn_p, stem_bn_p, stem_bn_p, stem_bn_p)",
             f"[{prefix}stem_relu] t0 = Relu (s1)"]
    last = "t0"
    for i, block in enumerate(blocks):
        inits += [init(f"b{i}_w", 4, 4, 3, 3), init(f"b{i}_b", 4), init(f"b{i}_bn_p", 4)]
        lines += [f"[{prefix}{block}] b{i}_0 = {CONV3X3} ({last}, b{i}_w, b{i}_b)",
                  f"[{prefix}{block}_bn] b{i}_1 = BatchNormalization (b{i}_0, b{i}_bn_p, b{i}_bn_p, b{i}_bn_p, b{i}_bn_p)",
                  f"[{prefix}{block}_relu] b{i}_2 = Relu (b{i}_1)"]
        last = f"b{i}_2"
    if plain_conv:
        inits.append(init("plain_w", 4, 4, 3, 3))
        lines += [f"[{prefix}plain] p0 = {CONV3X3} ({last}, plain_w)", f"[{prefix}plain_relu] p1 = Relu (p0)"]
        last = "p1"
    lines += [f"[{prefix}flatten] f0 = Flatten <axis = 1> ({last})",
              f"[{prefix}fc] y = Gemm <transB = 1> (f0, fc_w, fc_b)"]
    body = "\n        ".join(lines)
    return f"""
    {OPSET}
    classifier (float[1,3,8,8] x) => (float[1,{classes}] y)
    <{", ".join(inits)}>
    {{
        {body}
    }}
    """


@pytest.fixture
def model(onnx_text):
    """``model(name, **classifier_kwargs)``: write (or overwrite) a :func:`classifier` model."""
    return lambda name="model.onnx", **kwargs: onnx_text(classifier(**kwargs), name=name)


def check(*args) -> Run:
    return run_inprocess("check", *map(str, args))


def reported(run: Run) -> list[tuple[str, str]]:
    """(code, message) of each finding in a text report."""
    return re.findall(r"^\S+: (PW\d+) \(\w+\) (.*)$", run.out, re.M)


def reported_codes(run: Run) -> list[str]:
    return sorted(code for code, _ in reported(run))


def stale_lines(run: Run) -> list[str]:
    return [line for line in run.err.splitlines() if "stale baseline entry" in line]


@pytest.fixture
def recorded(model, tmp_path):
    """A model with PW001 and PW004, and a baseline recording both; returns (model, baseline)."""
    path = model()
    baseline = tmp_path / "pwlint-baseline.json"
    run = check(path, "--write-baseline", baseline)
    assert run.code == 0, run.err
    assert "recorded 2 findings" in run.err
    return path, baseline


def test_baseline_hides_old_findings_and_shows_a_new_one(model, recorded):
    path, baseline = recorded
    assert reported_codes(check(path)) == ["PW001", "PW004"]  # without the baseline, both show
    quiet = check(path, "--baseline", baseline)
    assert quiet.code == 0, (quiet.out, quiet.err)
    assert reported(quiet) == []
    assert "hid 2 findings" in quiet.err and stale_lines(quiet) == []

    model(plain_conv=True)  # a new convolution without normalisation
    gated = check(path, "--baseline", baseline)
    assert gated.code == 1
    (finding,) = reported(gated)
    assert finding[0] == "PW003" and "plain" in finding[1]
    assert "hid 2 findings" in gated.err and stale_lines(gated) == []


def test_the_file_records_one_entry_per_finding_relative_to_its_folder(recorded):
    path, baseline = recorded
    document = json.loads(baseline.read_text())
    assert document["version"] == 1
    entries = document["entries"]
    assert sorted(e["code"] for e in entries) == ["PW001", "PW004"]
    assert {e["path"] for e in entries} == {"model.onnx"}  # not the absolute tmp path
    head = next(e for e in entries if e["code"] == "PW001")
    assert head["nodes"] == ["flatten", "fc"] and "flatten" in head["message"]
    assert leftovers(baseline.parent) == []


def test_retraining_keeps_findings_hidden(recorded):
    path, baseline = recorded
    before = path.read_bytes()
    onnx.save(randomised(onnx.load(path), seed=3), path)
    assert path.read_bytes() != before
    run = check(path, "--baseline", baseline)
    assert run.code == 0 and reported(run) == [], run.out
    assert stale_lines(run) == []


def test_renaming_layers_keeps_findings_hidden(model, recorded):
    path, baseline = recorded
    model(prefix="backbone_")
    assert "backbone_flatten" in check(path).out  # the names did change
    run = check(path, "--baseline", baseline)
    assert run.code == 0 and reported(run) == [], run.out
    assert stale_lines(run) == []


def test_changing_the_flagged_layer_shows_its_finding_and_the_old_entry_as_stale(model, recorded):
    path, baseline = recorded
    model(classes=12)  # the dense layer of the PW001 head is wider
    run = check(path, "--baseline", baseline)
    assert run.code == 1
    (finding,) = reported(run)
    assert finding[0] == "PW001" and "256 -> 12" in finding[1]
    (stale,) = stale_lines(run)
    assert stale == f"pwlint: stale baseline entry: {path}: PW001 at flatten, fc (no longer found)"
    assert "hid 1 finding;" in run.err


def test_fixing_a_finding_lists_its_entry_as_stale(model, recorded):
    path, baseline = recorded
    model(stem_bias=False)  # PW004 fixed
    run = check(path, "--baseline", baseline)
    assert run.code == 0 and reported(run) == []
    (stale,) = stale_lines(run)
    assert f"{path}: PW004 at stem, stem_bn (no longer found)" in stale


def test_identical_layers_are_matched_by_count(model, tmp_path):
    """Two alike blocks share a signature: the baseline hides two, a third is new, and
    the one reported is the added block even when it comes first in the model."""
    path = model(blocks=("block1", "block2"))
    baseline = tmp_path / "b.json"
    assert check(path, "--write-baseline", baseline).code == 0
    assert check(path, "--baseline", baseline).code == 0
    model(blocks=("extra", "block1", "block2"))
    run = check(path, "--baseline", baseline)
    assert run.code == 1
    (finding,) = reported(run)
    assert finding[0] == "PW004" and "conv extra " in finding[1], finding


def test_works_from_another_working_directory_and_another_clone(model, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    shutil.move(model(), project / "models" / "net.onnx")
    monkeypatch.chdir(project)
    assert check("models", "--write-baseline", "pwlint-baseline.json").code == 0

    monkeypatch.chdir(tmp_path)
    run = check("project/models/net.onnx", "--baseline", "project/pwlint-baseline.json")
    assert run.code == 0 and reported(run) == [], run.out

    clone = tmp_path / "elsewhere" / "clone"
    shutil.copytree(project, clone)
    monkeypatch.chdir(clone / "models")
    run = check(clone / "models", "--baseline", "../pwlint-baseline.json")
    assert run.code == 0 and reported(run) == [], (run.out, run.err)
    assert stale_lines(run) == []


def test_models_not_linted_in_this_run_are_not_stale(model, tmp_path):
    first, second = model("a.onnx"), model("b.onnx", plain_conv=True)
    baseline = tmp_path / "b.json"
    assert check(tmp_path, "--write-baseline", baseline).code == 0
    run = check(first, "--baseline", baseline)
    assert run.code == 0 and stale_lines(run) == [], run.err
    assert "hid 2 findings" in run.err

    second.unlink()  # a model that no longer exists can never match again
    run = check(first, "--baseline", baseline)
    assert run.code == 0
    assert len(stale_lines(run)) == 3
    assert all("b.onnx" in line and "(model no longer exists)" in line for line in stale_lines(run))


def test_the_file_is_the_same_whatever_order_the_models_are_linted_in(model, tmp_path):
    first, second = model("a.onnx"), model("b.onnx", blocks=("block1", "block2"))
    one, other = tmp_path / "one.json", tmp_path / "other.json"
    assert check(first, second, "--write-baseline", one).code == 0
    assert check(second, first, "--write-baseline", other).code == 0
    assert one.read_bytes() == other.read_bytes()


@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_machine_readable_reports_hold_only_the_new_finding(model, recorded, fmt):
    path, baseline = recorded
    model(plain_conv=True)
    run = check(path, "--baseline", baseline, "--format", fmt)
    assert run.code == 1
    report = json.loads(run.out)  # the stale and summary lines stay on stderr
    if fmt == "json":
        assert [f["code"] for f in report["findings"]] == ["PW003"]
    else:
        assert [r["ruleId"] for r in report["runs"][0]["results"]] == ["PW003"]


MALFORMED = {
    "not JSON": ("{'version': 1", "not valid JSON"),
    "a list": ("[]", "not a pwlint baseline"),
    "another version": ('{"version": 99, "entries": []}', "version 99"),
    "entries not a list": ('{"version": 1, "entries": {}}', "'entries' is not a list"),
    "entry without signature": ('{"version": 1, "entries": [{"path": "m.onnx", "code": "PW001"}]}', "entry 1 has no 'signature'"),
    "binary": (b"\xff\xfe\x00", "not UTF-8"),
}


@pytest.mark.parametrize("content, said", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_baseline_is_one_line_and_exit_2(recorded, content, said):
    path, baseline = recorded
    if isinstance(content, bytes):
        baseline.write_bytes(content)
    else:
        baseline.write_text(content)
    line = one_line_error(check(path, "--baseline", baseline))
    assert line.startswith(f"pwlint: error: baseline {baseline}") and said in line, line


def test_a_missing_baseline_says_how_to_record_one(model, tmp_path):
    missing = tmp_path / "nowhere.json"
    line = one_line_error(check(model(), "--baseline", missing))
    assert f"--write-baseline {missing}" in line


def test_a_baseline_that_cannot_be_written_is_one_line_and_exit_2(model, tmp_path):
    line = one_line_error(check(model(), "--write-baseline", tmp_path / "no-such-folder" / "b.json"))
    assert "cannot write the baseline" in line


def test_entries_of_rules_that_did_not_run_are_not_stale(model, recorded):
    """``--select PW001`` says nothing about PW004: its entry is neither matched nor stale."""
    path, baseline = recorded
    run = check(path, "--baseline", baseline, "--select", "PW001")
    assert run.code == 0 and reported(run) == [] and stale_lines(run) == []
    model(stem_bias=False)  # PW004 fixed, but PW004 is still not selected
    assert stale_lines(check(path, "--baseline", baseline, "--ignore", "PW004")) == []
    assert len(stale_lines(check(path, "--baseline", baseline))) == 1


def test_no_baseline_is_written_while_a_model_cannot_be_read(model, tmp_path):
    """Writing it anyway would drop that model's entries and unhide them on the next run."""
    good = model()
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not a model")
    baseline = tmp_path / "b.json"
    run = check(good, bad, "--write-baseline", baseline)
    assert run.code == 2 and "not written" in run.err.splitlines()[-1]
    assert "Traceback" not in run.err and not baseline.exists()
