"""What a rule is: a code, a name, a default severity, options and a check.

A rule lives in one file whose module docstring is its documentation, in four
sections: *What it does*, *Why is this bad*, *Example*, *Use instead*.
``pwlint rule CODE`` prints it and the README's rule table is built from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from pwlint.config import NamesKeysOnError
from pwlint.findings import Finding, Severity
from pwlint.ir import ModelGraph
from pwlint.lazy_model import LazyModel, option

DOC_SECTIONS = ("What it does", "Why is this bad", "Example", "Use instead")
CODE_PATTERN = re.compile(r"^[A-Z]{1,6}[0-9]{3,4}$")
#: the kinds of fix a rule may declare (see :attr:`Rule.fixes`)
FIX_KINDS = ("safe", "unsafe")
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class RuleOptions(NamesKeysOnError, LazyModel):
    """Base class of a rule's options, declared as on a pydantic model (``option()`` for
    a description or constraints); keys are written in kebab-case in config files.
    Validated by pydantic only when the configuration sets some."""

    model_config = {**LazyModel.model_config, "frozen": True}


class NoOptions(RuleOptions):
    pass


CheckFunction = Callable[[ModelGraph, RuleOptions], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    check: CheckFunction
    doc: str
    options: type[RuleOptions] = NoOptions
    #: the kinds of fix the rule's findings can offer, declared so that ``pwlint rules``
    #: can tell without linting a model: ``("safe",)``, ``("unsafe",)``, ``("safe",
    #: "unsafe")``; the default ``()`` means no fix (the finding is only reported)
    fixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not CODE_PATTERN.match(self.code):
            raise ValueError(f"rule code {self.code!r} must look like ABC123")
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"rule name {self.name!r} must be kebab-case")
        missing = [s for s in DOC_SECTIONS if s not in doc_sections(self.doc)]
        if missing:
            raise ValueError(f"rule {self.code} docstring lacks section(s): {', '.join(missing)}")
        unknown = [kind for kind in self.fixes if kind not in FIX_KINDS]
        if unknown or isinstance(self.fixes, str):
            raise ValueError(f"rule {self.code} fixes must be a tuple of {' and '.join(FIX_KINDS)}, got {self.fixes!r}")

    @property
    def fix_label(self) -> str:
        """``safe``, ``unsafe``, ``safe+unsafe`` or ``none``, for tables."""
        return "+".join(kind for kind in FIX_KINDS if kind in self.fixes) or "none"

    @property
    def summary(self) -> str:
        """The docstring's title after ``CODE name:``, for tables and short descriptions."""
        title = self.doc.strip().splitlines()[0]
        return title.split(":", 1)[1].strip() if ":" in title else title

    @property
    def body(self) -> str:
        """The docstring without its title line."""
        return self.doc.strip().partition("\n")[2].strip()


def doc_sections(doc: str) -> dict[str, str]:
    """Split a rule docstring into its ``## Heading`` sections."""
    sections: dict[str, str] = {}
    current = None
    lines: list[str] = []
    for line in (doc or "").splitlines():
        heading = re.match(r"^\s*##\s+(.*?)\s*\??\s*$", line)
        if heading:
            if current:
                sections[current] = "\n".join(lines).strip()
            current, lines = heading.group(1).rstrip("?"), []
        elif current:
            lines.append(line)
    if current:
        sections[current] = "\n".join(lines).strip()
    return sections
