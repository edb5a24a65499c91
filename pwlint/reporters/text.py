"""The default output: one line per finding, then a summary, as ruff does."""

from __future__ import annotations

from collections import Counter

from pwlint.hookspecs import hookimpl


class TextReporter:
    name = "text"

    @staticmethod
    def report(result, stream) -> None:
        for finding in result.findings:
            fixable = f" [{finding.fix.applicability} fix]" if finding.fix else ""
            stream.write(f"{finding.path}: {finding.code} ({finding.severity.value}) {finding.message}{fixable}\n")
        stream.write(summary(result) + "\n")


def summary(result) -> str:
    findings = result.findings
    linted = len(result.files) - len(result.errors)
    files = f"{linted} model{'s' if linted != 1 else ''}"
    errors = f", {len(result.errors)} could not be read" if result.errors else ""
    if not findings:
        return f"No findings in {files}{errors}." if result.errors else f"All checks passed ({files})."
    by_severity = Counter(f.severity for f in findings)
    detail = ", ".join(f"{n} {s.value}" for s, n in sorted(by_severity.items(), key=lambda i: -i[0].rank))
    plural = "s" if len(findings) != 1 else ""
    return f"Found {len(findings)} finding{plural} ({detail}) in {files}{errors}."


@hookimpl
def pwlint_register_reporters(register):
    register(TextReporter())
