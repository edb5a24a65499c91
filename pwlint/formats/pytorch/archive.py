"""Opening PyTorch files safely: which kind of file it is, and size-limited reads of
the members pwlint needs.

Nothing in a PyTorch file is ever unpickled here. A file is one of:

- ``pt2``: a ``torch.export.save`` archive (``<root>/archive_format`` says ``pt2`` and
  ``<root>/models/<name>.json`` holds the serialized program), or the older layout
  with ``serialized_exported_program.json``;
- ``torchscript``: a ``torch.jit.save`` archive (``<root>/code/`` and ``<root>/data.pkl``);
- ``pickle``: ``torch.save`` output (a zip with ``data.pkl`` but no program, or a legacy
  non-zip pickle), which is refused: a state_dict holds no architecture, and a pickled
  module runs arbitrary code when it is loaded.
"""

from __future__ import annotations

import json
import zipfile
import zlib

from pwlint.errors import LoadError
from pwlint.limits import read_at_most, require_model_file

MB = 2**20
#: the serialized program: refuse anything larger rather than exhaust memory (parsed,
#: JSON of many small objects takes up to ~25 times its size as Python objects)
MAX_PROGRAM = 64 * MB
#: weight and constant metadata, TorchScript source and data.pkl
MAX_METADATA = 64 * MB
MAX_MEMBERS = 1_000_000

HINT = "export the model with torch.export.export() and torch.export.save() to a .pt2 file"
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError,
                 NotImplementedError, ValueError, zlib.error, KeyError)


class Archive:
    """A zip file whose members are named relative to its single top folder."""

    def __init__(self, path: str, zf: zipfile.ZipFile) -> None:
        self.path = path
        self.zf = zf
        self.infos = {info.filename: info for info in zf.infolist()}

    def close(self) -> None:
        self.zf.close()

    def roots(self, member: str) -> list[str]:
        """Prefixes ``p`` (``""`` or ``"folder/"``) for which ``p + member`` exists."""
        found = []
        for name in self.infos:
            if name == member:
                found.append("")
            elif name.endswith("/" + member) and name.count("/") == member.count("/") + 1:
                found.append(name[: -len(member)])
        return sorted(found)

    def names(self, prefix: str) -> list[str]:
        return [n for n in self.infos if n.startswith(prefix)]

    def read(self, member: str, limit: int) -> bytes:
        info = self.infos.get(member)
        if info is None:
            raise LoadError(f"{self.path}: damaged archive, {member} is missing")
        if info.file_size > limit:
            raise LoadError(
                f"{self.path}: {member} is {info.file_size / MB:.0f} MB, over pwlint's limit of "
                f"{limit // MB} MB for this part of the file"
            )
        try:
            with self.zf.open(info) as stream:
                data = read_at_most(stream, limit)
        except READ_ERRORS as exc:
            raise LoadError(f"{self.path}: damaged archive, cannot read {member} ({exc})") from exc
        if len(data) > limit:
            raise LoadError(f"{self.path}: {member} is larger than pwlint's limit of {limit // MB} MB")
        return data

    def json(self, member: str, limit: int):
        data = self.read(member, limit)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise LoadError(f"{self.path}: {member} is not valid JSON ({exc})") from exc

    def text(self, member: str, limit: int) -> str:
        try:
            return self.read(member, limit).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LoadError(f"{self.path}: {member} is not UTF-8 text") from exc


def open_archive(path: str) -> Archive | None:
    """The file as an :class:`Archive`, or None if it is not a zip file at all."""
    require_model_file(path, "a PyTorch model")
    try:
        if not zipfile.is_zipfile(path):
            return None
        zf = zipfile.ZipFile(path)
    except READ_ERRORS as exc:
        raise LoadError(f"{path}: damaged zip archive ({exc})") from exc
    if len(zf.infolist()) > MAX_MEMBERS:
        zf.close()
        raise LoadError(f"{path}: archive has more than {MAX_MEMBERS} members")
    return Archive(path, zf)


def refuse_pickle(path: str, what: str) -> LoadError:
    return LoadError(
        f"{path}: {what}; pwlint does not unpickle it (a state_dict holds no architecture and "
        f"a pickled module can run arbitrary code when loaded): {HINT}"
    )


def not_a_zip(path: str) -> LoadError:
    try:
        with open(path, "rb") as stream:
            head = stream.read(2)
    except OSError as exc:
        return LoadError(f"{path}: cannot read the file ({exc.strerror or exc})")
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return refuse_pickle(path, "a pickle file (legacy torch.save format)")
    return LoadError(f"{path}: not a PyTorch model (neither a .pt2 archive nor a TorchScript archive): {HINT}")


def classify(archive: Archive) -> tuple[str, str]:
    """``(kind, root)``: kind is ``pt2``, ``pt2-legacy``, ``torchscript`` or ``pickle``."""
    # found in one pass over the names: a lookup per candidate root would take quadratic
    # time on an archive of many folders
    with_models = _folders_holding(archive, "models/", ".json")
    with_code = _folders_holding(archive, "code/")
    with_aoti = _folders_holding(archive, "data/aotinductor/")
    for root in archive.roots("archive_format"):
        if root in with_models:
            return "pt2", root
    for root in archive.roots("serialized_exported_program.json"):
        return "pt2-legacy", root
    for root in archive.roots("data.pkl"):
        if root in with_code:
            return "torchscript", root
        return "pickle", root
    for root in archive.roots("archive_format"):
        if root in with_aoti:
            raise LoadError(
                f"{archive.path}: an AOTInductor package holds compiled code, not a program pwlint can read: "
                "lint the ExportedProgram saved with torch.export.save()"
            )
        raise LoadError(f"{archive.path}: damaged .pt2 archive, it holds no models/*.json program")
    raise LoadError(f"{archive.path}: a zip archive but not a PyTorch model (no serialized program, no TorchScript code)")


def _folders_holding(archive: Archive, folder: str, suffix: str = "") -> set[str]:
    """Prefixes ``p`` (``""`` or ending in ``/``) with a member ``p + folder + ...`` ending in ``suffix``."""
    found = set()
    for name in archive.infos:
        if not name.endswith(suffix):
            continue
        at = name.find(folder)
        while at >= 0:
            if at == 0 or name[at - 1] == "/":
                found.add(name[:at])
            at = name.find(folder, at + 1)
    return found
