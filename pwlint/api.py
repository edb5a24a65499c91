"""The Python API behind :func:`pwlint.check` and :func:`pwlint.fix`.

One load path: a live model is written to a private temporary folder in its own
format (:mod:`pwlint.live`) and linted or fixed there by the same
:class:`~pwlint.engine.Linter` the command line uses; reports then name it as the
user knows it (``<torch.nn.Module Net>``), never by the temporary file.

:func:`lint_model` is the piece a front end reuses: give it a configured
``Linter`` (its selection, configuration and fix mode) and a model object or path,
and it returns the engine's :class:`~pwlint.engine.FileResult` for it, so that the
command line's ``pwlint check pkg.mod:factory`` feeds its reporters, baselines and
exit code exactly as for files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Union

from pwlint import live
from pwlint.config import ConfigResolver, FileSettings, Overrides, Settings, describe_validation_error, overridden
from pwlint.engine import FileResult, LintResult, Linter, check_selectors
from pwlint.errors import ConfigError, LoadError, PwlintError, UnsupportedModelError
from pwlint.findings import Finding, Severity

if TYPE_CHECKING:
    from pwlint.coverage import Coverage
    from pwlint.fix.rounds import FixOutcome, FixReport
    from pwlint.plugins import Registry

#: what ``select`` and ``ignore`` take: ``"PW001"``, ``"PW001,PW004"``, ``["PW00", "PW101"]``
Selectors = Union[str, Iterable[str], None]
#: what ``config`` takes: a pyproject.toml or pwlint.toml path, or the ``[tool.pwlint]`` table itself
ConfigArg = Union[str, "os.PathLike[str]", Mapping[str, Any], None]


class Report:
    """What pwlint found in one model.

    - ``findings``: :class:`~pwlint.findings.Finding` s, each with ``code`` (``PW001``),
      ``rule`` (its name, ``flatten-dense-head``), ``severity``, ``message``, ``nodes``
      (the layers involved, named as in the source: ``classifier.0``, ``block1_conv``),
      ``labels`` (the names as messages show them) and ``fix`` (the fix ``pwlint.fix``
      would apply, with its ``applicability``, or None);
    - ``coverage``: how much of the model pwlint understood (:class:`~pwlint.coverage.Coverage`);
      ``coverage.complete`` is False where rules could not look, and ``coverage.unchecked``
      says where;
    - ``ok``: no finding at or above ``fail-on`` (``warning`` unless configured);
    - ``to_json()``: the dict ``pwlint check --format json`` prints; ``str(report)``: the
      text the command line prints; ``render(fmt)``: any output format (``sarif``, ``junit``...).
    """

    def __init__(self, result: LintResult, registry: Registry) -> None:
        #: the engine's result, as reporters and baselines take it
        self.result = result
        self._registry = registry
        self._file: FileResult = result.files[0]

    @property
    def path(self) -> str:
        """The model's name in reports: the path as given, or ``<torch.nn.Module Net>``."""
        return self._file.path

    @property
    def format(self) -> str | None:
        """The format pwlint read: ``onnx``, ``keras``, ``torch`` or a plugin's."""
        return self._file.format

    @property
    def findings(self) -> list[Finding]:
        return list(self._file.findings)

    @property
    def coverage(self) -> Coverage:
        return self._file.coverage

    @property
    def fail_on(self) -> Severity:
        return self._file.fail_on

    @property
    def failing(self) -> list[Finding]:
        """The findings at or above ``fail-on``: those that make ``ok`` False."""
        return self.result.failing()

    @property
    def ok(self) -> bool:
        return not self.failing

    @property
    def codes(self) -> list[str]:
        """The codes of the findings, in report order (``["PW001", "PW004"]``)."""
        return [finding.code for finding in self._file.findings]

    def render(self, fmt: str = "text") -> str:
        """The report as ``pwlint check --format FMT`` writes it."""
        reporter = self._registry.reporters.get(fmt)
        if reporter is None:
            raise PwlintError(f"unknown format '{fmt}' (known: {', '.join(self._registry.reporters)})")
        stream = io.StringIO()
        reporter.report(self.result, stream)
        return stream.getvalue()

    def to_json(self) -> dict:
        """The ``--format json`` contract: ``{"version", "files", "findings"}``."""
        return json.loads(self.render("json"))

    def __str__(self) -> str:
        return self.render("text").rstrip("\n")

    def __repr__(self) -> str:
        codes = ", ".join(self.codes)
        count = len(self._file.findings)
        return f"<Report {self.path}: {count} finding{'s' if count != 1 else ''}{f' ({codes})' if codes else ''}>"


