"""The ``pwlint`` command as a user meets it: exit codes, file discovery, rule
selection, output formats, rule documentation and clean failures on bad input."""

from __future__ import annotations

import json
import random
import re

import pytest

from pwlint import __version__
from pwlint.rule import DOC_SECTIONS
from tests.conftest import codes, lint, one_line_error, run_command, run_inprocess

BUILTIN_CODES = ["PW001", "PW002", "PW003", "PW004", "PW005", "PW006", "PW007"]


# exit codes ---------------------------------------------------------------------------

def test_findings_exit_1_and_name_the_file_and_code(pwlint, cnn_file):
    path = cnn_file("head.onnx", head="flatten")
    run = pwlint(str(path))
    assert run.code == 1
    assert run.err == ""
    finding_lines = [line for line in run.out.splitlines() if " PW001 " in line]
    assert len(finding_lines) == 1
    assert finding_lines[0].startswith(f"{path}: PW001")


def test_clean_model_exits_0(pwlint, cnn_file):
    path = cnn_file(head="gap", conv_bias=False)
    run = pwlint(str(path))
    assert run.code == 0, run.out
    assert run.err == ""
    assert not re.search(r"PW\d{3}", run.out)


def test_check_subcommand_is_the_default(pwlint, cnn_file):
    path = cnn_file()
    plain, explicit = pwlint(str(path)), pwlint("check", str(path))
    assert plain.code == explicit.code == 1
    assert plain.out == explicit.out


def test_options_before_the_path_still_mean_check(pwlint, cnn_file):
    path = cnn_file()
    run = pwlint("--select", "PW004", str(path))
    assert run.code == 1
    assert "PW004" in run.out and "PW001" not in run.out


def test_options_may_come_between_paths(pwlint, cnn_file):
    a, b = cnn_file("a.onnx"), cnn_file("b.onnx")
    run = pwlint(str(a), "--select", "PW004", str(b), "--format", "json")
    assert run.code == 1, run.err
    report = json.loads(run.out)
    assert sorted(f["path"] for f in report["files"]) == sorted([str(a), str(b)])
    assert codes(report) == ["PW004", "PW004"]


def test_no_arguments_is_a_usage_error(pwlint):
    assert pwlint().code == 2


def test_unknown_option_is_one_line(pwlint, cnn_file):
    line = one_line_error(pwlint(str(cnn_file()), "--no-such-flag"))
    assert "--no-such-flag" in line


def test_version_matches_the_package(pwlint):
    run = pwlint("--version")
    assert run.code == 0
    assert run.out.splitlines()[0] == f"pwlint {__version__}"  # then Python and the frameworks: tests/test_cli_help.py


# discovery ----------------------------------------------------------------------------

def test_folders_recurse_over_known_suffixes_case_insensitively(cnn_file, tmp_path):
    top = cnn_file("models/a.onnx")
    upper = cnn_file("models/sub/deeper/B.ONNX")
    cnn_file("models/.hidden/c.onnx")
    cnn_file("models/sub/.git/d.onnx")
    (tmp_path / "models" / "notes.txt").write_text("not a model")
    (tmp_path / "models" / "sub" / "weights.bin").write_bytes(b"\0" * 10)
    report = lint(tmp_path / "models")
    linted = sorted(f["path"] for f in report["files"])
    assert linted == sorted([str(top), str(upper)])
    assert all(f["error"] is None for f in report["files"])
    assert {f["path"] for f in report["findings"] if f["code"] == "PW001"} == {str(top), str(upper)}


def test_explicitly_named_file_with_any_case_suffix_is_linted(pwlint, cnn_file):
    path = cnn_file("MODEL.Onnx")
    assert pwlint(str(path)).code == 1


def test_folder_without_models_is_a_warning(pwlint, tmp_path):
    """As in ruff: nothing to lint is not a failure (issue 15; it was exit 2). Folders of
    model-like files pwlint does not read: tests/test_cli_help.py."""
    (tmp_path / "README.txt").write_text("nothing here")
    run = pwlint(str(tmp_path))
    assert run.code == 0
    assert run.err.startswith(f"pwlint: warning: no model files found in {tmp_path} ")


