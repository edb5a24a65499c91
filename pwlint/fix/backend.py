"""What the built-in fix backends share: the members the fix loop and the notes use,
``open`` and ``run`` through the session class and the runner a subclass names, and
``can_apply`` from what the subclass declares it rewrites.

A subclass sets ``name``, ``label`` (how notes name it), ``checker`` and ``runtime``
(for reports), ``session`` (its fix session class), ``run_model(model_file, feeds)``,
and, where it does not rewrite everything, ``head_ranks`` and ``rewrites_quantized``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pwlint.errors import FixNotApplicable
from pwlint.fix.plans import QUANTIZED, HeadPlan, Plan

if TYPE_CHECKING:
    from pwlint.ir import ModelGraph


class FormatBackend:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    #: what checks a candidate and what runs the models, for reports
    checker: ClassVar[str] = ""
    runtime: ClassVar[str] = ""
    session: ClassVar[Callable[[str], Any]]
    run_model: ClassVar[Callable[..., tuple]]
    #: the spatial ranks of the flattened maps whose heads it rewrites (the convs it can
    #: write), None for any
    head_ranks: ClassVar[tuple[int, ...] | None] = None
    #: whether it rewrites quantized layers (whose integer weights, scales and zero points
    #: would need quantizing again)
    rewrites_quantized: ClassVar[bool] = True

    @classmethod
    def open(cls, path: str):
        return cls.session(path)

    @classmethod
    def run(cls, model_file, feeds=None):
        return cls.run_model(Path(model_file), feeds)

    @classmethod
    def can_apply(cls, plan: Plan, graph: ModelGraph) -> str | None:
        """Why this backend cannot carry ``plan`` out on ``graph``, or None if it can."""
        if not cls.rewrites_quantized and any(graph.layer(name).attrs.get("quantized") for name in plan.layers()):
            return QUANTIZED
        if isinstance(plan, HeadPlan) and cls.head_ranks is not None:
            rank = len(plan.positions)
            if not rank:
                return "the feature map's height and width are dynamic"
            if rank not in cls.head_ranks:
                low, high = min(cls.head_ranks), max(cls.head_ranks)
                ranks = f"{low}-D" if low == high else f"{low}-D to {high}-D"
                return (f"the flattened map has {rank} spatial dimensions; the {cls.label} backend "
                        f"rewrites {ranks} heads only")
        return None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def run_on_samples(run: Callable[[Any], Any], samples: Callable[[Any], Any], tries: tuple, feeds, cannot: str,
                   reason: Callable[[BaseException], str] = first_line) -> tuple:
    """``(feeds, run(feeds))``. Without ``feeds``, seeded sample inputs are made by
    ``samples(choice)`` for each of ``tries`` in turn (a symbolic batch bound to 2, then
    1; or the sizes the model was exported with) until the model runs on them: some
    models only run at one size. FixNotApplicable ``"{cannot}: {reason}"`` otherwise."""
    if feeds is not None:
        return feeds, run(feeds)
    last_error = None
    for choice in tries:
        feeds = samples(choice)
        try:
            return feeds, run(feeds)
        except Exception as exc:  # whatever the framework raised: try the next size
            last_error = exc
    raise FixNotApplicable(f"{cannot}: {reason(last_error)}")
