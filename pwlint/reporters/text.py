"""The default output: one line per finding, then a summary, as ruff does."""

from __future__ import annotations

from collections import Counter

from pwlint.hookspecs import hookimpl
from pwlint.units import human, ratio


class TextReporter:
    name = "text"

    @staticmethod
    def report(result, stream) -> None:
        for file in result.files:
            if file.fix is not None:
                stream.write(fix_summary(file.fix) + "\n")
        for file in result.incomplete:
            stream.write(coverage_note(file) + "\n")
        for finding in result.findings:
            stream.write(finding_line(finding) + "\n")
        stream.write(summary(result) + "\n")


def coverage_note(file) -> str:
    """One line saying where the rules of a model could not look (pwlint.coverage)."""
    coverage = file.coverage
    return (
        f"{file.path}: note: not fully checked ({coverage.recognised} of {coverage.layers} layers recognised): "
        + "; ".join(coverage.unchecked)
    )


def finding_line(finding) -> str:
    """``path: CODE (severity) message [safe fix]``; the pytest plugin prints the same line."""
    fixable = f" [{finding.fix.applicability} fix]" if finding.fix and not finding.fix.blocked else ""
    return f"{finding.path}: {finding.code} ({finding.severity.value}) {finding.message}{fixable}"


def _size(size: int | None) -> str:
    return "?" if size is None else f"{size / 1024:.0f} KiB" if size < 10 * 2**20 else f"{size / 2**20:.1f} MiB"


def fix_summary(report) -> str:
    """What --fix did (or --diff would do) to one model, the way one compares two models."""
    verb = "would fix" if report.dry_run else "fixed"
    lines = [f"{report.path}: {verb} {len(report.applied)} finding(s)"
             + (f", {len(report.not_applied)} not fixed" if report.not_applied else "")
             + (f"; written to {report.written}" if report.written else "")]
    for outcome in report.outcomes:
        status = "applied" if outcome.applied else "not applied"
        lines.append(f"  {status}: {outcome.code} ({outcome.applicability}) {', '.join(outcome.nodes)}: {outcome.note}")
    before, after = report.before, report.after
    if before and after:
        lines.append(
            f"  parameters {human(before.params)} -> {human(after.params)} ({ratio(before.params, after.params)} smaller)"
            if after.params * 1.1 < before.params else f"  parameters {human(before.params)} -> {human(after.params)}"
        )
        lines[-1] += f", MACs {human(before.macs)} -> {human(after.macs)}"
        lines[-1] += f", file {_size(report.size_before)} -> {_size(report.size_after)}"
    if report.verified:
        lines.append(
            f"  outputs vs. the original ({report.runtime or 'run'}, seeded inputs): max abs diff {report.max_abs_diff:.3g}, "
            f"max rel diff {report.max_rel_diff:.3g}"
        )
    if any(o.applied and o.applicability == "unsafe" for o in report.outcomes):
        lines.append("  unsafe fixes change what the model computes: fine-tune it before use")
    if report.dry_run and (report.layers_removed or report.layers_added):
        lines.append(f"  layers removed: {', '.join(report.layers_removed) or '-'}")
        lines.append(f"  layers added: {', '.join(report.layers_added) or '-'}")
    return "\n".join(lines)


def summary(result) -> str:
    findings = result.findings
    linted = len(result.files) - len(result.errors)
    files = f"{linted} model{'s' if linted != 1 else ''}"
    errors = f", {len(result.errors)} could not be read" if result.errors else ""
    incomplete = len(result.incomplete)
    unchecked = f", {incomplete} not fully checked (see the notes above)" if incomplete else ""
    if not findings:
        if result.errors or incomplete:
            return f"No findings in {files}{errors}{unchecked}."
        return f"All checks passed ({files})."
    by_severity = Counter(f.severity for f in findings)
    detail = ", ".join(f"{n} {s.value}" for s, n in sorted(by_severity.items(), key=lambda i: -i[0].rank))
    plural = "s" if len(findings) != 1 else ""
    return f"Found {len(findings)} finding{plural} ({detail}) in {files}{errors}{unchecked}."


@hookimpl
def pwlint_register_reporters(register):
    register(TextReporter())
