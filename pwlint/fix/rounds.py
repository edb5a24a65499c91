"""``--fix``: apply fix plans through a format's backend, verify, write, lint again.

Format-neutral. Fixes are applied one rule at a time, in code order, re-linting
the model in memory between rounds (like ruff's fix loop), so later plans always
see the graph the earlier fixes left. After each round the candidate model goes
through the format's checker and is run on the same seeded inputs as before the
round: a safe round whose outputs move beyond tolerance is rolled back and
reported as not applied, with the measured error.

Outputs are matched by name where the backend names them (ONNX graph outputs): a
round that renames, drops, adds or reorders outputs is rolled back whatever its
safety, since code that reads ``session.run(["logits"], ...)`` or indexes the
outputs by position would break. Backends that return a plain list are matched by
position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from pwlint.errors import FixNotApplicable, ModelRefused
from pwlint.findings import Finding, Fix
from pwlint.fix.write import commit
from pwlint.ir import ModelGraph
from pwlint.stats import ModelStats, model_stats

if TYPE_CHECKING:
    from pwlint.contracts import Feeds, FixBackend, FixSession, Outputs

RTOL, ATOL = 1e-4, 1e-5
MAX_ROUNDS = 8


@dataclass
class FixMode:
    unsafe: bool = False
    verify: bool = True
    diff: bool = False
    output: str | None = None


@dataclass
class FixOutcome:
    code: str
    nodes: list[str]
    applicability: str
    description: str
    applied: bool
    #: what the backend did, or why the fix was not applied
    note: str = ""
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    #: why it was not applied, as a word the summary of the file is made from: unsafe,
    #: unverifiable, rejected (by the checker or the numeric check), blocked (the backend
    #: cannot carry it out), superseded, error; "" when applied
    why: str = ""

    def to_json(self) -> dict:
        return {
            "code": self.code, "nodes": self.nodes, "applicability": self.applicability,
            "description": self.description, "applied": self.applied, "note": self.note,
            "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
        }


@dataclass
class FixReport:
    path: str
    outcomes: list[FixOutcome] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    size_before: int | None = None
    size_after: int | None = None
    #: output difference of the final model against the original, over all rounds
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    verified: bool = False
    #: --diff: what would change was computed, nothing was written
    dry_run: bool = False
    #: what ran the models for verification (onnxruntime, torch, Keras)
    runtime: str = ""
    written: str | None = None
    #: why nothing was written although a model was to be (no fix applied), or None
    not_written: str | None = None
    #: one suggestion for the whole file (``--no-verify`` where it would help), or None
    hint: str | None = None
    layers_removed: list[str] = field(default_factory=list)
    layers_added: list[str] = field(default_factory=list)
    remaining: list[Finding] = field(default_factory=list)

    @property
    def applied(self) -> list[FixOutcome]:
        return [o for o in self.outcomes if o.applied]

    @property
    def not_applied(self) -> list[FixOutcome]:
        return [o for o in self.outcomes if not o.applied]

    def to_json(self) -> dict:
        return {
            "applied": [o.to_json() for o in self.applied],
            "not_applied": [o.to_json() for o in self.not_applied],
            "before": self._stats(self.before, self.size_before),
            "after": self._stats(self.after, self.size_after),
            "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
            "verified": self.verified, "dry_run": self.dry_run, "written": self.written,
            "not_written": self.not_written, "hint": self.hint,
            "layers_removed": self.layers_removed, "layers_added": self.layers_added,
        }

    @staticmethod
    def _stats(stats: ModelStats | None, size: int | None) -> dict | None:
        return None if stats is None else {**stats.to_json(), "file_size": size}


def named_outputs(outputs: Outputs) -> dict[str, np.ndarray]:
    """A backend's outputs by name: a dict as given (ONNX), a list named by position."""
    if isinstance(outputs, dict):
        return outputs
    return {f"output #{index}": value for index, value in enumerate(outputs)}