def test_same_file_twice_is_linted_once(cnn_file):
    path = cnn_file()
    report = lint(path, str(path))
    assert len(report["files"]) == 1
    assert codes(report).count("PW001") == 1


def test_several_paths_are_all_linted(cnn_file):
    a, b = cnn_file("a.onnx"), cnn_file("b.onnx", head="gap")
    report = lint(a, str(b))
    assert sorted(f["path"] for f in report["files"]) == sorted([str(a), str(b)])
    assert {f["path"] for f in report["findings"] if f["code"] == "PW001"} == {str(a)}


# --select / --ignore ------------------------------------------------------------------

@pytest.fixture
def all_rules_model(cnn_file):
    """A model with PW001 and PW004, and PW002 once its limit is lowered."""
    return cnn_file(head="flatten", conv_bias=True)


def test_default_selection_runs_all_rules(all_rules_model):
    assert codes(lint(all_rules_model)) == ["PW001", "PW004"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--select", "PW001"], ["PW001"]),
        (["--select", "PW004"], ["PW004"]),
        (["--select", "flatten-dense-head"], ["PW001"]),
        (["--select", "PW001,PW004"], ["PW001", "PW004"]),
        (["--select", "PW001", "--select", "PW004"], ["PW001", "PW004"]),
        (["--select", "PW00"], ["PW001", "PW004"]),
        (["--select", "PW"], ["PW001", "PW004"]),
        (["--select", "ALL"], ["PW001", "PW004"]),
        (["--select", "PW002,PW003"], []),
        (["--ignore", "PW001"], ["PW004"]),
        (["--ignore", "conv-bias-before-norm"], ["PW001"]),
        (["--ignore", "PW001,PW004"], []),
        (["--ignore", "PW001", "--ignore", "PW004"], []),
        (["--ignore", "PW"], []),
        # the most specific selector wins
        (["--select", "PW001", "--ignore", "PW"], ["PW001"]),
        (["--select", "PW", "--ignore", "PW001"], ["PW004"]),
        (["--select", " PW001 , PW004 "], ["PW001", "PW004"]),
    ],
)
def test_select_and_ignore(all_rules_model, args, expected):
    assert codes(lint(all_rules_model, *args)) == expected


def test_ignoring_every_finding_exits_0(pwlint, all_rules_model):
    assert pwlint(str(all_rules_model), "--ignore", "PW001,PW004").code == 0


@pytest.mark.parametrize("flag", ["--select", "--ignore"])
@pytest.mark.parametrize("selector", ["PW999", "XX", "flatten-dense"])
def test_unknown_selector_is_an_error(pwlint, all_rules_model, flag, selector):
    line = one_line_error(pwlint(str(all_rules_model), flag, selector))
    assert selector in line


# --format -----------------------------------------------------------------------------

def test_text_is_the_default_format(pwlint, all_rules_model):
    assert pwlint(str(all_rules_model)).out == pwlint(str(all_rules_model), "--format", "text").out


def test_text_format_has_one_line_per_finding(pwlint, all_rules_model):
    run = pwlint(str(all_rules_model))
    finding_lines = [line for line in run.out.splitlines() if line.startswith(f"{all_rules_model}:")]
    assert len(finding_lines) == 2
    assert any("PW001" in line and "warning" in line for line in finding_lines)
    assert any("PW004" in line for line in finding_lines)


@pytest.mark.parametrize("fmt", ["xml", "JSON ", ""])
def test_unknown_format_is_one_line(pwlint, all_rules_model, fmt):
    run = pwlint(str(all_rules_model), "--format", fmt)
    line = one_line_error(run)
    assert "format" in line
    assert run.out == ""


TOP_KEYS = {"version", "files", "findings"}
FILE_KEYS = {"path", "format", "error"}
COVERAGE_KEYS = {"layers", "recognised", "shapes_known", "unknown_ops", "unchecked"}
FINDING_KEYS = {"path", "code", "rule", "severity", "message", "nodes", "modules", "fix"}


