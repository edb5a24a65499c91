"""Formats recognised by content: the suffix only breaks ties.

Files are made the way they turn up in the wild: TorchScript saved by ``torch.jit.save``
as ``model.jit``/``.torchscript``, a tf.keras 2 checkpoint named ``.hdf5``, ONNX with a
habit's suffix or none, a Git LFS pointer checked out instead of the model, and a
safetensors file (written here byte for byte as the safetensors library writes one)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import warnings
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest

from pwlint.formats import sniff
from tests.conftest import cnn_model, findings, lint, one_line_error, run_inprocess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 548110323\n"
)


def write_onnx(path: Path) -> Path:
    """The CNN of tests.conftest: Conv-BN-ReLU, Flatten, Gemm 'fc' (PW001 on flatten -> fc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cnn_model().SerializeToString())
    return path


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """As ``safetensors.numpy.save_file`` writes: an 8-byte little-endian header length, a
    JSON header (dtype, shape, data_offsets; ``__metadata__``) padded with spaces to a
    multiple of 8, then the raw bytes."""
    header, offset, payload = {"__metadata__": {"format": "pt"}}, 0, b""
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        payload += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + payload)
    return path


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory) -> Path:
    """LeNet (tests.zoo) scripted and saved with torch.jit.save: Flatten + Linear head."""
    import torch

    from tests import zoo

    path = tmp_path_factory.mktemp("ts") / "lenet.pt"
    with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(zoo.build("lenet")), str(path))
    return path


@pytest.fixture(scope="module")
def keras2_hdf5(tmp_path_factory) -> Path:
    """LeNet (tests.formats.keras.models) saved as a legacy .h5 and rewritten into the
    tf.keras 2 layout, named ``.hdf5`` as Keras 2's ModelCheckpoint names its files."""
    from tests.formats.keras.models import lenet, make_keras2_h5

    folder = tmp_path_factory.mktemp("keras2")
    saved = folder / "saved.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lenet().save(saved)
    path = folder / "emotion_model.hdf5"
    shutil.copyfile(saved, path)
    make_keras2_h5(path)
    return path


def pw001_nodes(report: dict) -> list[list[str]]:
    return [f["nodes"] for f in findings(report, "PW001")]


# files named on the command line ---------------------------------------------------------

@pytest.mark.parametrize("name", ["model.jit", "model.torchscript", "model.ts", "model.bin"])
def test_torchscript_under_any_name_is_read_as_torchscript(torchscript, tmp_path, name):
    path = tmp_path / name
    shutil.copyfile(torchscript, path)
    report = lint(path)
    assert report["files"][0]["error"] is None, report["files"]
    assert report["files"][0]["format"] == "torch"
    assert pw001_nodes(report) == [["flatten", "classifier.0"]]


def test_keras2_checkpoint_named_hdf5_is_linted(keras2_hdf5):
    report = lint(keras2_hdf5)
    assert report["files"][0]["format"] == "keras", report["files"]
    assert pw001_nodes(report) == [["flatten", "fc1"]]


@pytest.mark.parametrize("name", ["model.bin", "model", "model.pb", "weights.pt2", "MODEL.ONNX.OLD"])
def test_onnx_under_any_name_is_read_as_onnx(tmp_path, name):
    report = lint(write_onnx(tmp_path / name))
    assert report["files"][0]["format"] == "onnx", report["files"]
    assert pw001_nodes(report) == [["flatten", "fc"]]


