"""The GitHub Action (action.yml, composite): its YAML is what a runner accepts, and its
script does what a workflow relies on, run here as a runner runs it (the step's own
command and environment, GitHub's variables) in a throwaway clone of a pull request.
The script's `pip install` of the action's checkout is skipped (PWLINT_ACTION_SKIP_INSTALL),
except in one test where a stand-in `python` records the command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
ACTION_TEXT = (ROOT / "action.yml").read_text()
STEP = next(step for step in ACTION["runs"]["steps"] if step.get("id") == "pwlint")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": ""}
INPUT_EXPRESSION = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")


# --- the YAML -------------------------------------------------------------------------

def test_action_is_a_composite_action_with_its_required_fields():
    assert ACTION["name"] and ACTION["description"]
    assert ACTION["runs"]["using"] == "composite"
    for step in ACTION["runs"]["steps"]:
        assert ("uses" in step) != ("run" in step), step
        if "run" in step:
            assert step["shell"] == "bash", step  # a composite run step must name its shell
    script = re.search(r'"\$GITHUB_ACTION_PATH/(\S+)"', STEP["run"]).group(1)
    assert (ROOT / script).is_file()


def test_every_input_used_is_declared_and_every_input_is_documented():
    used = set(INPUT_EXPRESSION.findall(ACTION_TEXT))
    declared = set(ACTION["inputs"])
    assert used <= declared, used - declared
    assert declared <= used, declared - used  # an input nothing reads would be ignored silently
    for name, spec in ACTION["inputs"].items():
        assert spec.get("description", "").strip(), name
        assert isinstance(spec.get("default", ""), str), name  # inputs are strings
    assert set(ACTION["inputs"]) >= {"paths", "args", "sarif", "diff-comment", "python-version", "extras"}
    assert ACTION["inputs"]["paths"]["default"] == "."


def test_outputs_come_from_the_script_step_and_are_documented():
    written = set(re.findall(r"^\s*output ([a-z-]+) ", (ROOT / "action" / "run.sh").read_text(), re.M))
    for name, spec in ACTION["outputs"].items():
        assert spec["description"].strip(), name
        assert spec["value"] == "${{ steps.pwlint.outputs.%s }}" % name
        assert name in written, name
    assert written == set(ACTION["outputs"])


def test_inputs_reach_the_script_as_environment_variables_only():
    """An input pasted into `run:` becomes shell code (a path named `$(...)`); the script
    reads each one from the step's environment instead."""
    assert not INPUT_EXPRESSION.search(STEP["run"])
    script = (ROOT / "action" / "run.sh").read_text()
    read = set(re.findall(r"\bPWLINT_[A-Z_]+", script)) - {"PWLINT_ACTION_SKIP_INSTALL"}
    assert read == set(STEP["env"]), read ^ set(STEP["env"])


# --- the script, run as a runner runs it ----------------------------------------------

@dataclass
class ActionRun:
    code: int
    stdout: str
    stderr: str
    outputs: dict
    summary: str


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A repository whose main branch has a clean model and one with a Flatten+Dense head;
    branch `feature` (the pull request) adds a second head and replaces the first with a
    clean model."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path_factory.mktemp("origin")
    models = repo / "models"
    models.mkdir()
    _git("init", "-q", "-b", "main", cwd=repo)
    shutil.copyfile(EXAMPLES / "resnet_pointwise.onnx", models / "good.onnx")
    shutil.copyfile(EXAMPLES / "lenet.onnx", models / "old.onnx")
    _git("add", ".", cwd=repo)
    _git("commit", "-qm", "models", cwd=repo)
    _git("checkout", "-qb", "feature", cwd=repo)
    shutil.copyfile(EXAMPLES / "lenet.onnx", models / "new.onnx")
    shutil.copyfile(EXAMPLES / "resnet_pointwise.onnx", models / "old.onnx")
    _git("add", ".", cwd=repo)
    _git("commit", "-qm", "new head, old one replaced", cwd=repo)
    _git("checkout", "-q", "main", cwd=repo)
    return repo


@pytest.fixture
def checkout(origin, tmp_path):
    """The pull request as actions/checkout leaves it: one commit deep, one branch."""
    work = tmp_path / "work"
    _git("clone", "-q", "--depth", "1", "--single-branch", "--branch", "feature", origin.as_uri(), str(work), cwd=tmp_path)
    return work


