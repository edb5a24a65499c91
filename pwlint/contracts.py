"""What the core expects of the objects plugins register: loaders, reporters, fix
backends and the fix sessions a backend opens.

Plugins do not subclass these: any object with the members below will do (structural
typing, as pluggy types its own contracts). They are ``runtime_checkable``, so
``isinstance(obj, Loader)`` says whether an object has every member (not whether the
signatures match; ``tests/test_plugins.py`` checks those of the built-ins).

A member the core uses only where present is in a protocol of its own
(:class:`SniffingLoader`, :class:`DiscoveringLoader`, :class:`DescribedBackend`), so
that ``isinstance`` answers the question the core asks.

This module imports nothing at run time beyond ``typing``: every plugin module may
import it for annotations without slowing the start of a lint.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING, Any, Mapping, Protocol, Sequence, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from pwlint.engine import LintResult
    from pwlint.findings import Fix
    from pwlint.ir import ModelGraph

__all__ = [
    "DescribedBackend", "DiscoveringLoader", "Feeds", "FixBackend", "FixSession", "Loader",
    "ModelFile", "Outputs", "Reporter", "SniffingLoader",
]

#: A model file on disk, as sessions and backends pass it around (a path or a string).
ModelFile: TypeAlias = "str | os.PathLike[str]"
#: A model's inputs by name, as :meth:`FixBackend.run` chose them.
Feeds: TypeAlias = "Mapping[str, Any]"
#: A model's outputs: by name (ONNX graph outputs) or by position (a list of arrays).
Outputs: TypeAlias = "Mapping[str, np.ndarray] | Sequence[np.ndarray]"


@runtime_checkable
class Loader(Protocol):
    """Reads one model format into the IR; registered by ``pwlint_register_loaders``."""

    name: str
    """The format's name (``"onnx"``): JSON's ``files[i].format``, and the key that pairs
    the loader with the fix backend of the same ``name``."""

    suffixes: tuple[str, ...]
    """Lower-case file endings (``(".onnx",)``). A named file with one of them goes to this
    loader when no loader recognises its content; a loader without ``sniff`` owns them
    outright. A folder is searched for them, unless the loader has ``discovered``."""

    def load(self, path: str) -> ModelGraph:
        """The model at ``path`` as a :class:`~pwlint.ir.ModelGraph`.

        A file the loader knowingly checks and refuses raises
        :class:`~pwlint.errors.LoadError` (or another ``PwlintError``) whose message
        starts with the path: the user sees it as one line and exit 2. Any other
        exception is taken for a bug and reported as an internal error. Operators the
        loader does not know become layers with ``understood=False``; absent weights are
        named in ``graph.meta["missing_weights"]`` (see :mod:`pwlint.hookspecs`).
        """
        ...


@runtime_checkable
class SniffingLoader(Loader, Protocol):
    """A loader that recognises its files by content (optional, and recommended)."""

    def sniff(self, path: str, head: bytes) -> bool:
        """Whether the file is in this format, judged from ``head``, its first 4096 bytes
        (read more from ``path`` only if the format needs it, e.g. a zip's member list).

        Called for every file a folder yields, so it must be cheap. It must not raise: an
        exception counts as "not mine". Of several loaders that recognise a file, the one
        whose ``suffixes`` it has wins.
        """
        ...


@runtime_checkable
class DiscoveringLoader(Loader, Protocol):
    """A loader that reads more suffixes when a file is named than it looks for in a
    folder (optional)."""

    discovered: tuple[str, ...]
    """The endings a folder is searched for, a subset of ``suffixes``: ``.pt`` is read when
    named, but in a folder it is most often a pickled checkpoint."""


@runtime_checkable
class Reporter(Protocol):
    """Writes the results of a run; registered by ``pwlint_register_reporters``."""

    name: str
    """The ``--format`` value that selects this reporter (``"sarif"``)."""

    def report(self, result: LintResult, stream: IO[str]) -> None:
        """Write ``result`` (a :class:`pwlint.engine.LintResult`: ``files`` with their
        ``error``, ``coverage`` and ``fix`` report, and ``findings``) to ``stream``, a
        text stream. The exit code is the engine's, not the reporter's."""
        ...


@runtime_checkable
class FixSession(Protocol):
    """One model being fixed, opened by :meth:`FixBackend.open`.

    The fix loop (:mod:`pwlint.fix.rounds`) applies a round of fixes, takes a
    ``checkpoint`` (a candidate file), runs it, then ``accept``\\ s or ``revert``\\ s it;
    at the end it writes the last accepted state with ``commit`` and always calls
    ``close``. The source file is never written before ``commit``.
    """

    path: ModelFile
    """The model being fixed, as opened. Written by ``commit`` only when the user fixes
    in place."""

    last_good: ModelFile
    """The file holding the last verified state: ``path`` until a round is accepted,
    then the accepted candidate. Its size is reported as the size after fixing."""

    def graph(self) -> ModelGraph:
        """The current state as the loader would read it (same layer names), for the
        rules to check between rounds; ``graph.path`` is the original ``path``."""
        ...

    def apply(self, fix: Fix) -> str:
        """Carry out ``fix.action`` with ``fix.plan`` on the in-memory state, and return a
        sentence saying what was done (the ``note`` of the report). Raise
        :class:`~pwlint.errors.FixNotApplicable` with the reason, before changing
        anything, when this backend cannot do it (an unknown action, a quantized layer, a
        shape it does not rewrite); any other exception rolls back the whole round."""
        ...

    def checkpoint(self) -> ModelFile:
        """The current state as a candidate file (a new file, never ``path``), checked by
        the format's checker. An ``OSError`` stops the fix (the disk, not the fix); any
        other exception is the checker's rejection and rolls the round back."""
        ...

    def accept(self, candidate: ModelFile) -> None:
        """``candidate`` (from :meth:`checkpoint`) passed verification: it becomes
        ``last_good``."""
        ...

    def revert(self) -> None:
        """Return the in-memory state to ``last_good``."""
        ...

    def commit(self, target: str) -> None:
        """Write ``last_good`` to ``target`` atomically (a temporary file in the target's
        folder, then a rename), so an interrupted run never leaves a half-written model.
        Raise a ``PwlintError`` when the format cannot be written there."""
        ...

    def close(self) -> None:
        """Delete every temporary file; called once, whether the fix succeeded or not."""
        ...

    def file_size(self, model_file: ModelFile) -> int:
        """The bytes ``model_file`` takes, its external weight files included (``path`` or
        a candidate), for the report's before/after sizes."""
        ...


@runtime_checkable
class FixBackend(Protocol):
    """Rewrites one format for ``--fix``; registered by ``pwlint_register_backends``.

    Register it without importing the framework it needs (a small object whose
    attributes import the real backend on first use): linting never fixes.

    Optional declarations, read with ``inspect.getattr_static`` before any model is read
    (so they must be plain attributes of the registered object, as
    :class:`pwlint.formats.lazy.LazyBackend` keeps its keyword arguments):
    ``requires`` (modules, or :class:`pwlint.fix.needs.Need`, that ``--fix`` needs
    installed), ``output_suffixes`` (what ``-o`` may name; without it any name is
    accepted), ``keeps_own_suffix`` (the input's own suffix is accepted too: a format read
    by content) and ``edits_without_running`` (``--no-verify`` can fix a model the
    runtime cannot run, so the hint is given).
    """

    name: str
    """The format it rewrites: the ``name`` of the loader whose files it fixes."""

    def open(self, path: str) -> FixSession:
        """A :class:`FixSession` on the model at ``path``. Raise a ``PwlintError`` for a
        model this backend refuses to touch (external data outside its folder): it is
        opened before anything runs, so the refusal comes first."""
        ...

    def run(self, model_file: ModelFile, feeds: Feeds | None = None) -> tuple[Feeds, Outputs]:
        """Run the model in ``model_file`` and return ``(feeds, outputs)``. Without
        ``feeds``, make seeded random inputs (the same on every call) and return them:
        the fix loop runs every candidate on the inputs the original was run on.
        Outputs are a dict by name (matched by name: a fix may not rename them) or a
        list (matched by position). Any exception means the model does not run."""
        ...


@runtime_checkable
class DescribedBackend(FixBackend, Protocol):
    """A backend that names its tools in reports (optional; the built-ins all do)."""

    checker: str
    """What checks a candidate, in the rejection message: "``{checker}`` rejected the
    result: ..." (``"the ONNX checker"``)."""

    runtime: str
    """What runs the models for verification, shown in the fix report (``"onnxruntime"``)."""