def check_json_contract(report: dict) -> None:
    assert set(report) == TOP_KEYS
    assert report["version"] == __version__
    assert isinstance(report["files"], list) and isinstance(report["findings"], list)
    for file in report["files"]:
        # a model that was read says how much of it pwlint understood; one that was not, why
        assert set(file) == FILE_KEYS | ({"coverage"} if file["error"] is None else set())
        if file["error"] is None:
            coverage = file["coverage"]
            assert set(coverage) == COVERAGE_KEYS
            assert 0 <= coverage["recognised"] <= coverage["layers"] and 0 <= coverage["shapes_known"] <= coverage["layers"]
            assert all(isinstance(op, str) and n > 0 for op, n in coverage["unknown_ops"].items())
        assert isinstance(file["path"], str)
        assert file["format"] is None or isinstance(file["format"], str)
        assert file["error"] is None or isinstance(file["error"], str)
    for finding in report["findings"]:
        assert set(finding) == FINDING_KEYS
        for key in ("path", "code", "rule", "message"):
            assert isinstance(finding[key], str) and finding[key], key
        assert re.fullmatch(r"[A-Z]+\d{3,4}", finding["code"])
        assert finding["severity"] in ("info", "warning", "error")
        assert isinstance(finding["nodes"], list)
        assert all(isinstance(node, str) for node in finding["nodes"])
        assert len(finding["modules"]) == len(finding["nodes"])
        assert all(module is None or isinstance(module, str) for module in finding["modules"])
        if finding["fix"] is not None:
            assert set(finding["fix"]) == {"applicability", "description"}
            assert finding["fix"]["applicability"] in ("safe", "unsafe")
            assert isinstance(finding["fix"]["description"], str)


def test_json_matches_the_contract(pwlint, all_rules_model):
    run = pwlint(str(all_rules_model), "--format", "json")
    assert run.code == 1
    report = json.loads(run.out)
    check_json_contract(report)
    coverage = {"layers": 5, "recognised": 5, "shapes_known": 5, "unknown_ops": {}, "unchecked": []}
    assert report["files"] == [{"path": str(all_rules_model), "format": "onnx", "error": None, "coverage": coverage}]
    by_code = {f["code"]: f for f in report["findings"]}
    assert sorted(by_code) == ["PW001", "PW004"]
    head = by_code["PW001"]
    assert head["path"] == str(all_rules_model)
    assert head["rule"] == "flatten-dense-head"
    assert head["severity"] == "warning"
    # the source names of the layers, as written in the file
    assert head["nodes"] == ["flatten", "fc"]
    assert by_code["PW004"]["nodes"] == ["conv", "bn"]
    assert by_code["PW004"]["rule"] == "conv-bias-before-norm"


def test_json_of_a_clean_model(pwlint, cnn_file):
    run = pwlint(str(cnn_file(head="gap", conv_bias=False)), "--format", "json")
    assert run.code == 0
    report = json.loads(run.out)
    check_json_contract(report)
    assert report["findings"] == []


