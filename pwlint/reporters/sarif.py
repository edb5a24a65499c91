"""``--format sarif``: SARIF 2.1.0, for GitHub code scanning and other SARIF viewers.

One run; ``tool.driver.rules`` describes every registered rule (whether it fired or
not) from its docstring, and each finding is a result located in its model file
(relative to the repository root), line 1, with the layers it names as logical
locations. A model is a binary file, so GitHub's own line hash would be meaningless:
each result carries a ``partialFingerprints`` value computed from the rule, the path
and the flagged layers' structure (:mod:`pwlint.signature`), which survives retraining
(only the weights change) and renaming (exporters renumber node names when a layer is
added), and changes when the flagged layers do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

from pwlint import __version__
from pwlint.hookspecs import hookimpl

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
#: v1 hashed layer names; v2 hashes their structure, so renumbered names keep the alert
FINGERPRINT_KEY = "pwlint/v2"

#: pwlint severity -> SARIF level
LEVELS = {"info": "note", "warning": "warning", "error": "error"}


def level(severity) -> str:
    value = getattr(severity, "value", severity)
    return LEVELS.get(value or "warning", "warning")


def repository_root(folder: str) -> str | None:
    """The nearest folder at or above ``folder`` holding ``.git`` (a folder, or a file
    in a worktree or submodule), or None."""
    current = Path(folder)
    for candidate in (current, *current.parents):
        if (candidate / ".git").exists():
            return str(candidate)
    return None


def relative_path(path: str) -> str | None:
    """``path`` relative to its repository root, or else to the current folder, with
    POSIX separators; None when it is under neither."""
    absolute = Path(os.path.abspath(path))
    try:
        absolute = absolute.resolve()
    except OSError:
        pass
    bases = [repository_root(str(absolute.parent)), str(Path.cwd().resolve())]
    for base in bases:
        if base is None:
            continue
        try:
            return absolute.relative_to(base).as_posix()
        except ValueError:
            continue
    return None


def artifact_uri(path: str) -> str:
    """A URI reference for a model: relative (percent-encoded) when possible, else a
    ``file://`` URI."""
    relative = relative_path(path)
    if relative is not None:
        return quote(relative, safe="/")
    return Path(os.path.abspath(path)).as_uri()


def fingerprint(code: str, relative: str, signature: str, ordinal: int = 0) -> str:
    """What identifies a finding across runs: the rule, the model's path, the flagged
    layers' structure, and which of the identical findings of that model it is (VGG's
    equal convs share a signature). None of these depend on weights or names."""
    payload = json.dumps([code, relative, signature, ordinal], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def rule_descriptor(rule) -> dict:
    from pwlint.rule import doc_sections

    body = rule.body
    what = doc_sections(rule.doc).get("What it does") or rule.summary
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": what},
        "help": {"text": body, "markdown": body},
        "defaultConfiguration": {"level": level(rule.severity)},
        "properties": {"tags": ["model", "architecture"]},
    }


def _location(uri: str) -> dict:
    return {"physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}}}


def result_entry(finding, index: dict[str, int], ordinal: int = 0) -> dict:
    uri = artifact_uri(finding.path)
    location = _location(uri)
    if finding.nodes:
        location["logicalLocations"] = [
            {"name": node, "fullyQualifiedName": label, "kind": "module"}
            for node, label in zip(finding.nodes, finding.labels)
        ]
    entry = {"ruleId": finding.code}
    if finding.code in index:
        entry["ruleIndex"] = index[finding.code]
    entry.update({
        "level": level(finding.severity),
        "message": {"text": finding.message},
        "locations": [location],
        "partialFingerprints": {
            FINGERPRINT_KEY: fingerprint(
                finding.code, relative_path(finding.path) or uri, finding.signature or "|".join(finding.nodes), ordinal,
            ),
        },
    })
    fix = finding.fix
    if fix is not None:
        entry["properties"] = {"fix": fix.to_json()}
    return entry


def as_sarif(result, rules=None) -> dict:
    """The SARIF log of a :class:`~pwlint.engine.LintResult`; ``rules`` defaults to every
    registered rule."""
    if rules is None:
        from pwlint.plugins import get_registry

        rules = get_registry().rules.values()
    rules = sorted(rules, key=lambda r: r.code)
    index = {rule.code: i for i, rule in enumerate(rules)}
    notifications = [
        {
            "level": "error",
            "message": {"text": file.error},
            "locations": [_location(artifact_uri(file.path))],
        }
        for file in result.errors
    ] + [
        {
            "level": "note",
            "message": {"text": f"{file.path}: not fully checked: {'; '.join(file.coverage.unchecked)}"},
            "locations": [_location(artifact_uri(file.path))],
        }
        for file in result.incomplete
    ]
    invocation = {"executionSuccessful": not result.errors}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "pwlint",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [rule_descriptor(rule) for rule in rules],
            }},
            "invocations": [invocation],
            "results": [result_entry(finding, index, ordinal) for finding, ordinal in _with_ordinals(result.findings)],
            "columnKind": "unicodeCodePoints",
        }],
    }


def _with_ordinals(findings):
    """Each finding with how many findings of the same model, rule and signature came
    before it."""
    seen: dict[tuple, int] = {}
    for finding in findings:
        key = (finding.path, finding.code, finding.signature or tuple(finding.nodes))
        ordinal = seen.get(key, 0)
        seen[key] = ordinal + 1
        yield finding, ordinal


class SarifReporter:
    name = "sarif"

    @staticmethod
    def report(result, stream) -> None:
        json.dump(as_sarif(result), stream, indent=2, ensure_ascii=False)
        stream.write("\n")


@hookimpl
def pwlint_register_reporters(register):
    register(SarifReporter())
