"""``pwlint check --jobs N``: files linted in worker processes give the serial run's
report, in the serial order, and its exit code."""

from __future__ import annotations

import json

import pytest

from pwlint.engine import Linter
from tests.conftest import cnn_model, one_line_error, run_command


def _relu_chain(length: int):
    """A long model: linting it takes longer than the small ones, so with two workers
    the files after it finish first and the order of completion is not the serial order."""
    from onnx import TensorProto, helper

    names = ["x", *(f"t{i}" for i in range(1, length)), "y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu_{i}") for i in range(length)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Models with findings, clean ones, a slow one first and two that cannot be read."""
    import onnx

    root = tmp_path_factory.mktemp("models")
    onnx.save(_relu_chain(20_000), root / "a_long_chain.onnx")
    onnx.save(cnn_model("flatten"), root / "b_flatten_head.onnx")
    onnx.save(cnn_model("gap", conv_bias=False), root / "c_clean.onnx")
    (root / "d_not_a_model.onnx").write_bytes(b"\x00garbage, not protobuf")
    (root / "e_empty.onnx").write_bytes(b"")
    (root / "sub").mkdir()
    onnx.save(cnn_model("flatten", conv_bias=True, second_conv=True), root / "sub" / "f_flatten_head.onnx")
    onnx.save(cnn_model("squeeze", conv_bias=False), root / "sub" / "g_clean.onnx")
    return root


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_two_jobs_report_what_one_job_reports(folder, fmt):
    serial = run_command(str(folder), "--format", fmt, "--jobs", "1")
    parallel = run_command(str(folder), "--format", fmt, "--jobs", "2")
    assert serial.code == 2, serial.err  # the unreadable files
    assert (parallel.code, parallel.out, parallel.err) == (serial.code, serial.out, serial.err)
    errors = serial.err.splitlines()
    assert [line.split(":")[2].strip().rsplit("/", 1)[-1] for line in errors] == ["d_not_a_model.onnx", "e_empty.onnx"]
    if fmt == "json":
        files = [f["path"].rsplit("/", 1)[-1] for f in json.loads(parallel.out)["files"]]
        assert files == ["a_long_chain.onnx", "b_flatten_head.onnx", "c_clean.onnx", "d_not_a_model.onnx",
                         "e_empty.onnx", "f_flatten_head.onnx", "g_clean.onnx"]


def test_findings_without_errors_exit_1_with_jobs_as_without(folder):
    paths = [str(folder / "b_flatten_head.onnx"), str(folder / "c_clean.onnx"), str(folder / "sub")]
    serial = run_command(*paths, "--jobs", "1")
    parallel = run_command(*paths, "--jobs", "2")
    assert serial.code == 1 and "PW001" in serial.out
    assert (parallel.code, parallel.out, parallel.err) == (serial.code, serial.out, serial.err)
    clean = [str(folder / "c_clean.onnx"), str(folder / "sub" / "g_clean.onnx")]
    assert run_command(*clean, "--jobs", "2").code == run_command(*clean, "--jobs", "1").code == 0


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_a_bad_jobs_value_is_a_one_line_usage_error(pwlint, folder, value):
    line = one_line_error(pwlint(str(folder), "--jobs", value))
    assert line.startswith("pwlint: error: argument --jobs: expected a number of processes (1 or more)"), line


@pytest.fixture
def pools(monkeypatch):
    """The file lists linted in worker processes during the test."""
    calls = []
    original = Linter._lint_in_parallel

    def spy(self, files, jobs, progress):
        calls.append((list(files), jobs))
        return original(self, files, jobs, progress)

    monkeypatch.setattr(Linter, "_lint_in_parallel", spy)
    return calls


def test_several_files_go_to_workers_one_file_and_fixes_stay_in_process(pwlint, folder, pools):
    two = [str(folder / "b_flatten_head.onnx"), str(folder / "c_clean.onnx")]
    assert pwlint(*two, "--jobs", "2").code == 1
    assert pools == [(two, 2)]
    pools.clear()
    assert pwlint(two[0], "--jobs", "2").code == 1  # one file: no pool to start
    assert pwlint(*two, "--jobs", "1").code == 1
    assert "would fix" in pwlint(*two, "--jobs", "2", "--diff").out  # fixing stays serial
    assert pools == []


def test_workers_started_by_spawn_give_the_same_report(folder):
    """macOS and Windows start workers by spawning a fresh interpreter: each rebuilds its
    linter from the recipe (nothing inherited), and the report is still the serial one."""
    import subprocess
    import sys

    paths = [str(folder / "b_flatten_head.onnx"), str(folder / "d_not_a_model.onnx"), str(folder / "sub")]
    code = ("import multiprocessing, sys; multiprocessing.set_start_method('spawn'); "
            "from pwlint.cli import main; sys.exit(main(sys.argv[1:]))")
    spawned = subprocess.run([sys.executable, "-c", code, *paths, "--jobs", "2", "--select", "PW001"],
                             capture_output=True, text=True, timeout=120)
    serial = run_command(*paths, "--jobs", "1", "--select", "PW001")
    assert serial.code == 2 and serial.out.count("PW001") == 2, serial
    assert (spawned.returncode, spawned.stdout, spawned.stderr) == (serial.code, serial.out, serial.err)
