"""How ``pwlint diff`` shows its comparison: text for a terminal, Markdown for a
pull-request comment, JSON for machines.

Figures are written in full (``6,442``, not ``6.4k``): a diff is read for small changes,
and a rounded figure hides them. A side that does not exist (before an added model, after
a removed one) is shown as an em dash.
"""

from __future__ import annotations

import json

from pwlint.units import percent_change

#: GitHub refuses comments over 65,536 characters; long lists are cut well before that
MAX_LISTED = 50
#: lets a CI step find (and replace) its previous comment
MARKER = "<!-- pwlint-diff -->"
MISSING = "\u2014"


def render(fmt: str, diffs, rev: str | None) -> str:
    return {"text": text, "markdown": markdown, "json": as_json}[fmt](diffs, rev)


def figure_rows(diff) -> list[tuple[str, str, str, str]]:
    """(what, before, after, change) for parameters, MACs and file size."""
    before, after = diff.before, diff.after
    rows = []
    for label, key in (("parameters", "params"), ("MACs", "macs"), ("file size (bytes)", "file_size")):
        old = getattr(before, key) if before else None
        new = getattr(after, key) if after else None
        # an incomplete MAC count (some shapes unknown) is a lower bound: marked ~
        approx = [key == "macs" and side is not None and not side.macs_complete for side in (before, after)]
        rows.append((label, _figure(old, approx[0]), _figure(new, approx[1]), _change(old, new, any(approx))))
    return rows


def _figure(value: int | None, approximate: bool) -> str:
    return MISSING if value is None else f"{'~' if approximate else ''}{value:,}"


def _change(old: int | None, new: int | None, approximate: bool) -> str:
    if old is None or new is None:
        return MISSING
    delta = new - old
    percent = f" ({percent_change(delta, old)})" if old else ""
    return f"{'~' if approximate else ''}{delta:+,}{percent}" if delta else f"{'~' if approximate else ''}0{percent}"


def _title(diff) -> str:
    if diff.status == "compared":
        return f"{diff.old_path} -> {diff.path}"
    if diff.status == "renamed":
        return f"{diff.path} (renamed from {diff.old_path})"
    return f"{diff.path} ({diff.status})"


def _counts(diff) -> str:
    if diff.status == "removed":
        return "model removed"
    return f"findings: {len(diff.new)} new, {len(diff.resolved)} resolved, {diff.unchanged} unchanged"


def _summary(diffs) -> tuple[str, int]:
    new = sum(len(d.new) for d in diffs)
    failing = sum(len(d.failing) for d in diffs)
    resolved = sum(len(d.resolved) for d in diffs)
    models = f"{len(diffs)} model{'s' if len(diffs) != 1 else ''}"
    if not new:
        return f"No new findings in {models}; {resolved} resolved.", failing
    fail = f", {failing} at or above fail-on" if failing != new else ""
    return f"{new} new finding{'s' if new != 1 else ''}{fail} in {models}; {resolved} resolved.", failing


def text(diffs, rev: str | None) -> str:
    if not diffs:
        return f"No model files changed since {rev}.\n" if rev else "Nothing compared.\n"
    lines = []
    for diff in diffs:
        lines.append(_title(diff))
        lines += [f"  + {f.code} ({f.severity.value}) {f.message}" for f in diff.new]
        lines += [f"  - {f.code} ({f.severity.value}) {f.message}" for f in diff.resolved]
        lines.append(f"  {_counts(diff)}")
        for label, old, new, change in figure_rows(diff):
            lines.append(f"  {label:<18} {old} -> {new}" + (f"  {change}" if change != MISSING else ""))
    lines.append(_summary(diffs)[0])
    return "\n".join(lines) + "\n"


def _md(value: str) -> str:
    """Markdown-escaped, so that a layer name like ``_fc*`` or a ``<tag>`` in a message shows as written."""
    for char in "\\`*_[]<|":
        value = value.replace(char, "\\" + char)
    return value


def _md_list(findings) -> list[str]:
    lines = [f"- **{f.code}** ({f.severity.value}) {_md(f.message)}" for f in findings[:MAX_LISTED]]
    if len(findings) > MAX_LISTED:
        lines.append(f"- and {len(findings) - MAX_LISTED} more (run `pwlint diff` locally for all of them)")
    return lines


def markdown(diffs, rev: str | None) -> str:
    lines = [MARKER, "## pwlint: model changes", ""]
    if not diffs:
        lines.append(f"No model files changed since `{_md(rev)}`." if rev else "Nothing compared.")
        return "\n".join(lines) + "\n"
    summary, failing = _summary(diffs)
    lines.append(f"**{summary}**" if failing else summary)
    for diff in diffs:
        lines += ["", f"### {_md(_title(diff))}", "", "| | Before | After | Change |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {label[0].upper() + label[1:]} | {old} | {new} | {change} |" for label, old, new, change in figure_rows(diff)]
        lines.append("")
        if diff.status == "removed":
            lines.append("The model was removed.")
            continue
        if diff.new:
            lines += [f"New findings ({len(diff.new)}):", "", *_md_list(diff.new), ""]
        else:
            lines += ["No new findings.", ""]
        lines.append(f"{diff.unchanged} finding{'s' if diff.unchanged != 1 else ''} unchanged.")
        if diff.resolved:
            lines += ["", f"<details><summary>Resolved findings ({len(diff.resolved)})</summary>", "",
                      *_md_list(diff.resolved), "", "</details>"]
    return "\n".join(lines) + "\n"


def as_json(diffs, rev: str | None) -> str:
    from pwlint import __version__

    summary = {
        "models": len(diffs),
        "new_findings": sum(len(d.new) for d in diffs),
        "failing": sum(len(d.failing) for d in diffs),
        "resolved_findings": sum(len(d.resolved) for d in diffs),
    }
    report = {"version": __version__, "rev": rev, "models": [d.to_json() for d in diffs], "summary": summary}
    return json.dumps(report, indent=2) + "\n"
