"""Baselines: record today's findings, so that a CI gate reports only new ones.

``--write-baseline FILE`` records one entry per finding, keyed by rule code, model path
and the finding's structural signature (:mod:`pwlint.signature`: layer kinds, shapes and
parameter counts, no names, no weights). ``--baseline FILE`` hides the findings that
match an entry and lists the entries that match nothing any more.

Why these choices:

- Paths are stored relative to the baseline file's folder, with ``/``: the file is
  committed with the models and must match from any working directory, clone or OS.
- Matching counts: identical layers share a signature, so two entries hide at most two
  findings with that key and a third identical problem is new.
- An entry is stale only when its model was linted in this run (linting one file must
  not call the rest of the baseline stale) or when its model no longer exists at all,
  since such an entry can never match again.
- Messages and layer names are kept for reviewers of the file; matching ignores them,
  except to decide which of several identical findings is the new one (the one whose
  layers the baseline does not name).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

from pwlint.errors import PwlintError

VERSION = 1


@dataclass(frozen=True)
class Entry:
    path: str
    code: str
    signature: str
    nodes: tuple[str, ...] = ()
    message: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.path, self.code, self.signature)

    def to_json(self) -> dict:
        return {"path": self.path, "code": self.code, "signature": self.signature,
                "nodes": list(self.nodes), "message": self.message}


def model_key(model_path: str, baseline_folder: str) -> str:
    """``model_path`` as the baseline stores it: relative to the baseline's folder, with ``/``."""
    absolute = os.path.abspath(model_path)
    try:
        relative = os.path.relpath(absolute, baseline_folder)
    except ValueError:  # another drive on Windows: no relative path exists
        relative = absolute
    return relative.replace(os.sep, "/")


def _folder(baseline_path: str) -> str:
    return os.path.dirname(os.path.abspath(baseline_path))


# Writing ---------------------------------------------------------------------------------

def _format(entries: list[Entry]) -> str:
    """JSON with one entry per line, so that a reviewer's diff shows one line per finding
    that appeared or went away."""
    rows = ",\n".join("    " + json.dumps(e.to_json(), ensure_ascii=False) for e in entries)
    listing = f"[\n{rows}\n  ]" if rows else "[]"
    return f'{{\n  "version": {VERSION},\n  "entries": {listing}\n}}\n'


def write_baseline(result, path: str) -> int:
    """Record every finding of ``result`` in ``path`` (atomically); returns how many."""
    folder = _folder(path)
    entries = sorted(
        (Entry(model_key(f.path, folder), f.code, f.signature, tuple(f.nodes), f.message) for f in result.findings),
        key=lambda e: (e.path, e.code, e.signature, e.nodes, e.message),
    )
    text = _format(entries)
    temporary = None
    try:
        # a CI job killed mid-write must not leave a truncated baseline that hides nothing
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".pwlint-", suffix=".tmp",
                                         delete=False, encoding="utf-8") as handle:
            temporary = handle.name
            handle.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary and os.path.exists(temporary):
            os.unlink(temporary)
        raise PwlintError(f"cannot write the baseline {path}: {exc.strerror or exc}") from None
    return len(entries)


# Reading ---------------------------------------------------------------------------------