@dataclasses.dataclass(repr=False)
class FixResult:
    """What :func:`pwlint.fix` did to one model.

    ``model`` is the fixed model, of the kind that was passed in (an ``onnx.ModelProto``,
    a ``keras.Model``, a ``torch.nn.Module`` built from the fixed program, an
    ``ExportedProgram``, or for a path the path written); when no fix applied it is the
    object that was passed in. Every applied fix was verified as ``pwlint check --fix``
    verifies it: the format's checker, then the model run before and after on the same
    seeded inputs (safe fixes within rtol 1e-4 / atol 1e-5).
    """

    #: the fixed model (or the one passed in, when nothing changed)
    model: Any
    #: the findings left after fixing; ``report.result.files[0].fix`` is the engine's FixReport
    report: Report

    @property
    def changes(self) -> FixReport | None:
        """The engine's :class:`~pwlint.fix.rounds.FixReport` (None when nothing was fixable)."""
        return self.report._file.fix

    @property
    def changed(self) -> bool:
        return bool(self.changes and self.changes.applied)

    @property
    def applied(self) -> list[FixOutcome]:
        return list(self.changes.applied) if self.changes else []

    @property
    def not_applied(self) -> list[FixOutcome]:
        """Fixes not carried out, each with its ``note`` saying why (unsafe, or failed verification)."""
        return list(self.changes.not_applied) if self.changes else []

    @property
    def params_before(self) -> int | None:
        changes = self.changes
        return changes.before.params if changes and changes.before else None

    @property
    def params_after(self) -> int | None:
        changes = self.changes
        return changes.after.params if changes and changes.after else None

    @property
    def max_abs_diff(self) -> float | None:
        """Largest output difference of the fixed model against the original (seeded inputs)."""
        return self.changes.max_abs_diff if self.changes else None

    @property
    def max_rel_diff(self) -> float | None:
        return self.changes.max_rel_diff if self.changes else None

    @property
    def verified(self) -> bool:
        return bool(self.changes and self.changes.verified)

    @property
    def remaining(self) -> list[Finding]:
        return self.report.findings

    def to_json(self) -> dict:
        """The ``--fix --format json`` dict: ``files[0]["fix"]`` holds what changed."""
        return self.report.to_json()

    def __str__(self) -> str:
        return str(self.report)

    def __repr__(self) -> str:
        return (
            f"<FixResult {self.report.path}: {len(self.applied)} applied, {len(self.not_applied)} not applied, "
            f"{len(self.remaining)} finding(s) left>"
        )


# --- settings ----------------------------------------------------------------------------


