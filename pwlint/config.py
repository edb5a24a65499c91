"""Configuration: ``[tool.pwlint]`` in pyproject.toml, or a pwlint.toml, found by
walking up from each linted file, validated by pydantic, overridden by flags.

An unknown key or a bad value is a :class:`~pwlint.errors.ConfigError` naming it.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pwlint.errors import ConfigError
from pwlint.findings import Severity
from pwlint.lazy_model import LazyModel

if TYPE_CHECKING:
    from pydantic import ValidationError

CONFIG_FILES = ("pwlint.toml", "pyproject.toml")


class NamesKeysOnError:
    """Mixin for a :class:`LazyModel`: a validation error it raises carries the model's keys
    as written in configuration files (``known_keys``), so that
    :func:`describe_validation_error` can suggest the key a misspelt one meant.

    A mixin rather than a method of the model: a LazyModel's own namespace is copied into
    the pydantic model it builds, whereas a base that is not a LazyModel stays a base of it."""

    @classmethod
    def model_validate(cls, values, *args, **kwargs):
        try:
            return super().model_validate(values, *args, **kwargs)  # type: ignore[misc]
        except ValueError as exc:  # pydantic's ValidationError
            if not hasattr(exc, "known_keys"):
                names = cls.__dict__.get("_field_names") or tuple(getattr(cls, "model_fields", ()))
                try:
                    exc.known_keys = tuple(name.replace("_", "-") for name in names)  # type: ignore[attr-defined]
                except AttributeError:  # an exception that takes no attributes: no suggestion
                    pass
            raise


class FileSettings(NamesKeysOnError, LazyModel):
    """The keys of ``[tool.pwlint]`` (validated by pydantic only when a file sets some)."""

    select: list[str] = ["ALL"]
    ignore: list[str] = []
    fail_on: Severity = Severity.WARNING
    per_file_ignores: dict[str, list[str]] = {}
    rules: dict[str, dict[str, Any]] = {}


@dataclass
class Settings:
    """Settings in force for one file: the file's configuration plus command-line overrides."""

    select: list[str] = field(default_factory=lambda: ["ALL"])
    ignore: list[str] = field(default_factory=list)
    fail_on: Severity = Severity.WARNING
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the folder per-file-ignores patterns are relative to
    root: Path = field(default_factory=Path.cwd)
    source: str | None = None

    def ignored_for(self, path: str) -> list[str]:
        try:
            relative = Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            relative = Path(path).as_posix()
        name = Path(path).name
        codes: list[str] = []
        for pattern, selectors in self.per_file_ignores.items():
            if fnmatch.fnmatch(relative, pattern) or ("/" not in pattern and fnmatch.fnmatch(name, pattern)):
                codes.extend(selectors)
        return codes


def describe_validation_error(error: ValidationError, table: str, unknown: str = "key") -> str:
    """One line naming the offending key of a pydantic error (callers catch ValueError, of
    which ValidationError is one, so as not to import pydantic: any other says itself)."""
    if not hasattr(error, "errors"):
        return f"{table}: invalid value: {error}"
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(table)"
    if first["type"] == "extra_forbidden":
        known = list(getattr(error, "known_keys", ()))
        if unknown == "option":
            known.append("severity")  # every [rules.CODE] table takes it besides the rule's options
        return f"{table}: unknown {unknown} '{key}'{did_you_mean(key, known)}"
    return f"{table}: invalid value for '{key}': {first['msg']}"