def test_json_reports_unreadable_files_in_files(pwlint, cnn_file, tmp_path):
    good = cnn_file("good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    run = pwlint(str(good), str(bad), "--format", "json")
    assert run.code == 2
    report = json.loads(run.out)
    check_json_contract(report)
    files = {f["path"]: f for f in report["files"]}
    assert files[str(good)]["error"] is None
    assert files[str(bad)]["error"] and str(bad) in files[str(bad)]["error"]
    assert {f["path"] for f in report["findings"]} == {str(good)}
    assert len(run.err.splitlines()) == 1


# --exit-zero and --fail-on ------------------------------------------------------------

@pytest.fixture
def info_only_model(cnn_file):
    """No normalisation anywhere and two stacked convs: PW003's single info finding."""
    return cnn_file("info.onnx", head="gap", norm=False, second_conv=True)


def test_info_model_has_only_info_findings(info_only_model):
    report = lint(info_only_model)
    assert report["findings"] and {f["severity"] for f in report["findings"]} == {"info"}


def test_exit_zero_with_findings(pwlint, all_rules_model):
    run = pwlint(str(all_rules_model), "--exit-zero")
    assert run.code == 0
    assert "PW001" in run.out


def test_exit_zero_does_not_hide_load_errors(pwlint, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"")
    one_line_error(pwlint(str(bad), "--exit-zero"))


@pytest.mark.parametrize(
    "model, fail_on, expected",
    [
        ("warnings", None, 1),
        ("warnings", "warning", 1),
        ("warnings", "info", 1),
        ("warnings", "error", 0),
        ("info", None, 0),
        ("info", "warning", 0),
        ("info", "info", 1),
        ("info", "error", 0),
        ("clean", "info", 0),
    ],
)
def test_fail_on(pwlint, all_rules_model, info_only_model, cnn_file, model, fail_on, expected):
    path = {"warnings": all_rules_model, "info": info_only_model}.get(model) or cnn_file("clean.onnx", head="gap", conv_bias=False)
    args = [str(path)] + (["--fail-on", fail_on] if fail_on else [])
    run = pwlint(*args)
    assert run.code == expected, run.out
    # the findings are shown whatever the exit code
    if model != "clean":
        assert re.search(r"PW\d{3}", run.out)


def test_fail_on_rejects_unknown_severity(pwlint, all_rules_model):
    line = one_line_error(pwlint(str(all_rules_model), "--fail-on", "loud"))
    assert "loud" in line


# rule documentation -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["PW001", "pw001", "flatten-dense-head"])
def test_rule_prints_its_documentation(pwlint, name):
    run = pwlint("rule", name)
    assert run.code == 0
    assert "PW001" in run.out and "flatten-dense-head" in run.out
    positions = [run.out.find(section) for section in DOC_SECTIONS]
    assert all(p >= 0 for p in positions), run.out
    assert positions == sorted(positions)
    assert "Flatten" in run.out


def test_rule_shows_options_with_their_defaults(pwlint):
    run = pwlint("rule", "PW002")
    assert run.code == 0
    assert "max-params" in run.out
    assert "4194304" in run.out.replace("_", "").replace(",", "")


@pytest.mark.parametrize("code", BUILTIN_CODES)
def test_every_builtin_rule_has_documentation(pwlint, code):
    run = pwlint("rule", code)
    assert run.code == 0
    for section in DOC_SECTIONS:
        assert section in run.out


def test_unknown_rule_is_one_line(pwlint):
    line = one_line_error(pwlint("rule", "nope"))
    assert "nope" in line


def test_rules_lists_every_rule(pwlint):
    run = pwlint("rules")
    assert run.code == 0
    lines = [line for line in run.out.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines] == BUILTIN_CODES
    assert "flatten-dense-head" in lines[0]


def test_rules_as_json(pwlint):
    run = pwlint("rules", "--format", "json")
    assert run.code == 0
    rules = json.loads(run.out)
    assert [r["code"] for r in rules] == BUILTIN_CODES
    assert {r["code"]: r["name"] for r in rules}["PW002"] == "oversized-dense"
    assert all(r["severity"] in ("info", "warning", "error") and r["summary"] for r in rules)


# a bug inside a built-in loader: not dressed up as a verdict on the file -----------------

def _keras_file(folder):
    import zipfile

    path = folder / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": []}}))
    return path


def _raise_keyerror(*args, **kwargs):
    raise KeyError("kernel")


@pytest.mark.parametrize("fmt", ["keras", "torch"])
def test_a_bug_in_a_builtin_loader_is_an_internal_error_to_report(pwlint, tmp_path, monkeypatch, fmt):
    """A KeyError inside the loader, as a bug would raise it (here planted where each loader
    builds its graph), reaches the user as an internal error with a plea to report it, not
    as a clean "malformed file" refusal: the Keras and torch loaders used to catch five
    exception types and call them damage, so the fuzzers could not see their bugs."""
    if fmt == "keras":
        import pwlint.formats.keras.weights as planted

        monkeypatch.setattr(planted, "index_weights", _raise_keyerror)
        path = _keras_file(tmp_path)
    else:
        import pwlint.formats.pytorch.graph as planted
        import pwlint.formats.pytorch.loader as torch_loader

        monkeypatch.setattr(torch_loader, "read_program", lambda path: (object(), "pt2"))
        monkeypatch.setattr(planted, "build_graph", _raise_keyerror)
        path = tmp_path / "m.pt2"
        path.write_bytes(b"routed to the torch loader by its suffix")
    line = one_line_error(pwlint(str(path)))
    assert line == (
        f"pwlint: error: {path}: internal error while reading the {fmt} file (KeyError: 'kernel'); "
        "please report it with the file (PWLINT_DEBUG=1 shows the traceback)"
    )


# unreadable input: one line on stderr, exit 2, no traceback, through the real command ---

@pytest.fixture(scope="module")
def exported_bytes(exported):
    return exported("lenet", "legacy").read_bytes()


def _bad_file(kind: str, folder, exported_bytes: bytes):
    path = folder / f"{kind}.onnx"
    if kind.startswith("cut-"):
        data = exported_bytes
        point = {"cut-1": 1, "cut-2": 2, "cut-10pct": len(data) // 10, "cut-half": len(data) // 2,
                 "cut-90pct": len(data) * 9 // 10, "cut-last-byte": len(data) - 1}[kind]
        path.write_bytes(data[:point])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("This is a README, not a model.\nSecond line.\n")
    elif kind == "json":
        path.write_text('{"ir_version": 8, "graph": {}}')
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing":
        pass
    else:
        raise ValueError(kind)
    return path


BAD_KINDS = ["cut-1", "cut-2", "cut-10pct", "cut-half", "cut-90pct", "cut-last-byte",
             "empty", "text", "json", "random", "directory", "missing"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_file_is_one_line_in_process(tmp_path, exported_bytes, kind):
    path = _bad_file(kind, tmp_path, exported_bytes)
    line = one_line_error(run_inprocess(str(path)))
    assert line.startswith("pwlint: error:")
    assert path.name in line


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_file_is_one_line_as_a_command(tmp_path, exported_bytes, kind):
    path = _bad_file(kind, tmp_path, exported_bytes)
    line = one_line_error(run_command(str(path)))
    assert line.startswith("pwlint: error:")
    assert path.name in line


def test_the_intact_export_lints(exported):
    # the files above are cut from a model that is itself fine
    assert "PW001" in codes(lint(exported("lenet", "legacy")))


def test_unsupported_suffix_is_one_line(pwlint, tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF\r\n")
    line = one_line_error(pwlint(str(path)))
    assert "model.h5" in line


def test_good_and_bad_file_together(tmp_path, cnn_file):
    good = cnn_file("good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08")
    run = run_command(str(good), str(bad))
    line = one_line_error(run)
    assert "bad.onnx" in line
    assert f"{good}: PW001" in run.out


def test_bad_file_in_a_folder_does_not_stop_the_others(tmp_path, cnn_file):
    good = cnn_file("models/good.onnx")
    (tmp_path / "models" / "broken.onnx").write_bytes(b"")
    report_run = run_inprocess(str(tmp_path / "models"), "--format", "json")
    assert report_run.code == 2
    report = json.loads(report_run.out)
    assert {f["path"] for f in report["findings"]} == {str(good)}
    assert len(report_run.err.splitlines()) == 1


def test_command_runs_a_real_lint(cnn_file):
    path = cnn_file()
    run = run_command(str(path), "--format", "json")
    assert run.code == 1, run.err
    check_json_contract(json.loads(run.out))


def test_folders_are_not_searched_for_pickled_checkpoints(tmp_path, cnn_file, pwlint):
    """A repository of state_dict checkpoints (.pt, .pth) must not turn `pwlint .` red:
    folders are searched for model formats only; a .pt named explicitly is still read."""
    model = cnn_file("models/a.onnx")
    (model.parent / "weights.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle
    (model.parent / "best.pth").write_bytes(b"\x80\x04K\x01.")
    run = pwlint(str(model.parent))
    assert run.code == 1 and run.err == ""  # the ONNX model's findings, nothing about the pickles
    explicit = pwlint(str(model.parent / "weights.pt"))
    assert explicit.code == 2 and "weights.pt" in explicit.err


@pytest.mark.parametrize("flag", ["--output-file", "-o"])
def test_output_file_holds_the_report_and_stdout_stays_empty(tmp_path, cnn_file, pwlint, flag):
    """Without --fix, ``-o`` is the report file, as ruff's is."""
    model = cnn_file()
    before = model.read_bytes()
    target = tmp_path / "report.json"
    run = pwlint(str(model), "--format", "json", flag, str(target))
    assert model.read_bytes() == before
    assert run.code == 1 and run.out == ""
    report = json.loads(target.read_text())
    assert [f["code"] for f in report["findings"]] == [f["code"] for f in lint(model)["findings"]]
    assert not list(tmp_path.glob(".pwlint-*"))


def test_report_file_given_twice_is_one_line(tmp_path, cnn_file, pwlint):
    run = pwlint(str(cnn_file()), "-o", str(tmp_path / "a.txt"), "--output-file", str(tmp_path / "b.txt"))
    assert "once" in one_line_error(run)
    assert not list(tmp_path.glob("*.txt"))


@pytest.mark.parametrize("extra", [["--fix"], ["--baseline", "b.json"]])
def test_write_baseline_does_not_combine_with_fixing_or_another_baseline(tmp_path, cnn_file, pwlint, extra):
    run = pwlint(str(cnn_file()), "--write-baseline", str(tmp_path / "w.json"), *extra)
    assert "--write-baseline" in one_line_error(run)
    assert not (tmp_path / "w.json").exists()


def test_output_file_that_cannot_be_written_is_one_line(tmp_path, cnn_file, pwlint):
    run = pwlint(str(cnn_file()), "--output-file", str(tmp_path / "missing" / "r.txt"))
    assert run.code == 2 and run.err.count("\n") == 1 and "r.txt" in run.err


#: (head, conv bias) of the models the statistics test lints: every one has a conv then
#: BatchNorm, so a conv bias there is PW004; a Flatten head is PW001, pooled heads are not
STATISTICS_MODELS = [("flatten", True), ("flatten", True), ("gap", True), ("flatten", False), ("squeeze", True)]


def test_statistics_count_findings_per_rule(cnn_file, pwlint):
    paths = [str(cnn_file(f"m{i}.onnx", head=head, conv_bias=bias)) for i, (head, bias) in enumerate(STATISTICS_MODELS)]
    # counted from how the models were built, not from pwlint's report
    expected = {
        "PW001": sum(head == "flatten" for head, _ in STATISTICS_MODELS),
        "PW004": sum(bias for _, bias in STATISTICS_MODELS),
    }
    assert expected == {"PW001": 3, "PW004": 4}
    run = pwlint(*paths, "--statistics")
    assert run.code == 1, run.err
    rows = [line.split() for line in run.out.splitlines() if line.strip()[:1].isdigit()]
    assert rows == [["4", "PW004", "conv-bias-before-norm"], ["3", "PW001", "flatten-dense-head"]]
    assert {code: int(count) for count, code, _ in rows} == expected
    as_json = pwlint(*paths, "--statistics", "--format", "json")
    report = json.loads(as_json.out)  # statistics go to stderr, the JSON stays parseable
    assert len(report["findings"]) == sum(expected.values())
    assert "    4  PW004  conv-bias-before-norm" in as_json.err.splitlines()


def _on_a_terminal(args, cwd):
    """Run pwlint with stderr on a pseudo-terminal (stdout to a file) and return stderr."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    proc = subprocess.run(
        [sys.executable, "-m", "pwlint", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=follower, timeout=120,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.returncode, b"".join(chunks).decode()


def test_progress_shows_on_a_terminal_only(tmp_path, cnn_file):
    folder = cnn_file("models/a.onnx").parent
    cnn_file("models/b.onnx")
    code, err = _on_a_terminal([str(folder)], tmp_path)
    assert code == 1 and "[1/2]" in err and "[2/2]" in err
    assert _on_a_terminal(["-q", str(folder)], tmp_path)[1] == ""
    piped = run_command(str(folder), cwd=tmp_path)  # stderr is a pipe: silent
    assert piped.err == ""


# --allow-missing-weights and the files recognised by content --------------------------------

def test_help_documents_allow_missing_weights(pwlint):
    run = pwlint("check", "--help")
    assert run.code == 0
    assert "--allow-missing-weights" in run.out and "shapes alone" in " ".join(run.out.split())


def test_allow_missing_weights_changes_nothing_for_a_complete_model(pwlint, cnn_file):
    path = cnn_file()
    plain, allowed = pwlint(str(path), "--format", "json"), pwlint(str(path), "--format", "json", "--allow-missing-weights")
    assert plain.code == allowed.code == 1
    assert json.loads(plain.out)["findings"] == json.loads(allowed.out)["findings"]


def test_missing_weights_in_one_file_do_not_stop_the_others(tmp_path, cnn_file):
    import onnx

    from tests.conftest import cnn_model

    good = cnn_file("models/good.onnx")
    stripped = tmp_path / "models" / "stripped.onnx"
    onnx.save_model(cnn_model(), stripped, save_as_external_data=True, location="stripped.data", size_threshold=0)
    (tmp_path / "models" / "stripped.data").unlink()
    run = run_inprocess(str(tmp_path / "models"), "--format", "json")
    assert run.code == 2
    assert {f["path"] for f in json.loads(run.out)["findings"]} == {str(good)}
    [line] = run.err.splitlines()
    assert "stripped.onnx" in line and "'stripped.data'" in line and "--allow-missing-weights" in line


def test_unsupported_file_lists_every_suffix_pwlint_reads(pwlint, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    line = one_line_error(pwlint(str(path)))
    for suffix in (".onnx", ".keras", ".h5", ".hdf5", ".pt2", ".jit", ".torchscript"):
        assert suffix in line, line


# one load path: what --fix lints between rounds is checked like a file ------------------

def _head_graph(dense_params: int):
    """input -> conv -> flatten -> dense -> output: a Flatten + Dense head (PW001)."""
    from pwlint.ir import Layer, ModelGraph

    graph = ModelGraph("m.toy", "toy")
    fmap, flat = (1, 4, 8, 8), (1, 256)
    graph.add_layer(Layer("x", "input", "input", output_shapes=[(1, 3, 8, 8)]))
    graph.add_layer(Layer("conv", "conv", "ToyConv", params=112, input_shapes=[(1, 3, 8, 8)], output_shapes=[fmap],
                          layout="NCHW", attrs={"kernel": (3, 3), "in_channels": 3, "out_channels": 4, "groups": 1}))
    graph.add_layer(Layer("flatten", "flatten", "ToyFlatten", input_shapes=[fmap], output_shapes=[flat]))
    graph.add_layer(Layer("fc", "dense", "ToyDense", params=dense_params, input_shapes=[flat], output_shapes=[(1, 10)],
                          attrs={"in_features": 256, "out_features": 10, "bias": True}))
    graph.add_layer(Layer("y", "output", "output", input_shapes=[(1, 10)]))
    for a, b, shape in (("x", "conv", (1, 3, 8, 8)), ("conv", "flatten", fmap), ("flatten", "fc", flat), ("fc", "y", (1, 10))):
        graph.connect(a, b, a, shape, data=True)
    return graph


def test_fix_rounds_lint_only_graphs_of_plausible_size(tmp_path):
    """The fix loop lints each model it rewrites through the engine, which refuses a graph
    of impossible sizes as it refuses such a file: a backend whose session describes the
    model with a 2**50-parameter layer ends in the load error, not in findings about it."""
    from pwlint.config import ConfigResolver, Overrides
    from pwlint.engine import Linter
    from pwlint.errors import FixNotApplicable
    from pwlint.fix.rounds import FixMode
    from pwlint.plugins import Registry, get_registry

    class Loader:
        name, suffixes = "toy", (".toy",)

        @staticmethod
        def load(path):
            return _head_graph(256 * 10 + 10)

    class Session:
        path = last_good = None

        def graph(self):
            return _head_graph(2**50)

        def apply(self, fix):
            raise FixNotApplicable("toy")

        def close(self):
            pass

        def file_size(self, file):
            return 0

    class Backend:
        name = "toy"

        @staticmethod
        def open(path):
            Session.path = Session.last_good = path
            return Session()

    model = tmp_path / "m.toy"
    model.write_text("toy")
    registry = Registry(rules=get_registry().rules, loaders={"toy": Loader()}, backends={"toy": Backend()})
    fix_mode = FixMode(unsafe=True, verify=False, diff=True, output=None)
    linter = Linter(registry, ConfigResolver(Overrides()), fix_mode)
    result = linter.lint_file(str(model))
    assert result.error == f"{model}: layer 'fc' has a negative number of parameters or over 2**44: not a real model"
    # linted alone, the file's own graph is fine and has its finding
    assert "PW001" in {f.code for f in Linter(registry, ConfigResolver(Overrides())).lint_file(str(model)).findings}


# fix flags that do nothing in context (issue 15) -------------------------------------------

def test_unsafe_fixes_without_fix_warns_and_lints(pwlint, cnn_file):
    """As ruff warns of a flag without effect: one line on stderr, then the usual lint."""
    path = cnn_file()
    plain = pwlint(str(path))
    run = pwlint(str(path), "--unsafe-fixes")
    assert run.err == "pwlint: warning: --unsafe-fixes has no effect without --fix or --diff\n"
    assert (run.code, run.out) == (plain.code, plain.out) and "PW001" in run.out


def test_unsafe_fixes_with_fix_or_diff_does_not_warn(pwlint, cnn_file):
    path = cnn_file()
    assert "warning" not in pwlint(str(path), "--diff", "--unsafe-fixes").err


@pytest.mark.parametrize("flags", [("--diff",), ("--fix", "--diff")])
def test_output_with_diff_is_an_error(pwlint, cnn_file, tmp_path, flags):
    """--diff writes no model, so an -o (which names the fixed model) has nothing to
    name; taking it as the report file instead would put a report where a model was meant."""
    path = cnn_file()
    before = path.read_bytes()
    target = tmp_path / "fixed.onnx"
    line = one_line_error(pwlint(str(path), *flags, "-o", str(target)))
    assert line == "pwlint: error: -o names the fixed model and --diff writes none: drop -o (--output-file FILE writes the report)"
    assert not target.exists() and path.read_bytes() == before


def test_output_without_fix_is_still_the_report_file(pwlint, cnn_file, tmp_path):
    path = cnn_file()
    report = tmp_path / "report.txt"
    run = pwlint(str(path), "-o", str(report))
    assert run.code == 1 and run.out == "" and "PW001" in report.read_text()


def test_no_verify_without_fix_is_an_error(pwlint, cnn_file):
    line = one_line_error(pwlint(str(cnn_file()), "--no-verify"))
    assert line == "pwlint: error: --no-verify only makes sense with --fix or --diff"


def test_fix_output_in_another_format_is_one_line_before_linting(pwlint, cnn_file, tmp_path):
    path = cnn_file("lenet.onnx")
    target = tmp_path / "l.keras"
    run = pwlint(str(path), "--fix", "-o", str(target))
    assert one_line_error(run) == f"pwlint: error: -o {target}: the fixed model is ONNX; name a .onnx file"
    assert run.out == "" and not target.exists()
