"""Findings, severities and fix descriptions: what rules produce and reporters show."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal


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
    applicability: Literal["safe", "unsafe"]
    description: str

    def to_json(self) -> dict:
        return {"applicability": self.applicability, "description": self.description}


@dataclass
class Finding:
    """One problem in one model, naming the layers involved by their source names.

    Rules fill ``message`` and ``nodes``; the engine fills ``code``, ``rule``,
    ``severity`` (unless the rule set one) and ``path``.
    """

    message: str
    nodes: list[str] = field(default_factory=list)
    severity: Severity | None = None
    fix: Fix | None = None
    code: str = ""
    rule: str = ""
    path: str = ""

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "code": self.code,
            "rule": self.rule,
            "severity": self.severity.value if self.severity else None,
            "message": self.message,
            "nodes": list(self.nodes),
            "fix": self.fix.to_json() if self.fix else None,
        }
