"""Shared fixtures: models exported by both torch exporters, models written in ONNX
text syntax, and ways to run pwlint in-process or as a real command."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ["PWLINT_DISABLE_PLUGIN_AUTOLOAD"] = "1"

#: Test modules (glob patterns of paths under tests/) that take most of the suite's time:
#: torch and Keras models built, exported and fixed, fuzzing and hostile files under time
#: limits, hook environments pre-commit builds. They are marked ``slow`` here, by path, so
#: that ``pytest -m "not slow"`` is a quick check while editing; CI runs them all.
SLOW_TESTS = (
    "hostile/*",
    "formats/pytorch/*",
    "formats/keras/test_fix*.py",
    "formats/keras/test_vgg_fix.py",
    "formats/onnx/test_vgg_fix.py",
    "formats/onnx/test_fix_conv_split.py",
    "formats/onnx/test_fix_merge.py",
    "rules/test_linear_chain.py",
    "rules/test_missing_norm_formats.py",
    "test_api.py",
    "test_benchmarks.py",
    "test_cross_format.py",
    "test_pre_commit.py",
    "test_readme_api.py",
    "test_targets.py",
    "test_testing.py",
)
TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    from fnmatch import fnmatch

    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(TESTS_DIR):
            relative = path.relative_to(TESTS_DIR).as_posix()
            if any(fnmatch(relative, pattern) for pattern in SLOW_TESTS):
                item.add_marker(pytest.mark.slow)


#: torch exporters, and whether normalisation layers survive the export
EXPORTERS = {
    "dynamo": dict(dynamo=True),
    "legacy": dict(dynamo=False),
    "dynamo-keep-norm": dict(dynamo=True, optimize=False),
    "legacy-keep-norm": dict(dynamo=False, training="PRESERVE"),
}


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_inprocess(*args: str) -> Run:
    """``pwlint ARGS`` in this process (fast); argparse exits are caught."""
    from pwlint import cli

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return Run(code, out.getvalue(), err.getvalue())


def run_command(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 120) -> Run:
    """``pwlint ARGS`` as a separate process, the way a user or CI runs it."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "pwlint", *args], capture_output=True, text=True,
        cwd=cwd, env=full_env, timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def pwlint():
    return run_inprocess


@pytest.fixture
def onnx_text(tmp_path):
    """Write a model given in ONNX text syntax; returns its path. Checked with the ONNX checker."""
    import onnx
    import onnx.parser

    counter = iter(range(10_000))

    def write(text: str, name: str | None = None, check: bool = True) -> Path:
        model = onnx.parser.parse_model(text)
        if check:
            onnx.checker.check_model(model, full_check=True)
        path = tmp_path / (name or f"model{next(counter)}.onnx")
        onnx.save(model, path)
        return path

    return write


def _export(name: str, exporter: str, folder: Path) -> Path:
    import logging

    import torch

    from tests import zoo

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model = zoo.build(name)
    example = torch.randn(*zoo.input_shape(model))
    kwargs = dict(EXPORTERS[exporter])
    if kwargs.get("training") == "PRESERVE":
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    path = folder / f"{name}-{exporter}.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (example,), str(path), verbose=False, external_data=False, **kwargs)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(model_name, exporter)``: path of a zoo model exported to ONNX, cached per session."""
    folder = tmp_path_factory.mktemp("exported")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        key = (name, exporter)
        if key not in cache:
            cache[key] = _export(name, exporter, folder)
        return cache[key]

    return get


def lint(path, *args: str) -> dict:
    """Lint one file in-process with ``--format json`` and return the parsed report."""
    import json

    run = run_inprocess("check", str(path), "--format", "json", *args)
    assert run.code in (0, 1), run.err
    return json.loads(run.out)


def codes(report: dict) -> list[str]:
    return sorted(f["code"] for f in report["findings"])


# Small models written with onnx.helper -------------------------------------------------
#
# A 3x8x8 input, one 3x3 convolution to 4 channels (padding 1, so 4x8x8), optional
# BatchNorm and ReLU, then a classifier head over 10 classes:
#   "flatten":    Flatten -> Gemm(256 -> 10)                          (PW001)
#   "gap":        GlobalAveragePool -> Flatten -> Gemm(4 -> 10)        (no PW001)
#   "reducemean": ReduceMean(axes 2,3, keepdims 0) -> Gemm(4 -> 10)   (axes: attribute < 18 <= input)
#   "squeeze":    GlobalAveragePool -> Squeeze(axes 2,3) -> Gemm       (axes: attribute < 13 <= input)
CNN_CHANNELS, CNN_SIDE, CNN_CLASSES = 4, 8, 10


