"""The README tells the truth: its quick start, rule table and option table."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from pwlint.plugins import collect, make_plugin_manager

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _quick_start_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", _section("Quick start"), re.S)


def _builtin_rules():
    return sorted(collect(make_plugin_manager(autoload=False)).rules.values(), key=lambda r: r.code)


def test_quick_start_has_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)


def test_ci_runs_the_readme_test_command():
    test_command = _quick_start_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_quick_start_lint_command_lints_the_examples():
    install, lint = _quick_start_commands()[0].split(" && ")
    assert install.startswith("pip install .")
    args = shlex.split(lint)
    assert args[0] == "pwlint"
    proc = subprocess.run(
        [sys.executable, "-m", "pwlint", *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr  # the examples have findings, as the README says
    assert proc.stderr == ""
    assert "examples/lenet.onnx: PW001" in proc.stdout


def test_rule_table_matches_the_rules_docstrings():
    table = re.search(r"<!-- rules-table.*?-->\n(.*?)<!-- end rules-table -->", README, re.S).group(1)
    rows = [line for line in table.strip().splitlines()[2:]]
    expected = [
        f"| {rule.code} | {rule.name} | {rule.severity.value} | {rule.summary} |" for rule in _builtin_rules()
    ]
    assert rows == expected


def test_option_table_lists_every_rule_option_with_its_default_and_meaning():
    section = _section("Configuration")
    documented = set(re.findall(r"^\| (PW\d+) \| `([a-z-]+)` \| (\S+) \| (.*?) \|$", section, re.M))
    actual = {
        (rule.code, name.replace("_", "-"), str(field.default), field.description)
        for rule in _builtin_rules()
        for name, field in rule.options.model_fields.items()
    }
    assert documented == actual


def test_readme_sample_output_starts_like_real_output():
    sample = re.search(r"^\$ pwlint (\S+)\n(.*?)\n", README, re.M)
    path, line = sample.group(1), sample.group(2)
    proc = subprocess.run(
        [sys.executable, "-m", "pwlint", path], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    prefix = line.split("...")[0]
    assert any(out.startswith(prefix) for out in proc.stdout.splitlines()), (prefix, proc.stdout)
