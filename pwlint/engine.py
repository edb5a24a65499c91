"""Runs the rules: paths in, a :class:`LintResult` out.

path -> loader -> ModelGraph -> rules -> findings -> selection and per-file ignores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from pwlint.config import ConfigResolver, Overrides, Settings, describe_validation_error
from pwlint.coverage import Coverage, measure
from pwlint.errors import ConfigError, PwlintError
from pwlint.findings import Finding, Severity
from pwlint.limits import require_plausible_sizes
from pwlint.plugins import Registry
from pwlint.rule import Rule, RuleOptions
from pwlint.signature import finding_signature

if TYPE_CHECKING:
    from pwlint.ir import ModelGraph

SKIPPED_DIRS = {"node_modules", "__pycache__", "site-packages"}


@dataclass
class FileResult:
    path: str
    format: str | None = None
    error: str | None = None
    findings: list[Finding] = field(default_factory=list)
    fail_on: Severity = Severity.WARNING
    #: a pwlint.fix.rounds.FixReport when run with --fix or --diff
    fix: object = None
    #: the codes of the rules that ran on this file (selection and per-file ignores applied)
    checked_codes: set[str] = field(default_factory=set)
    #: a pwlint.coverage.Coverage once the model is loaded
    coverage: object = None

    def to_json(self) -> dict:
        data = {"path": self.path, "format": self.format, "error": self.error}
        if self.coverage is not None:
            data["coverage"] = self.coverage.to_json()
        if self.fix is not None:
            data["fix"] = self.fix.to_json()
        return data


@dataclass
class LoadedModel:
    """A model as :meth:`Linter.load` gives it: read by its loader and checked (sizes,
    coverage, missing weights)."""

    path: str
    format: str | None
    graph: ModelGraph
    coverage: Coverage


@dataclass
class LintResult:
    files: list[FileResult] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for file in self.files for f in file.findings]

    @property
    def errors(self) -> list[FileResult]:
        return [f for f in self.files if f.error]

    @property
    def incomplete(self) -> list[FileResult]:
        """Models read, but with places the rules could not look (see pwlint.coverage)."""
        return [f for f in self.files if not f.error and f.coverage is not None and not f.coverage.complete]

    def failing(self) -> list[Finding]:
        return [
            finding for file in self.files for finding in file.findings
            if finding.severity.rank >= file.fail_on.rank
        ]

    def exit_code(self, exit_zero: bool = False) -> int:
        if self.errors:
            return 2
        if self.failing() and not exit_zero:
            return 1
        return 0


def matches(selector: str, rule: Rule) -> int:
    """How specifically ``selector`` names ``rule``: 0 not at all, higher is more specific.
    Codes and prefixes are case-insensitive (``pw001`` is ``PW001``)."""
    if selector.upper() == "ALL":
        return 1
    if selector == rule.name or selector.upper() == rule.code:
        return 100
    if rule.code.startswith(selector.upper()):
        return 1 + len(selector)
    return 0


def is_enabled(rule: Rule, select: Iterable[str], ignore: Iterable[str]) -> bool:
    """Ruff's rule: the most specific selector wins; on a tie, ignore wins."""
    selected = max((matches(s, rule) for s in select), default=0)
    ignored = max((matches(s, rule) for s in ignore), default=0)
    return selected > 0 and selected > ignored


def check_selectors(selectors: Iterable[str], registry: Registry, where: str) -> None:
    for selector in selectors:
        if not any(matches(selector, rule) for rule in registry.rules.values()):
            raise ConfigError(f"{where}: unknown rule selector '{selector}'")


