"""The pre-commit hooks, run the way a user's repository runs them: `pre-commit
try-repo` of this repository against a throwaway git repository holding models.
pre-commit builds the hook's environment from PyPI like any user's install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path_factory.mktemp("user-repo")
    shutil.copyfile(EXAMPLES / "lenet.onnx", repo / "bad.onnx")  # a Flatten + Dense head
    shutil.copyfile(EXAMPLES / "resnet_pointwise.onnx", repo / "good.onnx")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "models"]):
        subprocess.run(command, cwd=repo, check=True, env=env)
    home = tmp_path_factory.mktemp("pre-commit-home")  # one hook environment for both runs
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


def test_hooks_declare_what_pre_commit_needs():
    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"pwlint", "pwlint-fix"}
    for hook in hooks.values():
        assert hook["language"] == "python" and hook["require_serial"] is True
        assert hook["minimum_pre_commit_version"]
        for name in ("m.onnx", "M.ONNX", "m.keras", "m.h5", "m.hdf5", "m.pt2", "m.pt"):
            import re

            assert re.search(hook["files"], name), (hook["id"], name)
    assert "--fix" in hooks["pwlint-fix"]["entry"]


def test_lint_hook_runs_on_every_file_type_folders_are_searched_for():
    """What `pwlint check models/` finds, the hook lints when such a file is committed."""
    import re

    from pwlint.plugins import collect, make_plugin_manager

    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    for suffix in collect(make_plugin_manager(autoload=False)).discovered_suffixes:
        assert re.search(hooks["pwlint"]["files"], "model" + suffix), suffix