def output_change(before: Outputs, after: Outputs) -> str | None:
    """What changed in the outputs' names, order or shapes between two runs, or None."""
    before, after = named_outputs(before), named_outputs(after)
    missing = [name for name in before if name not in after]
    new = [name for name in after if name not in before]
    if missing or new:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"'{n}'" for n in missing))
        if new:
            parts.append("new " + ", ".join(f"'{n}'" for n in new))
        return f"the fixed model's outputs changed names ({'; '.join(parts)})"
    if list(before) != list(after):
        return f"the fixed model's outputs changed order ({', '.join(after)} instead of {', '.join(before)})"
    if any(np.shape(after[name]) != np.shape(value) for name, value in before.items()):
        return "the fixed model's outputs changed shape"
    return None


def compare(before: Outputs, after: Outputs) -> tuple[float, float, bool]:
    """Max absolute difference, max difference relative to the outputs' scale, and
    whether every element is within ``ATOL + RTOL * |before|``. Outputs (lists, or
    dicts by name) are paired by name; any change of names, order or shape is an
    infinite difference."""
    if output_change(before, after) is not None:
        return float("inf"), float("inf"), False
    before, after = named_outputs(before), named_outputs(after)
    worst_abs, worst_rel, close = 0.0, 0.0, True
    for b, a in ((before[name], after[name]) for name in before):
        b64, a64 = np.asarray(b, np.float64), np.asarray(a, np.float64)
        if b64.size == 0:
            continue
        # a NaN or inf the original has too is unchanged; one the fix made is an infinite difference
        same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
        with np.errstate(invalid="ignore"):
            delta = np.where(same, 0.0, np.abs(a64 - b64))
        delta[np.isnan(delta)] = np.inf
        finite = np.abs(b64[np.isfinite(b64)])
        scale = max(float(finite.max()) if finite.size else 0.0, 1e-30)
        worst_abs = max(worst_abs, float(delta.max()))
        worst_rel = max(worst_rel, float(delta.max() / scale))
        with np.errstate(invalid="ignore"):
            close = close and bool(np.all(same | (np.isfinite(delta) & (delta <= ATOL + RTOL * np.abs(b64)))))
    return worst_abs, worst_rel, close


def _outcome(finding: Finding, fix: Fix, applied: bool, note: str, why: str = "") -> FixOutcome:
    return FixOutcome(finding.code, list(finding.nodes), fix.applicability, fix.description, applied, note, why=why)


def fix_file(
    path: str,
    backend: FixBackend,
    check: Callable[[ModelGraph], list[Finding]],
    mode: FixMode,
    findings: list[Finding],
) -> FixReport:
    """Fix one model. ``check`` runs the selected rules on a graph; ``findings`` are
    the ones linting the file gave."""
    report = FixReport(path=path, dry_run=mode.diff, runtime=getattr(backend, "runtime", ""))
    # opened first, so that a model the backend refuses (external data outside its folder)
    # is an error before anything runs; the session holds the graph's structure, not its weights
    session = backend.open(path)
    try:
        feeds = baseline = None
        unverifiable = None
        cannot = "unverifiable"
        if mode.verify:
            try:
                feeds, baseline = backend.run(Path(path))
            except ModelRefused as exc:  # the backend will not rewrite it (a Keras Lambda layer)
                unverifiable, cannot = _reason(exc), "blocked"
            except Exception as exc:  # whatever the runtime raised: a candidate's run is judged alike
                unverifiable = f"cannot verify: {_reason(exc)}"
            else:
                arrays = named_outputs(baseline).values()
                if not any(np.isfinite(np.asarray(out, np.float64)).any() for out in arrays if np.size(out)):
                    # nothing to compare: every output is NaN or inf on the sample inputs
                    unverifiable = "cannot verify: the model's outputs are all NaN or inf on random inputs"
        if unverifiable:
            for finding in findings:
                fix = _chosen(finding, mode)
                if fix is not None:
                    blocked, why = _why_not(fix, mode)
                    report.outcomes.append(_outcome(finding, fix, False, blocked or unverifiable, why or cannot))
            report.remaining = findings
            if any(o.why == "unverifiable" for o in report.outcomes) and edits_without_running(backend):
                # said once for the file, and only where skipping the run lets the fixes apply
                report.hint = NO_VERIFY_HINT
        else:
            _fix_rounds(session, backend, check, mode, report, feeds, baseline)
    finally:
        session.close()
    if not report.applied and not mode.diff:
        report.not_written = why_not_written(report)
    return report


