"""Start-up cost: a pre-commit hook runs pwlint on every commit, so linting an ONNX
file must not import the heavy frameworks, and ``--version`` must not even import onnx.

Each check runs in a fresh interpreter: this test process has long since imported torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, sys
    from pwlint import cli

    try:
        code = cli.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    roots = sorted({name.partition(".")[0] for name in sys.modules})
    sys.stderr.write("\\n" + json.dumps({"code": code, "modules": roots}) + "\\n")
    """
)


def run_child(*args: str, cwd=None) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


HEAVY = ["torch", "onnxruntime", "keras", "tensorflow", "jax", "onnxscript"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_linting_onnx_imports_no_framework(cnn_file, fmt):
    path = cnn_file()
    code, modules = run_child(str(path), "--format", fmt)
    assert code == 1  # the model was really linted: it has a flatten-dense head
    assert "onnx" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_linting_a_folder_with_config_imports_no_framework(cnn_file, tmp_path):
    cnn_file("models/a.onnx")
    cnn_file("models/sub/b.onnx", head="gap")
    (tmp_path / "pyproject.toml").write_text('[tool.pwlint]\nignore = ["PW004"]\n')
    code, modules = run_child(str(tmp_path / "models"))
    assert code == 1
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_linting_without_configuration_does_not_import_pydantic(cnn_file):
    # pydantic validates configured values only; importing it costs a small lint a fifth of its time
    code, modules = run_child(str(cnn_file()))
    assert code == 1
    assert "pydantic" not in modules


def test_configured_options_are_validated(cnn_file, tmp_path):
    path = cnn_file()
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = -1\n")
    code, modules = run_child(str(path))
    assert code == 2 and "pydantic" in modules


def test_version_does_not_import_onnx():
    code, modules = run_child("--version")
    assert code == 0
    assert "onnx" not in modules
    assert not modules & set(HEAVY)


@pytest.mark.parametrize("args", [["rules"], ["rule", "PW001"]])
def test_rule_documentation_does_not_import_frameworks(args):
    code, modules = run_child(*args)
    assert code == 0
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert "networkx" not in modules  # no graph is built
