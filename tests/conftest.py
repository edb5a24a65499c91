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