def selectors(value: Selectors, what: str) -> list[str] | None:
    """``"PW001,PW004"`` or ``["PW001", "PW004"]`` as a list (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise ConfigError(f"{what} takes rule codes, prefixes or names (a string or a list of them)") from None
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{what} takes rule codes, prefixes or names (a string or a list of them)")
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


class LiveConfig(ConfigResolver):
    """Settings for the API's models.

    - ``config`` a path: that file, as ``--config``; a mapping: the ``[tool.pwlint]`` table
      itself (kebab-case keys, ``{"ignore": ["PW004"], "fail-on": "error"}``); None: the
      nearest configuration, searched from the model file, or for a live model (which has
      no file of its own) from the current folder, as the project's tests run from its root.
    - Live models have no path for ``per-file-ignores`` patterns to match: those are not
      applied to them (``ignore=`` is the way).
    """

    def __init__(self, overrides: Overrides, config: ConfigArg = None) -> None:
        table = config if isinstance(config, Mapping) else None
        path = None if table is not None or config is None else os.fspath(config)
        super().__init__(overrides, path)
        self.table = table
        #: temporary model files -> the folder their settings are found from
        self.live: dict[str, str] = {}
        self._settings_cache: dict = {}

    def for_path(self, path: str) -> Settings:
        anchor = self.live.get(path)
        key = ("live", anchor) if anchor is not None else ("file", path)
        if self.table is not None:
            key = ("table", anchor is not None)
        if key not in self._settings_cache:
            self._settings_cache[key] = self._settings_for(path if anchor is None else anchor, live=anchor is not None)
        return self._settings_cache[key]

    def _settings_for(self, path: str, live: bool) -> Settings:
        if self.table is not None:
            settings = self._inline()
        else:
            settings = super().for_path(path)
        if live and settings.per_file_ignores:
            settings = dataclasses.replace(settings, per_file_ignores={})
        return settings

    def _inline(self) -> Settings:
        try:
            table = FileSettings.model_validate(dict(self.table))
        except ValueError as exc:  # pydantic's ValidationError
            raise ConfigError(describe_validation_error(exc, "config")) from None
        return overridden(table, self.overrides, root=Path.cwd(), source="config")


def make_linter(
    *, select: Selectors = None, ignore: Selectors = None, config: ConfigArg = None, fix_mode=None,
    where: str = "pwlint.check",
) -> Linter:
    """A :class:`Linter` configured as the API's arguments say."""
    from pwlint.plugins import get_registry

    registry = get_registry()
    chosen, dropped = selectors(select, f"{where}: select"), selectors(ignore, f"{where}: ignore") or []
    # checked here, so that the error names the argument rather than "command line"
    check_selectors(chosen or [], registry, f"{where}: select")
    check_selectors(dropped, registry, f"{where}: ignore")
    if config is not None and not isinstance(config, (str, os.PathLike, Mapping)):
        raise ConfigError(f"{where}: config takes a pyproject.toml or pwlint.toml path, or a dict of [tool.pwlint] keys")
    resolver = LiveConfig(Overrides(select=chosen, ignore=dropped), config)
    return Linter(registry, resolver, fix_mode)


# --- linting one model -------------------------------------------------------------------


@dataclasses.dataclass
class Linted:
    """:func:`lint_model`'s answer: the engine's result, with the model's own name in it,
    and for a fixed live model the fixed object read back (None when nothing was fixed)."""

    file: FileResult
    fixed: Any = None


