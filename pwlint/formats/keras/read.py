"""Reading Keras files without Keras: the model config (JSON) and weight shapes.

Two containers are read:

* ``.keras`` (Keras 3): a zip holding ``config.json``, ``metadata.json`` and
  ``model.weights.h5``. The weights file is opened in place when the member is
  stored uncompressed (as Keras writes it), so a large model is not copied.
* legacy ``.h5``/``.hdf5`` (``model.save("x.h5")``, Keras 1 to 3): an HDF5 file
  with the JSON config in the ``model_config`` attribute and the weights under
  ``model_weights``. Keras 1 and 2.0-2.1 configs are translated to the later form
  as they are read (:mod:`keras_legacy`).

The file type is sniffed from its first bytes, not its suffix. Only dataset
shapes and dtypes are looked at, never their values. h5py is imported inside
the functions that need it, so linting other formats never imports it.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from pwlint.errors import LoadError
from pwlint.limits import read_at_most
from pwlint.formats.keras.legacy import normalise
from pwlint.formats.sniff import is_hdf5

#: the largest model config read (config.json member or model_config attribute)
MAX_CONFIG_BYTES = 64 * 1024 * 1024
MAX_METADATA_BYTES = 1024 * 1024
#: a compressed weights file is read through the inflater, and HDF5 seeks around in it
#: (each seek back inflates from the start): Keras stores weights uncompressed, so a
#: large compressed one is only worth refusing
MAX_COMPRESSED_WEIGHTS = 256 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS_MEMBER = "model.weights.h5"


@dataclass
class KerasFile:
    """What the loader needs from a Keras file: the config, the container and a way
    to walk the stored weights (an open h5py group, or None when there are none)."""

    path: str
    container: str  # "keras" (zip) or "h5" (legacy)
    config: dict
    metadata: dict = field(default_factory=dict)
    weights_root: Any = None


def _sniff(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(8)
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory, not a Keras model file") from None
    except OSError as exc:
        raise LoadError(f"{path}: cannot read file ({exc.strerror or exc})") from None


@contextmanager
def open_keras(path: str) -> Iterator[KerasFile]:
    """Open a ``.keras`` or legacy ``.h5`` model; raises :class:`LoadError` naming the file."""
    head = _sniff(path)
    if not head:
        raise LoadError(f"{path}: empty file, not a Keras model")
    if head.startswith(ZIP_MAGIC) or zipfile.is_zipfile(path):
        with _open_zip(path) as model:
            yield model
    elif head == HDF5_MAGIC or is_hdf5(path, head):  # the signature may follow a user block
        with _open_legacy_h5(path) as model:
            yield model
    else:
        raise LoadError(f"{path}: not a Keras model (neither a .keras zip archive nor an HDF5 file)")


def _parse_config(path: str, raw: bytes | str, where: str) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise LoadError(f"{path}: {where} is larger than {MAX_CONFIG_BYTES >> 20} MB; refusing to read it")
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError(f"{path}: {where} is not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise LoadError(f"{path}: {where} is nested too deeply to read") from None
    if not isinstance(config, (dict, list)):
        raise LoadError(f"{path}: {where} does not describe a Keras model")
    if isinstance(config, list):  # a bare Sequential config: the list of its layers
        config = {"class_name": "Sequential", "config": config}
    if "class_name" not in config:
        raise LoadError(f"{path}: {where} does not describe a Keras model (no class_name)")
    return normalise(config)  # Keras 1 and 2.0-2.1 configs in the form the loader reads


def _read_member(path: str, zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise LoadError(f"{path}: {name} is larger than {limit >> 20} MB; refusing to read it")
    with zf.open(info) as member:
        data = read_at_most(member, limit)  # the declared size may lie
    if len(data) > limit:
        raise LoadError(f"{path}: {name} is larger than {limit >> 20} MB; refusing to read it")
    return data


@contextmanager
def _open_zip(path: str) -> Iterator[KerasFile]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise LoadError(f"{path}: not a valid .keras file (corrupt zip archive: {exc})") from None
    with zf:
        names = set(zf.namelist())
        if "config.json" not in names:
            raise LoadError(f"{path}: not a Keras model: the archive has no config.json")
        try:
            config = _parse_config(path, _read_member(path, zf, "config.json", MAX_CONFIG_BYTES), "config.json")
            metadata = {}
            if "metadata.json" in names:
                try:
                    metadata = json.loads(_read_member(path, zf, "metadata.json", MAX_METADATA_BYTES))
                except (ValueError, UnicodeDecodeError, LoadError):
                    metadata = {}
                metadata = metadata if isinstance(metadata, dict) else {}
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise LoadError(f"{path}: not a valid .keras file (corrupt zip archive: {exc})") from None
        if WEIGHTS_MEMBER not in names:
            yield KerasFile(path, "keras", config, metadata)
            return
        with _member_file(path, zf, WEIGHTS_MEMBER) as fileobj, _h5_file(path, fileobj, WEIGHTS_MEMBER) as h5:
            yield KerasFile(path, "keras", config, metadata, h5)


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes of ``raw`` starting at ``start``: a stored
    (uncompressed) zip member opened in place, seekable at no cost."""

    def __init__(self, raw, start: int, size: int) -> None:
        self.raw, self.start, self.size, self.pos = raw, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self.size - self.pos))
        if count == 0:
            return 0
        self.raw.seek(self.start + self.pos)
        got = self.raw.readinto(view[:count]) or 0
        self.pos += got
        return got