def did_you_mean(key: str, known) -> str:
    """`` (did you mean 'select'?)`` for a key close to a known one (difflib's measure,
    snake_case read as kebab-case), else nothing."""
    import difflib

    close = difflib.get_close_matches(key.replace("_", "-").lower(), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def read_config_file(path: Path, explicit: bool = False) -> tuple[FileSettings, bool]:
    """The settings in one file, and whether it had a pwlint section at all.

    A ``pyproject.toml``, or any file with a ``[tool]`` table (``--config ci/pp.toml``),
    is read from its ``[tool.pwlint]`` table; any other file (``pwlint.toml``) holds the
    keys at its top level. A file named by ``--config`` (``explicit``) without the table
    it should have is an error, not silently the defaults; so is a ``pwlint.toml`` with a
    ``[tool]`` table but no ``[tool.pwlint]``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if path.name == "pyproject.toml" or isinstance(data.get("tool"), dict):
        section = data.get("tool", {}).get("pwlint") if isinstance(data.get("tool"), dict) else None
        table = f"{path}: [tool.pwlint]"
        if section is None:
            # a pyproject.toml found by the search configures other tools; any other file
            # (named by --config, or a pwlint.toml) is there to configure pwlint
            if explicit or path.name != "pyproject.toml":
                raise ConfigError(f"{path}: has no [tool.pwlint] table (a pwlint.toml holds the keys at its top level)")
            return FileSettings.model_validate({}), False
    else:
        section, table = data, str(path)
    if not isinstance(section, dict):
        raise ConfigError(f"{table} must be a table")
    try:
        return FileSettings.model_validate(section), True
    except ValueError as exc:  # pydantic's ValidationError, imported only to validate
        raise ConfigError(describe_validation_error(exc, table)) from None


def find_config(start: Path) -> Path | None:
    """The nearest pwlint.toml, or pyproject.toml with a [tool.pwlint] table, at or above ``start``."""
    directory = start.resolve()
    if directory.is_file() or not directory.exists():
        directory = directory.parent
    for folder in (directory, *directory.parents):
        for name in CONFIG_FILES:
            candidate = folder / name
            if candidate.is_file():
                if name == "pwlint.toml" or _has_pwlint_table(candidate):
                    return candidate
    return None


def _has_pwlint_table(path: Path) -> bool:
    # parsed, not searched: a comment naming [tool.pwlint] is not a table, and
    # `[tool]` + `pwlint.select = ...` is one
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        tool = tomllib.loads(text).get("tool")
    except tomllib.TOMLDecodeError:
        # broken TOML that seems to configure pwlint is claimed, so that its error is shown
        return "[tool.pwlint" in text
    return isinstance(tool, dict) and "pwlint" in tool


def split_selectors(values: list[str] | None) -> list[str] | None:
    """Repeated, comma-separated selector flags as one list (``--select PW001,PW002
    --select PW004``); None when the flag was not given at all."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@dataclass
class Overrides:
    """Command-line flags, which win over configuration files."""

    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    fail_on: Severity | None = None

    @classmethod
    def from_flags(cls, select: list[str] | None, ignore: list[str] | None, fail_on: str | None) -> Overrides:
        """The overrides of ``--select``, ``--ignore`` and ``--fail-on`` as argparse gives
        them (each selector flag a list of comma-separated values, or None), for every
        command that lints (check, diff)."""
        return cls(
            select=split_selectors(select),
            ignore=split_selectors(ignore) or [],
            fail_on=Severity(fail_on) if fail_on else None,
        )


def overridden(file_settings: FileSettings, o: Overrides, *, root: Path, source: str | None) -> Settings:
    """A file's settings with the command line's on top. As in ruff, a --select starts a
    new selection: the file's select and ignore give way to it, and only --ignore is kept."""
    return Settings(
        select=o.select if o.select is not None else file_settings.select,
        ignore=o.ignore if o.select is not None else file_settings.ignore + o.ignore,
        fail_on=o.fail_on or file_settings.fail_on,
        per_file_ignores=file_settings.per_file_ignores,
        rules=file_settings.rules,
        root=root,
        source=source,
    )


class ConfigResolver:
    """Settings for each linted file, caching one parse per configuration file."""

    def __init__(self, overrides: Overrides, config_path: str | None = None) -> None:
        self.overrides = overrides
        self.fixed: Path | None = None
        if config_path is not None:
            self.fixed = Path(config_path)
            if not self.fixed.is_file():
                raise ConfigError(f"{config_path}: configuration file not found")
        self._cache: dict[Path | None, Settings] = {}

    def for_path(self, path: str) -> Settings:
        config = self.fixed or find_config(Path(path))
        if config not in self._cache:
            self._cache[config] = self._settings(config)
        return self._cache[config]

    def _settings(self, config: Path | None) -> Settings:
        file_settings = FileSettings.model_validate({})
        if config is not None:
            file_settings, _ = read_config_file(config, explicit=config == self.fixed)
        return overridden(
            file_settings, self.overrides,
            root=(config.parent if config else Path(os.getcwd())), source=str(config) if config else None,
        )
