"""Where ``--fix`` writes, and when it does not.

- ``-o`` must name a file of the fixed model's format, not a folder, in a folder that
  takes files: else one line naming the path, exit 2, before any work, nothing left.
- Nothing is written when nothing changed: ``-o`` is not created (a copy of the input
  under a new name would read as a fixed model) and one line says why; in place the
  file is not touched (same bytes, same mtime).
- The ``--no-verify`` hint comes once per file, and only where verification was the
  blocker and skipping it lets the backend rewrite the model (ONNX); never for ``.pt2``
  or Keras, where the model is loaded to be rewritten.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import cnn_model, fix_json, leftovers, run_inprocess
from tests.fix.test_extras import write_h5, write_pt2

HINT = "--no-verify applies fixes without the numeric check"


def write_onnx(path: Path, **kwargs) -> Path:
    onnx.save(cnn_model(**kwargs), path)
    return path


def refused(run) -> str:
    """The one line of a run refused before any work."""
    assert run.code == 2, (run.code, run.out, run.err)
    assert run.out == "" and run.err.count("\n") == 1 and "Traceback" not in run.err, run.err
    return run.err.rstrip("\n")


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -o names the format ---------------------------------------------------------------------

def test_onnx_into_a_keras_name_is_refused(tmp_path):
    model = write_onnx(tmp_path / "lenet.onnx")
    target = tmp_path / "l.keras"
    line = refused(run_inprocess(str(model), "--fix", "-o", str(target)))
    assert line == f"pwlint: error: -o {target}: the fixed model is ONNX; name a .onnx file"
    assert files_in(tmp_path) == ["lenet.onnx"]


def test_keras_into_an_onnx_name_lists_the_keras_suffixes(tmp_path):
    model = write_h5(tmp_path / "model.h5")
    line = refused(run_inprocess(str(model), "--fix", "-o", str(tmp_path / "m.onnx")))
    assert line.endswith("the fixed model is a Keras model; name a .keras, .h5 or .hdf5 file")


def test_pt2_into_an_onnx_name_is_refused(tmp_path):
    model = write_pt2(tmp_path / "lenet.pt2")
    line = refused(run_inprocess(str(model), "--fix", "-o", str(tmp_path / "m.onnx")))
    assert line.endswith("; name a .pt2 file")
    assert files_in(tmp_path) == ["lenet.pt2"]


def test_onnx_under_its_own_other_suffix_may_keep_it(tmp_path):
    """ONNX is recognised by content: a model.bin may be fixed into fixed.bin."""
    model = write_onnx(tmp_path / "model.bin")
    target = tmp_path / "fixed.bin"
    _, report = fix_json(model, "--fix", "-o", str(target))
    assert report["files"][0]["fix"]["written"] == str(target)
    assert any(n.op_type == "Conv" and n.name == "fc" for n in onnx.load(str(target)).graph.node)


# -o names a place that takes a file ------------------------------------------------------

@pytest.mark.parametrize("kind", ["existing folder", "trailing slash"])
def test_output_into_a_folder_is_refused(tmp_path, kind):
    model = write_onnx(tmp_path / "m.onnx")
    folder = tmp_path / "out"
    if kind == "existing folder":
        folder.mkdir()
        output = str(folder)
    else:
        output = f"{folder}/"
    line = refused(run_inprocess(str(model), "--fix", "-o", output))
    assert line == f"pwlint: error: -o {output}: is a folder; name the file to write (e.g. -o {os.path.join(output, 'm.onnx')})"
    assert [p for p in files_in(tmp_path) if p.startswith(".pwlint")] == []


def test_output_in_a_missing_folder_is_refused(tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    output = tmp_path / "missing" / "m.onnx"
    line = refused(run_inprocess(str(model), "--fix", "-o", str(output)))
    assert line == f"pwlint: error: -o {output}: folder {output.parent} does not exist"
    assert files_in(tmp_path) == ["m.onnx"]


def test_output_under_a_file_is_refused(tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    output = tmp_path / "m.onnx" / "x.onnx"
    line = refused(run_inprocess(str(model), "--fix", "-o", str(output)))
    assert line == f"pwlint: error: -o {output}: {output.parent} is not a folder"


def test_output_where_files_cannot_be_created_is_refused(tmp_path):
    """A folder nobody may write into (for root too: /sys on Linux)."""
    if os.geteuid() == 0:
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.skip("no /sys")
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        os.chmod(folder, 0o500)
    model = write_onnx(tmp_path / "m.onnx")
    output = folder / "m.onnx"
    line = refused(run_inprocess(str(model), "--fix", "-o", str(output)))
    assert line.startswith(f"pwlint: error: -o {output}: cannot write in folder {folder} (")
    assert "[Errno" not in line and ".pwlint" not in line
    assert files_in(tmp_path) == ["m.onnx"] + (["locked"] if folder.parent == tmp_path else [])


def test_a_write_failing_at_the_end_is_one_plain_line(tmp_path, monkeypatch):
    """Refused by the system only when the model is renamed into place: the line names
    the target and the reason, not an errno and a temporary path; nothing is left."""
    model = write_onnx(tmp_path / "m.onnx")
    target = tmp_path / "out.onnx"
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    run = run_inprocess(str(model), "--fix", "-o", str(target))
    assert run.code == 2
    (line,) = [line for line in run.err.splitlines() if line.startswith("pwlint: error:")]
    assert line == f"pwlint: error: {target}: could not write the fixed model (Permission denied)"
    assert files_in(tmp_path) == ["m.onnx"]


# nothing changed, nothing written --------------------------------------------------------

def test_output_with_no_fixable_finding_is_not_written(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", norm=False)  # PW003: a conv without normalisation, no fix
    target = tmp_path / "out.onnx"
    linted = run_inprocess(str(model), "--select", "PW003")
    assert "PW003" in linted.out
    run = run_inprocess(str(model), "--fix", "--select", "PW003", "-o", str(target))
    assert run.code == linted.code, run.err  # the findings remain: the exit code is linting's
    assert run.err == f"pwlint: nothing written to {target}: no finding has a fix\n"
    assert "written to" not in run.out
    assert not target.exists() and files_in(tmp_path) == ["m.onnx"]


def test_output_with_only_unsafe_fixes_says_so(tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 1000\n")
    target = tmp_path / "out.onnx"
    run = run_inprocess(str(model), "--fix", "--select", "PW002", "-o", str(target))
    assert run.code == 1, run.err
    assert run.err == f"pwlint: nothing written to {target}: its only fixes are unsafe (--unsafe-fixes applies them)\n"
    assert not target.exists()


def checker_rejects(monkeypatch):
    """Every candidate is refused by the ONNX checker (called after the model is written)."""
    def reject(*args, **kwargs):
        raise onnx.checker.ValidationError("rejected by the test")

    monkeypatch.setattr(onnx.checker, "check_model", reject)


def test_output_when_every_fix_fails_verification(tmp_path, monkeypatch):
    model = write_onnx(tmp_path / "m.onnx")
    checker_rejects(monkeypatch)
    target = tmp_path / "out.onnx"
    run = run_inprocess(str(model), "--fix", "-o", str(target), "--format", "json")
    assert run.code == 1
    assert run.err == f"pwlint: nothing written to {target}: every fix failed verification\n"
    fix = json.loads(run.out)["files"][0]["fix"]
    assert fix["written"] is None and fix["not_written"] == "every fix failed verification"
    assert not target.exists() and files_in(tmp_path) == ["m.onnx"]


def test_in_place_nothing_applied_leaves_the_file_untouched(tmp_path, monkeypatch):
    model = write_onnx(tmp_path / "m.onnx")
    checker_rejects(monkeypatch)
    os.utime(model, ns=(1_000_000_000, 1_000_000_000))
    before = model.read_bytes()
    run = run_inprocess(str(model), "--fix")
    assert run.code == 1 and "fixed 0 finding(s)" in run.out
    assert model.stat().st_mtime_ns == 1_000_000_000 and model.read_bytes() == before
    assert files_in(tmp_path) == ["m.onnx"]


def test_diff_reports_and_writes_nothing(tmp_path):
    model = write_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    run = run_inprocess(str(model), "--diff")
    assert "would fix 2 finding(s)" in run.out and run.err == ""
    assert model.read_bytes() == before and files_in(tmp_path) == ["m.onnx"]


# the --no-verify hint --------------------------------------------------------------------

def unrunnable_onnx(path: Path) -> Path:
    """cnn_model (a PW004 bias before BatchNorm and a PW001 head: two safe fixes) whose
    output then goes through an operator onnxruntime does not know."""
    model = cnn_model()
    graph = model.graph
    graph.node.append(helper.make_node("Scale", ["y"], ["z"], name="custom", domain="com.example"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 10]))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    rng = np.random.default_rng(0)
    for init in graph.initializer:  # weights that are not all zero
        values = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array((rng.random(values.shape) + 0.5).astype(values.dtype), init.name))
    onnx.save(model, path)
    return path


def test_no_verify_hint_once_per_file_where_it_helps(tmp_path):
    model = unrunnable_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    run = run_inprocess(str(model), "--fix", "--format", "json")
    fix = json.loads(run.out)["files"][0]["fix"]
    assert sorted(o["code"] for o in fix["not_applied"]) == ["PW001", "PW004"]  # two findings, one hint
    assert all(o["note"].startswith("cannot verify: onnxruntime") for o in fix["not_applied"])
    assert not any("--no-verify" in o["note"] for o in fix["not_applied"])
    assert fix["hint"] == HINT
    assert run.err.count("--no-verify") == 1 and run.err.count("\n") == 1, run.err
    assert model.read_bytes() == before
    # and it does help: the same model, fixed without the run
    _, report = fix_json(model, "--fix", "--no-verify")
    assert sorted(o["code"] for o in report["files"][0]["fix"]["applied"]) == ["PW001", "PW004"]


def test_no_verify_hint_with_output_is_part_of_the_one_line(tmp_path):
    model = unrunnable_onnx(tmp_path / "m.onnx")
    target = tmp_path / "out.onnx"
    run = run_inprocess(str(model), "--fix", "-o", str(target))
    assert run.code == 1
    (line,) = run.err.splitlines()
    assert line.startswith(f"pwlint: nothing written to {target}: cannot verify: onnxruntime")
    assert line.endswith(f"({HINT})")
    assert run.out.count("--no-verify") == 0  # the text report's notes do not repeat it
    assert not target.exists()


def test_no_hint_where_verification_was_not_the_blocker(tmp_path, monkeypatch):
    model = write_onnx(tmp_path / "m.onnx")
    checker_rejects(monkeypatch)
    run = run_inprocess(str(model), "--fix")
    assert "not applied: the ONNX checker rejected" in run.out
    assert "--no-verify" not in run.out + run.err


def test_no_hint_for_pt2_whose_model_torch_cannot_run(tmp_path, monkeypatch):
    """The .pt2 backend loads the program to rewrite it: what torch cannot run it cannot
    rewrite either, so --no-verify is not offered."""
    from pwlint.formats.pytorch.pt2 import backend as pt2_backend

    def refuse(*args, **kwargs):
        raise RuntimeError("torch cannot run this program in the test")

    monkeypatch.setattr(pt2_backend.Pt2Backend, "run_model", staticmethod(refuse))
    model = write_pt2(tmp_path / "lenet.pt2")
    target = tmp_path / "out.pt2"
    run = run_inprocess(str(model), "--fix", "-o", str(target))
    assert run.code == 1
    assert "cannot verify: torch cannot run this program in the test" in run.out
    assert "--no-verify" not in run.out + run.err
    assert run.err == f"pwlint: nothing written to {target}: cannot verify: torch cannot run this program in the test\n"
    assert not target.exists()


def test_no_verify_never_writes_an_unchanged_copy(tmp_path, monkeypatch):
    """--no-verify where the fix cannot apply: no "written to" for a copy of the input."""
    from pwlint.errors import FixNotApplicable
    from pwlint.formats.pytorch.pt2 import backend as pt2_backend

    def cannot(self, fix):
        raise FixNotApplicable("the test refuses every fix")

    monkeypatch.setattr(pt2_backend.Pt2FixSession, "apply", cannot)
    model = write_pt2(tmp_path / "lenet.pt2")
    target = tmp_path / "out.pt2"
    run = run_inprocess(str(model), "--fix", "--no-verify", "-o", str(target))
    assert run.code == 1
    assert "written to" not in run.out
    assert run.err == f"pwlint: nothing written to {target}: no fix could be applied\n"
    assert not target.exists() and leftovers(tmp_path) == []
