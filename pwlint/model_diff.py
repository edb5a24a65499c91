"""``pwlint diff OLD NEW`` and ``pwlint diff --git REV [PATH...]``: what a change to a model
did, the way a reviewer asks it: which findings it brings, which it resolves, and what it
does to parameters, MACs and file size.

Findings are matched by rule code and the flagged layers' structure (pwlint.signature), as
a multiset, never by layer names: exporters renumber nodes, so names would make every
finding look new. Both versions are linted with the configuration that applies to NEW, so
that a configuration change does not show up as findings resolved in the model.

The command's flags are declared with the other commands' in :mod:`pwlint.cli`, which
imports this module only to run ``pwlint diff``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

from pwlint import diff_report
from pwlint.config import ConfigResolver, Overrides
from pwlint.engine import Linter
from pwlint.errors import PwlintError
from pwlint.findings import Finding, Severity
from pwlint.git_models import GitModels
from pwlint.report_file import write_report_file
from pwlint.stats import model_stats


@dataclass
class Figures:
    """One version of a model, in numbers."""

    params: int
    macs: int
    #: False when some layer's shapes were unknown, so that ``macs`` is a lower bound
    macs_complete: bool
    file_size: int

    def to_json(self) -> dict:
        return {"params": self.params, "macs": self.macs, "macs_complete": self.macs_complete, "file_size": self.file_size}


@dataclass
class ModelDiff:
    path: str
    #: the path of the OLD version, when it had one
    old_path: str | None
    #: modified, renamed, added, removed, or compared (two files named on the command line)
    status: str
    before: Figures | None
    after: Figures | None
    fail_on: Severity = Severity.WARNING
    new: list[Finding] = field(default_factory=list)
    resolved: list[Finding] = field(default_factory=list)
    unchanged: int = 0

    @property
    def failing(self) -> list[Finding]:
        return [f for f in self.new if f.severity.rank >= self.fail_on.rank]

    def to_json(self) -> dict:
        return {
            "path": self.path, "old_path": self.old_path, "status": self.status, "fail_on": self.fail_on.value,
            "before": self.before and self.before.to_json(), "after": self.after and self.after.to_json(),
            "new_findings": [f.to_json() for f in self.new],
            "resolved_findings": [f.to_json() for f in self.resolved],
            "unchanged_findings": self.unchanged,
        }


def match_findings(old: list[Finding], new: list[Finding]) -> tuple[list[Finding], list[Finding], int]:
    """(new only, resolved, unchanged count): a multiset difference on (code, signature), so
    that two identical layers flagged before and one after is one finding resolved."""
    available = Counter((f.code, f.signature) for f in old)
    fresh = []
    for finding in new:
        key = (finding.code, finding.signature)
        if available[key]:
            available[key] -= 1
        else:
            fresh.append(finding)
    resolved = []
    for finding in old:
        key = (finding.code, finding.signature)
        if available[key]:
            available[key] -= 1
            resolved.append(finding)
    return fresh, resolved, len(new) - len(fresh)


class Comparer:
    """Loads and lints both versions of a model with NEW's configuration."""

    def __init__(self, registry, args) -> None:
        overrides = Overrides.from_flags(args.select, args.ignore, args.fail_on)
        self.registry = registry
        self.linter = Linter(
            registry, ConfigResolver(overrides, args.config),
            allow_missing_weights=getattr(args, "allow_missing_weights", False),
        )

    def compare(self, status: str, path: str, old: tuple[str, str] | None, new: tuple[str, str] | None) -> ModelDiff:
        """``old`` and ``new`` are (file to read, name to show) or None when that side is
        missing; ``path`` decides the configuration and per-file ignores."""
        settings = self.linter.resolver.for_path(path)
        self.linter.ruleset(settings)  # a bad configuration is an error before any model is read
        diff = ModelDiff(path=path, old_path=old and old[1], status=status, before=None, after=None, fail_on=settings.fail_on)
        old_findings, new_findings = [], []
        if old:
            diff.before, old_findings = self._read(*old, path, settings)
        if new:
            diff.after, new_findings = self._read(*new, path, settings)
        if status != "removed":  # a deleted model's findings leave with it; they are not "resolved"
            diff.new, diff.resolved, diff.unchanged = match_findings(old_findings, new_findings)
        return diff

    def _read(self, file: str, label: str, path: str, settings) -> tuple[Figures, list[Finding]]:
        if os.path.isdir(file):
            raise PwlintError(f"{label}: is a folder; pwlint diff compares two model files (or use --git REV)")
        try:
            # check's one load path: loader by content, sizes, coverage, missing weights, internal errors
            model = self.linter.load(file)
        except PwlintError as exc:
            raise PwlintError(str(exc).replace(file, label)) from None
        findings = self.linter.check_graph(model.graph, path, settings)
        for finding in findings:
            finding.path = label
        stats = model_stats(model.graph)
        return Figures(stats.params, stats.macs, stats.macs_complete, os.path.getsize(file)), findings


def run(registry, args) -> int:
    comparer = Comparer(registry, args)
    errors: list[str] = []
    if args.git is not None:
        diffs = _git_diffs(comparer, args, errors)
    elif len(args.paths) != 2:
        raise PwlintError("pwlint diff takes two model files, OLD NEW, or --git REV [PATH...]")
    else:
        old, new = args.paths
        diffs = [comparer.compare("compared", new, (old, old), (new, new))]
    for error in errors:
        sys.stderr.write(f"pwlint: error: {error}\n")
    text = diff_report.render(args.format, diffs, args.git)
    if args.output_file:
        write_report_file(args.output_file, lambda stream: stream.write(text))
    else:
        sys.stdout.write(text)
    if errors:
        return 2
    return 1 if any(d.failing for d in diffs) and not args.exit_zero else 0


def _git_diffs(comparer: Comparer, args, errors: list[str]) -> list[ModelDiff]:
    git = GitModels(args.git)
    diffs = []
    with tempfile.TemporaryDirectory(prefix="pwlint-diff-") as scratch:
        for index, model in enumerate(git.changed(comparer.registry.discovered_suffixes, args.paths)):
            path = model.path or model.old_path
            try:
                old = new = None
                if model.old_path:
                    folder = os.path.join(scratch, str(index))
                    os.mkdir(folder)
                    old = (git.extract(model.old_path, folder), f"{git.rev}:{model.old_path}")
                if model.path:
                    new = (git.working_file(model.path), model.path)
                diff = comparer.compare(model.status, git.working_file(path), old, new)
            except PwlintError as exc:
                errors.append(str(exc))
                continue
            diff.path, diff.old_path = path, model.old_path
            diffs.append(diff)
    return diffs
