"""The pre-commit hooks, run the way a user's repository runs them: `pre-commit
try-repo` of this repository against a throwaway git repository holding models.
pre-commit builds the hook's environment like any user's install (`pip install .`
plus the hook's `additional_dependencies`), from the package index pip is set up for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_same_outputs, lint

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HOOKS = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
#: the fix hook of each format, and the extra of pyproject.toml its environment needs
FORMAT_HOOKS = {"pwlint-fix-onnx": "onnx", "pwlint-fix-keras": "keras", "pwlint-fix-torch": "torch"}
SUFFIXES = (".onnx", ".keras", ".h5", ".hdf5", ".pt2", ".pt", ".jit", ".torchscript")


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path_factory.mktemp("user-repo")
    for name in ("bad.onnx", "head.onnx", "head2.onnx"):  # a Flatten + Dense head; one copy per test
        shutil.copyfile(EXAMPLES / "lenet.onnx", repo / name)
    shutil.copyfile(EXAMPLES / "resnet_pointwise.onnx", repo / "good.onnx")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "models"]):
        subprocess.run(command, cwd=repo, check=True, env=env)
    home = tmp_path_factory.mktemp("pre-commit-home")  # hook environments shared by the tests
    return repo, {**env, "PRE_COMMIT_HOME": str(home)}


def _try_repo(repo, env, hook: str, model: str):
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), hook, "--files", model],
        cwd=repo, env=env, capture_output=True, text=True, timeout=900,
    )


def test_hook_fails_on_a_model_with_a_finding(user_repo):
    repo, env = user_repo
    run = _try_repo(repo, env, "pwlint", "bad.onnx")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "bad.onnx: PW001" in run.stdout


def test_hook_passes_on_a_clean_model(user_repo):
    repo, env = user_repo
    run = _try_repo(repo, env, "pwlint", "good.onnx")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Passed" in run.stdout


@pytest.mark.parametrize(("hook", "model"), [("pwlint-fix", "head.onnx"), ("pwlint-fix-onnx", "head2.onnx")])
def test_fix_hook_rewrites_a_flatten_dense_head_out_of_the_box(user_repo, hook, model):
    """The hook's own environment verifies the fix (onnxruntime comes with the hook, the
    user adds nothing): the file is rewritten, pre-commit fails the commit to show it,
    and the new file computes what the committed one did, without the PW001 head."""
    repo, env = user_repo
    path = repo / model
    committed = subprocess.run(["git", "show", f"HEAD:{model}"], cwd=repo, capture_output=True, check=True).stdout
    run = _try_repo(repo, env, hook, model)
    output = run.stdout + run.stderr
    assert run.returncode == 1, output  # pre-commit fails when a hook modified files
    assert "files were modified by this hook" in output
    assert f"{model}: fixed 1 finding(s); written to {model}" in output
    assert "applied: PW001 (safe)" in output
    assert path.read_bytes() != committed
    assert "PW001" not in [finding["code"] for finding in lint(path)["findings"]]
    original = path.with_name("committed.onnx")
    original.write_bytes(committed)
    assert_same_outputs(original, path)


def test_fix_hook_leaves_a_clean_model_untouched(user_repo):
    repo, env = user_repo
    before = (repo / "good.onnx").read_bytes()
    run = _try_repo(repo, env, "pwlint-fix", "good.onnx")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Passed" in run.stdout
    assert (repo / "good.onnx").read_bytes() == before


def test_hooks_declare_what_pre_commit_needs():
    assert set(HOOKS) == {"pwlint", "pwlint-fix", *FORMAT_HOOKS}
    for hook in HOOKS.values():
        assert hook["language"] == "python" and hook["require_serial"] is True
        assert hook["minimum_pre_commit_version"]
        assert hook["description"]
    assert HOOKS["pwlint"]["entry"] == "pwlint check"
    for name in ("m.onnx", "M.ONNX", "m.keras", "m.h5", "m.hdf5", "m.pt2", "m.pt"):
        for hook in ("pwlint", "pwlint-fix"):
            assert re.search(HOOKS[hook]["files"], name), (hook, name)
    for hook in ("pwlint-fix", *FORMAT_HOOKS):
        assert HOOKS[hook]["entry"] == "pwlint check --fix"


def test_each_fix_hook_installs_its_formats_extra():
    """A fix hook's environment has what `pip install pwlint[extra]` gives, with the same
    pins (torch==2.13.0 everywhere); `pwlint-fix` is ready for ONNX."""
    for hook, extra in FORMAT_HOOKS.items():
        assert HOOKS[hook]["additional_dependencies"] == EXTRAS[extra], hook
    assert HOOKS["pwlint-fix"]["additional_dependencies"] == EXTRAS["onnx"]
    assert "additional_dependencies" not in HOOKS["pwlint"]  # linting imports no runtime


def test_format_fix_hooks_split_the_fixable_files_between_them():
    """Each model file is fixed by exactly one per-format hook, and they cover what
    `pwlint-fix` covers: a repository may enable several without fixing a file twice."""
    for suffix in SUFFIXES:
        for name in ("model" + suffix, "MODEL" + suffix.upper()):
            owners = [hook for hook in FORMAT_HOOKS if re.search(HOOKS[hook]["files"], name)]
            if re.search(HOOKS["pwlint-fix"]["files"], name):
                assert len(owners) == 1, (name, owners)
            else:
                assert owners == [], (name, owners)


def test_lint_hook_runs_on_every_file_type_folders_are_searched_for():
    """What `pwlint check models/` finds, the hook lints when such a file is committed."""
    from pwlint.plugins import collect, make_plugin_manager

    for suffix in collect(make_plugin_manager(autoload=False)).discovered_suffixes:
        assert re.search(HOOKS["pwlint"]["files"], "model" + suffix), suffix
