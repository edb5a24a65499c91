"""Assertions for a project's own tests: fail the build when a model gets worse.

::

    from pwlint.testing import assert_clean

    def test_no_flatten_dense_head():
        assert_clean(build_model(), torch.randn(2, 3, 224, 224), select="PW001")

No fixture and no plugin: a plain function that raises ``AssertionError`` with the
lines ``pwlint check`` would print, so pytest's failure report shows each finding
(``<torch.nn.Module Net>: PW001 (warning) ... 'classifier.0' ...``).
"""

from __future__ import annotations

from typing import Any

from pwlint import Config, Selectors, check

__all__ = ["assert_clean"]


def assert_clean(
    model: Any,
    example_inputs: Any = None,
    *,
    select: Selectors = None,
    ignore: Selectors = None,
    config: Config = None,
) -> None:
    """Raise ``AssertionError`` when ``model`` has findings at or above ``fail-on``
    (``warning`` unless configured); the message is the text report. Arguments as for
    :func:`pwlint.check`; a model pwlint cannot read raises its :class:`pwlint.PwlintError`
    (an error in the test, not a finding)."""
    __tracebackhide__ = True  # pytest shows the failure at the caller's line
    report = check(model, example_inputs, select=select, ignore=ignore, config=config)
    if not report.ok:
        failing = len(report.failing)
        raise AssertionError(
            f"pwlint found {failing} problem{'s' if failing != 1 else ''} at or above "
            f"'{report.fail_on.value}' in {report.path}:\n{report}"
        )