class RuleSet:
    """The rules and their validated options for one :class:`Settings`."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        where = settings.source or "command line"
        check_selectors(settings.select, registry, where)
        check_selectors(settings.ignore, registry, where)
        for selectors in settings.per_file_ignores.values():
            check_selectors(selectors, registry, where)
        self.rules: list[tuple[Rule, RuleOptions, Severity]] = []
        unknown = [code for code in settings.rules if code not in registry.rules]
        if unknown:
            raise ConfigError(f"{where}: [rules] names unknown rule '{unknown[0]}'")
        for rule in registry.rules.values():
            raw = dict(settings.rules.get(rule.code, {}))
            severity = rule.severity
            if "severity" in raw:
                try:
                    severity = Severity(raw.pop("severity"))
                except ValueError:
                    raise ConfigError(
                        f"{where}: [rules.{rule.code}] invalid value for 'severity': "
                        "expected info, warning or error"
                    ) from None
            try:
                options = rule.options.model_validate(raw)
            except ValueError as exc:  # pydantic's ValidationError: pydantic is imported only to validate
                table = f"{where}: [rules.{rule.code}]"
                raise ConfigError(describe_validation_error(exc, table, unknown="option")) from None
            if is_enabled(rule, settings.select, settings.ignore):
                self.rules.append((rule, options, severity))


def discover(paths: Iterable[str], suffixes: tuple[str, ...]) -> list[str]:
    """Files to lint: files as given, folders walked for known suffixes (hidden folders skipped)."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(suffixes)]
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def internal_error(path: str, fmt: str | None, exc: BaseException) -> str:
    """The one line for an exception no loader meant: what broke, and a plea to report it."""
    detail = (f"{type(exc).__name__}: {exc}" if str(exc).strip() else type(exc).__name__).splitlines()[0]
    if len(detail) > 200:
        detail = detail[:200] + "..."
    return (
        f"{path}: internal error while reading the {fmt or 'model'} file ({detail}); "
        "please report it with the file (PWLINT_DEBUG=1 shows the traceback)"
    )


@dataclass(frozen=True)
class LinterRecipe:
    """How to build a :class:`Linter` with the same settings in another process
    (``--jobs``): a registry holds plugin objects that do not pickle, so each worker
    collects its own (the environment, ``PWLINT_DISABLE_PLUGIN_AUTOLOAD`` included, is
    inherited) and reads the configuration from the same overrides and file."""

    overrides: Overrides
    config_path: str | None = None
    allow_missing_weights: bool = False

    def build(self) -> Linter:
        from pwlint.plugins import get_registry

        resolver = ConfigResolver(self.overrides, self.config_path)
        return Linter(get_registry(), resolver, allow_missing_weights=self.allow_missing_weights, recipe=self)


#: the linter of a --jobs worker process, built once by _start_worker
_worker_linter: Linter | None = None


def _start_worker(recipe: LinterRecipe) -> None:
    global _worker_linter
    _worker_linter = recipe.build()


def _lint_in_worker(paths: list[str]) -> list[FileResult | BaseException]:
    """Lint a batch of files in a worker; an exception ends up in its file's place."""
    results: list[FileResult | BaseException] = []
    for path in paths:
        try:
            results.append(_worker_linter.lint_file(path))
        except Exception as exc:  # noqa: BLE001 - sorted out by the parent, in file order
            results.append(exc)
    return results


#: batches per worker: few enough that a folder of tiny models is not all round trips
#: between processes, enough that one slow model does not hold up a long batch behind it
BATCHES_PER_WORKER = 4