def lint_model(
    linter: Linter, model: Any, example_inputs: Any = None, *, name: str | None = None, read_back: bool = False,
) -> Linted:
    """Lint ``model`` (a path or a live object) with ``linter``, fixing it too when the
    linter has a fix mode. A live model is written to a private temporary folder, linted
    there, and reported under ``name`` (default: :func:`pwlint.live.display_name`).

    With a fix mode whose ``output`` is None, a live model's fixes are written over its
    temporary file, and ``read_back=True`` returns the fixed object; with an ``output``
    the fixed model is written there (its suffix must be the model's own format).
    Errors are in ``file.error``, as the engine reports them for files.
    """
    kind = live.kind_of(model)
    if kind == live.PATH:
        path = os.fspath(model)
        if os.path.isdir(path):
            raise PwlintError(f"{path}: is a folder; pwlint.check takes one model (pwlint check FOLDER lints all)")
        file = linter.lint_file(path)
        fixed = None
        if file.fix is not None and file.fix.written and file.fix.applied:
            fixed = file.fix.written
        return Linted(file, fixed)
    name = name or live.display_name(model, kind)
    mode = linter.fix_mode
    if mode is not None:
        if kind == live.TORCHSCRIPT:
            raise UnsupportedModelError(
                f"{name}: pwlint fixes torch.export programs, not TorchScript; pass the torch.nn.Module "
                "with example_inputs (or a torch.export.ExportedProgram) to fix it; check() reads ScriptModules"
            )
        if mode.output and not str(mode.output).lower().endswith(live.OUTPUT_SUFFIXES[kind]):
            wanted = " or ".join(live.OUTPUT_SUFFIXES[kind])
            raise PwlintError(f"{mode.output}: a fixed {name} is written as {wanted}; name the output *{wanted.split()[0]}")
    folder = Path(tempfile.mkdtemp(prefix="pwlint-"))
    try:
        file_path = live.write(model, kind, example_inputs, folder, name)
        resolver = linter.resolver
        anchored = isinstance(resolver, LiveConfig)
        if anchored:
            resolver.live[str(file_path)] = os.getcwd()
        else:  # a front end's own resolver: settings from the current folder, as for LiveConfig
            linter.resolver = _Anchored(resolver, str(file_path))
        try:
            file = linter.lint_file(str(file_path))
        finally:
            if anchored:
                resolver.live.pop(str(file_path), None)
            else:
                linter.resolver = resolver
        _rename(file, str(file_path), str(folder), name)
        fixed = None
        report = file.fix
        if read_back and report is not None and report.applied and not file.error:
            written = Path(mode.output) if mode.output else file_path
            fixed = live.read_back(kind, written)
        return Linted(file, fixed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Anchored:
    """A resolver that finds a temporary model file's settings from the current folder."""

    def __init__(self, inner, live_file: str) -> None:
        self.inner, self.live_file = inner, live_file
        self._settings = None

    def for_path(self, path: str) -> Settings:
        if path != self.live_file:
            return self.inner.for_path(path)
        if self._settings is None:
            settings = self.inner.for_path(os.getcwd())
            self._settings = dataclasses.replace(settings, per_file_ignores={}) if settings.per_file_ignores else settings
        return self._settings

    def __getattr__(self, attribute):
        return getattr(self.inner, attribute)


def _rename(file: FileResult, file_path: str, folder: str, name: str) -> None:
    """The temporary file's path replaced by the model's name everywhere a user reads it."""

    def clean(text: str | None) -> str | None:
        if not text:
            return text
        return text.replace(file_path, name).replace(folder, name)

    file.path = name
    file.error = clean(file.error)
    for finding in file.findings:
        finding.path = name
    report = file.fix
    if report is not None:
        report.path = name
        if report.written and report.written.startswith(folder):
            report.written = None  # the temporary file: the fixed model is returned, not left on disk
        for outcome in report.outcomes:
            outcome.note = clean(outcome.note)
        for finding in report.remaining:
            finding.path = name


def _raise_error(file: FileResult) -> None:
    if file.error:
        # read, then failed while checking or fixing: not a load error
        raise (PwlintError if file.coverage is not None else LoadError)(file.error)


def check_model(
    model: Any, example_inputs: Any = None, *, select: Selectors = None, ignore: Selectors = None,
    config: ConfigArg = None,
) -> Report:
    """:func:`pwlint.check`."""
    linter = make_linter(select=select, ignore=ignore, config=config)
    linted = lint_model(linter, model, example_inputs)
    _raise_error(linted.file)
    return Report(LintResult(files=[linted.file]), linter.registry)


def fix_model(
    model: Any, example_inputs: Any = None, *, unsafe: bool = False, output: str | os.PathLike | None = None,
    select: Selectors = None, ignore: Selectors = None, config: ConfigArg = None,
) -> FixResult:
    """:func:`pwlint.fix`."""
    from pwlint.fix.rounds import FixMode

    mode = FixMode(unsafe=unsafe, verify=True, output=os.fspath(output) if output is not None else None)
    linter = make_linter(select=select, ignore=ignore, config=config, fix_mode=mode, where="pwlint.fix")
    linted = lint_model(linter, model, example_inputs, read_back=True)
    _raise_error(linted.file)
    fixed = linted.fixed if linted.fixed is not None else model
    return FixResult(model=fixed, report=Report(LintResult(files=[linted.file]), linter.registry))