def read_baseline(path: str) -> list[Entry]:
    """The entries of the baseline at ``path``; a :class:`PwlintError` naming the problem otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise PwlintError(f"baseline {path} does not exist (record one with --write-baseline {path})") from None
    except IsADirectoryError:
        raise PwlintError(f"baseline {path} is a folder, not a baseline file") from None
    except OSError as exc:
        raise PwlintError(f"cannot read the baseline {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PwlintError(f"baseline {path} is not a pwlint baseline (not UTF-8 text)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PwlintError(f"baseline {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(document, dict) or "version" not in document:
        raise PwlintError(f"baseline {path} is not a pwlint baseline (no version field)")
    if document["version"] != VERSION:
        raise PwlintError(
            f"baseline {path} has version {document['version']!r}; this pwlint reads version {VERSION}"
            f" (record it again with --write-baseline {path})"
        )
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise PwlintError(f"baseline {path} is not a pwlint baseline ('entries' is not a list)")
    return [_entry(item, index, path) for index, item in enumerate(entries)]


def _entry(item, index: int, path: str) -> Entry:
    where = f"baseline {path}: entry {index + 1}"
    if not isinstance(item, dict):
        raise PwlintError(f"{where} is not an object")
    for name in ("path", "code", "signature"):
        if not isinstance(item.get(name), str) or not item[name]:
            raise PwlintError(f"{where} has no '{name}' string")
    nodes = item.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise PwlintError(f"{where}: 'nodes' is not a list of layer names")
    message = item.get("message", "")
    return Entry(item["path"], item["code"], item["signature"], tuple(nodes), message if isinstance(message, str) else "")


# Applying --------------------------------------------------------------------------------

@dataclass
class Stale:
    """A baseline entry that no finding of this run matched."""

    shown_path: str
    entry: Entry
    reason: str

    def message(self) -> str:
        layers = f" at {', '.join(self.entry.nodes)}" if self.entry.nodes else ""
        return f"stale baseline entry: {self.shown_path}: {self.entry.code}{layers} ({self.reason})"


@dataclass
class Outcome:
    baseline_path: str
    hidden: int = 0
    stale: list[Stale] = field(default_factory=list)

    def messages(self) -> list[str]:
        plural = "" if self.hidden == 1 else "s"
        summary = f"baseline {self.baseline_path} hid {self.hidden} finding{plural}"
        if self.stale:
            count = len(self.stale)
            summary += (f"; {count} stale entr{'y' if count == 1 else 'ies'}"
                        f" (drop them with --write-baseline {self.baseline_path})")
        return [summary, *(s.message() for s in self.stale)]


def apply_baseline(result, path: str) -> Outcome:
    """Remove from ``result`` the findings that ``path`` records; report stale entries."""
    entries = read_baseline(path)
    folder = _folder(path)
    by_model: dict[str, list[Entry]] = {}
    for entry in entries:
        by_model.setdefault(entry.path, []).append(entry)
    outcome = Outcome(path)
    judged: set[str] = set()
    for file in result.files:
        key = model_key(file.path, folder)
        if file.error is not None:
            judged.add(key)  # not linted: its entries are neither matched nor stale
            continue
        kept, unmatched = _match(file.findings, by_model.get(key, []), key)
        outcome.hidden += len(file.findings) - len(kept)
        file.findings = kept
        if key not in judged:  # the same model named twice is judged once
            # a rule left out by --select/--ignore says nothing about its entries
            outcome.stale += [Stale(file.path, e, "no longer found") for e in unmatched if e.code in file.checked_codes]
        judged.add(key)
    for key, model_entries in sorted(by_model.items()):
        if key not in judged and not os.path.exists(os.path.join(folder, key)):
            outcome.stale += [Stale(_shown(folder, key), e, "model no longer exists") for e in model_entries]
    return outcome


def _shown(folder: str, key: str) -> str:
    """A recorded model path as the user would type it from here."""
    try:
        return os.path.relpath(os.path.join(folder, key))
    except ValueError:  # another drive on Windows
        return os.path.join(folder, key)


def _match(findings: list, entries: list[Entry], model: str) -> tuple[list, list[Entry]]:
    """(findings no entry hides, entries that hid nothing), one entry hiding one finding.
    Entries that also name the finding's layers are used first, so that of several
    identical problems the one in a layer the baseline does not name is shown as new."""
    unused = list(entries)
    hidden: set[int] = set()
    for names_must_match in (True, False):
        for index, finding in enumerate(findings):
            if index in hidden:
                continue
            key = (model, finding.code, finding.signature)
            for entry in unused:
                if entry.key == key and (not names_must_match or entry.nodes == tuple(finding.nodes)):
                    unused.remove(entry)
                    hidden.add(index)
                    break
    return [f for index, f in enumerate(findings) if index not in hidden], unused
