"""Which model files changed since a git revision, and their content at that revision.

``pwlint diff --git REV`` compares the working tree with REV, the way ``git diff REV``
does: committed, staged and unstaged changes all count, and so do untracked files that
``.gitignore`` does not exclude (a model added in a pull request is often not yet
``git add``-ed when one runs the check locally). Renames are followed, so a moved model
is compared with its old self rather than reported as deleted plus added.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pwlint.errors import PwlintError

#: what git prints first in a Git LFS pointer file: the model itself is not in the repository
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


@dataclass(frozen=True)
class ChangedModel:
    #: path relative to the repository root, as a pull request lists it (None when removed)
    path: str | None
    #: path at REV (None when the model was added)
    old_path: str | None

    @property
    def status(self) -> str:
        if self.old_path is None:
            return "added"
        if self.path is None:
            return "removed"
        return "renamed" if self.path != self.old_path else "modified"


def _git(args: list[str], cwd: str | Path, into=None) -> bytes:
    """git's output, or written to the open binary file ``into`` (a model can be gigabytes)."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, stdout=into or subprocess.PIPE, stderr=subprocess.PIPE, timeout=600,
        )
    except FileNotFoundError:
        raise PwlintError("--git needs the git command, which was not found") from None
    except subprocess.TimeoutExpired:
        raise PwlintError(f"git {args[0]} took longer than 600 s") from None
    if proc.returncode != 0:
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PwlintError(f"git {args[0]} failed: {reason[-1] if reason else f'exit {proc.returncode}'}")
    return proc.stdout or b""


class GitModels:
    """The repository holding ``cwd``, seen from one revision."""

    def __init__(self, rev: str, cwd: str | Path | None = None) -> None:
        self.cwd = Path(cwd or os.getcwd())
        try:
            top = _git(["rev-parse", "--show-toplevel"], self.cwd)
        except PwlintError:
            raise PwlintError(f"--git: {self.cwd} is not inside a git repository") from None
        self.root = Path(os.fsdecode(top.strip()))
        if rev.startswith("-"):  # would be read as an option by git
            raise PwlintError(f"--git: '{rev}' is not a revision")
        try:
            _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], self.cwd)
        except PwlintError:
            raise PwlintError(f"--git: unknown revision '{rev}' in {self.root}") from None
        self.rev = rev

    def changed(self, suffixes: tuple[str, ...], pathspecs: list[str]) -> list[ChangedModel]:
        """Model files that differ between REV and the working tree, sorted by path."""
        specs = ["--", *pathspecs] if pathspecs else ["--"]
        for spec in pathspecs:
            if not self._exists(spec):
                raise PwlintError(f"{spec}: no such file or directory, now or at {self.rev}")
        # -z: paths with spaces or non-ASCII characters come out verbatim
        out = _git(["diff", "--no-color", "--no-ext-diff", "--name-status", "-z", "--find-renames", self.rev, *specs], self.cwd)
        fields = [os.fsdecode(f) for f in out.split(b"\0") if f]
        models = []
        index = 0
        while index < len(fields):
            status = fields[index][0]
            if status in "RC":
                old, new = fields[index + 1], fields[index + 2]
                index += 3
            else:
                old = new = fields[index + 1]
                index += 2
            model = {"A": ChangedModel(new, None), "D": ChangedModel(None, old)}.get(status, ChangedModel(new, old))
            if _is_model(new, suffixes) or _is_model(old, suffixes):
                models.append(model)
        untracked = _git(["ls-files", "-z", "--others", "--exclude-standard", "--full-name", *specs], self.cwd)
        models += [ChangedModel(os.fsdecode(p), None) for p in untracked.split(b"\0") if p and _is_model(os.fsdecode(p), suffixes)]
        return sorted(models, key=lambda m: m.path or m.old_path)

    def _exists(self, spec: str) -> bool:
        if any(c in spec for c in "*?[:") or os.path.exists(self.cwd / spec):
            return True  # a glob or magic pathspec: git decides what it matches
        try:  # a deleted model is named by its path at REV, which "./" makes relative to cwd
            _git(["cat-file", "-e", f"{self.rev}:./{spec}"], self.cwd)
        except PwlintError:
            return False
        return True

    def working_file(self, path: str) -> str:
        return str(self.root / path)

    def extract(self, path: str, folder: str | Path) -> str:
        """Write ``REV:path`` into ``folder`` under its own name (loaders go by suffix) and
        return where. Filters run as on checkout, so a Git LFS model is fetched when git-lfs
        is installed; an ONNX model's external data is not extracted (linting never reads it)."""
        target = Path(folder) / Path(path).name
        with open(target, "wb") as handle:
            _git(["cat-file", "--filters", f"{self.rev}:{path}"], self.root, into=handle)
        with open(target, "rb") as handle:
            if handle.read(len(LFS_POINTER)) == LFS_POINTER:
                raise PwlintError(f"{self.rev}:{path}: is a Git LFS pointer; install git-lfs and fetch the LFS objects")
        return str(target)


def _is_model(path: str, suffixes: tuple[str, ...]) -> bool:
    return path.lower().endswith(suffixes)
