"""``--fix`` and ``--diff`` in an environment without the extras a fix needs: one line,
exit 2, before any model is read, naming the file, the module and the extra to install.

Each case runs pwlint as a command whose interpreter cannot import the frameworks: a
``sitecustomize`` on ``PYTHONPATH`` puts a finder first on ``sys.meta_path`` that refuses
the named top-level modules, as in an install of the core package alone (the README's
quick start, the ``pwlint-fix`` hook's environment). The extras' names and contents are
checked against ``pyproject.toml``, not copied from the code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pwlint.fix import needs
from tests.conftest import cnn_model, codes, lint, run_command, run_inprocess

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("onnxruntime", "torch", "keras", "jax", "tensorflow")

BLOCKER = '''
import os, sys

_BLOCKED = set(filter(None, os.environ.get("PWLINT_TEST_BLOCKED", "").split(",")))


class _NotInstalled:
    """Refuses the blocked top-level modules, as an interpreter without them would."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
'''


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shim")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return folder


def without(shim: Path, *modules: str, **extra: str) -> dict:
    """The environment of a pwlint command that cannot import ``modules``."""
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "PWLINT_TEST_BLOCKED": ",".join(modules), **extra}


def run_without(shim, modules, *args, cwd=None, **extra):
    return run_command(*args, cwd=cwd, env=without(shim, *modules, **extra))


def write_onnx(path: Path, **kwargs) -> Path:
    import onnx

    onnx.save(cnn_model(**kwargs), path)
    return path


def write_pt2(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    from tests import zoo

    model = zoo.build("lenet").eval()
    torch.export.save(torch.export.export(model, (torch.randn(*zoo.input_shape(model)),)), str(path))
    return path


def write_h5(path: Path) -> Path:
    """An HDF5 file, as Keras 2 writes one (only its content is read before the check)."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5.attrs["keras_version"] = "2.15.0"
        h5.attrs["backend"] = "tensorflow"
    return path


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def one_line(run) -> str:
    assert run.code == 2, (run.code, run.out, run.err)
    assert run.out == "", "the check must come before any linting"
    lines = run.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    return lines[0]


# the interpreter shim itself ---------------------------------------------------------------

def test_the_shim_makes_a_module_look_not_installed(shim):
    """Without this, every test below could pass in an environment that imports them."""
    code = "import importlib.util as u; print(u.find_spec('json') is not None)\ntry:\n import onnxruntime\nexcept ImportError as e: print('refused', type(e).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **without(shim, "onnxruntime")})
    assert proc.stdout.split("\n")[:2] == ["True", "refused ModuleNotFoundError"], proc.stderr


# the README's quick start, then --fix ------------------------------------------------------

def test_readme_quick_start_then_fix_is_one_line_naming_the_extra(shim, tmp_path):
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install . " in quick_start and "[" not in quick_start.split("&&")[0], quick_start
    (tmp_path / "examples").mkdir()
    model = tmp_path / "examples" / "lenet.onnx"
    model.write_bytes((ROOT / "examples" / "lenet.onnx").read_bytes())
    assert "PW001" in codes(lint(model))  # there is a fix to make
    before = model.stat()
    line = one_line(run_without(shim, FRAMEWORKS, "examples/lenet.onnx", "--fix", cwd=tmp_path))
    assert line.startswith("pwlint: error: --fix on examples/lenet.onnx needs onnxruntime (to verify the fixed model): pip install ")
    assert line.endswith("[onnx]'"), line
    assert model.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in model.parent.iterdir()) == ["lenet.onnx"]


def test_the_install_command_names_the_way_pwlint_was_installed(monkeypatch, tmp_path):
    """From an index: ``pip install 'pwlint[onnx]'``; from this checkout (editable here),
    the checkout with the extra, which is what works for a project not on an index."""
    monkeypatch.setattr(needs, "_direct_url", lambda: {})
    assert needs.install_hint([needs.ONNX_RUNTIME]) == "pip install 'pwlint[onnx]'"
    checkout = {"url": f"file://{tmp_path}", "dir_info": {"editable": True}}
    monkeypatch.setattr(needs, "_direct_url", lambda: checkout)
    assert needs.install_hint([needs.ONNX_RUNTIME]) == f"pip install -e '{tmp_path}[onnx]'"
    monkeypatch.chdir(tmp_path)
    checkout["dir_info"] = {}
    assert needs.install_hint([needs.KERAS, needs.KERAS_FRAMEWORKS["torch"]]) == "pip install '.[keras]'"
    git = {"url": "https://github.com/example/pwlint", "vcs_info": {"vcs": "git", "commit_id": "abc"}}
    monkeypatch.setattr(needs, "_direct_url", lambda: git)
    assert needs.install_hint([needs.TORCH]) == "pip install 'pwlint[torch] @ git+https://github.com/example/pwlint'"


def test_no_verify_fixes_onnx_without_onnxruntime(shim, tmp_path):
    """onnxruntime only verifies: without it, --no-verify still fixes (and never imports it,
    or the shim would have failed the run)."""
    model = write_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    run = run_without(shim, FRAMEWORKS, str(model), "--fix", "--no-verify")
    assert run.code in (0, 1) and run.err == "", run.err
    assert "written to" in run.out and model.read_bytes() != before


def test_diff_needs_onnxruntime_too(shim, tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    line = one_line(run_without(shim, ("onnxruntime",), str(model), "--diff"))
    assert f"--diff on {model} needs onnxruntime" in line


def test_linting_needs_no_extra(shim, tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    run = run_without(shim, FRAMEWORKS, str(model))
    assert run.code == 1 and "PW001" in run.out and run.err == ""


# each format -------------------------------------------------------------------------------

def test_keras_needs_keras_and_its_torch_backend(shim, tmp_path):
    model = write_h5(tmp_path / "model.h5")
    line = one_line(run_without(shim, ("keras", "torch"), str(model), "--fix", KERAS_BACKEND=""))
    assert f"--fix on {model} needs keras and torch: pip install " in line and line.endswith("[keras]'")
    line = one_line(run_without(shim, ("torch",), str(model), "--fix", KERAS_BACKEND="torch"))
    assert "needs torch (as Keras' backend)" in line and line.endswith("[keras]'")
    # on jax, pwlint has no extra for it: the module itself
    line = one_line(run_without(shim, ("jax",), str(model), "--fix", KERAS_BACKEND="jax"))
    assert "needs jax" in line and line.endswith("pip install jax")


def test_pt2_needs_torch(shim, tmp_path):
    model = write_pt2(tmp_path / "lenet.pt2")
    line = one_line(run_without(shim, ("torch",), str(model), "--fix", "--no-verify"))
    assert f"--fix on {model} needs torch (to fix .pt2 programs): pip install " in line and line.endswith("[torch]'")


def test_torchscript_needs_nothing_and_is_said_not_to_be_fixed(shim, tmp_path):
    torch = pytest.importorskip("torch")
    from tests import zoo

    model = zoo.build("lenet").eval()
    path = tmp_path / "lenet.jit"
    torch.jit.save(torch.jit.trace(model, torch.randn(*zoo.input_shape(model))), str(path))
    before = path.read_bytes()
    run = run_without(shim, FRAMEWORKS, str(path), "--fix")
    assert run.code == 1 and "PW001" in run.out, run.err
    assert run.err == f"pwlint: {path}: {needs.TORCHSCRIPT_NOT_FIXED}\n"
    assert path.read_bytes() == before


def test_several_files_and_extras_are_one_line(shim, tmp_path):
    for name in ("a.onnx", "b.onnx", "c.onnx"):
        write_onnx(tmp_path / name)
    write_pt2(tmp_path / "d.pt2")
    line = one_line(run_without(shim, FRAMEWORKS, str(tmp_path), "--fix"))
    assert f"on {tmp_path / 'a.onnx'} and 2 more files needs onnxruntime" in line
    assert f"on {tmp_path / 'd.pt2'} needs torch" in line
    assert re.search(r"\[onnx,torch\]'$", line), line


def test_a_python_api_fix_says_the_same(monkeypatch, tmp_path):
    """``pwlint.fix`` (no command line, so no early check) refuses in the same words."""
    import pwlint
    from pwlint.errors import PwlintError

    model = write_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    monkeypatch.setattr(needs, "is_installed", lambda module: module != "onnxruntime")
    monkeypatch.setattr(needs, "_direct_url", lambda: {})
    with pytest.raises(PwlintError, match=re.escape(f"--fix on {model} needs onnxruntime (to verify the fixed model): pip install 'pwlint[onnx]'")):
        pwlint.fix(str(model))
    assert model.read_bytes() == before


def test_in_process_check_comes_before_linting(monkeypatch, tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    monkeypatch.setattr(needs, "is_installed", lambda module: module != "onnxruntime")
    run = run_inprocess(str(model), "--fix", "--format", "json")
    assert run.code == 2 and run.out == "" and "needs onnxruntime" in run.err


# pre-commit ----------------------------------------------------------------------------------

def test_pwlint_fix_hook_in_an_env_of_base_pwlint(shim, tmp_path):
    """The hook's own entry, run as pre-commit runs it (PRE_COMMIT=1) where only the core
    package is installed: one line saying what to add to the hook."""
    import yaml

    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    entry = hooks["pwlint-fix"]["entry"].split()
    assert entry[0] == "pwlint"
    model = write_onnx(tmp_path / "m.onnx")
    line = one_line(run_without(shim, FRAMEWORKS, *entry[1:], str(model), PRE_COMMIT="1"))
    wanted = [r.split(";")[0] for r in extras()["onnx"]]
    assert line.endswith(f"add additional_dependencies: [{', '.join(repr(r) for r in wanted)}] to the hook in .pre-commit-config.yaml"), line


# what the code says about the extras, against pyproject.toml ---------------------------------

def test_the_extras_named_exist_and_install_the_module():
    declared = extras()
    named = [needs.ONNX_RUNTIME, needs.KERAS, needs.TORCH, *needs.KERAS_FRAMEWORKS.values()]
    for need in named:
        if need.extra is None:
            continue
        assert need.extra in declared, need
        assert any(re.match(rf"{need.module}\b", r) for r in declared[need.extra]), (need, declared[need.extra])
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(r.startswith("onnx") for r in core) and needs.ONNX_WRITER.extra is None


def test_the_check_imports_no_framework(tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    write_pt2(tmp_path / "m.pt2")
    code = (
        "import sys; from pwlint.fix import needs\n"
        f"needs.require([({str(model)!r}, 'onnx', None), ({str(tmp_path / 'm.pt2')!r}, 'torch', None), ('x.keras', 'keras', None)], True)\n"
        "print(sorted(m for m in ('onnxruntime', 'torch', 'keras', 'onnx') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
