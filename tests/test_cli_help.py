"""Help and flags as in ruff (issue 15): ``pwlint --help`` shows check's options, every
usage error points at a help that lists the command's options, ``--version`` names the
frameworks for bug reports, ``pwlint rules`` says which rules have fixes, and folders
with nothing to lint say so plainly."""

from __future__ import annotations

import json
import re
import struct
from importlib.metadata import version

import pytest

import pwlint as pwlint_api
from pwlint import __version__
from pwlint.findings import Severity
from pwlint.rule import Rule
from pwlint_rules import flatten_dense_head
from tests.conftest import one_line_error, run_command, run_inprocess


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text))


# --help ---------------------------------------------------------------------------------

def test_top_level_help_lists_every_option_of_check(pwlint):
    top, check = pwlint("--help"), pwlint("check", "--help")
    assert top.code == check.code == 0
    check_flags = _flags(check.out) - {"--help"}
    assert {"--select", "--fix", "--config", "--format", "--output-file"} <= check_flags
    assert check_flags <= _flags(top.out), sorted(check_flags - _flags(top.out))
    # with what they do, not only their names
    assert "apply safe fixes" in top.out
    assert "pwlint [check] [OPTIONS] PATH..." in top.out  # ruff's shape: a path alone means check
    for command in ("check", "diff", "rule", "rules", "plugins"):
        assert re.search(rf"^  {command}\s+\S", top.out, re.M), command


def test_short_help_is_the_same(pwlint):
    assert pwlint("-h").out == pwlint("--help").out


@pytest.mark.parametrize(
    "args, command, expected_flag",
    [
        (["MODEL", "--selct", "PW001"], "check", "--select"),   # pwlint FILE... is pwlint check
        (["--bogus", "MODEL"], "check", "--select"),
        (["check", "MODEL", "--bogus"], "check", "--fix"),
        (["diff", "MODEL", "MODEL", "--bogus"], "diff", "--git"),
        (["rules", "--bogus"], "rules", "--format"),
        (["rule", "PW001", "--bogus"], "rule", None),
        (["plugins", "--bogus"], "plugins", None),
    ],
)
def test_every_usage_error_points_at_a_help_listing_its_options(pwlint, cnn_file, args, command, expected_flag):
    model = str(cnn_file())
    line = one_line_error(pwlint(*[model if arg == "MODEL" else arg for arg in args]))
    assert line.startswith("pwlint: error: unrecognized arguments: ")
    pointed = re.search(r"\(see '([^']+) --help'\)$", line)
    assert pointed, line
    words = pointed.group(1).split()
    assert words == ["pwlint", command]
    shown = pwlint(*words[1:], "--help")
    assert shown.code == 0
    assert shown.out.startswith(f"usage: pwlint {command}")
    if expected_flag:
        assert expected_flag in _flags(shown.out)


def test_missing_argument_points_at_the_commands_help(pwlint):
    line = one_line_error(pwlint("rule"))
    assert line.endswith("(see 'pwlint rule --help')")


# --version ------------------------------------------------------------------------------

def test_version_lists_python_and_the_frameworks_found():
    import platform

    import onnx
    import onnxruntime

    run = run_command("--version")
    assert run.code == 0 and run.err == ""
    lines = run.out.splitlines()
    assert lines[0] == f"pwlint {__version__}"
    assert lines[1].startswith(f"python {platform.python_version()} ")
    found = dict(line.split(" ", 1) for line in lines[2:])
    assert list(found) == ["onnx", "onnxruntime", "keras", "torch"]
    assert found["onnx"] == onnx.__version__
    assert found["onnxruntime"] == onnxruntime.__version__
    # keras and torch: from their distributions' metadata (importing them here would cost seconds)
    assert found["keras"] == version("keras") and found["torch"] == version("torch")


