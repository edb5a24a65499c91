"""``pytest --pwlint``: model files under the test paths become items that fail with
their findings, configured as ``pwlint check`` is. Each test runs pytest on a small
project written by ``pytester``; the plugin is found through its ``pytest11`` entry point."""

from __future__ import annotations

import os

import onnx
import pytest

from tests.conftest import cnn_model, lint

# here rather than in conftest.py: only this module needs pytester
pytest_plugins = ["pytester"]

#: a Flatten -> Gemm head (PW001); the conv's bias before BatchNorm adds PW004
HEAVY_HEAD = dict(head="flatten")
#: global pooling, no conv bias: nothing to report
CLEAN = dict(head="gap", conv_bias=False)


@pytest.fixture(scope="module")
def pwlint_imported(tmp_path_factory):
    """Lint one model here first: an in-process pytest run drops the modules it imported
    when it ends, so without this every run would import pwlint, its rules and onnx again."""
    path = tmp_path_factory.mktemp("warm") / "m.onnx"
    onnx.save(cnn_model(**CLEAN), path)
    assert lint(path)["findings"] == []


@pytest.fixture
def project(pytester, monkeypatch, pwlint_imported):
    """``project(models={"models/a.onnx": cnn_model kwargs or bytes}, tests=True)``: a
    pytester project with those model files and one ordinary passing test."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    # hypothesis's plugin would be imported, assertion-rewritten and dropped again by
    # every in-process run (seconds each); pwlint's is the one under test
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")

    def write(models: dict, tests: bool = True):
        for name, content in models.items():
            path = pytester.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                onnx.save(cnn_model(**content), path)
        if tests:
            pytester.makepyfile(test_ordinary="def test_ordinary():\n    assert True\n")
        return pytester

    return write


def test_a_model_with_findings_fails_with_the_finding_lines(project):
    pytester = project({"models/heavy.onnx": HEAVY_HEAD})
    result = pytester.runpytest("--pwlint")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "_* models/heavy.onnx _*",
        "models/heavy.onnx: PW001 (warning) Flatten 'flatten' turns a 4x8x8 feature map into dense layer 'fc'*",
        "FAILED models/heavy.onnx::pwlint*",
    ])
    assert "Traceback" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_clean_model_passes(project):
    pytester = project({"models/clean.onnx": CLEAN})
    result = pytester.runpytest("--pwlint", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["models/clean.onnx::pwlint PASSED*"])


def test_without_the_flag_no_model_is_collected(project):
    pytester = project({"models/heavy.onnx": HEAVY_HEAD, "models/clean.onnx": CLEAN})
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_ordinary.py::test_ordinary", "1 test collected*"])
    assert ".onnx" not in result.stdout.str()


def test_without_the_flag_pwlint_imports_nothing_heavy(project):
    """Every pytest run of a project that has pwlint installed loads the plugin."""
    pytester = project({}, tests=False)
    pytester.makepyfile(test_modules="""
        import sys

        def test_plugin_loaded_light():
            assert "pwlint.pytest_plugin" in sys.modules
            heavy = {"onnx", "networkx", "pydantic", "pwlint.engine", "pwlint.plugins"}
            assert not heavy & set(sys.modules), sorted(heavy & set(sys.modules))
    """)
    # a fresh interpreter: this one has imported everything already
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_every_discovered_suffix_is_collected_and_other_files_are_not(project):
    pytester = project({
        "models/a.onnx": CLEAN, "models/b.keras": b"x", "models/c.h5": b"x", "models/d.pt2": b"x",
        "models/E.ONNX": CLEAN,
        # in a folder a .pt is usually a pickled checkpoint: pwlint check leaves it too
        "models/checkpoint.pt": b"x", "models/notes.txt": b"x",
    }, tests=False)
    result = pytester.runpytest("--pwlint", "--collect-only", "-q")
    collected = {line for line in result.stdout.lines if "::" in line}
    assert collected == {
        "models/a.onnx::pwlint", "models/b.keras::pwlint", "models/c.h5::pwlint",
        "models/d.pt2::pwlint", "models/E.ONNX::pwlint",
    }


def test_marker_selects_only_the_models(project):
    pytester = project({"models/heavy.onnx": HEAVY_HEAD, "models/clean.onnx": CLEAN})
    result = pytester.runpytest("--pwlint", "-m", "pwlint", "-v")
    result.assert_outcomes(failed=1, passed=1, deselected=1)
    result.stdout.fnmatch_lines_random(["models/clean.onnx::pwlint PASSED*", "models/heavy.onnx::pwlint FAILED*"])


def test_configuration_is_the_one_pwlint_check_uses(project):
    pytester = project({"models/heavy.onnx": HEAVY_HEAD})
    pytester.makepyprojecttoml('[tool.pwlint]\nignore = ["PW001", "conv-bias-before-norm"]\n')
    result = pytester.runpytest("--pwlint")
    result.assert_outcomes(passed=2)


def test_per_file_ignores_and_fail_on_apply(project):
    pytester = project({"models/legacy/old.onnx": HEAVY_HEAD, "models/new.onnx": HEAVY_HEAD}, tests=False)
    (pytester.path / "pwlint.toml").write_text('[per-file-ignores]\n"models/legacy/*" = ["PW"]\n')
    result = pytester.runpytest("--pwlint", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(["models/legacy/old.onnx::pwlint PASSED*", "models/new.onnx::pwlint FAILED*"])

    # warnings below fail-on pass, as pwlint check exits 0 for them
    (pytester.path / "pwlint.toml").write_text('fail-on = "error"\n')
    pytester.runpytest("--pwlint").assert_outcomes(passed=2)


def test_nearest_configuration_to_each_model_applies(project):
    pytester = project({"strict/m.onnx": HEAVY_HEAD, "lenient/m.onnx": HEAVY_HEAD}, tests=False)
    (pytester.path / "lenient" / "pwlint.toml").write_text('ignore = ["PW"]\n')
    result = pytester.runpytest("--pwlint", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(["lenient/m.onnx::pwlint PASSED*", "strict/m.onnx::pwlint FAILED*"])


def test_an_unreadable_model_fails_with_one_line(project):
    pytester = project({"models/broken.onnx": b"\xff\xfe these are not protobuf bytes"}, tests=False)
    result = pytester.runpytest("--pwlint")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "Traceback" not in output and "pytest_plugin.py" not in output
    report = _failure_section(output, "models/broken.onnx")
    assert len(report) == 1 and report[0].startswith("pwlint: error: models/broken.onnx: "), report


def test_a_model_check_refuses_fails_with_check_s_line(project, monkeypatch):
    """The plugin reads models through check's one load path: a .keras declaring
    units=2**62 (refused on the loaded graph's sizes) and an ONNX model whose external
    weights are absent fail with the very line `pwlint check` prints."""
    import json
    import zipfile

    from onnx import numpy_helper

    from tests.conftest import run_inprocess

    pytester = project({}, tests=False)
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "x", "batch_shape": [None, 8]}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2**62}}]}}
    (pytester.path / "models").mkdir()
    with zipfile.ZipFile(pytester.path / "models" / "huge.keras", "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    model = cnn_model(**CLEAN)
    for tensor in model.graph.initializer:  # raw bytes, so that they can go to external data
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    onnx.save(model, pytester.path / "models" / "bare.onnx", save_as_external_data=True,
              location="bare.onnx.data", size_threshold=0)
    (pytester.path / "models" / "bare.onnx.data").unlink()

    result = pytester.runpytest("--pwlint")
    result.assert_outcomes(failed=2)
    monkeypatch.chdir(pytester.path)
    for model_path in ("models/huge.keras", "models/bare.onnx"):
        check = run_inprocess("check", model_path)
        assert check.code == 2
        assert _failure_section(result.stdout.str(), model_path) == check.err.splitlines()


def test_a_bad_configuration_fails_the_models_with_its_message(project):
    pytester = project({"models/a.onnx": CLEAN})
    pytester.makepyprojecttoml('[tool.pwlint]\nignore = ["PW999"]\n')
    result = pytester.runpytest("--pwlint")
    # the models fail, the ordinary tests still run: not an internal error
    result.assert_outcomes(failed=1, passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    report = _failure_section(result.stdout.str(), "models/a.onnx")
    assert len(report) == 1 and "unknown rule selector 'PW999'" in report[0], report
    assert report[0].startswith("pwlint: error: ") and "pyproject.toml" in report[0]
    assert "Traceback" not in result.stdout.str()


def test_a_model_named_on_the_command_line_need_not_be_a_folder_suffix(project):
    pytester = project({"scripted.pt": b"not a zip archive"}, tests=False)
    result = pytester.runpytest("--pwlint", "scripted.pt")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["pwlint: error: scripted.pt: *"])


class TestCache:
    """An unchanged model that passed is not read again; any change reads it."""

    def _pass_then_swap_for_garbage(self, project):
        pytester = project({"m.onnx": CLEAN}, tests=False)
        pytester.runpytest("--pwlint").assert_outcomes(passed=1)
        path = pytester.path / "m.onnx"
        stat = path.stat()
        path.write_bytes(b"\x00" * stat.st_size)  # unreadable, same size ...
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and same mtime
        return pytester, path, stat

    def test_unchanged_model_is_not_read_again(self, project):
        pytester, _, _ = self._pass_then_swap_for_garbage(project)
        pytester.runpytest("--pwlint").assert_outcomes(passed=1)
        # --cache-clear forgets, and the garbage is found
        pytester.runpytest("--pwlint", "--cache-clear").assert_outcomes(failed=1)

    def test_a_new_mtime_reads_it_again(self, project):
        pytester, path, stat = self._pass_then_swap_for_garbage(project)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        pytester.runpytest("--pwlint").assert_outcomes(failed=1)

    def test_a_new_configuration_reads_it_again(self, project):
        pytester, _, _ = self._pass_then_swap_for_garbage(project)
        (pytester.path / "pwlint.toml").write_text('fail-on = "info"\n')
        pytester.runpytest("--pwlint").assert_outcomes(failed=1)

    def test_a_failing_model_fails_every_run(self, project):
        pytester = project({"m.onnx": HEAVY_HEAD}, tests=False)
        for _ in range(2):
            pytester.runpytest("--pwlint").assert_outcomes(failed=1)

    def test_works_without_the_cache_plugin(self, project):
        pytester = project({"m.onnx": CLEAN}, tests=False)
        pytester.runpytest("--pwlint", "-p", "no:cacheprovider").assert_outcomes(passed=1)


def _failure_section(output: str, model: str) -> list[str]:
    """The lines of one model's report in the FAILURES section (between its
    ``____ path ____`` heading and the next heading or the summary)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("_") and line.strip("_ ") == model)
    section = []
    for line in lines[start + 1:]:
        if line.startswith(("_", "=")):
            break
        section.append(line)
    return section
