"""The ``.pt2`` fix backend: rewrites ``torch.export`` programs with FX surgery, checks
each candidate by loading and running it, and writes atomically.

The user's file is never given to ``torch.export.load`` (see
:mod:`pwlint.formats.pytorch.pt2.sanitize`): every load goes through a sanitized copy in a
private ``.pwlint-*`` folder. A fix is applied to ``ExportedProgram.module()`` (a
``torch.fx.GraphModule``), which is then exported again with ``torch.export.export``
on example inputs built from the program's input shapes (symbolic dimensions bound
to 2, and kept dynamic) and saved with ``torch.export.save``: each applied fix leaves
a new ``.pt2`` file, which the torch loader lints like any other.

Candidates live in a private folder next to the model, so that the final step is a
rename on the same file system; the source model is never opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pwlint.errors import FixNotApplicable, PwlintError
from pwlint.findings import Fix
from pwlint.fix.actions import accepted, carry_out
from pwlint.fix.backend import FormatBackend, run_on_samples
from pwlint.ir import ModelGraph
from pwlint.quiet import quiet

#: how symbolic input dimensions (batch) are bound when running or exporting the model
SYMBOLIC_DIM = 2


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Program:
    """An exported program loaded from a sanitized copy: the ExportedProgram, its
    GraphModule and what its user inputs look like."""

    def __init__(self, model_file: Path, scratch: Path) -> None:
        import torch

        from pwlint.formats.pytorch.pt2.sanitize import check_graph_module, sanitized_copy

        folder = Path(tempfile.mkdtemp(prefix="load-", dir=scratch))
        try:
            safe = sanitized_copy(model_file, folder)
            try:
                with quiet():
                    self.ep = torch.export.load(str(safe))
            except Exception as exc:
                raise FixNotApplicable(f"torch cannot load the program: {_reason(exc)}") from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        check_graph_module(self.ep.graph_module)
        with quiet():
            self.gm = self.ep.module()
        check_graph_module(self.gm)
        self.inputs = self._inputs()

    def _inputs(self) -> list[tuple[str, tuple, object, list]]:
        """``(name, dims, dtype, bounds)`` of each user input; a dim is an int or None
        (symbolic), ``bounds`` holds the (min, max, hint) of the symbolic ones."""
        import torch

        from torch.export.graph_signature import InputKind

        placeholders = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        found = []
        for spec in self.ep.graph_signature.input_specs:
            if spec.kind != InputKind.USER_INPUT:
                continue
            name = getattr(spec.arg, "name", None)
            value = placeholders[name].meta.get("val") if name in placeholders else None
            if not isinstance(value, torch.Tensor):
                raise FixNotApplicable(f"the program input '{name}' is not a tensor")
            dims, bounds = [], []
            for dim in value.shape:
                if isinstance(dim, int):
                    dims.append(dim)
                    bounds.append(None)
                    continue
                dims.append(None)
                bounds.append(self._bounds(dim))
            found.append((name, tuple(dims), value.dtype, bounds))
        if not found:
            raise FixNotApplicable("the program has no tensor inputs")
        return found

    def _bounds(self, dim) -> tuple:
        low, high, hint = 0, None, None
        try:
            expr = dim.node.expr
            ranges = self.ep.range_constraints.get(expr)
            if ranges is not None:
                low = int(ranges.lower) if ranges.lower.is_finite else 0
                high = int(ranges.upper) if ranges.upper.is_finite else None
            hint = dim.node.hint
        except Exception:  # an expression, not a plain symbol: no range to read
            pass
        return low, high, hint

    def example(self, seed: int = 0, use_hints: bool = False) -> dict:
        """Seeded inputs by name: symbolic dims bound to 2 (within their range), or to the
        sizes the program was exported with."""
        import torch

        rng = np.random.default_rng(seed)
        feeds = {}
        for name, dims, dtype, bounds in self.inputs:
            shape = []
            for dim, bound in zip(dims, bounds):
                if dim is not None:
                    shape.append(dim)
                    continue
                low, high, hint = bound
                size = hint if use_hints and isinstance(hint, int) else SYMBOLIC_DIM
                size = max(size, low)
                if high is not None:
                    size = min(size, high)
                shape.append(int(size))
            np_dtype = torch.empty((), dtype=dtype).numpy().dtype
            if dtype.is_floating_point:
                feeds[name] = rng.standard_normal(shape).astype(np_dtype)
            elif dtype == torch.bool:
                feeds[name] = rng.integers(0, 2, shape).astype(bool)
            elif not dtype.is_complex:
                feeds[name] = rng.integers(0, 4, shape).astype(np_dtype)
            else:
                raise FixNotApplicable(f"cannot make sample inputs of type {dtype} for '{name}'")
        return feeds

    def arguments(self, feeds: dict) -> tuple[tuple, dict]:
        import torch
        import torch.utils._pytree as pytree

        flat = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name, *_ in self.inputs]
        args, kwargs = pytree.tree_unflatten(flat, self.ep.call_spec.in_spec)
        return tuple(args), dict(kwargs)

    def dynamic_shapes(self):
        """``Dim.AUTO`` for the dims that are symbolic in the source, in the inputs' structure."""
        import torch
        import torch.utils._pytree as pytree

        specs = []
        for _, dims, _, _ in self.inputs:
            auto = {i: torch.export.Dim.AUTO for i, d in enumerate(dims) if d is None}
            specs.append(auto or None)
        if not any(specs):
            return None
        args, kwargs = pytree.tree_unflatten(specs, self.ep.call_spec.in_spec)
        return (tuple(args), dict(kwargs)) if kwargs else tuple(args)

    def run(self, feeds: dict) -> list[np.ndarray]:
        import torch
        import torch.utils._pytree as pytree

        args, kwargs = self.arguments(feeds)
        with torch.no_grad(), quiet():
            result = self.gm(*args, **kwargs)
        outputs = []
        for value in pytree.tree_leaves(result):
            if isinstance(value, torch.Tensor):
                outputs.append(value.detach().cpu().numpy())
            else:
                outputs.append(np.asarray(value))
        return outputs

    def export(self, target: Path) -> None:
        """Export the (edited) GraphModule again and save it to ``target``."""
        import torch

        last = None
        for use_hints in (False, True):
            args, kwargs = self.arguments(self.example(use_hints=use_hints))
            try:
                with quiet():
                    exported = torch.export.export(self.gm, args, kwargs or None, dynamic_shapes=self.dynamic_shapes())
                    torch.export.save(exported, str(target))
                return
            except OSError:
                raise  # the disk, not the program
            except Exception as exc:  # e.g. a size of 2 the program cannot take: try the export's own sizes
                last = exc
        raise FixNotApplicable(f"the rewritten program cannot be exported again: {_reason(last)}")