NO_VERIFY_HINT = "--no-verify applies fixes without the numeric check"
def edits_without_running(backend: FixBackend) -> bool:
    """Whether the backend rewrites a model without running it (it says so as
    ``edits_without_running``), so that a model the runtime cannot run can still be fixed
    with --no-verify. Keras and torch load the model to rewrite it: a model they cannot
    run they cannot rewrite either, and --no-verify would change nothing."""
    import inspect

    return bool(inspect.getattr_static(backend, "edits_without_running", False))


def why_not_written(report: FixReport) -> str:
    """Why a fix run changed nothing, in a few words, from its outcomes."""
    whys = {o.why for o in report.outcomes}
    if not whys:
        return "no finding has a fix"
    if whys == {"unverifiable"}:
        return next(o.note for o in report.outcomes)
    if whys == {"unsafe"}:
        return "its only fixes are unsafe (--unsafe-fixes applies them)"
    if whys <= {"rejected", "superseded"}:
        return "every fix failed verification"
    if "rejected" not in whys:
        return "no fix could be applied"
    return "no fix was applied"


def _fix_rounds(
    session: FixSession, backend: FixBackend, check: Callable[[ModelGraph], list[Finding]], mode: FixMode,
    report: FixReport, feeds: Feeds | None, baseline: Outputs | None,
) -> None:
    graph = session.graph()
    original_layers = {layer.name: layer.op for layer in graph.layers()}
    report.before = model_stats(graph)
    report.size_before = session.file_size(session.path)
    current = baseline
    attempted: set[tuple] = set()
    skipped: dict[tuple, FixOutcome] = {}
    #: the layers each rule's fixes wrote in this run, by rule code
    made: dict[str, set[str]] = {}
    findings = check(graph)
    for _ in range(MAX_ROUNDS):
        batch = _next_batch(findings, attempted, mode, skipped, made)
        if not batch:
            break
        names_before = {layer.name for layer in session.graph().layers()}
        round_outcomes = []
        for finding, fix in batch:
            graph = session.graph()
            if not all(node in graph for node in finding.nodes):
                round_outcomes.append(_outcome(finding, fix, False, "superseded by an earlier fix", "superseded"))
                continue
            try:
                note = session.apply(fix)
            except FixNotApplicable as exc:  # raised before the action changes anything
                round_outcomes.append(_outcome(finding, fix, False, _reason(exc), "blocked"))
                continue
            except Exception as exc:  # a bug may leave the model half-edited: drop the round
                session.revert()
                why = f"rolled back after an error in another fix: {_reason(exc)}"
                for outcome in round_outcomes:
                    if outcome.applied:
                        outcome.applied, outcome.note, outcome.why = False, why, "error"
                round_outcomes.append(_outcome(finding, fix, False, f"error: {type(exc).__name__}: {_reason(exc)}", "error"))
                continue
            round_outcomes.append(_outcome(finding, fix, True, note))
        applied = [o for o in round_outcomes if o.applied]
        if applied:
            current = _verify_round(session, backend, mode, feeds, current, applied)
        report.outcomes += round_outcomes
        findings = check(session.graph())
        new_layers = {layer.name for layer in session.graph().layers()} - names_before
        made.setdefault(batch[0][0].code, set()).update(new_layers)
    graph = session.graph()
    report.remaining = findings
    remaining = {(f.code, tuple(f.nodes)) for f in findings}
    report.outcomes += [outcome for key, outcome in skipped.items() if key in remaining]
    report.after = model_stats(graph)
    final_layers = {layer.name: layer.op for layer in graph.layers()}
    report.layers_removed = [f"{n} ({op})" for n, op in original_layers.items() if n not in final_layers]
    report.layers_added = [f"{n} ({op})" for n, op in final_layers.items() if n not in original_layers]
    if mode.verify and report.applied:
        report.max_abs_diff, report.max_rel_diff, _ = compare(baseline, current)
        report.verified = True
    candidate = session.last_good
    report.size_after = session.file_size(candidate)
    # nothing applied, nothing written: not even to -o, where a copy of the input under the
    # new name would read as a fixed model
    target = (mode.output or str(session.path)) if report.applied else None
    if target and not mode.diff:
        commit(session, target, Path(session.path))
        report.written = target


