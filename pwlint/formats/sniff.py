"""What a file is, from its first bytes: the suffix only breaks ties.

Files people ship are often named by habit, not by format: Keras 2's
``ModelCheckpoint`` writes ``.hdf5``, TorchScript is saved as ``model.jit`` or
``.torchscript``, an ONNX file may have no suffix at all. And some files named like
a model are not one: a Git LFS pointer committed instead of the model (a CI checkout
without LFS), or a safetensors file that holds tensors but no architecture.

:func:`formats` names the loader formats whose content a file has (``"onnx"``,
``"keras"``, ``"torch"``; two for a zip that could be either) and :func:`refusal`
says why a file that is not a model cannot be linted. Both look at the file's first
:data:`HEAD_SIZE` bytes and, for a zip, at most :data:`ZIP_DIRECTORY_BUDGET` bytes of
its member list; nothing heavy is imported and nothing is parsed past that.

Recognised content:

- ONNX: a protobuf ``ModelProto`` (``ir_version`` first, as every protobuf writer
  orders fields by number, then fields of the ModelProto's numbers and wire types);
- HDF5 (legacy Keras ``.h5``/``.hdf5``): the HDF5 signature at offset 0, or at 512,
  1024, 2048... where a file with a user block keeps its superblock;
- zip: Keras 3 (``config.json`` or ``metadata.json`` at the top), or PyTorch (members
  under one top folder: ``archive_format``/``models/`` of a ``.pt2``, ``code/`` and
  ``constants.pkl``/``data.pkl`` of TorchScript, ``data.pkl`` of ``torch.save``);
- a pickle (``torch.save``'s legacy format), which the PyTorch loader refuses to open.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from functools import lru_cache

#: bytes read from the start of every file named or found
HEAD_SIZE = 4096
#: bytes of a zip's central directory read to list its first members
ZIP_DIRECTORY_BUDGET = 64 * 1024
#: where HDF5 looks for its superblock: 0, then 512 and each power of two after it
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_LAST_OFFSET = 1 << 20
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
#: the first LFS spec's URL, still valid in pointer files
LFS_POINTER_OLD = b"version https://hawser.github.com/spec/v1"
#: an LFS pointer file is at most this long (git-lfs's own limit)
LFS_POINTER_MAX = 1024

#: ModelProto fields (number -> protobuf wire type): ir_version, producer_name,
#: producer_version, domain, model_version, doc_string, graph, opset_import,
#: metadata_props, training_info, functions, configuration
ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
#: IR versions an ONNX file can declare (11 in 2025; room for many more)
ONNX_MAX_IR_VERSION = 100

KERAS_ZIP_MEMBERS = frozenset({"config.json", "metadata.json"})
#: members of a torch archive, under its one top folder
TORCH_ZIP_MEMBERS = frozenset({
    "archive_format", "serialized_exported_program.json", "data.pkl", "constants.pkl", "version",
    ".data/version", "byteorder",
})
TORCH_ZIP_FOLDERS = ("models/", "code/", "data/", ".data/")

HINT_EXPORT = (
    "export the model with its architecture: torch.export.save() (.pt2), torch.onnx.export() (.onnx) "
    "or keras model.save() (.keras)"
)


def read_head(path: str) -> bytes | None:
    """The first :data:`HEAD_SIZE` bytes, or None for a path that cannot be read as a
    regular file (missing, a folder, a pipe): the loader says what is wrong with it."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # opening a FIFO would block, a device never ends
        with open(path, "rb") as stream:
            return stream.read(HEAD_SIZE)
    except OSError:
        return None


def formats(path: str, head: bytes) -> frozenset[str]:
    """The loader formats the content matches: empty when none does."""
    try:
        status = os.stat(path)
        version = (status.st_size, status.st_mtime_ns)
    except OSError:
        version = None
    return _formats(path, head, version)


@lru_cache(maxsize=16)  # every loader asks in turn: a zip's directory is read once per file version
def _formats(path: str, head: bytes, version) -> frozenset[str]:
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_formats(path, head)
    if head.startswith(HDF5_MAGIC):
        return frozenset({"keras"})
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return frozenset({"torch"})  # a pickle: the torch loader refuses it with its hint
    if is_onnx(head):
        return frozenset({"onnx"})
    if is_hdf5(path, head):  # after a user block: a few more small reads, so asked last
        return frozenset({"keras"})
    return frozenset()


def refusal(path: str, head: bytes) -> str | None:
    """Why a file no loader recognises is not a model, when its content says so."""
    if is_lfs_pointer(head):
        return f"{path}: a Git LFS pointer, not the model: run `git lfs pull` or check out with LFS"
    if is_safetensors(path, head):
        return (
            f"{path}: a safetensors file holds raw tensors and no architecture, so there is nothing "
            f"to lint: {HINT_EXPORT}"
        )
    return None


# the formats ----------------------------------------------------------------------

def is_lfs_pointer(head: bytes) -> bool:
    return len(head) <= LFS_POINTER_MAX and head.startswith((LFS_POINTER, LFS_POINTER_OLD))


def is_safetensors(path: str, head: bytes) -> bool:
    """An 8-byte little-endian header length, then that many bytes of JSON object."""
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or length < 2:
        return False
    try:
        if 8 + length > os.path.getsize(path):
            return False
    except OSError:
        return False
    if length + 8 <= len(head):  # the whole header is in hand: it must be a JSON object
        try:
            return isinstance(json.loads(head[8:8 + length]), dict)
        except ValueError:
            return False
    return head[9:10] in (b'"', b" ", b"\n", b"}")  # a key, or white space before one


