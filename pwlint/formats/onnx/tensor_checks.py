"""The checks of :mod:`onnx_guard` on single tensors and values: declared sizes, inline
data that matches its dims, and external data that stays inside the model's folder
(no ``..``, no absolute path, no symlink out), checked even though linting never
reads the payload: the fix backend does, and a gate that passes such a file has
already let it through."""

from __future__ import annotations

import os
import re
from math import prod

from pwlint.errors import LoadError
from pwlint.limits import MAX_DIM, MAX_ELEMENTS, MAX_RANK  # the limits of every format

#: bytes per element of the fixed-size types (TensorProto.DataType)
ITEM_SIZE = {
    1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
    17: 1, 18: 1, 19: 1, 20: 1, 24: 1,
}
#: the typed field that holds each type's values when there is no raw_data, and how
#: many entries one element takes (complex numbers are pairs)
TYPED_FIELD = {
    1: ("float_data", 1), 14: ("float_data", 2), 11: ("double_data", 1), 15: ("double_data", 2),
    7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1), 8: ("string_data", 1),
    **{t: ("int32_data", 1) for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 24)},
}
EXTERNAL = 1  # TensorProto.EXTERNAL


def shown(name: str, limit: int = 80) -> str:
    """A name from the file, safe to put in a one-line message: control characters
    escaped, long names cut."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: f"\\x{ord(m.group()):02x}", name)
    return text if len(text) <= limit else text[:limit] + "..."


def text(value, path) -> str:
    """A string field of the file. protobuf hands back bytes for one that is not
    valid UTF-8, which no reader downstream expects."""
    if type(value) is not str:
        raise LoadError(f"{path}: a name in the model ({shown(value.decode('utf-8', 'replace'))}) is not valid UTF-8 text")
    return value


def check_tensor(tensor, path, folder: str) -> None:
    name = shown(text(tensor.name, path))
    dims = list(tensor.dims)
    if len(dims) > MAX_RANK:
        raise LoadError(f"{path}: tensor '{name}' declares {len(dims)} dimensions; pwlint reads at most {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise LoadError(f"{path}: tensor '{name}' declares a negative dimension {dims}")
    if any(d > MAX_DIM for d in dims) or prod(dims) > MAX_ELEMENTS:
        raise LoadError(f"{path}: tensor '{name}' declares {prod(dims)} elements {dims}; pwlint reads at most {MAX_ELEMENTS}")
    if tensor.data_location == EXTERNAL:
        _check_external(tensor, name, prod(dims), path, folder)
    else:
        _check_inline_size(tensor, name, prod(dims), path)


def _check_inline_size(tensor, name: str, count: int, path) -> None:
    """Inline values must be as many as the dims say: a few bytes declared as a huge
    tensor is a corrupt (or hostile) file. Tensors without values (weights left out
    on purpose) and sub-byte types are not checked."""
    size = ITEM_SIZE.get(tensor.data_type)
    if tensor.HasField("raw_data"):
        held = len(tensor.raw_data)
        if size is not None and held != count * size:
            raise LoadError(f"{path}: tensor '{name}' declares {count} elements ({count * size} bytes) but holds {held} bytes")
        return
    field, per_element = TYPED_FIELD.get(tensor.data_type, (None, 1))
    if field is None:
        return
    held = len(getattr(tensor, field))
    if held and held != count * per_element:
        raise LoadError(f"{path}: tensor '{name}' declares {count} elements but holds {held // per_element}")


def _check_external(tensor, name: str, count: int, path, folder: str) -> None:
    info = {text(entry.key, path): text(entry.value, path) for entry in tensor.external_data}
    target = _external_file(info.get("location", ""), name, path, folder)
    for key in ("offset", "length"):
        if key in info and not info[key].isdecimal():
            raise LoadError(f"{path}: external data of tensor '{name}' has {key} '{shown(info[key])}', not a byte count")
    size = ITEM_SIZE.get(tensor.data_type)
    needed = count * size if size is not None else 0
    offset = int(info.get("offset", 0))
    length = int(info.get("length", needed))
    if length < needed:
        raise LoadError(f"{path}: tensor '{name}' declares {count} elements ({needed} bytes) but its external data holds {length} bytes")
    # the fix backend reads these bytes: a declared length past the end of the file
    # would have it allocate for data that is not there
    if os.path.isfile(target) and offset + length > os.path.getsize(target):
        raise LoadError(
            f"{path}: external data of tensor '{name}' runs past the end of "
            f"'{shown(info['location'])}' ({offset + length} > {os.path.getsize(target)} bytes)"
        )


def _external_file(location: str, name: str, path, folder: str) -> str:
    """The real path of an external data file, which must lie inside the model's folder."""
    where = shown(location)
    if not location or "\0" in location:
        raise LoadError(f"{path}: external data of tensor '{name}' names no file")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise LoadError(f"{path}: external data of tensor '{name}' is at an absolute path '{where}'; it must be a file in the model's folder")
    if ".." in re.split(r"[\\/]", location):
        raise LoadError(f"{path}: external data of tensor '{name}' at '{where}' is outside the model's folder")
    target = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([folder, target]) != folder:  # a symlink out of the folder
        raise LoadError(f"{path}: external data of tensor '{name}' at '{where}' is outside the model's folder")
    return target


def check_value_shape(value, path) -> None:
    name = shown(text(value.name, path))
    if value.type is None or not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return
    dims = value.type.tensor_type.shape.dim
    if len(dims) > MAX_RANK:
        raise LoadError(f"{path}: '{name}' declares {len(dims)} dimensions; pwlint reads at most {MAX_RANK}")
    for dim in dims:
        if dim.dim_value > MAX_DIM:
            raise LoadError(f"{path}: '{name}' declares a dimension of {dim.dim_value}; pwlint reads at most {MAX_DIM}")