def _next_batch(findings: list[Finding], attempted: set, mode: FixMode, skipped: dict,
                made: dict[str, set[str]] | None = None) -> list:
    """The fixable findings of the lowest rule code not yet attempted. A finding on a layer
    its own rule's fix wrote in this run is not fixed again: PW002 would factorise its own
    factors, PW005 split its Tucker core again, each round compounding the approximation."""
    candidates = []
    for finding in findings:
        key = (finding.code, tuple(finding.nodes))
        fix = _chosen(finding, mode)
        if fix is None or key in attempted:
            continue
        why_not, why = _why_not(fix, mode)
        own = (made or {}).get(finding.code, set()).intersection(finding.nodes)
        if not why_not and own:
            why_not, why = (f"'{sorted(own)[0]}' was written by this rule's own fix in this run; "
                            "fine-tune, then run pwlint again to go further"), "repeat"
        if why_not:
            # reported at the end, and only if the finding is still there then
            skipped[key] = _outcome(finding, fix, False, why_not, why)
        else:
            candidates.append((finding, fix))
    if not candidates:
        return []
    code = min(finding.code for finding, _ in candidates)
    batch = [(f, fix) for f, fix in candidates if f.code == code]
    attempted.update((f.code, tuple(f.nodes)) for f, _ in batch)
    return batch


def _why_not(fix: Fix, mode: FixMode) -> tuple[str | None, str]:
    """Why ``fix`` is not even tried (and the kind of reason), or ``(None, "")``."""
    if fix.blocked:
        return fix.blocked, "blocked"
    if fix.applicability == "unsafe" and not mode.unsafe:
        return "unsafe fix: use --unsafe-fixes to apply it", "unsafe"
    return None, ""


def _chosen(finding: Finding, mode: FixMode) -> Fix | None:
    finding.unsafe_allowed = mode.unsafe
    return finding.fix


def _verify_round(
    session: FixSession, backend: FixBackend, mode: FixMode, feeds: Feeds | None, current: Outputs | None,
    applied: list[FixOutcome],
) -> Outputs | None:
    """Check and run the round's result; roll the round back if it fails."""
    safe = all(o.applicability == "safe" for o in applied)
    try:
        candidate = session.checkpoint()
    except OSError:
        raise  # the disk, not the fix (no space, no permission): stop, the model is untouched
    except Exception as exc:
        checker = getattr(backend, "checker", "the format's checker")
        return _roll_back(session, applied, f"{checker} rejected the result: {_reason(exc)}", current)
    if not mode.verify:
        session.accept(candidate)
        return current
    try:
        _, outputs = backend.run(candidate, feeds)
    except Exception as exc:
        return _roll_back(session, applied, f"the fixed model does not run: {_reason(exc)}", current)
    change = output_change(current, outputs)
    if change is not None:  # names and shapes are the model's interface: no fix may change them
        return _roll_back(session, applied, change, current)
    worst_abs, worst_rel, close = compare(current, outputs)
    if worst_abs == float("inf"):
        return _roll_back(session, applied, "the fixed model's outputs have NaN or inf where the original's do not", current)
    for outcome in applied:
        outcome.max_abs_diff, outcome.max_rel_diff = worst_abs, worst_rel
    if safe and not close:
        return _roll_back(
            session, applied,
            f"outputs differ beyond rtol {RTOL:g} / atol {ATOL:g} (max abs diff {worst_abs:.3g}, "
            f"max rel diff {worst_rel:.3g})", current,
        )
    session.accept(candidate)
    return outputs


def _roll_back(session: FixSession, applied: list[FixOutcome], why: str, current: Outputs | None) -> Outputs | None:
    session.revert()
    for outcome in applied:
        outcome.applied = False
        outcome.note = f"not applied: {why}"
        outcome.why = "rejected"
    return current


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

