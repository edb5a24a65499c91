"""Findings, severities and fix descriptions: what rules produce and reporters show."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pwlint.fix.plans import Plan


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


@dataclass(frozen=True)
class Fix:
    """A format-neutral rewrite plan that a format's fix backend carries out.

    ``action`` names the rewrite (``convolutionalise-head``, ``pool-pointwise-head``,
    ``fold-bias-into-norm``, ``factorise-dense``); ``plan`` is its typed plan
    (:mod:`pwlint.fix.plans`: the layer names and numbers it needs; a plain dict from a
    third-party rule is converted when a built-in backend carries it out). ``blocked``
    says why the fix cannot apply to this graph, if it can't.
    """

    applicability: Literal["safe", "unsafe"]
    description: str
    action: str = ""
    plan: Plan | dict | None = field(default=None, compare=False)
    blocked: str | None = None

    def to_json(self) -> dict:
        description = self.description
        if self.blocked:
            description += f" (cannot be applied here: {self.blocked})"
        return {"applicability": self.applicability, "description": description}


@dataclass
class Finding:
    """One problem in one model, naming the layers involved by their source names.

    Rules fill ``message`` and ``nodes``; the engine fills ``code``, ``rule``,
    ``severity`` (unless the rule set one) and ``path``.
    """

    message: str
    nodes: list[str] = field(default_factory=list)
    severity: Severity | None = None
    #: the ways to fix it, most conservative first (PW001 offers a safe and an unsafe one)
    fixes: list[Fix] = field(default_factory=list)
    code: str = ""
    rule: str = ""
    path: str = ""
    #: whether unsafe fixes are allowed in this run; decides which fix is shown
    unsafe_allowed: bool = False
    #: the rule and the flagged layers' structure, hashed (pwlint.signature); names excluded
    signature: str = ""
    #: for each of ``nodes``, the module path the file records for it (``classifier.1``), or None
    modules: list[str | None] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """``nodes`` as messages name them: ``classifier.1 (node_linear)`` where a module path is known."""
        modules = self.modules or [None] * len(self.nodes)
        return [f"{m} ({n})" if m and m != n else n for n, m in zip(self.nodes, modules)]

    @property
    def fix(self) -> Fix | None:
        """The fix ``--fix`` would apply: with ``--unsafe-fixes`` the most thorough one,
        otherwise the first safe one; an unsafe-only fix is still shown, as ruff does."""
        if not self.fixes:
            return None
        if self.unsafe_allowed:
            return self.fixes[-1]
        return next((f for f in self.fixes if f.applicability == "safe"), self.fixes[0])

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "code": self.code,
            "rule": self.rule,
            "severity": self.severity.value if self.severity else None,
            "message": self.message,
            "nodes": list(self.nodes),
            "modules": list(self.modules) if self.modules else [None] * len(self.nodes),
            "fix": self.fix.to_json() if self.fix else None,
        }
