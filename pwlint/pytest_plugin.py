"""``pytest --pwlint``: every model file under the test paths becomes a test item
(``models/vgg.onnx::pwlint``, marked ``pwlint``) that fails with its findings.

pytest imports this module (entry point ``pytest11``) in every run of every project
where pwlint is installed, so it imports nothing of pwlint's, nor onnx, until
``--pwlint`` is given; without the flag it registers one option and does nothing else.
"""

from __future__ import annotations

import os

import pytest

#: pytest cache entry: absolute path -> the fingerprint the file had when it last passed
CACHE_KEY = "pwlint/passed"
#: where a --pwlint run keeps its LintSession on the pytest config
SESSION = pytest.StashKey["LintSession"]()


def pytest_addoption(parser):
    group = parser.getgroup("pwlint")
    group.addoption(
        "--pwlint", action="store_true", default=False,
        help="lint the model files under the test paths (those `pwlint check` finds in folders: "
             ".onnx, .keras, ...) as configured in [tool.pwlint]; each fails with its findings",
    )


def pytest_configure(config):
    if not config.getoption("pwlint"):
        return
    config.addinivalue_line("markers", "pwlint: a model file linted by pwlint (pytest --pwlint)")
    run = LintSession(config)
    config.stash[SESSION] = run
    config.pluginmanager.register(run, "pwlint-session")


class LintSession:
    """What a ``--pwlint`` run shares between its items: one linter (so each configuration
    file is read once) and the fingerprints of the files that passed in earlier runs."""

    def __init__(self, config) -> None:
        # heavy imports here: only a --pwlint run pays for them
        from pwlint.config import ConfigResolver, Overrides
        from pwlint.engine import Linter
        from pwlint.errors import PwlintError
        from pwlint.plugins import get_registry

        try:
            registry = get_registry()
        except PwlintError as exc:  # a broken third-party plugin: a usage error, not a crash
            raise pytest.UsageError(f"pwlint: error: {exc}") from None
        self.linter = Linter(registry, ConfigResolver(Overrides()))
        # the rules and loaders decide what a file's findings are, as its configuration does
        self.identity = [_version(), sorted(registry.rules), sorted(registry.loaders)]
        self.cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
        stored = self.cache.get(CACHE_KEY, {}) if self.cache else {}
        self.passed: dict[str, list] = stored if isinstance(stored, dict) else {}

    def pytest_collect_file(self, file_path, parent):
        name = file_path.name.lower()
        registry = self.linter.registry
        # as `pwlint check`: folders yield the discovered suffixes; a file named on the
        # command line may be any readable one (a TorchScript .pt)
        if name.endswith(registry.discovered_suffixes) or (
            name.endswith(registry.suffixes) and parent.session.isinitpath(file_path)
        ):
            return ModelFile.from_parent(parent, path=file_path)
        return None

    def fingerprint(self, path: str) -> list | None:
        """What must be unchanged for an earlier pass to stand: the file's mtime and size,
        the configuration in force for it, pwlint and its plugins."""
        import dataclasses
        import json

        try:
            stat = os.stat(path)
        except OSError:
            return None
        settings = self.linter.resolver.for_path(path)
        configured = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
        return [stat.st_mtime_ns, stat.st_size, configured, self.identity]

    def pytest_sessionfinish(self, session):
        if self.cache is not None:
            self.cache.set(CACHE_KEY, {path: key for path, key in self.passed.items() if os.path.exists(path)})


class ModelFile(pytest.File):
    """One model file: a single item, so that its node id reads ``path::pwlint``."""

    def collect(self):
        yield ModelItem.from_parent(self, name="pwlint")


class LintFailure(Exception):
    """A model's findings or load error, shown as pwlint prints them, without a traceback."""


class ModelItem(pytest.Item):
    """Lints one model; fails on findings at or above the file's ``fail-on``, or when the
    model or its configuration cannot be read."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_marker("pwlint")

    def runtest(self) -> None:
        from pwlint.errors import PwlintError

        run = self.config.stash[SESSION]
        absolute = str(self.path)
        try:
            key = run.fingerprint(absolute)
            if key is not None and run.passed.get(absolute) == key:
                return
            run.passed.pop(absolute, None)
            result = run.linter.lint_file(_shown(absolute))
        except PwlintError as exc:  # a bad configuration
            raise LintFailure(f"pwlint: error: {exc}") from None
        if result.error:
            raise LintFailure(f"pwlint: error: {result.error}")
        if any(f.severity.rank >= result.fail_on.rank for f in result.findings):
            from pwlint.reporters.text import finding_line

            raise LintFailure("\n".join(finding_line(f) for f in result.findings))
        if key is not None:
            run.passed[absolute] = key

    def repr_failure(self, excinfo, style=None):
        if excinfo.errisinstance(LintFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        # the failure's heading; the model's path, as pytest-mypy has it (a domain that
        # ends the node id would have its dots turned into "::" in -v lines)
        try:
            heading = os.path.relpath(self.path, self.config.invocation_params.dir)
        except ValueError:  # another drive
            heading = str(self.path)
        return self.path, None, heading


def _shown(path: str) -> str:
    """``path`` relative to the working directory, as `pwlint check` from there would name
    it; computed when the item runs, since a test may have changed directory."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative


def _version() -> str:
    from pwlint import __version__

    return __version__
