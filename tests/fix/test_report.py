"""What --fix reports: the JSON contract, the fix summary, and the findings that remain."""

from __future__ import annotations

import json

from tests.conftest import codes, copy_model, fix_json, lint, run_inprocess

OUTCOME_KEYS = {"code", "nodes", "applicability", "description", "applied", "note", "max_abs_diff", "max_rel_diff"}
FIX_KEYS = {
    "applied", "not_applied", "before", "after", "max_abs_diff", "max_rel_diff", "verified", "dry_run",
    "written", "not_written", "hint", "layers_removed", "layers_added",
}


def test_json_contract_with_fix(exported, tmp_path):
    clean = copy_model(exported("lenet", "legacy"), tmp_path / "a")
    config = tmp_path / "pwlint.toml"
    config.write_text("[rules.PW002]\nmax-params = 40000\n")
    _, report = fix_json(clean, "--fix", "--config", str(config))
    assert set(report) == {"version", "files", "findings"}
    (file,) = report["files"]
    assert set(file) == {"path", "format", "error", "coverage", "fix"}
    fix = file["fix"]
    assert set(fix) == FIX_KEYS
    for outcome in fix["applied"] + fix["not_applied"]:
        assert set(outcome) == OUTCOME_KEYS
    assert all(o["applied"] for o in fix["applied"]) and not any(o["applied"] for o in fix["not_applied"])
    assert [o["code"] for o in fix["applied"]] == ["PW001"]
    assert [o["code"] for o in fix["not_applied"]] == ["PW002"]  # unsafe only, not asked for
    for stats in (fix["before"], fix["after"]):
        assert set(stats) == {"params", "macs", "file_size"}
        assert all(isinstance(v, int) and v > 0 for v in stats.values())
    assert fix["verified"] is True and fix["dry_run"] is False and fix["written"] == str(clean)
    assert fix["not_written"] is None and fix["hint"] is None
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_json_without_fix_has_no_fix_key(exported):
    report = lint(exported("lenet", "legacy"))
    assert set(report) == {"version", "files", "findings"}
    assert set(report["files"][0]) == {"path", "format", "error", "coverage"}


def test_remaining_findings_are_what_relinting_the_fixed_model_gives(exported, tmp_path):
    model = copy_model(exported("lenet", "legacy"), tmp_path)
    # LeNet's 84-wide hidden layer is misaligned (PW007) before and after the head fix
    assert codes(lint(model)) == ["PW001", "PW003", "PW007", "PW007"]
    _, report = fix_json(model, "--fix")
    assert codes(report) == codes(lint(model)) == ["PW003", "PW007", "PW007"]
    assert {f["severity"] for f in report["findings"]} == {"info"}


def test_text_output_lists_the_fix_then_the_remaining_findings(exported, tmp_path):
    model = copy_model(exported("lenet", "legacy"), tmp_path)
    run = run_inprocess(str(model), "--fix")
    assert run.code == 0, run.err  # only an info finding remains
    lines = run.out.splitlines()
    assert lines[0] == f"{model}: fixed 1 finding(s); written to {model}"
    assert lines[1].startswith("  applied: PW001 (safe)")
    assert not any(" PW001 " in line for line in lines if line.startswith(str(model) + ": PW"))
    assert [line.split()[1] for line in lines if line.startswith(f"{model}: PW")] == ["PW003", "PW007", "PW007"]
    assert lines[-1] == "Found 3 findings (3 info) in 1 model."


def test_a_second_fix_has_nothing_left_to_do(exported, tmp_path):
    model = copy_model(exported("vgg", "legacy"), tmp_path)
    fix_json(model, "--fix")
    fixed = model.read_bytes()
    _, report = fix_json(model, "--fix")
    assert report["files"][0].get("fix") is None
    assert model.read_bytes() == fixed
