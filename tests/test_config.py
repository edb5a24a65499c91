"""Configuration files: found by walking up from the linted file, validated, and
overridden by command-line flags."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import codes, lint, one_line_error, run_command, run_inprocess


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def pyproject(folder, body: str):
    return write(folder / "pyproject.toml", "[tool.pwlint]\n" + textwrap.dedent(body).lstrip())


def pwlint_toml(folder, body: str):
    return write(folder / "pwlint.toml", body)


@pytest.fixture
def model(cnn_file):
    """A model with PW001 (flatten head) and PW004 (conv bias before BatchNorm): both warnings.
    Its dense layer has 2570 parameters, so PW002 reports it once max-params is below that."""
    return cnn_file("project/models/m.onnx", head="flatten", conv_bias=True)


@pytest.fixture
def project(tmp_path):
    return tmp_path / "project"


def test_without_configuration_all_rules_run(model):
    assert codes(lint(model)) == ["PW001", "PW004"]


# where the configuration comes from ---------------------------------------------------

def test_pyproject_in_a_parent_folder(model, project):
    pyproject(project, 'ignore = ["PW001"]')
    assert codes(lint(model)) == ["PW004"]


def test_pwlint_toml_in_the_same_folder(model):
    pwlint_toml(model.parent, 'select = ["PW001"]')
    assert codes(lint(model)) == ["PW001"]


def test_nearest_configuration_wins(model, project):
    pyproject(project, 'ignore = ["PW001"]')
    pwlint_toml(model.parent, 'ignore = ["PW004"]')
    assert codes(lint(model)) == ["PW001"]


def test_pwlint_toml_wins_over_pyproject_in_the_same_folder(model):
    pyproject(model.parent, 'ignore = ["PW001"]')
    pwlint_toml(model.parent, 'ignore = ["PW004"]')
    assert codes(lint(model)) == ["PW001"]


def test_pyproject_without_pwlint_table_is_skipped(model, project):
    pwlint_toml(project, 'ignore = ["PW001"]')
    write(model.parent / "pyproject.toml", """
        [project]
        name = "models"
        version = "1.0"

        [tool.black]
        line-length = 100
    """)
    assert codes(lint(model)) == ["PW004"]


def test_pyproject_that_only_mentions_pwlint_is_skipped(model, project):
    pwlint_toml(project, 'ignore = ["PW001"]')
    write(model.parent / "pyproject.toml", """
        [project]
        name = "models"
        # one day: settings under [tool.pwlint]

        [tool.pwlint-extras]
        enabled = true
    """)
    assert codes(lint(model)) == ["PW004"]


def test_pyproject_with_dotted_keys(model, project):
    pwlint_toml(project, 'ignore = ["PW001"]')
    write(model.parent / "pyproject.toml", """
        [tool]
        pwlint.ignore = ["PW004"]
    """)
    assert codes(lint(model)) == ["PW001"]


def test_files_in_different_folders_use_their_own_configuration(cnn_file, project):
    a = cnn_file("project/a/m.onnx")
    b = cnn_file("project/b/m.onnx")
    c = cnn_file("project/c/m.onnx")
    pwlint_toml(project / "a", 'ignore = ["PW001"]')
    pyproject(project / "b", 'ignore = ["PW004"]')
    report = lint(project)
    found = sorted((f["path"], f["code"]) for f in report["findings"])
    assert found == sorted([(str(a), "PW004"), (str(b), "PW001"), (str(c), "PW001"), (str(c), "PW004")])
    assert codes(lint(a)) == ["PW004"]


def test_configuration_does_not_come_from_the_working_directory(model, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    pwlint_toml(elsewhere, 'ignore = ["PW001", "PW004"]')
    monkeypatch.chdir(elsewhere)
    assert codes(lint(model)) == ["PW001", "PW004"]


def test_explicit_config_file(model, tmp_path):
    config = pwlint_toml(tmp_path / "ci", 'select = ["PW004"]')
    pwlint_toml(model.parent, 'select = ["PW001"]')  # not used: --config wins over the search
    assert codes(lint(model, "--config", str(config))) == ["PW004"]


def test_explicit_pyproject(model, tmp_path):
    config = pyproject(tmp_path / "ci", 'ignore = ["PW004"]')
    assert codes(lint(model, "--config", str(config))) == ["PW001"]


def test_missing_explicit_config_is_one_line(pwlint, model, tmp_path):
    line = one_line_error(pwlint(str(model), "--config", str(tmp_path / "nope.toml")))
    assert "nope.toml" in line


# what the configuration says ----------------------------------------------------------

@pytest.mark.parametrize(
    "body, expected",
    [
        ('select = ["PW001"]', ["PW001"]),
        ('select = ["PW"]', ["PW001", "PW004"]),
        ('select = ["flatten-dense-head", "PW004"]', ["PW001", "PW004"]),
        ('ignore = ["PW004"]', ["PW001"]),
        ('ignore = ["conv-bias-before-norm"]', ["PW001"]),
        ('select = ["PW"]\nignore = ["PW00"]', []),
        ('select = ["PW001"]\nignore = ["PW"]', ["PW001"]),
    ],
)
def test_select_and_ignore_in_config(model, body, expected):
    pwlint_toml(model.parent, body)
    assert codes(lint(model)) == expected


@pytest.mark.parametrize("fail_on, expected", [("error", 0), ("warning", 1), ("info", 1)])
def test_fail_on_in_config(pwlint, model, fail_on, expected):
    pwlint_toml(model.parent, f'fail-on = "{fail_on}"')
    run = pwlint(str(model))
    assert run.code == expected
    assert "PW001" in run.out


def test_per_file_ignores_are_relative_to_the_config_folder(cnn_file, project, tmp_path, monkeypatch):
    legacy = cnn_file("project/legacy/old.onnx")
    new = cnn_file("project/new/new.onnx")
    other = cnn_file("outside/legacy/old.onnx")  # same relative layout, other project
    pyproject(project, """
        [tool.pwlint.per-file-ignores]
        "legacy/*.onnx" = ["PW001"]
    """)
    assert codes(lint(legacy)) == ["PW004"]
    assert codes(lint(new)) == ["PW001", "PW004"]
    assert codes(lint(other)) == ["PW001", "PW004"]
    # the same wherever pwlint runs from, and with a relative path
    monkeypatch.chdir(legacy.parent)
    assert codes(lint("old.onnx")) == ["PW004"]
    monkeypatch.chdir(tmp_path)
    assert codes(lint("project/legacy/old.onnx")) == ["PW004"]
    assert codes(lint("outside/legacy/old.onnx")) == ["PW001", "PW004"]


def test_per_file_ignores_with_prefix_and_name(cnn_file, project):
    path = cnn_file("project/m.onnx")
    pwlint_toml(project, """
        [per-file-ignores]
        "m.onnx" = ["flatten-dense-head", "PW00"]
    """)
    assert codes(lint(path)) == []


def test_per_file_ignores_apply_only_to_matching_files(cnn_file, project):
    a, b = cnn_file("project/a.onnx"), cnn_file("project/b.onnx")
    pwlint_toml(project, """
        [per-file-ignores]
        "a.onnx" = ["PW001"]
    """)
    report = lint(project)
    assert sorted((f["path"], f["code"]) for f in report["findings"]) == sorted(
        [(str(a), "PW004"), (str(b), "PW001"), (str(b), "PW004")]
    )


def test_per_rule_option(model, project):
    assert "PW002" not in codes(lint(model))
    pyproject(project, """
        [tool.pwlint.rules.PW002]
        max-params = 10
    """)
    report = lint(model)
    assert codes(report) == ["PW001", "PW002", "PW004"]
    [oversized] = [f for f in report["findings"] if f["code"] == "PW002"]
    assert oversized["nodes"] == ["fc"]


def test_per_rule_option_at_the_limit(model, project):
    # the dense layer has 4*8*8*10 + 10 = 2570 parameters
    pwlint_toml(project, "[rules.PW002]\nmax-params = 2570\n")
    assert "PW002" not in codes(lint(model))
    pwlint_toml(project, "[rules.PW002]\nmax-params = 2569\n")
    assert "PW002" in codes(lint(model))


def test_per_rule_severity(pwlint, model, project):
    pyproject(project, """
        fail-on = "error"
        [tool.pwlint.rules.PW001]
        severity = "error"
    """)
    report = lint(model)
    severities = {f["code"]: f["severity"] for f in report["findings"]}
    assert severities == {"PW001": "error", "PW004": "warning"}
    assert pwlint(str(model)).code == 1
    assert pwlint(str(model), "--ignore", "PW001").code == 0


def test_per_rule_severity_can_lower_a_rule(pwlint, model, project):
    pwlint_toml(project, """
        [rules.PW001]
        severity = "info"
        [rules.PW004]
        severity = "info"
    """)
    run = pwlint(str(model))
    assert run.code == 0
    assert "PW001" in run.out


# invalid configuration: exit 2, one line naming the key ------------------------------

@pytest.mark.parametrize(
    "body, named",
    [
        ('selekt = ["PW001"]', "selekt"),
        ('fail-on = "loud"', "fail-on"),
        ('fail-on = 3', "fail-on"),
        ('select = "PW001"', "select"),
        ('ignore = [1]', "ignore"),
        ('select = ["PW999"]', "PW999"),
        ('ignore = ["nope"]', "nope"),
        ('[per-file-ignores]\n"*.onnx" = ["PW9"]', "PW9"),
        ('[rules.PW002]\nmax-params = "x"', "max-params"),
        ('[rules.PW002]\nmax-params = -1', "max-params"),
        ('[rules.PW002]\nmax-parms = 10', "max-parms"),
        ('[rules.PW001]\nseverity = "loud"', "severity"),
        ('[rules.PW999]\nmax-params = 10', "PW999"),
    ],
)
def test_invalid_config_names_the_key(pwlint, model, project, body, named):
    config = pwlint_toml(project, body)
    line = one_line_error(pwlint(str(model)))
    assert named in line
    assert str(config) in line


def test_invalid_pyproject_names_the_key(pwlint, model, project):
    config = pyproject(project, 'fail-on = "loud"')
    line = one_line_error(pwlint(str(model)))
    assert "fail-on" in line and str(config) in line


def test_invalid_toml_is_one_line(pwlint, model, project):
    config = write(project / "pwlint.toml", 'select = ["PW001"\nignore = \n')
    line = one_line_error(pwlint(str(model)))
    assert str(config) in line


def test_invalid_toml_in_pyproject_is_one_line(pwlint, model, project):
    config = write(project / "pyproject.toml", "[tool.pwlint]\nselect = [\n")
    line = one_line_error(pwlint(str(model)))
    assert str(config) in line


def test_invalid_config_through_the_real_command(model, project):
    pwlint_toml(project, '[rules.PW002]\nmax-params = "x"')
    line = one_line_error(run_command(str(model)))
    assert "max-params" in line


def test_invalid_config_prints_no_findings(pwlint, model, project):
    pwlint_toml(project, 'selekt = ["PW001"]')
    run = pwlint(str(model), "--format", "json")
    assert run.code == 2
    assert "PW001" not in run.out


# command-line flags override the file --------------------------------------------------

def test_select_flag_replaces_configured_select(model, project):
    pwlint_toml(project, 'select = ["PW004"]')
    assert codes(lint(model)) == ["PW004"]
    assert codes(lint(model, "--select", "PW001")) == ["PW001"]


def test_select_flag_wins_over_configured_ignore(model, project):
    """As in ruff: asking for a rule on the command line shows it even if the file ignores it."""
    pwlint_toml(project, 'ignore = ["PW001", "PW004"]')
    assert "PW001" not in codes(lint(model))
    assert codes(lint(model, "--select", "PW001")) == ["PW001"]
    assert codes(lint(model, "--select", "PW001,PW004", "--ignore", "PW004")) == ["PW001"]


def test_selectors_are_case_insensitive(model, project):
    pwlint_toml(project, 'select = ["pw00"]\nignore = ["pw004"]')
    assert codes(lint(model)) == ["PW001"]


def test_ignore_flag_adds_to_configured_ignore(model, project):
    pwlint_toml(project, 'ignore = ["PW004"]\n[rules.PW002]\nmax-params = 10\n')
    assert codes(lint(model)) == ["PW001", "PW002"]
    assert codes(lint(model, "--ignore", "PW001")) == ["PW002"]


@pytest.mark.parametrize("configured, flag, expected", [("error", "warning", 1), ("info", "error", 0)])
def test_fail_on_flag_overrides_config(pwlint, model, project, configured, flag, expected):
    pwlint_toml(project, f'fail-on = "{configured}"')
    assert pwlint(str(model), "--fail-on", flag).code == expected


def test_flags_keep_the_rest_of_the_config(model, project):
    pwlint_toml(project, """
        [rules.PW002]
        max-params = 10
        [per-file-ignores]
        "models/*.onnx" = ["PW004"]
    """)
    assert codes(lint(model, "--select", "PW002,PW004")) == ["PW002"]


def test_select_flag_with_unknown_code_is_one_line_even_with_config(pwlint, model, project):
    pwlint_toml(project, 'select = ["PW001"]')
    line = one_line_error(pwlint(str(model), "--select", "PW777"))
    assert "PW777" in line


def test_json_report_with_config(model, project):
    pwlint_toml(project, 'ignore = ["PW004"]')
    run = run_inprocess(str(model), "--format", "json")
    assert run.code == 1
    assert [f["code"] for f in json.loads(run.out)["findings"]] == ["PW001"]


@pytest.mark.parametrize("flags", [
    [],
    ["--select", "PW001"],
    ["--select", "PW001,PW004", "--ignore", "PW004"],
    ["--select", "PW004", "--select", " pw001 ,"],
    ["--ignore", "PW001"],
])
def test_check_and_diff_read_the_flags_alike(model, project, cnn_file, flags):
    """One overrides set-up for every command that lints: ``pwlint diff CLEAN MODEL``
    reports as new exactly the findings ``pwlint check MODEL`` gives, for the same
    configuration and the same --select/--ignore flags (repeated, comma-separated)."""
    pwlint_toml(project, 'ignore = ["PW004"]\n')
    clean = cnn_file("elsewhere/clean.onnx", head="gap", conv_bias=False)
    assert codes(lint(clean)) == []
    run = run_inprocess("diff", str(clean), str(model), "--format", "json", *flags)
    assert run.code in (0, 1), run.err
    (compared,) = json.loads(run.out)["models"]
    assert sorted(f["code"] for f in compared["new_findings"]) == codes(lint(model, *flags))


@pytest.mark.parametrize("command", ["check", "diff"])
def test_fail_on_flag_is_the_same_for_check_and_diff(model, project, cnn_file, command):
    clean = cnn_file("elsewhere/clean.onnx", head="gap", conv_bias=False)
    models = [str(model)] if command == "check" else [str(clean), str(model)]
    assert run_inprocess(command, *models).code == 1  # PW001 and PW004 are warnings
    assert run_inprocess(command, *models, "--fail-on", "error").code == 0


# --config FILE: a pyproject-style file or a pwlint.toml; misspelt keys get a suggestion --

def test_explicit_config_under_any_name_reads_its_tool_pwlint_table(model, tmp_path):
    """`--config ci/pp.toml` holding `[tool.pwlint]` is read from that table (it was
    "unknown key 'tool'"): a file with a [tool] table is pyproject-style, whatever its name."""
    config = write(tmp_path / "ci" / "pp.toml", """
        [project]
        name = "models"

        [tool.pwlint]
        ignore = ["PW004"]
    """)
    assert codes(lint(model, "--config", str(config))) == ["PW001"]


def test_explicit_pyproject_without_a_pwlint_table_is_one_line(pwlint, model, tmp_path):
    config = write(tmp_path / "ci" / "pyproject.toml", '[project]\nname = "models"\n\n[tool.black]\nline-length = 100\n')
    line = one_line_error(pwlint(str(model), "--config", str(config)))
    assert line == f"pwlint: error: {config}: has no [tool.pwlint] table (a pwlint.toml holds the keys at its top level)"


def test_explicit_toml_with_another_tools_table_is_one_line(pwlint, model, tmp_path):
    config = write(tmp_path / "ci" / "tools.toml", '[tool.ruff]\nline-length = 100\n')
    line = one_line_error(pwlint(str(model), "--config", str(config)))
    assert str(config) in line and "no [tool.pwlint] table" in line


def test_pwlint_toml_may_also_use_a_tool_pwlint_table(model):
    pwlint_toml(model.parent, '[tool.pwlint]\nselect = ["PW004"]\n')
    assert codes(lint(model)) == ["PW004"]


@pytest.mark.parametrize(
    "where, body, message",
    [
        ("pwlint.toml", 'selekt = ["PW001"]', "unknown key 'selekt' (did you mean 'select'?)"),
        ("pwlint.toml", 'fail_onn = "error"', "unknown key 'fail_onn' (did you mean 'fail-on'?)"),
        ("pwlint.toml", '[per-file-ignore]\n"*.onnx" = ["PW001"]', "unknown key 'per-file-ignore' (did you mean 'per-file-ignores'?)"),
        ("pyproject.toml", '[tool.pwlint]\nignor = ["PW001"]', "[tool.pwlint]: unknown key 'ignor' (did you mean 'ignore'?)"),
        ("pwlint.toml", '[rules.PW002]\nmax-parms = 10', "[rules.PW002]: unknown option 'max-parms' (did you mean 'max-params'?)"),
        ("pwlint.toml", '[rules.PW002]\nsvd_energie = 0.5', "[rules.PW002]: unknown option 'svd_energie' (did you mean 'svd-energy'?)"),
        ("pwlint.toml", '[rules.PW001]\nsevrity = "error"', "[rules.PW001]: unknown option 'sevrity' (did you mean 'severity'?)"),
    ],
)
def test_misspelt_key_gets_did_you_mean(pwlint, model, project, where, body, message):
    config = write(project / where, body)
    line = one_line_error(pwlint(str(model)))
    assert line.startswith(f"pwlint: error: {config}: ")
    assert line.endswith(message)


def test_unrelated_key_gets_no_suggestion(pwlint, model, project):
    pwlint_toml(project, "colour = true")
    line = one_line_error(pwlint(str(model)))
    assert line.endswith("unknown key 'colour'")


def test_did_you_mean_through_explicit_config(pwlint, model, tmp_path):
    config = write(tmp_path / "ci" / "pp.toml", '[tool.pwlint]\nselct = ["PW001"]\n')
    line = one_line_error(pwlint(str(model), "--config", str(config)))
    assert line == f"pwlint: error: {config}: [tool.pwlint]: unknown key 'selct' (did you mean 'select'?)"