def cnn_model(head: str = "flatten", *, opset: int = 17, conv_bias: bool = True, norm: bool = True,
              second_conv: bool = False, batch: int | str = 1):
    """A small CNN as an ``onnx.ModelProto`` (checked with the ONNX checker)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, s, k = CNN_CHANNELS, CNN_SIDE, CNN_CLASSES
    inits, nodes = [], []

    def init(name, shape):
        inits.append(numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name))
        return name

    def ints(name, values):
        inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    conv_inputs = ["x", init("conv.weight", (c, 3, 3, 3))] + ([init("conv.bias", (c,))] if conv_bias else [])
    nodes.append(helper.make_node("Conv", conv_inputs, ["conv_out"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    last = "conv_out"
    if norm:
        bn = [last] + [init(f"bn.{p}", (c,)) for p in ("scale", "bias", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", bn, ["bn_out"], name="bn"))
        last = "bn_out"
    nodes.append(helper.make_node("Relu", [last], ["relu_out"], name="relu"))
    last = "relu_out"
    if second_conv:
        nodes.append(helper.make_node("Conv", [last, init("conv2.weight", (c, c, 3, 3))], ["conv2_out"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"))
        last = "relu2_out"
    features = c * s * s if head == "flatten" else c
    if head == "flatten":
        nodes.append(helper.make_node("Flatten", [last], ["flat"], name="flatten", axis=1))
    elif head == "gap":
        nodes.append(helper.make_node("GlobalAveragePool", [last], ["pooled"], name="pool"))
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1))
    elif head == "reducemean":
        if opset >= 18:
            nodes.append(helper.make_node("ReduceMean", [last, ints("axes", [2, 3])], ["flat"], name="mean", keepdims=0))
        else:
            nodes.append(helper.make_node("ReduceMean", [last], ["flat"], name="mean", axes=[2, 3], keepdims=0))
    elif head == "squeeze":
        nodes.append(helper.make_node("GlobalAveragePool", [last], ["pooled"], name="pool"))
        if opset >= 13:
            nodes.append(helper.make_node("Squeeze", ["pooled", ints("axes", [2, 3])], ["flat"], name="squeeze"))
        else:
            nodes.append(helper.make_node("Squeeze", ["pooled"], ["flat"], name="squeeze", axes=[2, 3]))
    else:
        raise ValueError(head)
    gemm = ["flat", init("fc.weight", (k, features)), init("fc.bias", (k,))]
    nodes.append(helper.make_node("Gemm", gemm, ["y"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, s, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, k])],
        inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def cnn_file(tmp_path):
    """``cnn_file(path_or_name="m.onnx", **cnn_model_kwargs)``: write :func:`cnn_model` under tmp_path."""
    import onnx

    def write(name: str | Path = "m.onnx", **kwargs) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(cnn_model(**kwargs), path)
        return path

    return write


def one_line_error(run: Run) -> str:
    """Assert that a run failed the way a user should see it: exit 2, one line on stderr, no traceback."""
    assert run.code == 2, (run.code, run.out, run.err)
    assert "Traceback" not in run.err and "Traceback" not in run.out, run.err
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    return lines[0]


def init(name: str, *dims: int, value: float = 0.01, dtype: str = "float") -> str:
    """An initializer in ONNX text syntax, ``float[8,3,3,3] name = {0.01, ...}``, for the
    ``<...>`` list of an ``onnx_text`` graph (the syntax needs every value written out)."""
    from math import prod

    values = ", ".join([repr(value)] * prod(dims))
    return f"{dtype}[{','.join(map(str, dims))}] {name} = {{{values}}}"


def mentions(message: str, count: int) -> bool:
    """Whether ``message`` states ``count``, written in full (``4096``) or rounded the way
    people read it (``102.8M``, ``59.1k``): any number in the message that equals ``count``
    to the precision it is written with."""
    import re

    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}
    for number, suffix in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)([kMG]?)(?![\w.])", message):
        decimals = len(number.partition(".")[2])
        unit = scale[suffix] * 10.0 ** -decimals
        if abs(float(number) * scale[suffix] - count) <= unit / 2:
            return True
    return False


def findings(report: dict, code: str) -> list[dict]:
    """The findings of one rule in a report."""
    return [f for f in report["findings"] if f["code"] == code]


# Fixing: copies of models, parameters counted from the file, outputs from onnxruntime ---

def copy_model(source: str | Path, folder: Path, name: str | None = None) -> Path:
    """Copy a model file into ``folder`` (so that ``--fix`` never rewrites a cached export)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or Path(source).name)
    shutil.copyfile(source, target)
    return target