@contextmanager
def _member_file(path: str, zf: zipfile.ZipFile, name: str):
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        if info.file_size > MAX_COMPRESSED_WEIGHTS:
            raise LoadError(
                f"{path}: {name} is compressed and {info.file_size >> 20} MB; pwlint reads compressed weights "
                f"up to {MAX_COMPRESSED_WEIGHTS >> 20} MB (Keras stores them uncompressed)"
            )
        with zf.open(info) as member:  # seekable, but slower: compressed members are rare
            yield member
        return
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        header = raw.read(30)
        if len(header) < 30 or header[:4] != ZIP_MAGIC:
            raise LoadError(f"{path}: not a valid .keras file (corrupt zip entry {name})")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > os.fstat(raw.fileno()).st_size:
            raise LoadError(f"{path}: not a valid .keras file (truncated zip entry {name})")
        yield _Window(raw, start, info.file_size)


@contextmanager
def _h5_file(path: str, source, where: str):
    import h5py

    try:
        h5 = h5py.File(source, "r")
    except Exception as exc:  # h5py raises OSError, ValueError and more for damaged files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoadError(f"{path}: {where} is not a readable HDF5 file ({detail})") from None
    try:
        yield h5
    finally:
        h5.close()


@contextmanager
def _open_legacy_h5(path: str) -> Iterator[KerasFile]:
    with _h5_file(path, path, "the file") as h5:
        try:
            raw = h5.attrs.get("model_config")
        except Exception as exc:  # an unreadable attribute
            raise LoadError(f"{path}: cannot read the model_config attribute ({exc})") from None
        if raw is None:
            weights_only = "layer_names" in h5.attrs or "layers" in h5 or "vars" in h5
            hint = " (a weights-only file: save the whole model with model.save())" if weights_only else ""
            raise LoadError(f"{path}: not a Keras model: the HDF5 file has no model_config attribute{hint}")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        if not isinstance(raw, str):
            raise LoadError(f"{path}: the model_config attribute is not a JSON string")
        config = _parse_config(path, raw, "model_config")
        meta = {key: as_text(h5.attrs.get(key)) for key in ("keras_version", "backend") if key in h5.attrs}
        weights = h5.get("model_weights") if is_hard_link(h5, "model_weights") else None
        yield KerasFile(path, "h5", config, meta, weights if is_group(weights) else None)


def as_text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def is_group(obj) -> bool:
    return obj is not None and hasattr(obj, "keys") and not hasattr(obj, "shape")


def is_hard_link(group, key: str) -> bool:
    """Whether ``group[key]`` is stored in this file (not an external or soft link)."""
    try:
        link = group.get(key, getlink=True)
    except Exception:
        return False
    return type(link).__name__ == "HardLink"
