"""Every model the onnx wheel ships for its own backend tests lints without a crash.

They are real, odd, old and new ONNX files (operators one by one, pytorch
conversions, opset 1-era models): pwlint must read each one and either lint it
or refuse it with one line, never fail inside.
"""

from __future__ import annotations

import glob
import os

import onnx
import pytest

from tests.conftest import run_inprocess

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
MODELS = sorted(glob.glob(os.path.join(DATA, "**", "*.onnx"), recursive=True))


def test_the_wheel_ships_backend_test_models():
    assert len(MODELS) >= 100, "the onnx wheel's backend test data moved: update DATA"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: os.path.relpath(p, DATA))
def test_backend_test_model_lints(path):
    run = run_inprocess("check", path, "--format", "json", "--exit-zero")
    assert run.code == 0 or (run.code == 2 and run.err.count("\n") == 1), run.err
    assert "internal error" not in run.err
