"""The fix actions: one table, one dispatch and one set of notes for every backend.

A built-in backend carries a fix out in two steps:

1. :func:`accepted` turns ``fix.plan`` into the typed plan of ``fix.action`` and asks
   the backend's ``can_apply(plan, graph)`` whether it rewrites that (pt2 only 2-D
   heads, Keras 1-3-D, ONNX no quantized layer); the reason it gives becomes the
   :class:`FixNotApplicable` the fix loop reports as the not-applied note.
2. :func:`carry_out` calls the :class:`Rewriter` method for the plan's type and turns
   what it did into the one-line note.

A format's rewriter only maps arrays into its format: the arithmetic is shared
(:mod:`pwlint.fix.head`, :mod:`pwlint.fix.fold`, :mod:`pwlint.fix.lowrank`,
:mod:`pwlint.fix.convsplit`, :mod:`pwlint.fix.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from pwlint.errors import FixNotApplicable
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan, FoldBiasPlan, HeadPlan, MergeChainPlan, Plan, plan_for

if TYPE_CHECKING:
    from pwlint.findings import Fix
    from pwlint.fix.convsplit import Separable, Tucker2
    from pwlint.fix.lowrank import LowRank
    from pwlint.ir import ModelGraph


@dataclass
class Factorised:
    """What factorising a dense layer did: its ``rows x cols`` weights became ``low``."""

    rows: int
    cols: int
    low: LowRank


@dataclass
class ConvFactorised:
    """What factorising a KxK conv did: its ``(cout, cin, *window)`` kernel became the
    layers of ``split`` (a :class:`~pwlint.fix.convsplit.Tucker2` or
    :class:`~pwlint.fix.convsplit.Separable`, with the error measured from the weights
    as written)."""

    cout: int
    cin: int
    window: tuple[int, ...]
    split: Tucker2 | Separable


@dataclass
class Merged:
    """What merging two linear layers did: ``before`` weights became ``after``."""

    before: int
    after: int


class Rewriter(Protocol):
    """One model state being rewritten in one format. Each method reads and checks
    everything first and raises :class:`FixNotApplicable` before its first change."""

    def rewrite_head(self, plan: HeadPlan) -> None:
        """Replace the head's dense layers by convs (``plan.kind``: a conv over the map,
        or global average pooling + a 1x1 conv), then a flatten that keeps the output."""

    def fold_bias(self, plan: FoldBiasPlan) -> None:
        """Drop the conv's bias; for a BatchNorm store :func:`pwlint.fix.fold.folded_mean`."""

    def factorise(self, plan: FactorisePlan) -> Factorised:
        """Replace the dense layer (or pointwise conv: two 1x1 convs) by its two
        :func:`pwlint.fix.lowrank.factorise` factors."""

    def factorise_conv(self, plan: ConvFactorisePlan) -> ConvFactorised:
        """Replace the KxK conv by the layers of :func:`pwlint.fix.convsplit.tucker2` or
        :func:`~pwlint.fix.convsplit.separable` (``plan.method``); the bias goes last."""

    def merge_chain(self, plan: MergeChainPlan) -> Merged:
        """Replace ``plan.first``, ``plan.between`` and ``plan.second`` by one layer of
        ``first``'s kind (:func:`pwlint.fix.merge.merge_linear`) writing ``second``'s output."""


class Capable(Protocol):
    """A backend that says what it rewrites."""

    #: how notes name it: "the ONNX backend has no '...' action"
    label: str

    def can_apply(self, plan: Plan, graph: ModelGraph) -> str | None:
        """Why this backend cannot carry ``plan`` out on ``graph``, or None if it can."""


def head_note(plan: HeadPlan, _: None = None) -> str:
    first = plan.denses[0]
    later = f", and {len(plan.denses) - 1} later dense layer(s) by 1x1 convs" if len(plan.denses) > 1 else ""
    if plan.pool:
        return f"'{first}' replaced by global average pooling + a 1x1 conv{later}"
    return f"'{first}' replaced by a {'x'.join(map(str, plan.positions))} conv{later}"


def fold_note(plan: FoldBiasPlan, _: None = None) -> str:
    if plan.folds_mean:
        return f"bias of '{plan.conv}' folded into '{plan.norm}'"
    return f"bias of '{plan.conv}' dropped ('{plan.norm}' subtracts it)"


def factorise_note(plan: FactorisePlan, done: Factorised) -> str:
    from pwlint.fix.lowrank import factorised_note

    return factorised_note(plan.dense, done.rows, done.cols, done.low)


def conv_factorise_note(plan: ConvFactorisePlan, done: ConvFactorised) -> str:
    from pwlint.fix.convsplit import conv_split_note

    return conv_split_note(plan.conv, done)


def merge_note(plan: MergeChainPlan, done: Merged) -> str:
    return f"'{plan.first}' and '{plan.second}' merged into one layer: {done.before} -> {done.after} weights"


@dataclass(frozen=True)
class Action:
    """How one action is carried out: the rewriter method and the note it leaves."""

    method: Callable[[Rewriter, Plan], object]
    note: Callable[[Plan, object], str]


HEAD = Action(lambda rewriter, plan: rewriter.rewrite_head(plan), head_note)
#: every action a built-in backend carries out, by ``Fix.action``
ACTIONS: dict[str, Action] = {
    "convolutionalise-head": HEAD,
    "pool-pointwise-head": HEAD,
    "fold-bias-into-norm": Action(lambda rewriter, plan: rewriter.fold_bias(plan), fold_note),
    "factorise-dense": Action(lambda rewriter, plan: rewriter.factorise(plan), factorise_note),
    "tucker2-conv": Action(lambda rewriter, plan: rewriter.factorise_conv(plan), conv_factorise_note),
    "separable-conv": Action(lambda rewriter, plan: rewriter.factorise_conv(plan), conv_factorise_note),
    "merge-linear-chain": Action(lambda rewriter, plan: rewriter.merge_chain(plan), merge_note),
}


def accepted(fix: Fix, graph: ModelGraph, backend: Capable) -> Plan:
    """``fix.plan`` as a typed plan the backend can carry out on ``graph``; otherwise
    FixNotApplicable saying why."""
    if fix.action not in ACTIONS:
        raise FixNotApplicable(f"the {backend.label} backend has no '{fix.action}' action")
    try:
        plan = plan_for(fix.action, fix.plan)
    except ValueError as exc:
        raise FixNotApplicable(str(exc)) from None
    missing = [name for name in plan.layers() if name not in graph]
    if missing:
        raise FixNotApplicable(f"layer '{missing[0]}' is not in the model")
    reason = backend.can_apply(plan, graph)
    if reason:
        raise FixNotApplicable(reason)
    return plan


def carry_out(rewriter: Rewriter, plan: Plan) -> str:
    """Carry ``plan`` (from :func:`accepted`) out with ``rewriter``; the note it leaves."""
    action = ACTIONS[plan.action]
    return action.note(plan, action.method(rewriter, plan))