def _kind(path: Path) -> str | None:
    """``pt2``, ``pt2-legacy``, ``torchscript`` or ``pickle`` (see :mod:`pwlint.formats.pytorch.archive`)."""
    from pwlint.formats.pytorch.archive import classify, open_archive

    archive = open_archive(str(path))
    if archive is None:
        return None
    try:
        return classify(archive)[0]
    finally:
        archive.close()


def _scratch_folder(model_file: Path) -> Path:
    """A private folder next to the model (same file system), else in the temp folder."""
    try:
        return Path(tempfile.mkdtemp(prefix=".pwlint-", dir=Path(model_file).resolve().parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=".pwlint-"))


def run_model(model_file: Path, feeds: dict | None = None, seed: int = 0) -> tuple[dict, list[np.ndarray]]:
    """Load a model file through a sanitized copy and run it on seeded inputs (or the given ones)."""
    scratch = _scratch_folder(Path(model_file))
    try:
        program = Program(Path(model_file), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _run(program, feeds, seed)


def _run(program: Program, feeds: dict | None, seed: int = 0) -> tuple[dict, list[np.ndarray]]:
    # symbolic sizes bound to 2, then to the sizes the program was exported with
    return run_on_samples(program.run, lambda use_hints: program.example(seed, use_hints), (False, True), feeds,
                          "torch cannot run the program", _reason)


class Pt2FixSession:
    """One ``.pt2`` model being fixed.

    ``current`` is the file holding the model as the applied fixes left it: the source
    until the first fix, then a file written by this session. ``last_good`` is the last
    verified one. The loaded program is cached until the next change.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.workdir = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=self.path.resolve().parent))
        self.current = self.path
        self.last_good = self.path
        self.steps = 0
        self._graph: tuple[Path, ModelGraph] | None = None
        self._program: tuple[Path, Program] | None = None

    # reading -------------------------------------------------------------
    def graph(self) -> ModelGraph:
        if self._graph is None or self._graph[0] != self.current:
            from pwlint.formats.pytorch.loader import load

            graph = load(str(self.current))
            graph.path = str(self.path)
            self._graph = (self.current, graph)
        return self._graph[1]

    def program(self) -> Program:
        if self._program is None or self._program[0] != self.current:
            self._program = None
            self._program = (self.current, Program(self.current, self.workdir))
        return self._program[1]

    def file_size(self, model_file: Path) -> int:
        return Path(model_file).stat().st_size

    # changing ------------------------------------------------------------
    def apply(self, fix: Fix) -> str:
        from pwlint.formats.pytorch.pt2.fixes import Pt2Rewriter

        graph = self.graph()
        plan = accepted(fix, graph, Pt2Backend)
        program = self.program()
        try:
            with quiet():
                note = carry_out(Pt2Rewriter(program.gm, graph), plan)
        except FixNotApplicable:
            raise  # raised before the module changed
        except BaseException:
            self._program = None  # the module may be half edited: load it again next time
            raise
        self._program = None  # edited: the next fix loads the file written here
        self.steps += 1
        folder = self.workdir / f"step-{self.steps}"
        folder.mkdir()
        candidate = folder / self.path.name
        program.export(candidate)  # FixNotApplicable if it cannot: ``current`` is unchanged
        self.current = candidate
        return note

    def checkpoint(self) -> Path:
        """The file holding the current state, checked to load (through a sanitized copy)."""
        self._program = None
        self.program()
        return self.current

    def accept(self, candidate: Path) -> None:
        self.last_good = Path(candidate)

    def revert(self) -> None:
        """Back to the last verified state."""
        self.current = self.last_good
        self._program = None

    # writing -------------------------------------------------------------
    def commit(self, target: str) -> None:
        """Copy the last verified file into place: a temporary file in the target's
        folder, then an atomic rename."""
        destination = Path(target)
        if destination.suffix.lower() != ".pt2":
            raise PwlintError(f"{target}: a fixed .pt2 program is written as a .pt2 file; name the output *.pt2")
        if Path(self.last_good) == self.path and _kind(self.path) not in ("pt2", "pt2-legacy"):
            raise PwlintError(f"{self.path}: only .pt2 programs can be fixed; nothing was written to {target}")
        handle, staged = tempfile.mkstemp(prefix=".pwlint-", suffix=".pt2", dir=destination.resolve().parent)
        os.close(handle)
        source = Path(self.last_good)
        try:
            ours = source != self.path and self.workdir in source.parents
            if ours and os.stat(source).st_dev == os.stat(staged).st_dev:
                os.replace(source, staged)  # a file this session wrote: a rename moves no bytes
            else:
                shutil.copyfile(source, staged)
            os.replace(staged, destination)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            raise

    def close(self) -> None:
        self._program = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class Pt2Backend(FormatBackend):
    name, label, checker, runtime = "torch", ".pt2", "torch.export.load of a sanitised copy", "torch"
    session, run_model = Pt2FixSession, staticmethod(run_model)
    head_ranks = (2,)  # the rewriter writes aten.conv2d and adaptive_avg_pool2d
