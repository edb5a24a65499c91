"""A fixed model keeps the permissions of the file it replaces: a private 0600 model is
not made world-readable by ``--fix``, a group-writable 0664 one stays group-writable;
in place also its owner and group. ``-o`` onto an existing file keeps that file's mode;
a new ``-o`` file gets the input's. Real files, real ``os.stat``; the umask of the test
process (0022 unless set otherwise) would give 0644 to a file written naively.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import onnx
import pytest

from tests.conftest import cnn_model, fix_json, leftovers


@pytest.fixture(autouse=True)
def usual_umask():
    """The umask most users have, so that a naive write would show as 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def model_file(path: Path, mode: int, **save) -> Path:
    onnx.save(cnn_model(), path, **save)
    os.chmod(path, mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fixed(path: Path, *args: str) -> dict:
    _, report = fix_json(path, "--fix", *args)
    fix = report["files"][0]["fix"]
    assert [o["code"] for o in fix["applied"]], fix  # something was rewritten, so a file was written
    return fix


@pytest.mark.parametrize("mode", [0o600, 0o664, 0o640, 0o444])
def test_in_place_fix_keeps_the_mode(tmp_path, mode):
    model = model_file(tmp_path / "m.onnx", mode)
    before = model.read_bytes()
    fixed(model)
    assert model.read_bytes() != before
    assert oct(mode_of(model)) == oct(mode)
    assert leftovers(tmp_path) == []


def test_a_private_model_is_never_readable_by_others_while_it_is_written(tmp_path, monkeypatch):
    """Every file renamed into the model's folder is already 0600: no moment where the
    fixed model sits there with the umask's 0644 before a chmod."""
    model = model_file(tmp_path / "m.onnx", 0o600)
    seen = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == tmp_path:
            seen.append((Path(dst).name, stat.S_IMODE(os.stat(src).st_mode)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    fixed(model)
    assert seen and all(mode & 0o077 == 0 for _, mode in seen), [(name, oct(mode)) for name, mode in seen]


def test_output_onto_an_existing_file_keeps_that_files_mode(tmp_path):
    model = model_file(tmp_path / "m.onnx", 0o600)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    os.chmod(target, 0o664)
    fixed(model, "-o", str(target))
    assert onnx.load(str(target)).graph.node  # the fixed model is there
    assert oct(mode_of(target)) == oct(0o664)
    assert oct(mode_of(model)) == oct(0o600)


def test_a_new_output_file_gets_the_inputs_mode(tmp_path):
    model = model_file(tmp_path / "m.onnx", 0o640)
    target = tmp_path / "sub" / "out.onnx"
    target.parent.mkdir()
    fixed(model, "-o", str(target))
    assert oct(mode_of(target)) == oct(0o640)


def test_external_data_keeps_the_modes_too(tmp_path):
    model = model_file(tmp_path / "m.onnx", 0o600, save_as_external_data=True, all_tensors_to_one_file=True,
                       location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    os.chmod(data, 0o640)
    fixed(model)
    assert oct(mode_of(model)) == oct(0o600) and oct(mode_of(data)) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root may give a file away")
def test_in_place_fix_keeps_owner_and_group(tmp_path):
    model = model_file(tmp_path / "m.onnx", 0o640)
    os.chown(model, 4321, 8765)
    fixed(model)
    status = model.stat()
    assert (status.st_uid, status.st_gid) == (4321, 8765)
    assert oct(mode_of(model)) == oct(0o640)


def test_pt2_keeps_the_mode(tmp_path):
    from tests.fix.test_extras import write_pt2

    model = write_pt2(tmp_path / "lenet.pt2")
    os.chmod(model, 0o600)
    fixed(model)
    assert oct(mode_of(model)) == oct(0o600)
    assert leftovers(tmp_path) == []