def is_hdf5(path: str, head: bytes) -> bool:
    if head.startswith(HDF5_MAGIC):
        return True
    offset = 512
    try:
        with open(path, "rb") as stream:
            while offset <= HDF5_LAST_OFFSET:
                if offset + len(HDF5_MAGIC) <= len(head):
                    found = head[offset:offset + len(HDF5_MAGIC)]
                else:
                    stream.seek(offset)
                    found = stream.read(len(HDF5_MAGIC))
                if found == HDF5_MAGIC:
                    return True
                if len(found) < len(HDF5_MAGIC):
                    return False  # past the end of the file
                offset *= 2
    except OSError:
        return False
    return False


def is_onnx(head: bytes) -> bool:
    """A protobuf ModelProto: ``ir_version`` first, then fields of the ModelProto's
    numbers and wire types as far as the head goes (a field may run past it)."""
    fields = _wire_fields(head)
    try:
        number, wire, value = next(fields)
        if (number, wire) != (1, 0) or not 1 <= value <= ONNX_MAX_IR_VERSION:
            return False
        for number, wire, value in fields:
            if ONNX_MODEL_FIELDS.get(number) != wire:
                return False
    except ValueError:
        return False
    except StopIteration:
        return False
    return True


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise EOFError
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _wire_fields(data: bytes):
    """(number, wire type, varint value or length) of each top-level protobuf field that
    starts inside ``data``; stops quietly where ``data`` ends, raises ValueError on bytes
    that cannot be protobuf (field 0, wire types 3, 4, 6, 7)."""
    pos = 0
    while pos < len(data):
        try:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if number == 0 or wire not in (0, 1, 2, 5):
                raise ValueError("not protobuf")
            if wire == 0:
                value, pos = _varint(data, pos)
            elif wire == 2:
                value, pos = _varint(data, pos)
                pos += value
            else:
                value, pos = 0, pos + (8 if wire == 1 else 4)
        except EOFError:
            return
        yield number, wire, value


# zip archives ----------------------------------------------------------------------

def _zip_formats(path: str, head: bytes) -> frozenset[str]:
    found = set()
    for name in zip_member_names(path, head):
        if name in KERAS_ZIP_MEMBERS:
            found.add("keras")
        root, slash, rest = name.partition("/")
        if slash and root and (rest in TORCH_ZIP_MEMBERS or rest.startswith(TORCH_ZIP_FOLDERS)):
            found.add("torch")
    return frozenset(found)


def zip_member_names(path: str, head: bytes) -> list[str]:
    """The first member's name (from its local header, at the start of the file) and the
    names of the central directory's first members, read within a small budget: the
    directory sits at the end of the file, located by the end record (zip64 too)."""
    names = []
    if head.startswith(b"PK\x03\x04") and len(head) >= 30:
        name_length = struct.unpack_from("<H", head, 26)[0]
        names.append(head[30:30 + name_length].decode("utf-8", "replace"))
    try:
        with open(path, "rb") as stream:
            located = _central_directory(stream)
            if located is None:
                return names
            offset, size = located
            stream.seek(offset)
            directory = stream.read(min(size, ZIP_DIRECTORY_BUDGET))
    except (OSError, struct.error, ValueError):
        return names
    pos = 0
    while pos + 46 <= len(directory) and directory[pos:pos + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", directory, pos + 28)
        names.append(directory[pos + 46:pos + 46 + name_length].decode("utf-8", "replace"))
        pos += 46 + name_length + extra_length + comment_length
    return names


def _central_directory(stream) -> tuple[int, int] | None:
    """(offset, size) of the central directory, from the end-of-central-directory record
    in the file's last 64 KiB (its comment can be that long)."""
    stream.seek(0, 2)
    file_size = stream.tell()
    tail_size = min(file_size, 22 + 0xFFFF)
    stream.seek(file_size - tail_size)
    tail = stream.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    size, offset = struct.unpack_from("<II", tail, at + 12)
    if offset == 0xFFFFFFFF or size == 0xFFFFFFFF:  # zip64: the locator sits just before
        locator = at - 20
        if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
            return None
        (record,) = struct.unpack_from("<Q", tail, locator + 8)
        stream.seek(record)
        zip64 = stream.read(56)
        if zip64[:4] != b"PK\x06\x06" or len(zip64) < 56:
            return None
        size, offset = struct.unpack_from("<QQ", zip64, 40)
    if offset + size > file_size:
        return None
    return offset, size


def torch_zip_kind(members: list[str]) -> str:
    """What a torch zip holds, from its member names alone (no member is read): ``pt2``
    (``archive_format`` or a serialized program), ``torchscript`` (``code/`` and a
    ``data.pkl``) or ``pickle`` (``torch.save``: ``data.pkl`` and no program). The loader
    (``pwlint.formats.pytorch.archive.classify``) decides for a file it reads; this is for
    the places that only need to say what a file is without reading it."""
    rests = {name.partition("/")[2] or name for name in members}
    if any(rest in ("archive_format", "serialized_exported_program.json") or rest.startswith("models/")
           for rest in rests):
        return "pt2"
    if any(rest.startswith("code/") for rest in rests) and any(rest.endswith("data.pkl") for rest in rests):
        return "torchscript"
    return "pickle"

