"""Writing fixed models: in place and atomically, elsewhere with -o, nothing with --diff,
with their external data; a write that fails midway leaves the original as it was."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import onnx
import pytest

import pwlint.formats.onnx.backend as onnx_backend
from tests.conftest import (
    assert_same_outputs, copy_model, fix_json, float_params, leftovers, mentions, one_line_error, run_inprocess,
)


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def lenet(exported, tmp_path):
    """(original export, a copy alone in its own folder)."""
    original = exported("lenet", "legacy")
    return original, copy_model(original, tmp_path / "work")


def test_fix_writes_in_place_and_leaves_no_temporary_files(lenet):
    original, model = lenet
    _, report = fix_json(model, "--fix")
    assert report["files"][0]["fix"]["written"] == str(model)
    assert model.read_bytes() != original.read_bytes()
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]
    assert_same_outputs(original, model)


# -o ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["same-folder", "other-folder"])
def test_output_option_leaves_the_source_untouched(lenet, tmp_path, where):
    original, model = lenet
    out = (model.parent if where == "same-folder" else tmp_path / "out") / "fixed.onnx"
    out.parent.mkdir(exist_ok=True)
    _, report = fix_json(model, "--fix", "-o", str(out))
    assert model.read_bytes() == original.read_bytes()
    assert report["files"][0]["fix"]["written"] == str(out)
    onnx.checker.check_model(str(out), full_check=True)
    assert_same_outputs(original, out)
    assert leftovers(model.parent) == [] and leftovers(out.parent) == []
    expected = sorted({model.name, out.name}) if where == "same-folder" else [out.name]
    assert sorted(p.name for p in out.parent.iterdir()) == expected


# --diff ----------------------------------------------------------------------------------

def test_diff_writes_nothing_and_shows_the_change(lenet):
    original, model = lenet
    before = listing(model.parent)
    run = run_inprocess(str(model), "--diff", "--unsafe-fixes")
    assert run.code in (0, 1), run.err
    assert listing(model.parent) == before
    lines = run.out.splitlines()
    assert lines[0].startswith(f"{model}: would fix")
    # LeNet's fc1 (16x5x5 -> 120) pooled: 16*25*120 weights become 16*120
    params_before = float_params(original)
    params_after = params_before - (16 * 25 * 120 - 16 * 120)
    stats = next(line for line in lines if line.strip().startswith("parameters"))
    assert mentions(stats, params_before) and mentions(stats, params_after), stats
    assert "MACs" in stats and "file" in stats
    assert mentions(stats, os.path.getsize(original) / 1024), stats
    removed = next(line for line in lines if "layers removed:" in line)
    added = next(line for line in lines if "layers added:" in line)
    assert "/Flatten (Flatten)" in removed
    assert "(GlobalAveragePool)" in added and "(Flatten)" in added


def test_diff_in_json_is_a_dry_run(lenet):
    original, model = lenet
    _, report = fix_json(model, "--diff")
    fix = report["files"][0]["fix"]
    assert fix["dry_run"] is True and fix["written"] is None
    assert [o["code"] for o in fix["applied"]] == ["PW001"]
    assert fix["before"]["file_size"] == os.path.getsize(original)
    assert fix["after"]["file_size"] > 0
    assert model.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]


# a write that fails midway ---------------------------------------------------------------

def _failing_replace(monkeypatch, when):
    """Make os.replace fail with 'no space left' on the call ``when`` picks."""
    real = os.replace
    calls = []

    def replace(src, dst, *args, **kwargs):
        calls.append((Path(src), Path(dst)))
        if when(len(calls), Path(dst)):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls


@pytest.mark.parametrize("step", ["first-move", "rename-into-place"])
def test_write_failing_midway_leaves_the_original(lenet, monkeypatch, step):
    original, model = lenet
    if step == "first-move":
        calls = _failing_replace(monkeypatch, lambda n, dst: n == 1)
    else:
        calls = _failing_replace(monkeypatch, lambda n, dst: dst == model)
    line = one_line_error(run_inprocess(str(model), "--fix"))
    assert calls, "os.replace was not used"
    assert str(model) in line and "No space left on device" in line
    assert model.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]


def test_candidate_write_failing_midway_leaves_the_original(lenet, monkeypatch):
    """The disk fills up while the fixed model is written: half a file, then an error."""
    original, model = lenet
    real = onnx_backend.write_model

    def half_then_fail(model_proto, path, *args, **kwargs):
        real(model_proto, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx_backend, "write_model", half_then_fail)
    line = one_line_error(run_inprocess(str(model), "--fix"))
    assert "No space left on device" in line
    assert model.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]


# external data ---------------------------------------------------------------------------

def save_with_external_data(source: Path, folder: Path, name: str = "m.onnx", location: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source))
    path = folder / name
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location or f"{name}.data", size_threshold=0)
    return path


def _locations(path: Path) -> set[str]:
    model = onnx.load_model(str(path), load_external_data=False)
    return {
        entry.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data if entry.key == "location"
    }


def test_external_data_is_written_with_the_model(lenet, tmp_path):
    original, _ = lenet
    path = save_with_external_data(original, tmp_path / "ext")
    data = path.parent / "m.onnx.data"
    model_bytes, data_bytes = path.read_bytes(), data.read_bytes()
    assert os.path.getsize(path) < 10_000 < len(data_bytes)  # the weights are in the data file
    _, report = fix_json(path, "--fix")
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
    assert path.read_bytes() != model_bytes and data.read_bytes() != data_bytes
    assert _locations(path) == {"m.onnx.data"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
    assert_same_outputs(original, path)
    assert float_params(path) == float_params(original)


def test_external_data_follows_the_output_name(lenet, tmp_path):
    original, _ = lenet
    path = save_with_external_data(original, tmp_path / "ext")
    before = listing(path.parent)
    out = tmp_path / "out" / "fixed.onnx"
    out.parent.mkdir()
    fix_json(path, "--fix", "-o", str(out))
    assert listing(path.parent) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["fixed.onnx", "fixed.onnx.data"]
    assert _locations(out) == {"fixed.onnx.data"}
    assert_same_outputs(original, out)


def test_external_data_outside_the_models_folder_is_refused(lenet, tmp_path):
    original, _ = lenet
    inner = tmp_path / "outer" / "inner"
    path = save_with_external_data(original, inner, location="x.data")
    # move the data one folder up and point the model at ../x.data
    os.replace(inner / "x.data", inner.parent / "x.data")
    model = onnx.load_model(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../x.data"
    onnx.save_model(model, str(path))
    before_inner, before_outer = listing(inner), listing(inner.parent)
    line = one_line_error(run_inprocess(str(path), "--fix"))
    assert "x.data" in line
    assert listing(inner) == before_inner and listing(inner.parent) == before_outer
    assert leftovers(inner) == [] and leftovers(inner.parent) == []


def test_external_data_write_failing_at_the_last_step_leaves_model_and_data(lenet, tmp_path, monkeypatch):
    """The data file is moved into place before the model: if the model's rename then
    fails, the original model must still find its own data."""
    original, _ = lenet
    path = save_with_external_data(original, tmp_path / "ext")
    before = listing(path.parent)
    _failing_replace(monkeypatch, lambda n, dst: dst == path)
    one_line_error(run_inprocess(str(path), "--fix"))
    assert listing(path.parent) == before
    assert_same_outputs(original, path)


class _Killed(BaseException):
    """A kill: not an Exception, so no handler of pwlint's turns it into an error."""


def test_a_kill_after_any_rename_leaves_a_model_that_reads_its_own_data(lenet, tmp_path, monkeypatch):
    """Model and data are two files, so no single rename writes both: after each rename
    of a fix in place, the model on disk must still find complete data of its own (a
    model paired with the other version's data computes garbage)."""
    original, _ = lenet
    real_replace = os.replace
    step = 0
    while True:
        step += 1
        path = save_with_external_data(original, tmp_path / f"kill-after-{step}")
        calls = []

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            calls.append(dst)
            if len(calls) == step:
                raise _Killed

        monkeypatch.setattr(os, "replace", replace)
        try:
            run_inprocess(str(path), "--fix")
            killed = False
        except _Killed:
            killed = True
        monkeypatch.setattr(os, "replace", real_replace)
        onnx.checker.check_model(str(path), full_check=True)
        assert_same_outputs(original, path)
        if not killed:
            break
    assert step > 3, "the commit should take several renames, each one a kill point"
    assert _locations(path) == {"m.onnx.data"}
