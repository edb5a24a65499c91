"""``--format sarif``: SARIF 2.1.0 checked against the official schema, rules described
from their docstrings, repository-relative artifact URIs and fingerprints that survive
retraining."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cnn_model, randomised, run_inprocess

#: the project's copy of the official schema (../shared/schemas beside the repository);
#: a byte-identical copy is kept here so that a clone run alone still validates
SHARED_SCHEMA = Path(__file__).resolve().parents[2] / ".." / "shared" / "schemas" / "sarif-schema-2.1.0.json"
SCHEMA_PATH = SHARED_SCHEMA if SHARED_SCHEMA.is_file() else Path(__file__).with_name("sarif-schema-2.1.0.json")


@pytest.fixture(scope="module")
def validator():
    """A validator for the official SARIF 2.1.0 schema, of the draft the schema names
    in its own ``$schema``."""
    import jsonschema
    from jsonschema.validators import validator_for

    if not SCHEMA_PATH.is_file():
        pytest.fail(f"the SARIF schema is missing: {SCHEMA_PATH.resolve()}")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def assert_valid(validator, log: dict) -> None:
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def sarif(*args: str, codes=(0, 1)) -> dict:
    run = run_inprocess("check", "--format", "sarif", *map(str, args))
    assert run.code in codes, (run.code, run.err)
    return json.loads(run.out)


def results(log: dict) -> list[dict]:
    return log["runs"][0]["results"]


def by_rule(log: dict, code: str) -> list[dict]:
    return [r for r in results(log) if r["ruleId"] == code]


def fingerprint(log: dict, code: str) -> str:
    (result,) = by_rule(log, code)
    return result["partialFingerprints"]["pwlint/v2"]


def test_the_validator_rejects_an_invalid_log(validator):
    """The schema check has teeth: a result without its message is refused."""
    log = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "pwlint"}}, "results": [{"ruleId": "PW001"}]}]}
    assert list(validator.iter_errors(log))


def test_model_with_findings(validator, cnn_file):
    path = cnn_file("m.onnx", head="flatten", conv_bias=True)
    log = sarif(path, codes=(1,))
    assert_valid(validator, log)
    assert log["version"] == "2.1.0" and "sarif-schema-2.1.0" in log["$schema"]
    (run,) = log["runs"]
    from pwlint import __version__

    assert run["tool"]["driver"]["name"] == "pwlint"
    assert run["tool"]["driver"]["version"] == __version__
    assert run["invocations"] == [{"executionSuccessful": True}]
    (pw001,) = by_rule(log, "PW001")
    rules = run["tool"]["driver"]["rules"]
    assert rules[pw001["ruleIndex"]]["id"] == "PW001"
    assert pw001["level"] == "warning"
    assert "'flatten'" in pw001["message"]["text"] and "'fc'" in pw001["message"]["text"]
    (location,) = pw001["locations"]
    assert location["physicalLocation"]["region"] == {"startLine": 1}
    assert [l["name"] for l in location["logicalLocations"]] == ["flatten", "fc"]
    assert all(l["kind"] == "module" for l in location["logicalLocations"])
    assert {r["ruleId"] for r in results(log)} == {"PW001", "PW004"}


def test_clean_model(validator, cnn_file):
    path = cnn_file("clean.onnx", head="gap", conv_bias=False)
    log = sarif(path, codes=(0,))
    assert_valid(validator, log)
    assert results(log) == []
    assert log["runs"][0]["invocations"][0]["executionSuccessful"] is True
    assert len(log["runs"][0]["tool"]["driver"]["rules"]) >= 4


def test_unreadable_file(validator, cnn_file, tmp_path):
    good = cnn_file("good.onnx", head="flatten")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00\xffnot a model")
    log = sarif(good, broken, codes=(2,))
    assert_valid(validator, log)
    (invocation,) = log["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    (notification,) = invocation["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert "broken.onnx" in notification["message"]["text"]
    uri = notification["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.endswith("broken.onnx")
    assert by_rule(log, "PW001"), "the readable model is still reported"


def test_every_registered_rule_is_described(validator, cnn_file):
    from pwlint.plugins import get_registry
    from pwlint.rule import doc_sections

    log = sarif(cnn_file("clean.onnx", head="gap", conv_bias=False))
    descriptors = {d["id"]: d for d in log["runs"][0]["tool"]["driver"]["rules"]}
    registry = get_registry()
    assert set(descriptors) == set(registry.rules)
    for code, rule in registry.rules.items():
        descriptor = descriptors[code]
        assert descriptor["name"] == rule.name
        assert descriptor["shortDescription"]["text"] == rule.summary
        assert descriptor["fullDescription"]["text"] == doc_sections(rule.doc)["What it does"]
        assert descriptor["help"]["text"] == rule.body
        assert descriptor["help"]["markdown"] == rule.body
        assert "## Why is this bad" in descriptor["help"]["text"]
        expected = {"info": "note", "warning": "warning", "error": "error"}[rule.severity.value]
        assert descriptor["defaultConfiguration"]["level"] == expected


def test_levels_follow_severities(validator, cnn_file, tmp_path):
    # no normalisation at all: PW003 reports at info
    path = cnn_file("project/m.onnx", head="flatten", norm=False)
    log = sarif(path)
    assert_valid(validator, log)
    assert [r["level"] for r in by_rule(log, "PW003")] == ["note"]
    assert [r["level"] for r in by_rule(log, "PW001")] == ["warning"]
    (tmp_path / "project" / "pwlint.toml").write_text('[rules.PW001]\nseverity = "error"\n', encoding="utf-8")
    log = sarif(path)
    assert_valid(validator, log)
    assert [r["level"] for r in by_rule(log, "PW001")] == ["error"]


def git_init(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True, capture_output=True)


def test_uri_is_relative_to_the_repository_root(validator, tmp_path, monkeypatch):
    import onnx

    repo = tmp_path / "repo"
    git_init(repo)
    model = repo / "models" / "sub dir" / "m 1.onnx"
    model.parent.mkdir(parents=True)
    onnx.save(cnn_model(head="flatten"), model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    report = elsewhere / "pwlint.sarif"
    run = run_inprocess("check", "--format", "sarif", "--output-file", str(report), str(model))
    assert run.code == 1 and run.out == "", (run.code, run.err)
    log = json.loads(report.read_text(encoding="utf-8"))
    assert_valid(validator, log)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results(log)}
    assert uris == {"models/sub%20dir/m%201.onnx"}

    # the same from inside the repository, given a relative path
    monkeypatch.chdir(repo / "models")
    log = sarif(Path("sub dir") / "m 1.onnx")
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results(log)}
    assert uris == {"models/sub%20dir/m%201.onnx"}


def test_uri_without_a_repository_is_relative_to_the_working_directory(validator, cnn_file, tmp_path, monkeypatch):
    path = cnn_file("a/b/m.onnx", head="flatten")
    monkeypatch.chdir(tmp_path)
    log = sarif(path)
    assert_valid(validator, log)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results(log)}
    assert uris == {"a/b/m.onnx"}


def test_fingerprint_survives_retraining_and_follows_the_flagged_layer(validator, tmp_path, monkeypatch):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    repo = tmp_path / "repo"
    git_init(repo)
    path = repo / "models" / "m.onnx"
    path.parent.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    original = cnn_model(head="flatten")
    onnx.save(original, path)
    before = sarif(path)
    assert_valid(validator, before)
    first = fingerprint(before, "PW001")

    # retrained: the same graph, every weight different
    retrained = randomised(cnn_model(head="flatten"), seed=7)
    onnx.save(retrained, path)
    weights = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    changed = [t.name for t in retrained.graph.initializer if not np.array_equal(numpy_helper.to_array(t), weights[t.name])]
    assert "fc.weight" in changed and "conv.weight" in changed
    assert fingerprint(sarif(path), "PW001") == first

    # an unrelated layer renamed: still the same finding
    renamed_conv = cnn_model(head="flatten")
    for node in renamed_conv.graph.node:
        if node.name == "conv":
            node.name = "features.0"
    onnx.save(renamed_conv, path)
    assert fingerprint(sarif(path), "PW001") == first

    # the flagged layers themselves renamed, as an exporter renumbers them: the same finding
    renumbered = cnn_model(head="flatten")
    for node in renumbered.graph.node:
        if node.name in ("flatten", "fc"):
            node.name = f"node_{node.name}_3"
    onnx.save(renumbered, path)
    moved_names = sarif(path)
    assert "'node_fc_3'" in by_rule(moved_names, "PW001")[0]["message"]["text"]
    assert fingerprint(moved_names, "PW001") == first

    # the flagged dense layer replaced by another (new name, more units)
    replaced = cnn_model(head="flatten")
    graph = replaced.graph
    for node in graph.node:
        if node.name == "fc":
            node.name = "classifier"
    for i, tensor in enumerate(graph.initializer):
        if tensor.name in ("fc.weight", "fc.bias"):
            shape = (20, tensor.dims[1]) if tensor.name == "fc.weight" else (20,)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(np.zeros(shape, np.float32), tensor.name))
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 20
    onnx.checker.check_model(replaced, full_check=True)
    onnx.save(replaced, path)
    after = sarif(path)
    assert_valid(validator, after)
    assert "'classifier'" in by_rule(after, "PW001")[0]["message"]["text"]
    assert fingerprint(after, "PW001") != first

    # the same model at another path is another finding
    moved = repo / "other" / "m.onnx"
    moved.parent.mkdir()
    onnx.save(original, moved)
    assert fingerprint(sarif(moved), "PW001") != first


def test_kept_copy_of_the_schema_is_the_official_one():
    kept = Path(__file__).with_name("sarif-schema-2.1.0.json")
    if SHARED_SCHEMA.is_file():
        assert kept.read_bytes() == SHARED_SCHEMA.read_bytes()
    assert '"version": "2.1.0"' in kept.read_text() or "2.1.0" in kept.read_text()


def test_identical_findings_in_one_model_have_distinct_fingerprints(tmp_path, onnx_text):
    """Two equal conv+BatchNorm blocks give two PW004 findings of one signature; GitHub
    would merge results with one fingerprint into one alert."""
    from tests.test_baseline import classifier

    path = onnx_text(classifier(blocks=("block1", "block2")), name="m.onnx")
    log = json.loads(run_inprocess("check", str(path), "--format", "sarif", "--select", "PW004").out)
    prints = [r["partialFingerprints"]["pwlint/v2"] for r in by_rule(log, "PW004")]
    assert len(prints) == 3 and len(set(prints)) == 3  # the stem and the two equal blocks
