"""Where a fixed model may go, and putting it there as the file it replaces was.

- :func:`check_output` refuses, before any work, an ``-o`` that names another format
  (ONNX bytes in ``l.keras``), a folder, or a place that cannot be written, in one line
  naming the path (never a raw errno with a temporary path).
- :func:`commit` has the backend write the verified model (each backend writes through
  a temporary file in the target's folder and an atomic rename) and gives the result the
  permissions of the file it replaces, or for a new ``-o`` file the input's: a 0600
  model stays private, a 0664 one group-writable; in place, its owner and group too
  where the process may set them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pwlint.errors import PwlintError

#: how the message names the fixed model's format
FORMAT_NAMES = {"onnx": "ONNX", "keras": "a Keras model", "torch": "a torch.export program (.pt2)"}


def output_suffixes(source: str, backend: object = None) -> tuple[str, ...] | None:
    """The suffixes a fixed model from ``source`` may be written to, as its backend
    declares them (``output_suffixes``; ``keeps_own_suffix`` for a format read by
    content, whose input's own suffix is allowed too); None when it declares nothing."""
    import inspect

    def declared(attribute: str):
        return inspect.getattr_static(backend, attribute, None) if backend is not None else None

    suffixes = declared("output_suffixes")
    if not suffixes:
        return None
    suffixes = tuple(suffixes)
    own = Path(source).suffix.lower()
    if declared("keeps_own_suffix") and own and own not in suffixes:
        suffixes += (own,)
    return suffixes


def check_output(output: str, source: str, fmt: str | None, backend: object = None) -> None:
    """Refuse an ``-o`` the fixed model cannot be written to, with one line naming it."""
    suffixes = output_suffixes(source, backend)
    is_folder = output.endswith(("/", os.sep)) or os.path.isdir(output)
    if is_folder:
        example = os.path.join(output, os.path.basename(source))
        raise PwlintError(f"-o {output}: is a folder; name the file to write (e.g. -o {example})")
    if suffixes is not None and not output.lower().endswith(suffixes):
        what = FORMAT_NAMES.get(fmt or "", f"a {fmt} model")
        raise PwlintError(f"-o {output}: the fixed model is {what}; name a {_either(suffixes)} file")
    check_writable(output)


def _either(suffixes: tuple[str, ...]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


def check_writable(output: str) -> None:
    """The folder of ``output`` exists and a file can be created in it (tried with a
    private temporary file, removed at once: the permission bits do not tell for root,
    read-only mounts or ACLs)."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.exists(folder):
        raise PwlintError(f"-o {output}: folder {_shown_folder(output)} does not exist")
    if not os.path.isdir(folder):
        raise PwlintError(f"-o {output}: {_shown_folder(output)} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".pwlint-probe-", dir=folder)
    except OSError as exc:
        raise PwlintError(f"-o {output}: cannot write in folder {_shown_folder(output)} ({_plain(exc)})") from None
    os.close(handle)
    os.unlink(probe)


def _shown_folder(output: str) -> str:
    return os.path.dirname(output) or "."


def _plain(exc: OSError) -> str:
    """The reason alone (``Permission denied``), without the errno and the temporary path."""
    return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class Keep:
    """The permissions (and owner) a written file is given."""

    mode: int
    owner: tuple[int, int] | None = None

    @classmethod
    def of(cls, status: os.stat_result, with_owner: bool) -> Keep:
        return cls(stat.S_IMODE(status.st_mode), (status.st_uid, status.st_gid) if with_owner else None)

    def apply(self, path: Path) -> None:
        if self.owner is not None and hasattr(os, "chown"):
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.chown(path, *self.owner)
        os.chmod(path, self.mode)  # after chown, which may clear set-id bits


def commit(session, target: str, source: Path) -> None:
    """``session.commit(target)``, the written file(s) then given the mode of the file
    replaced (and its owner where allowed), or for a new file the source's mode.

    The backend renames its verified candidate into place, or writes a new file there:
    the candidate is given the mode first, and files are created under a umask that
    grants no one more than the mode will, so a 0600 model is never readable by others,
    even for the moment between the rename and the chmod. An OSError (no space, no
    permission) is one line naming the target, not an errno with a temporary path."""
    destination = Path(target)
    model_keep = _keep_for(destination, source)
    data = Path(f"{destination}.data")  # where an ONNX backend puts external data
    data_keep = Keep.of(data.stat(), True) if data.exists() else Keep(model_keep.mode)
    candidate = Path(session.last_good)
    try:
        for path, keep in ((candidate, model_keep), (Path(f"{candidate}.data"), data_keep)):
            if path != source and path.exists():
                os.chmod(path, keep.mode)  # a private candidate, renamed into place with its mode
        with _umask_at_most(model_keep.mode):
            session.commit(target)
        model_keep.apply(destination)
        if data.exists():
            data_keep.apply(data)
    except OSError as exc:
        raise PwlintError(f"{target}: could not write the fixed model ({_plain(exc)})") from None


def _keep_for(destination: Path, source: Path) -> Keep:
    """The replaced file's mode and owner; for a new file, the source's mode (a new file
    belongs to whoever writes it)."""
    try:
        return Keep.of(destination.stat(), with_owner=True)
    except FileNotFoundError:
        return Keep.of(source.stat(), with_owner=False)


@contextlib.contextmanager
def _umask_at_most(mode: int):
    """Files created inside get no group or other permission that ``mode`` lacks.

    The umask is process-wide: it is only ever tightened here, and restored at once."""
    mask = os.umask(0o077)
    os.umask(mask | (~mode & 0o077))
    try:
        yield
    finally:
        os.umask(mask)
