"""Missing weights are said, never passed over: ONNX whose external data file is absent
(or is a Git LFS pointer, as a checkout without LFS leaves it) and ``.pt2`` archives whose
weight members were removed are refused with one line naming what is missing, and
linted from their shapes with ``--allow-missing-weights``."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import onnx
import pytest

from tests.conftest import cnn_model, findings, mentions, one_line_error, run_inprocess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALLOW = "--allow-missing-weights"
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 41020\n"
)


def report_of(path: Path, *args: str) -> tuple[int, dict]:
    run = run_inprocess("check", str(path), "--format", "json", *args)
    return run.code, json.loads(run.out)


# ONNX external data ---------------------------------------------------------------------

@pytest.fixture
def external(tmp_path) -> Path:
    """The CNN of tests.conftest saved as onnx.save writes a large model: every tensor in
    one external data file, ``m.onnx.data``, next to it."""
    path = tmp_path / "m.onnx"
    onnx.save_model(cnn_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    return path


def test_control_external_data_present_lints(external):
    code, report = report_of(external)
    assert code == 1 and [f["nodes"] for f in findings(report, "PW001")] == [["flatten", "fc"]]


def test_absent_external_data_is_one_line_naming_the_file(external):
    (external.parent / "m.onnx.data").unlink()
    line = one_line_error(run_inprocess("check", str(external)))
    assert line.startswith(f"pwlint: error: {external}: its external data file 'm.onnx.data' ("), line
    # every tensor of the CNN was moved out: 'conv.weight' is the first of them
    assert "tensors, e.g. 'conv.weight') is missing" in line, line
    assert line.endswith("pass --allow-missing-weights to lint the architecture from its shapes alone"), line


def test_absent_external_data_lints_from_shapes_when_allowed(external):
    (external.parent / "m.onnx.data").unlink()
    code, report = report_of(external, ALLOW)
    assert code == 1 and report["files"][0]["error"] is None
    [pw001] = findings(report, "PW001")
    assert pw001["nodes"] == ["flatten", "fc"]
    # the head's size comes from the shapes alone: fc is 10 x (4 * 8 * 8) + 10
    assert mentions(pw001["message"], 10 * 4 * 8 * 8 + 10), pw001["message"]


def test_external_data_that_is_a_git_lfs_pointer_is_named_as_one(external):
    (external.parent / "m.onnx.data").write_text(LFS_POINTER)
    line = one_line_error(run_inprocess("check", str(external)))
    assert "external data 'm.onnx.data'" in line and "is a Git LFS pointer" in line and "git lfs pull" in line, line
    code, report = report_of(external, ALLOW)
    assert code == 1 and findings(report, "PW001")


def test_only_the_missing_file_is_named(tmp_path):
    """Two data files, one of them gone: the message names that one and its tensor."""
    model = cnn_model()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="features.bin", size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.name == "fc.weight":
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "head.bin"
    onnx.save_model(model, path)
    line = one_line_error(run_inprocess("check", str(path)))
    assert "'head.bin' (1 tensor, e.g. 'fc.weight') is missing" in line and "features.bin" not in line, line


@pytest.mark.parametrize("location, phrase", [
    ("../elsewhere.bin", "outside the model's folder"),
    ("/etc/nothing-here.bin", "absolute path"),
])
def test_missing_data_outside_the_folder_is_still_refused_as_such(external, location, phrase):
    """The location checks come first: an absent file outside the folder is not merely missing."""
    model = onnx.load(external, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, external)
    for args in ((), (ALLOW,)):
        line = one_line_error(run_inprocess("check", str(external), *args))
        assert phrase in line, line


def test_truncated_external_data_is_still_refused(external):
    """Data that is there but shorter than it says is damage, not missing weights."""
    data = external.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    line = one_line_error(run_inprocess("check", str(external), ALLOW))
    assert "runs past the end" in line, line


# .pt2 weight members ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    """LeNet (tests.zoo) exported with torch.export and saved with torch.export.save."""
    import torch

    from tests import zoo

    model = zoo.build("lenet")
    path = tmp_path_factory.mktemp("pt2") / "lenet.pt2"
    with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, (torch.randn(*zoo.input_shape(model)),)), str(path))
    return path


def without(source: Path, target: Path, drop) -> tuple[Path, list[str]]:
    """A copy of the archive without the members ``drop(name)`` selects; returns them too."""
    dropped = []
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if drop(info.filename):
                dropped.append(info.filename)
            else:
                new.writestr(info, old.read(info))
    assert dropped
    return target, dropped


def test_control_pt2_with_its_weights_lints(pt2):
    code, report = report_of(pt2)
    assert code == 1 and [f["nodes"] for f in findings(report, "PW001")] == [["flatten", "classifier.0"]]


def test_pt2_without_its_weight_members_is_refused_naming_them(pt2, tmp_path):
    path, dropped = without(pt2, tmp_path / "stripped.pt2", lambda n: "/data/weights/weight_" in n)
    line = one_line_error(run_inprocess("check", str(path)))
    # LeNet: 5 layers with a weight and a bias each
    assert f"{len(dropped)} stored tensors have no data in the archive" in line and len(dropped) == 10, line
    assert f"missing {sorted(dropped, key=lambda n: int(n.rsplit('_', 1)[1]))[0]}," in line, line
    assert line.endswith("pass --allow-missing-weights to lint the architecture from its shapes alone"), line


def test_pt2_missing_one_member_names_it_and_its_tensor(pt2, tmp_path):
    with zipfile.ZipFile(pt2) as zf:
        config_name = next(n for n in zf.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(zf.read(config_name))["config"]
    member = config["classifier.0.weight"]["path_name"]
    path, [dropped] = without(pt2, tmp_path / "one.pt2", lambda n: n.endswith(f"/data/weights/{member}"))
    line = one_line_error(run_inprocess("check", str(path)))
    assert f"1 stored tensor has no data in the archive (e.g. 'classifier.0.weight'): missing {dropped};" in line, line


def test_pt2_without_its_data_folder_names_the_weights_config(pt2, tmp_path):
    path, _ = without(pt2, tmp_path / "bare.pt2", lambda n: "/data/" in n)
    line = one_line_error(run_inprocess("check", str(path)))
    assert "model_weights_config.json" in line and "'features.0.weight'" in line, line


def test_pt2_without_weights_lints_from_shapes_when_allowed(pt2, tmp_path):
    path, _ = without(pt2, tmp_path / "stripped.pt2", lambda n: "/data/weights/weight_" in n)
    code, report = report_of(path, ALLOW)
    assert code == 1 and report["files"][0]["error"] is None
    [pw001] = findings(report, "PW001")
    assert pw001["nodes"] == ["flatten", "classifier.0"]
    # classifier.0 is Linear(16*5*5, 120), counted from the weights config's shapes
    assert mentions(pw001["message"], 16 * 5 * 5 * 120 + 120), pw001["message"]