def test_version_says_not_installed(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def without_torch_or_onnxruntime(name):
        if name == "torch" or name.startswith("onnxruntime"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", without_torch_or_onnxruntime)
    run = run_inprocess("--version")
    assert run.code == 0
    assert "torch not installed" in run.out.splitlines()
    assert "onnxruntime not installed" in run.out.splitlines()
    assert f"onnx {real('onnx')}" in run.out.splitlines()


def test_version_names_an_onnxruntime_variant(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def gpu_build(name):
        if name == "onnxruntime":
            raise importlib.metadata.PackageNotFoundError(name)
        return "1.99.0" if name == "onnxruntime-gpu" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", gpu_build)
    assert "onnxruntime 1.99.0 (onnxruntime-gpu)" in run_inprocess("--version").out.splitlines()


# pwlint rules: which rules have fixes ---------------------------------------------------

@pytest.fixture
def offered_fixes(cnn_file):
    """The fix kinds the built-in rules' findings really offer: PW001, PW002 (limit lowered)
    and PW004 fire on this model (rules added later are checked too, wherever it sets them
    off). PW003 builds no fix at all (missing_norm.py makes none)."""
    kinds: dict[str, set[str]] = {}
    model = cnn_file("a.onnx", head="flatten", conv_bias=True)
    report = pwlint_api.check(str(model), config={"rules": {"PW002": {"max-params": 100}}})
    for finding in report.findings:
        kinds.setdefault(finding.code, set()).update(fix.applicability for fix in finding.fixes)
    assert {"PW001", "PW002", "PW004"} <= set(kinds), sorted(kinds)
    return kinds


def test_rules_list_marks_the_fixes_each_rule_offers(pwlint, offered_fixes):
    run = pwlint("rules")
    assert run.code == 0
    column = {line.split()[0]: line.split()[3] for line in run.out.splitlines() if line.strip()}
    for code, kinds in offered_fixes.items():
        expected = "+".join(kind for kind in ("safe", "unsafe") if kind in kinds) or "no"
        assert column[code] == expected, (code, run.out)
    assert re.search(r"^PW003 .* no fix ", run.out, re.M)
    assert re.search(r"^PW001 .* safe\+unsafe fix ", run.out, re.M)


def test_rules_json_has_the_fixes(pwlint, offered_fixes):
    rules = {rule["code"]: rule for rule in json.loads(pwlint("rules", "--format", "json").out)}
    for code, kinds in offered_fixes.items():
        assert set(rules[code]["fixes"]) == kinds
    assert rules["PW003"]["fixes"] == []


def test_rule_documentation_says_how_its_fixes_are_applied(pwlint):
    assert "Fix: unsafe (applied by --fix --unsafe-fixes" in pwlint("rule", "PW002").out
    assert "Fix: safe (applied by --fix;" in pwlint("rule", "PW004").out
    assert "Fix: none" in pwlint("rule", "missing-norm").out


def test_a_rule_declares_no_fix_by_default():
    base = flatten_dense_head.RULE
    rule = Rule(code="XX001", name="some-rule", severity=Severity.INFO, check=base.check, doc=base.doc)
    assert rule.fixes == () and rule.fix_label == "none"
    with pytest.raises(ValueError, match="fixes"):
        Rule(code="XX001", name="some-rule", severity=Severity.INFO, check=base.check, doc=base.doc, fixes="safe")
    with pytest.raises(ValueError, match="fixes"):
        Rule(code="XX001", name="some-rule", severity=Severity.INFO, check=base.check, doc=base.doc, fixes=("maybe",))


# folders with nothing to lint -----------------------------------------------------------

SEARCHED = "(folders are searched for .pt2, .jit, .torchscript, .keras, .h5, .hdf5, .onnx)"


def test_empty_folder_is_a_warning_and_exit_0(pwlint, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    run = pwlint(str(folder))
    assert run.code == 0
    assert run.err == f"pwlint: warning: no model files found in {folder} {SEARCHED}\n"


def test_empty_folder_still_gives_a_machine_readable_report(pwlint, tmp_path):
    run = pwlint(str(tmp_path), "--format", "json")
    assert run.code == 0
    assert json.loads(run.out) == {"version": __version__, "files": [], "findings": []}
    assert run.err.startswith("pwlint: warning: no model files found in ")


def test_empty_folder_as_a_real_command(tmp_path):
    run = run_command(str(tmp_path))
    assert run.code == 0 and run.err.startswith("pwlint: warning: no model files found in ")


def test_files_pwlint_does_not_search_and_that_are_not_models_are_ignored(pwlint, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)  # not a torch pickle: nothing to explain
    (tmp_path / "notes.md").write_text("# notes")
    hidden = tmp_path / ".cache"
    hidden.mkdir()
    (hidden / "old.pt").write_bytes(b"\x80\x04K\x01.")  # hidden folders are not searched
    run = pwlint(str(tmp_path))
    assert run.code == 0 and run.err.startswith("pwlint: warning: no model files found in ")


def test_folder_of_torch_save_checkpoints_explains_itself(pwlint, tmp_path):
    import torch

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    torch.save(net.state_dict(), folder / "best.pth")
    torch.save(net, folder / "model.pt")  # a whole pickled module
    (folder / "legacy.pt").write_bytes(b"\x80\x02K\x01.")  # torch.save's legacy pickle format
    line = one_line_error(pwlint(str(folder)))
    assert line.startswith(f"pwlint: error: no model file pwlint reads in {folder}: ")
    for name in ("best.pth", "model.pt", "legacy.pt"):
        assert str(folder / name) in line
    assert "torch.save() pickles, which pwlint never unpickles" in line
    assert "pwlint reads TorchScript (torch.jit.save) and torch.export (.pt2) archives" in line
    assert "torch.export.save(" in line
    # a file named explicitly keeps its own refusal
    named = one_line_error(pwlint(str(folder / "best.pth")))
    assert "best.pth" in named and "no model file pwlint reads" not in named


def test_torchscript_saved_as_pt_is_named_as_readable_when_given(pwlint, tmp_path):
    import torch

    folder = tmp_path / "exported"
    folder.mkdir()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    torch.jit.save(torch.jit.script(net), folder / "model.pt")
    line = one_line_error(pwlint(str(folder)))
    assert f"{folder / 'model.pt'}: TorchScript or .pt2 archives under a name folders are not searched for" in line
    assert "name the file to lint it" in line
    assert pwlint(str(folder / "model.pt")).code in (0, 1)  # and named, it is linted


def _safetensors(path) -> None:
    """What safetensors.torch.save_file writes: an 8-byte header length, a JSON header, the data."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)


def test_folder_of_other_frameworks_files_names_each_kind(pwlint, tmp_path):
    _safetensors(tmp_path / "model.safetensors")
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01\x12\x00")
    (tmp_path / "model.tflite").write_bytes(b"\x1c\0\0\0TFL3")
    line = one_line_error(pwlint(str(tmp_path)))
    assert f"{tmp_path / 'model.safetensors'}: safetensors files hold raw tensors and no architecture" in line
    assert f"{tmp_path / 'saved_model.pb'}: TensorFlow graphs (SavedModel, frozen .pb) are not read" in line
    assert "tf2onnx" in line
    assert f"{tmp_path / 'model.tflite'}: TensorFlow Lite models are not read" in line


def test_many_files_of_one_kind_are_counted(pwlint, tmp_path):
    for index in range(5):
        (tmp_path / f"epoch{index}.pt").write_bytes(b"\x80\x04K\x01.")
    line = one_line_error(pwlint(str(tmp_path)))
    assert f"{tmp_path / 'epoch2.pt'} and 2 more: torch.save() pickles" in line
    assert "epoch3.pt" not in line


def test_model_beside_checkpoints_is_linted_without_a_word_about_them(pwlint, tmp_path, cnn_file):
    model = cnn_file("run/model.onnx")
    (model.parent / "best.pt").write_bytes(b"\x80\x04K\x01.")
    run = pwlint(str(model.parent))
    assert run.code == 1 and run.err == ""
