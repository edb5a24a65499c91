"""The README's "Python API" examples run as written.

Every ```python block of that section is executed, in order, each in a fresh namespace,
in one child interpreter (KERAS_BACKEND=torch, a temporary working folder); the
blocks' own asserts check what they claim, and the test functions of the pytest
recipe are called, as pytest would call them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

CHILD = r"""
import json, sys, traceback
blocks = json.load(sys.stdin)
ran = []
for index, code in enumerate(blocks):
    namespace = {"__name__": f"readme_block_{index}"}
    exec(compile(code, f"README.md Python API block {index + 1}", "exec"), namespace)
    tests = [name for name, value in namespace.items() if name.startswith("test_") and callable(value)]
    for name in tests:
        namespace[name]()
    ran.append(tests)
print(json.dumps(ran))
"""


def api_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Python API\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_an_example_per_framework_and_the_pytest_recipe():
    blocks = python_blocks(api_section())
    assert len(blocks) == 4
    torch_block, keras_block, onnx_block, recipe = blocks
    assert "pwlint.check(model, x)" in torch_block and "pwlint.fix(model, x)" in torch_block
    assert "import keras" in keras_block and "pwlint.fix(model)" in keras_block
    assert "onnx.parser.parse_model" in onnx_block and "pwlint.fix(model" in onnx_block
    assert "from pwlint.testing import assert_clean" in recipe and "def test_" in recipe


def test_the_python_api_examples_run(tmp_path):
    blocks = python_blocks(api_section())
    env = {**os.environ, "KERAS_BACKEND": "torch", "PWLINT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], input=json.dumps(blocks), capture_output=True, text=True,
        cwd=tmp_path, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ran[-1] == ["test_no_flatten_dense_head", "test_architecture_is_clean"]
    assert (tmp_path / "tiny.fixed.onnx").is_file()  # the ONNX example saved its fixed model
    # what the examples print is what the README says they print
    for line in ("<torch.nn.Module Net>: PW004 (warning) conv features.0 has a bias of 16 parameters",
                 "applied: PW001 (safe) classifier.0, classifier.1: 'classifier.1' replaced by a 16x16 conv",
                 "2682 -> 162 parameters"):
        assert line in proc.stdout