class Linter:
    def __init__(
        self, registry: Registry, resolver: ConfigResolver, fix_mode=None, *, allow_missing_weights: bool = False,
        recipe: LinterRecipe | None = None,
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        #: a pwlint.fix.rounds.FixMode when fixing, None when only linting
        self.fix_mode = fix_mode
        #: lint a model whose weights are missing from its shapes alone (--allow-missing-weights)
        self.allow_missing_weights = allow_missing_weights
        #: how worker processes rebuild this linter; None: this linter only lints in-process
        self.recipe = recipe
        self._rulesets: dict[int, RuleSet] = {}

    def ruleset(self, settings: Settings) -> RuleSet:
        key = id(settings)
        if key not in self._rulesets:
            self._rulesets[key] = RuleSet(settings, self.registry)
        return self._rulesets[key]

    def files(self, paths: Iterable[str]) -> list[str]:
        return discover(paths, self.registry.discovered_suffixes)

    def lint_paths(self, paths: Iterable[str], progress=None, jobs: int = 1) -> LintResult:
        """Lint every model under ``paths``; ``progress(index, total, path)`` is called
        before each file (in parallel: as each file is done), when given.

        ``jobs`` > 1 lints the files in that many worker processes when there are several
        and the linter has a :attr:`recipe`; the result is the serial one, files in the
        same order. Fixing stays serial: a verified fix holds about twice the model in
        memory (the checker, then onnxruntime), so parallel fixes would multiply the peak."""
        files = self.files(paths)
        if jobs > 1 and len(files) > 1 and self.recipe is not None and self.fix_mode is None:
            return LintResult(self._lint_in_parallel(files, jobs, progress))
        result = LintResult()
        for index, path in enumerate(files):
            if progress is not None:
                progress(index, len(files), path)
            result.files.append(self.lint_file(path))
        return result

    def _lint_in_parallel(self, files: list[str], jobs: int, progress) -> list[FileResult]:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        outcomes: list[FileResult | BaseException | None] = [None] * len(files)
        # the first file here: its loader's modules are then imported once, before the
        # workers start (forked workers inherit them), not once in every worker
        if progress is not None:
            progress(0, len(files), files[0])
        outcomes[0] = self.lint_file(files[0])  # a configuration error stops here, as serially
        rest = files[1:]
        workers = min(jobs, len(rest))
        size = max(1, -(-len(rest) // (workers * BATCHES_PER_WORKER)))
        batches = [range(start, min(start + size, len(files))) for start in range(1, len(files), size)]
        pool = ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(self.recipe,))
        try:
            futures = {pool.submit(_lint_in_worker, [files[i] for i in batch]): batch for batch in batches}
            done = 1
            for future in as_completed(futures):
                batch = futures[future]
                try:
                    batch_outcomes = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker that died: sorted out below
                    batch_outcomes = [exc] * len(batch)
                for index, outcome in zip(batch, batch_outcomes):
                    outcomes[index] = outcome
                    if progress is not None:
                        progress(done, len(files), files[index])
                    done += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        results = []
        for path, outcome in zip(files, outcomes):
            if isinstance(outcome, PwlintError):
                raise outcome  # a configuration error: the serial run stops at the same file
            if isinstance(outcome, BaseException):
                # a worker that died or a result that did not pickle (a plugin's finding):
                # lint that file here, as the serial run does, for its verdict or traceback
                outcome = self.lint_file(path)
            results.append(outcome)
        return results

    def lint_file(self, path: str) -> FileResult:
        settings = self.resolver.for_path(path)
        self.ruleset(settings)  # a bad configuration is an error even for a file that is missing
        file_result = FileResult(path=path, fail_on=settings.fail_on)
        try:
            # load()'s two steps, so that a file read but refused still shows its format
            loader = self.loader_for(path)
            file_result.format = loader.name
            graph, file_result.coverage = self.read(loader, path)
        except PwlintError as exc:
            file_result.error = str(exc)
            return file_result
        try:
            file_result.findings = self.check_graph(graph, path, settings, file_result.checked_codes)
            if self.fix_mode is not None:
                self._fix(file_result, loader.name, settings, graph)
        except PwlintError as exc:
            file_result.error = str(exc)
        return file_result

    def load(self, path: str) -> LoadedModel:
        """The model at ``path``, read and checked the one way every command reads a model
        (check, diff, the pytest plugin, through :meth:`lint_file` or here): its loader
        chosen by content, then :meth:`read`. Every failure is a :class:`PwlintError`."""
        loader = self.loader_for(path)
        graph, coverage = self.read(loader, path)
        return LoadedModel(path, loader.name, graph, coverage)

    def loader_for(self, path: str):
        """The loader that reads ``path`` (chosen by content; see
        :meth:`pwlint.plugins.Registry.loader_for`); a missing file, or one no loader
        reads, is a :class:`PwlintError`."""
        if not os.path.exists(path):
            raise PwlintError(f"{path}: no such file or directory")
        loader = self.registry.loader_for(path)
        if loader is None:
            raise PwlintError(f"{path}: unsupported file type (pwlint reads {', '.join(self.registry.suffixes)})")
        return loader

    def read(self, loader, path: str):
        """``(graph, coverage)`` of the model at ``path``, read by ``loader`` (a plugin's too)
        and checked the same way for every format; every failure is a :class:`PwlintError`.

        A loader refuses a file it knowingly checked by raising a ``PwlintError`` with
        its reason. Any other exception is a bug in pwlint or in the plugin, not a verdict
        on the file: it still ends in one line and exit 2, but says so and asks for a
        report, so that a user (and the fuzz tests) can tell the two apart.
        """
        try:
            graph = loader.load(path)
            # every format, plugins' too: sizes no real model has are refused, not linted
            require_plausible_sizes(graph, path)
            return graph, self.understood(graph, path)
        except PwlintError:
            raise
        except (MemoryError, RecursionError) as exc:
            raise PwlintError(
                f"{path}: model too large or too deeply nested to read ({type(exc).__name__})"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - anything else is a bug, reported as one
            if os.environ.get("PWLINT_DEBUG"):
                raise  # the traceback, for whoever fixes it (as the CLI does)
            raise PwlintError(internal_error(path, loader.name, exc)) from exc

    def understood(self, graph, path: str):
        """The graph's coverage; a model pwlint cannot check at all, or whose weights are
        missing (unless allowed), is a load error rather than a silent pass."""
        missing = graph.meta.get("missing_weights")
        if missing and not self.allow_missing_weights:
            raise PwlintError(
                f"{path}: {missing}; pass --allow-missing-weights to lint the architecture from its shapes alone"
            )
        coverage = measure(graph)
        if not coverage.layers:
            raise PwlintError(f"{path}: the model has no layers, so there is nothing pwlint could check")
        if not coverage.recognised:
            raise PwlintError(f"{path}: {coverage.unchecked[0]}, so pwlint cannot check this model")
        return coverage

    def recheck(self, graph, path: str, settings: Settings) -> list[Finding]:
        """The findings of a model rewritten by ``--fix`` (the fix loop lints each round's
        result through this): the sizes are checked as :meth:`read` checks a file's, so
        that no graph reaches the rules unchecked, whichever backend built it."""
        require_plausible_sizes(graph, path)
        return self.check_graph(graph, path, settings)

    def check_graph(self, graph, path: str, settings: Settings, checked: set[str] | None = None) -> list[Finding]:
        """Run the rules selected for ``path`` on ``graph``; their codes are added to ``checked``."""
        ruleset = self.ruleset(settings)
        ignored = settings.ignored_for(path)
        found: list[Finding] = []
        for rule, options, severity in ruleset.rules:
            if ignored and not is_enabled(rule, ["ALL"], ignored):
                continue
            if checked is not None:
                checked.add(rule.code)
            try:
                findings = list(rule.check(graph, options))
            except Exception as exc:  # a rule bug must not hide the other rules' findings
                raise PwlintError(f"{path}: internal error in rule {rule.code}: {type(exc).__name__}: {exc}") from exc
            for finding in findings:
                finding.code, finding.rule, finding.path = rule.code, rule.name, path
                # a finding that set its own severity (PW003's info) keeps it
                finding.severity = finding.severity or severity
                finding.unsafe_allowed = bool(self.fix_mode and self.fix_mode.unsafe)
                finding.signature = finding_signature(graph, rule.code, finding.nodes)
                finding.modules = [graph.layer(n).module if n in graph else None for n in finding.nodes]
                found.append(finding)
        return found

    def _fix(self, file_result: FileResult, fmt: str, settings: Settings, graph: ModelGraph) -> None:
        from pwlint.fix import needs, write
        from pwlint.fix.rounds import FixReport, fix_file

        mode, path = self.fix_mode, file_result.path
        backend = self.registry.backends.get(fmt)
        if mode.output:  # the command line checked it before any work; the Python API here
            write.check_output(mode.output, path, fmt, backend)
        fixable = any(f.fixes for f in file_result.findings)
        if not fixable and not mode.output:
            return  # nothing to do, nothing to say
        if graph.meta.get("container") == "torchscript":
            if mode.output:
                raise PwlintError(f"{path}: {needs.TORCHSCRIPT_NOT_FIXED}")
            file_result.fix = FixReport(path=path, dry_run=mode.diff, not_written=needs.TORCHSCRIPT_NOT_FIXED)
            return
        if not fixable:  # -o names a file, yet there is nothing to write: say so, copy nothing
            file_result.fix = FixReport(path=path, dry_run=mode.diff, not_written=None if mode.diff else "no finding has a fix")
            return
        if backend is None:
            raise PwlintError(f"{path}: no fix backend for the {fmt} format")
        needs.require([(path, fmt, backend)], mode.verify, "--diff" if mode.diff else "--fix")
        try:
            report = fix_file(path, backend, lambda graph: self.recheck(graph, path, settings), mode, file_result.findings)
        except PwlintError:
            raise
        except (OSError, MemoryError) as exc:
            raise PwlintError(f"{path}: could not fix the model: {exc}") from exc
        file_result.fix = report
        file_result.findings = report.remaining
