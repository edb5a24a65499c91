"""What ``--fix``/``--diff`` check before any model is read, and the one line per file
they add after the report.

Before: ``-o`` names a file the fixed model can be written to (its format, not a
folder, a folder that exists and takes files), and what fixing each named file needs
is installed (:mod:`pwlint.fix.needs`). Both are usage errors, exit 2 in one line: a
user should not wait for a model to be linted to learn that the fix cannot happen.

After: when ``-o`` named a model to write and none was (no fix applied), one line says
so and why; a ``--no-verify`` hint is part of that line (or its own), once per file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from pwlint.errors import PwlintError
from pwlint.fix import needs, write

if TYPE_CHECKING:
    from pwlint.engine import Linter
    from pwlint.fix.rounds import FixMode, FixReport


def named_files(linter: Linter, paths: Iterable[str]) -> list[tuple[str, str | None, object]]:
    """``(path, format, backend)`` of each model file under ``paths``, its format
    recognised the way linting will (by content); files no loader reads are left to
    linting, which reports them."""
    files = []
    for path in linter.files(paths):
        try:
            loader = linter.loader_for(path)
        except PwlintError:
            continue
        if loader.name is not None:
            files.append((path, loader.name, linter.registry.backends.get(loader.name)))
    return files


def check(linter: Linter, paths: Iterable[str], mode: FixMode) -> None:
    """Raise a one-line :class:`PwlintError` if the fix cannot happen: a bad ``-o``, a
    TorchScript file to write, or a missing extra."""
    files = named_files(linter, paths)
    if mode.output and not mode.diff and len(files) == 1:
        path, fmt, backend = files[0]
        if fmt == "torch" and needs.is_torchscript(path):
            raise PwlintError(f"{path}: {needs.TORCHSCRIPT_NOT_FIXED}")
        write.check_output(mode.output, path, fmt, backend)
    needs.require(files, mode.verify, "--diff" if mode.diff else "--fix")


def outcome_line(report: FixReport, mode: FixMode) -> str | None:
    """``nothing written to out.onnx: every fix failed verification``: for a model that
    was to be written and was not; or the file's ``--no-verify`` hint alone (``--diff``)."""
    hint = f" ({report.hint})" if report.hint else ""
    if report.not_written and (mode.output or report.hint):
        where = f"nothing written to {mode.output}" if mode.output else f"{report.path} left unchanged"
        return f"{where}: {report.not_written}{hint}"
    if report.not_written and not report.outcomes:  # in place, and nothing was even tried (TorchScript)
        return f"{report.path}: {report.not_written}"
    if report.hint:
        return f"{report.path}: {report.hint}"
    # in place with fixes not applied: the report's "fixed 0" and its notes say it all
    return None