def run_action(workdir: Path, inputs: dict | None = None, github: dict | None = None,
               python_dir: Path | None = None) -> ActionRun:
    """The `pwlint` step: its `run` command, its `env` with the inputs (defaults from
    action.yml), and the variables a runner sets for a composite action's step."""
    inputs = inputs or {}
    assert set(inputs) <= set(ACTION["inputs"]), inputs
    runner = workdir.parent / "runner"
    runner.mkdir(exist_ok=True)
    (runner / "output").write_text("")
    (runner / "summary").write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GITHUB_", "RUNNER_"))}
    for variable, expression in STEP["env"].items():
        name = INPUT_EXPRESSION.fullmatch(expression).group(1)
        env[variable] = inputs.get(name, ACTION["inputs"][name]["default"])
    env.update(GIT_ENV)
    env.update(
        PATH=os.pathsep.join([str(python_dir or Path(sys.executable).parent), os.environ["PATH"]]),
        GITHUB_ACTIONS="true", GITHUB_ACTION_PATH=str(ROOT), GITHUB_WORKSPACE=str(workdir),
        GITHUB_OUTPUT=str(runner / "output"), GITHUB_STEP_SUMMARY=str(runner / "summary"),
        RUNNER_TEMP=str(runner), PWLINT_ACTION_SKIP_INSTALL="" if python_dir else "1",
        **(github or {}),
    )
    proc = subprocess.run([STEP["shell"], "-c", STEP["run"]], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    outputs = dict(line.split("=", 1) for line in (runner / "output").read_text().splitlines())
    return ActionRun(proc.returncode, proc.stdout, proc.stderr, outputs, (runner / "summary").read_text())


def _annotations(stdout: str) -> list[tuple[str, str, str]]:
    """(command, file, title) of each workflow command line."""
    found = []
    for line in stdout.splitlines():
        match = re.match(r"::(\w+) ([^:]*)::", line)
        if match:
            props = dict(prop.split("=", 1) for prop in match.group(2).split(","))
            found.append((match.group(1), os.path.normpath(props.get("file", "")), props.get("title", "")))
    return found


def test_pull_request_gets_annotations_sarif_and_a_diff_comment(checkout):
    run = run_action(checkout, {"sarif": "reports/pwlint.sarif", "diff-comment": "true"}, {"GITHUB_BASE_REF": "main"})
    assert run.code == 1, run.stdout + run.stderr  # a Flatten+Dense head is a warning: the check fails
    assert run.outputs == {
        "exit-code": "1", "sarif-file": "reports/pwlint.sarif",
        "diff-file": str(checkout.parent / "runner" / "pwlint-diff.md"), "diff-exit-code": "1",
    }

    annotations = _annotations(run.stdout)
    assert ("warning", "models/new.onnx", "pwlint (PW001)") in annotations
    assert ("warning", "models/old.onnx", "pwlint (PW001)") not in annotations  # replaced by a clean model
    assert not [a for a in annotations if a[1] == "models/good.onnx"]

    sarif = json.loads((checkout / "reports" / "pwlint.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    located = {
        (result["ruleId"], result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
        for result in sarif["runs"][0]["results"]
    }
    assert ("PW001", "models/new.onnx") in located
    assert not [uri for _, uri in located if "good" in uri or "old" in uri]

    # the base branch was not in the one-commit checkout: the script fetched it
    assert _git("rev-parse", "origin/main", cwd=checkout).strip() == _git("rev-parse", "main", cwd=_origin_of(checkout)).strip()
    markdown = Path(run.outputs["diff-file"]).read_text()
    assert markdown.startswith("<!-- pwlint-diff -->")
    new = markdown.split("### models/new.onnx (added)")[1].split("###")[0]
    assert "**PW001** (warning)" in new
    old = markdown.split("### models/old.onnx (modified)")[1].split("###")[0]
    assert "No new findings" in old and "Resolved findings" in old and "**PW001**" in old
    assert "good.onnx" not in markdown  # unchanged
    assert markdown.strip() in run.summary
    assert "findings in `.`" in run.summary


def _origin_of(checkout: Path) -> Path:
    return Path(_git("config", "remote.origin.url", cwd=checkout).strip().removeprefix("file://"))


def test_clean_models_pass_with_no_annotation_and_empty_file_outputs(checkout):
    run = run_action(checkout, {"paths": "models/good.onnx"})
    assert run.code == 0, run.stdout + run.stderr
    assert _annotations(run.stdout) == []
    assert run.outputs == {"exit-code": "0", "sarif-file": "", "diff-file": "", "diff-exit-code": ""}
    assert "no findings" in run.summary


def test_paths_and_args_are_split_as_a_shell_would_without_running_anything(checkout):
    """Quoted paths with spaces and newlines between paths; `args` reach `pwlint check`
    (PW001 ignored: only PW003's info is left, below fail-on) and nothing in them runs."""
    spaced = checkout / "my models"
    spaced.mkdir()
    shutil.copyfile(EXAMPLES / "lenet.onnx", spaced / "net.onnx")
    marker = checkout / "marker"
    run = run_action(checkout, {
        "paths": "'my models/net.onnx'\nmodels/good.onnx",
        "args": f"--ignore PW001 --select \"PW001,PW003\" $(touch {marker})",
    })
    assert not marker.exists()
    # `$(touch ...)` is one more path, which does not exist: pwlint says so (exit 2)
    assert run.code == 2, run.stdout + run.stderr
    assert ("notice", "my models/net.onnx", "pwlint (PW003)") in _annotations(run.stdout)
    assert not [a for a in _annotations(run.stdout) if a[2] == "pwlint (PW001)"]

    run = run_action(checkout, {"paths": "'my models/net.onnx'  models/good.onnx", "args": "--ignore PW001"})
    assert run.code == 0, run.stdout + run.stderr
    assert ("notice", "my models/net.onnx", "pwlint (PW003)") in _annotations(run.stdout)


def test_a_model_that_cannot_be_read_fails_with_an_error_annotation(checkout):
    (checkout / "models" / "broken.onnx").write_bytes(b"\x08\x07garbage")
    run = run_action(checkout, {"paths": "models", "sarif": "pwlint.sarif"})
    assert run.code == 2, run.stdout + run.stderr
    assert run.outputs["exit-code"] == "2"
    assert ("error", "models/broken.onnx", "pwlint") in _annotations(run.stdout)
    assert run.outputs["sarif-file"] == "pwlint.sarif"  # still written, for the upload step
    sarif = json.loads((checkout / "pwlint.sarif").read_text())
    assert sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert "could not be checked" in run.summary


@pytest.mark.parametrize("args", ["--format json", "-o out.sarif", "--output-file=x", "--fix", "--select 'PW001"])
def test_args_the_action_owns_or_cannot_split_are_refused(checkout, args):
    run = run_action(checkout, {"args": args})
    assert run.code == 2
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("::error title=pwlint action::input 'args' ")
    assert run.outputs == {}  # pwlint never ran


def test_no_pull_request_and_no_base_means_no_diff(checkout):
    run = run_action(checkout, {"paths": "models/good.onnx", "diff-comment": "true"})
    assert run.code == 0, run.stdout + run.stderr
    assert "::notice title=pwlint action::no model diff" in run.stdout
    assert run.outputs["diff-file"] == "" and run.outputs["diff-exit-code"] == ""


def test_diff_base_input_compares_with_that_revision(origin, tmp_path):
    work = tmp_path / "work"
    _git("clone", "-q", "--branch", "feature", origin.as_uri(), str(work), cwd=tmp_path)
    run = run_action(work, {"paths": "models/old.onnx", "diff-comment": "True", "diff-base": "HEAD~1"})
    assert run.code == 0, run.stdout + run.stderr  # old.onnx is clean now
    assert run.outputs["diff-exit-code"] == "0"  # resolved findings only
    markdown = Path(run.outputs["diff-file"]).read_text()
    assert "### models/old.onnx (modified)" in markdown and "new.onnx" not in markdown


def _fake_python(tmp_path: Path, pip_code: int) -> tuple[Path, Path]:
    """A `python` that records `python -m pip ...` instead of installing, and runs the
    real interpreter for everything else."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir()
    script = bin_dir / "python"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then printf "%s\\n" "$@" > "{log}"; exit {pip_code}; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    script.chmod(0o755)
    return bin_dir, log


def test_pwlint_is_installed_from_the_actions_own_checkout_with_its_extras(checkout, tmp_path):
    bin_dir, log = _fake_python(tmp_path, 0)
    run = run_action(checkout, {"paths": "models/good.onnx", "extras": "onnx, keras"}, python_dir=bin_dir)
    assert run.code == 0, run.stdout + run.stderr
    pip = log.read_text().splitlines()
    assert pip[:3] == ["-m", "pip", "install"]
    assert pip[-1] == f"{ROOT}[onnx,keras]"


def test_a_failed_install_or_odd_extras_stop_before_linting(checkout, tmp_path):
    bin_dir, log = _fake_python(tmp_path, 1)
    run = run_action(checkout, {"paths": "models/good.onnx"}, python_dir=bin_dir)
    assert run.code == 2
    assert log.read_text().splitlines()[-1] == str(ROOT)
    assert "::error title=pwlint action::pip could not install pwlint" in run.stdout
    assert run.outputs == {}

    run = run_action(checkout, {"extras": "onnx]; touch x"})
    assert run.code == 2 and "input 'extras'" in run.stdout
    assert not (checkout / "x").exists()


# --- the CI around it: the whole suite there, a quick subset while editing --------------

def test_slow_modules_exist_ci_runs_them_and_the_readme_names_the_quick_subset():
    """`pytest -m "not slow"` deselects the modules tests/conftest.py lists (a renamed
    module would silently rejoin the quick subset), the marker is registered (no
    PytestUnknownMarkWarning under --strict-markers), and CI deselects nothing."""
    from tests.conftest import SLOW_TESTS, TESTS_DIR

    for pattern in SLOW_TESTS:
        assert [path for path in TESTS_DIR.glob(pattern) if path.suffix == ".py"], pattern
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--strict-markers", "-p", "no:cacheprovider",
         "-m", "not slow", "tests/test_pre_commit.py", "tests/test_units.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/test_units.py::") for line in collected)
    ci_pytest = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                 if "pytest" in line and not line.lstrip().startswith("#")]
    assert ci_pytest
    for line in ci_pytest:
        assert "slow" not in line and "-m" not in line.split("pytest", 1)[1].split(), line
    assert 'python -m pytest -m "not slow"' in (ROOT / "README.md").read_text()