def test_keras_zip_named_like_torch_goes_by_content(tmp_path):
    """A .keras archive renamed .pt: its config.json says Keras."""
    keras_zip = tmp_path / "model.pt"
    with zipfile.ZipFile(keras_zip, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        zf.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": []}}))
    assert sniff.formats(str(keras_zip), sniff.read_head(str(keras_zip))) == {"keras"}
    # the Keras loader, not the torch one, gives the file's error
    line = one_line_error(run_inprocess("check", str(keras_zip)))
    assert "PyTorch" not in line and "torch.export" not in line, line


@pytest.mark.parametrize("name", ["model.onnx", "model.h5", "model.pt2", "model.bin"])
def test_git_lfs_pointer_is_one_line_saying_so(tmp_path, name):
    path = tmp_path / name
    path.write_text(LFS_POINTER)
    line = one_line_error(run_inprocess("check", str(path)))
    assert line == f"pwlint: error: {path}: a Git LFS pointer, not the model: run `git lfs pull` or check out with LFS"


def test_git_lfs_pointer_in_json_is_a_file_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text(LFS_POINTER)
    run = run_inprocess("check", str(path), "--format", "json")
    assert run.code == 2
    [entry] = json.loads(run.out)["files"]
    assert "Git LFS pointer" in entry["error"]


@pytest.mark.parametrize("name", ["model.safetensors", "model.onnx", "model.pt"])
def test_safetensors_says_it_holds_no_architecture(tmp_path, name):
    path = write_safetensors(tmp_path / name, {"fc.weight": np.ones((10, 256)), "fc.bias": np.zeros(10)})
    line = one_line_error(run_inprocess("check", str(path)))
    assert line.startswith(f"pwlint: error: {path}: a safetensors file holds raw tensors and no architecture"), line
    assert ".pt2" in line and ".onnx" in line and ".keras" in line


def test_unrecognised_content_with_an_unknown_suffix_is_one_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model\n")
    line = one_line_error(run_inprocess("check", str(path)))
    assert line.startswith(f"pwlint: error: {path}: unsupported file type"), line


def test_damaged_file_with_a_known_suffix_gets_that_loaders_error(tmp_path):
    """Content no loader recognises: the suffix still routes it, for the format's own message."""
    path = tmp_path / "model.pt2"
    path.write_bytes(b"\x01\x02 not a zip at all " * 10)
    line = one_line_error(run_inprocess("check", str(path)))
    assert "not a PyTorch model" in line, line


# folders -------------------------------------------------------------------------------

def test_folders_find_hdf5_jit_and_torchscript_but_not_typescript(tmp_path, torchscript, keras2_hdf5):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(keras2_hdf5, folder / "checkpoint.hdf5")
    shutil.copyfile(torchscript, folder / "traced.jit")
    shutil.copyfile(torchscript, folder / "scripted.torchscript")
    (folder / "app.ts").write_text("export const answer: number = 42;\n")  # TypeScript
    (folder / "notes.txt").write_text("hello\n")
    report = lint(folder)
    read = {Path(f["path"]).name: (f["format"], f["error"]) for f in report["files"]}
    assert read == {
        "checkpoint.hdf5": ("keras", None), "traced.jit": ("torch", None), "scripted.torchscript": ("torch", None),
    }


# the sniffer itself: bounded reads, no false claims --------------------------------------

def test_hdf5_after_a_user_block_is_recognised(tmp_path):
    """HDF5 allows a user block before the superblock (512, 1024, 2048... bytes)."""
    import h5py

    for size in (512, 4096):
        path = tmp_path / f"block{size}.weights"
        with h5py.File(path, "w", userblock_size=size) as h5:
            h5.attrs["model_config"] = "{}"
        assert path.read_bytes()[:8] != sniff.HDF5_MAGIC
        assert sniff.formats(str(path), sniff.read_head(str(path))) == {"keras"}


def test_torch_save_pickles_are_sent_to_the_torch_loader_for_its_refusal(tmp_path):
    import pickle

    path = tmp_path / "checkpoint.bin"
    path.write_bytes(pickle.dumps({"fc.weight": [0.0] * 4}, protocol=2))
    line = one_line_error(run_inprocess("check", str(path)))
    assert "pickle" in line and "torch.export" in line, line


@pytest.mark.parametrize("data", [
    b"", b"\x08", b"\x08\x00", b"\x08\x07\x00\x00", b"\x0a\x05hello", LFS_POINTER.encode(),
    b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40,  # TFLite flatbuffer
    b"GGUF\x03\x00\x00\x00" + b"\x00" * 40,
    b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}",
])
def test_other_bytes_are_not_taken_for_onnx(data):
    assert not sniff.is_onnx(data)


def test_a_real_onnx_head_is_onnx_even_cut_short():
    data = cnn_model().SerializeToString()
    for cut in (2, 5, 40, 200, len(data)):
        assert sniff.is_onnx(data[:cut]), cut


def test_zip_directory_is_read_within_its_budget(tmp_path):
    """A zip whose first members say nothing: the directory is read only up to its budget."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for index in range(5000):
            zf.writestr(f"pad/{index:05d}-{'x' * 40}", b"")
        zf.writestr("config.json", b"{}")  # past the budget: not seen
    names = sniff.zip_member_names(str(path), sniff.read_head(str(path)))
    assert 0 < len(names) < 5000
    assert sum(len(n) + 46 for n in names) <= sniff.ZIP_DIRECTORY_BUDGET + 46 + 60
    assert sniff.formats(str(path), sniff.read_head(str(path))) == set()