def float_params(path: str | Path) -> int:
    """Parameters of a model file: elements of its floating-point initializers, counted
    from their shapes (weights in external data are not read)."""
    from math import prod

    import onnx

    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    model = onnx.load_model(str(path), load_external_data=False)
    return sum(prod(t.dims) for t in model.graph.initializer if t.data_type in floating)


def sample_inputs(path: str | Path, seed: int = 0, symbolic: int = 1) -> dict:
    """Random float inputs for every input of a model, symbolic dimensions set to ``symbolic``."""
    import numpy as np
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else symbolic for d in dims]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_onnx(path: str | Path, feeds: dict) -> list:
    """Outputs of a model file in onnxruntime (CPU), external data included."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _paired_outputs(original, fixed, seeds, symbolic):
    """(before, after) output arrays of two models on the same random inputs, checked
    to be as many and of the same shapes."""
    for seed in seeds:
        feeds = sample_inputs(original, seed, symbolic)
        before, after = run_onnx(original, feeds), run_onnx(fixed, feeds)
        assert len(before) == len(after)
        for b, a in zip(before, after):
            assert a.shape == b.shape, (a.shape, b.shape)
            yield b, a


def max_output_diff(original: str | Path, fixed: str | Path, seeds=(0, 1, 2), symbolic: int = 1) -> float:
    """Largest absolute output difference between two models on the same random inputs."""
    import numpy as np

    return max(
        (float(np.max(np.abs(a.astype(np.float64) - b))) for b, a in _paired_outputs(original, fixed, seeds, symbolic)),
        default=0.0,
    )


def assert_same_outputs(original: str | Path, fixed: str | Path, seeds=(0, 1, 2), symbolic: int = 1,
                        rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Both models give the same outputs, within the tolerance of a safe fix, on random inputs."""
    import numpy as np

    for b, a in _paired_outputs(original, fixed, seeds, symbolic):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def randomised(model, seed: int = 0):
    """``model`` with every floating-point initializer filled with random values (BatchNorm
    variances positive), so that a rewrite that gets a weight wrong shows in the outputs."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    identity = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    variances = set()
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and len(node.input) > 4:
            name = node.input[4]
            while name in identity:  # the legacy exporter shares equal weights through Identity
                name = identity[name]
            variances.add(name)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind != "f":
            continue
        fresh = rng.standard_normal(values.shape) * 0.3
        if tensor.name in variances:
            fresh = np.abs(fresh) + 0.5
        tensor.CopyFrom(numpy_helper.from_array(fresh.astype(values.dtype), tensor.name))
    return model


def fix_json(path: str | Path, *args: str) -> tuple[Run, dict]:
    """``pwlint PATH --format json ARGS`` in-process; returns the run and the parsed report.
    Asserts that the run did not fail (exit 0 or 1, nothing on stderr)."""
    import json

    run = run_inprocess("check", str(path), "--format", "json", *args)
    assert run.code in (0, 1), (run.code, run.err)
    assert run.err == "", run.err
    return run, json.loads(run.out)


def leftovers(folder: Path) -> list[str]:
    """pwlint's temporary files and folders left in ``folder``."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".pwlint-"))


def fix_summary(report: dict, before: int, after: int) -> str:
    """One line for a fix test's assertion messages: parameters before -> after, what was
    applied and not, and the findings left (printed too, so the figures show with -s)."""
    fix = report["files"][0]["fix"]
    summary = (f"parameters {before:,} -> {after:,}; applied {[(o['code'], o['note']) for o in fix['applied']]}; "
               f"not applied {[(o['code'], o['note']) for o in fix['not_applied']]}; "
               f"remaining {[(f['code'], f['nodes']) for f in report['findings']]}")
    print(summary)
    return summary
