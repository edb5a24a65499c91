"""``pwlint.testing.assert_clean``: a project's own test fails with the findings as text."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import pwlint
from pwlint.testing import assert_clean

torch = pytest.importorskip("torch")
nn = torch.nn


def flatten_dense_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def pooled_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 8, 8)


def test_a_clean_model_passes(x):
    assert assert_clean(pooled_net(), x) is None


def test_a_flatten_dense_head_fails_with_the_text_report(x):
    with pytest.raises(AssertionError) as caught:
        assert_clean(flatten_dense_net(), x)
    message = str(caught.value)
    first, *lines = message.splitlines()
    assert first == "pwlint found 1 problem at or above 'warning' in <torch.nn.Module Sequential>:"
    # the text reporter's lines, exactly as `pwlint check` prints them
    assert lines == str(pwlint.check(flatten_dense_net(), x)).splitlines()
    assert lines[0].startswith("<torch.nn.Module Sequential>: PW001 (warning) aten.flatten.using_ints '3' turns a 4x6x6")
    assert lines[-1] == "Found 1 finding (1 warning) in 1 model."


def test_selection_and_configuration_decide_what_fails(x):
    assert_clean(flatten_dense_net(), x, ignore="PW001")
    assert_clean(flatten_dense_net(), x, select=["PW004"])
    assert_clean(flatten_dense_net(), x, config={"fail-on": "error"})
    with pytest.raises(AssertionError, match="PW001"):
        assert_clean(flatten_dense_net(), x, select="PW001")


def test_a_model_pwlint_cannot_read_is_an_error_not_a_failure():
    with pytest.raises(pwlint.ExportError, match="pass example_inputs"):
        assert_clean(flatten_dense_net())


def test_pytest_reports_the_findings_at_the_callers_line(tmp_path):
    """Run as a user's CI does: pytest on a test file that calls assert_clean."""
    (tmp_path / "test_model.py").write_text(textwrap.dedent(
        """
        import torch
        from torch import nn
        from pwlint.testing import assert_clean

        def test_no_flatten_dense_head():
            model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
            assert_clean(model, torch.randn(2, 3, 8, 8), select="PW001")
        """
    ))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_model.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=180,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout
    assert "<torch.nn.Module Sequential>: PW001 (warning)" in proc.stdout
    # __tracebackhide__: the failure points at the user's test, not inside pwlint
    assert "pwlint/testing.py" not in proc.stdout
