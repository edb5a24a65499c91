"""Reading and writing ONNX files without holding weight payloads in memory.

An ONNX file is a protobuf ``ModelProto``; its weights are ``TensorProto``
initializers of the main graph whose ``raw_data`` bytes sit contiguously in the
file. :func:`read_model` walks the protobuf wire format over a memory map and
turns each large initializer into an *external data* reference into the file
itself (``location`` = the file, ``offset``/``length`` = where its bytes are),
so the in-memory model holds structure only; its payload pages are never read.
:func:`write_model` does the reverse, streaming payloads from wherever they
live (the source file, another data file, or a numpy array) into a new file.

Neither onnx nor numpy is imported until a function that needs them runs: the lint
path reads files with :mod:`pwlint.formats.onnx.proto`, which uses the wire walk here.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pwlint.errors import LoadError
from pwlint.formats.onnx.guard import (
    MAX_ATTRIBUTE_VALUES,
    MAX_NODES,
    MAX_SUBGRAPH_DEPTH,
    check_model,
    subgraphs_too_deep,
)

GRAPH_FIELD = 7  # ModelProto.graph
INITIALIZER_FIELD = 5  # GraphProto.initializer
RAW_DATA_FIELD = 9  # TensorProto.raw_data
NODE_FIELD = 1  # GraphProto.node
ATTRIBUTE_FIELD = 5  # NodeProto.attribute
ATTRIBUTE_GRAPH_FIELD, ATTRIBUTE_GRAPHS_FIELD = 6, 11  # AttributeProto.g, .graphs
ATTRIBUTE_FLOATS_FIELD, ATTRIBUTE_INTS_FIELD, ATTRIBUTE_STRINGS_FIELD = 7, 8, 9  # AttributeProto.floats, ints, strings
#: nodes larger than this (bytes) have their list attributes counted before parsing;
#: real nodes are far smaller, unless they hold a tensor
LARGE_NODE = 2**20
#: tensors at least this large (bytes of raw_data) are referenced, not copied
LARGE_PAYLOAD = 1024
CHUNK = 16 * 2**20


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf, start: int, end: int):
    """Yield (field number, wire type, value start, value end, field start) of a message."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            _, value_end = _varint(buf, pos, end)
        elif wire == 1:
            value_end = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value_end = pos + length
        elif wire == 5:
            value_end = pos + 4
        else:
            raise WireError(f"unsupported wire type {wire}")
        if value_end > end:
            raise WireError("field runs past the end of its message")
        yield number, wire, pos, value_end, field_start
        pos = value_end


def _stub_tensor(buf, start: int, end: int, location: str) -> onnx.TensorProto | None:
    """A TensorProto without its raw_data, pointing at the raw_data bytes in the file;
    None when the tensor has no large raw_data (it is then copied as it is)."""
    import onnx

    payload = None
    header = bytearray()
    for number, _wire, value_start, value_end, field_start in fields(buf, start, end):
        if number == RAW_DATA_FIELD:
            payload = (value_start, value_end - value_start)
        else:
            header += buf[field_start:value_end]
    if payload is None or payload[1] < LARGE_PAYLOAD:
        return None
    tensor = onnx.TensorProto.FromString(bytes(header))
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(payload[0])), ("length", str(payload[1]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def read_model(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` with large main-graph initializers left in the file as
    external-data references into the file itself. Raises WireError on malformed input,
    and LoadError (naming ``path``) for a model :mod:`~pwlint.formats.onnx.guard` refuses:
    every reader of a model file goes through here, so none can skip those checks."""
    import onnx
    from google.protobuf.message import DecodeError

    shown_path = path
    path = Path(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        size = len(buf)
        top = bytearray()
        graphs = []
        for number, wire, value_start, value_end, field_start in fields(buf, 0, size):
            if number == GRAPH_FIELD and wire == 2:
                graphs.append((value_start, value_end))
            else:
                top += buf[field_start:value_end]
        model = onnx.ModelProto.FromString(bytes(top))
        nodes = values = 0
        for start, end in graphs:
            rest = bytearray()
            stubs = []
            for number, wire, value_start, value_end, field_start in fields(buf, start, end):
                stub = None
                if number == INITIALIZER_FIELD and wire == 2:
                    stub = _stub_tensor(buf, value_start, value_end, path.name)
                elif number == NODE_FIELD:
                    nodes += 1
                    if value_end - value_start > LARGE_NODE:
                        values += list_attribute_values(buf, value_start, value_end, MAX_ATTRIBUTE_VALUES - values)
                        if values > MAX_ATTRIBUTE_VALUES:
                            raise LoadError(
                                f"{shown_path}: more than {MAX_ATTRIBUTE_VALUES} attribute values; "
                                f"pwlint reads models of at most {MAX_ATTRIBUTE_VALUES}"
                            )
                if stub is None:
                    rest += buf[field_start:value_end]
                else:
                    stubs.append(stub)
            if nodes > MAX_NODES:  # before protobuf turns each one into an object
                raise LoadError(f"{shown_path}: more than {MAX_NODES} nodes; pwlint reads models of at most {MAX_NODES}")
            try:
                # parsed in place: a parsed copy merged in would hold the graph twice
                model.graph.MergeFromString(bytes(rest))
            except DecodeError:
                depth = subgraph_depth(buf, start, end, MAX_SUBGRAPH_DEPTH)
                if depth > MAX_SUBGRAPH_DEPTH:
                    raise LoadError(f"{shown_path}: {subgraphs_too_deep()}") from None
                raise
            model.graph.initializer.extend(stubs)
    check_model(model, shown_path)
    return model


def subgraph_depth(buf, start: int, end: int, limit: int) -> int:
    """How deep If/Loop/Scan bodies nest in the GraphProto at ``buf[start:end]``, read
    from the wire format (protobuf's own parser gives up past ~33 levels without saying
    why). Stops counting past ``limit``; 0 if the bytes are malformed."""
    pending = [(start, end, 0)]
    deepest = 0
    try:
        while pending:
            graph_start, graph_end, depth = pending.pop()
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            for node in _submessages(buf, graph_start, graph_end, NODE_FIELD):
                for attribute in _submessages(buf, *node, ATTRIBUTE_FIELD):
                    for number, wire, value_start, value_end, _ in fields(buf, *attribute):
                        if number in (ATTRIBUTE_GRAPH_FIELD, ATTRIBUTE_GRAPHS_FIELD) and wire == 2:
                            pending.append((value_start, value_end, depth + 1))
    except WireError:
        return 0
    return deepest


def list_attribute_values(buf, start: int, end: int, limit: int) -> int:
    """Values in the list attributes (ints, floats, strings) of the NodeProto at
    ``buf[start:end]`` and of the large nodes of its subgraphs, counted in the wire
    format: protobuf spends 8 bytes and more on a value the file packs into one, so
    a few MB of them must be refused before parsing. Stops counting past ``limit``."""
    counted = 0
    pending = [(start, end)]
    while pending and counted <= limit:
        node = pending.pop()
        for attribute in _submessages(buf, *node, ATTRIBUTE_FIELD):
            for number, wire, value_start, value_end, _ in fields(buf, *attribute):
                if number == ATTRIBUTE_INTS_FIELD and wire == 2:  # packed varints: one ends in each byte < 0x80
                    counted += value_end - value_start - len(bytes(buf[value_start:value_end]).translate(None, _LOW_BYTES))
                elif number == ATTRIBUTE_FLOATS_FIELD and wire == 2:
                    counted += (value_end - value_start) // 4
                elif number in (ATTRIBUTE_INTS_FIELD, ATTRIBUTE_FLOATS_FIELD, ATTRIBUTE_STRINGS_FIELD):
                    counted += 1
                elif number in (ATTRIBUTE_GRAPH_FIELD, ATTRIBUTE_GRAPHS_FIELD) and wire == 2:
                    pending.extend(
                        sub for sub in _submessages(buf, value_start, value_end, NODE_FIELD) if sub[1] - sub[0] > LARGE_NODE
                    )
                if counted > limit:
                    break
    return counted


_LOW_BYTES = bytes(range(128))


def _submessages(buf, start: int, end: int, number: int):
    for field_number, wire, value_start, value_end, _ in fields(buf, start, end):
        if field_number == number and wire == 2:
            yield value_start, value_end


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


@dataclass(frozen=True)
class FileSlice:
    """Payload bytes that stay where they are, in a file, until they are copied."""

    path: Path
    offset: int
    length: int


def payload_slice(tensor: onnx.TensorProto, folder: Path) -> FileSlice:
    info = external_info(tensor)
    path = folder / info["location"]
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else path.stat().st_size - offset
    return FileSlice(path, offset, length)


def read_payload(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """The values of an external-data tensor, read from its file."""
    import numpy as np
    import onnx

    where = payload_slice(tensor, folder)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    with open(where.path, "rb") as handle:
        handle.seek(where.offset)
        values = np.fromfile(handle, dtype=dtype, count=count)
    if values.size != count:
        raise WireError(f"external data of '{tensor.name}' is shorter than its dims say")
    return values.astype(values.dtype.newbyteorder("=")).reshape(tuple(tensor.dims))


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_header(number: int, length: int) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(length)


PayloadSource = Callable[["onnx.TensorProto"], "np.ndarray | FileSlice | None"]


def write_model(model: onnx.ModelProto, path: str | Path, payload_of: PayloadSource, data_file: str | None = None) -> None:
    """Write ``model`` to ``path``. Initializers for which ``payload_of`` returns values
    (an array, or a :class:`FileSlice` to copy) are written with them: inside the file,
    or into ``data_file`` (a name in the same folder) as external data. Other tensors
    are written as they are."""
    import onnx

    path = Path(path)
    graph = model.graph
    streamed: list[tuple[onnx.TensorProto, np.ndarray]] = []
    kept = onnx.GraphProto()
    for tensor in graph.initializer:
        values = payload_of(tensor)
        if values is None:
            kept.initializer.append(tensor)
        else:
            streamed.append((tensor, values))
    header_graph = onnx.GraphProto()
    header_graph.CopyFrom(graph)  # structure only: streamed payloads are not in the proto
    del header_graph.initializer[:]
    header_graph.initializer.extend(kept.initializer)

    if data_file is not None:
        with open(path.parent / data_file, "wb") as data:
            for tensor, values in streamed:
                offset = data.tell()
                _write_array(data, values)
                stub = header_graph.initializer.add()
                stub.CopyFrom(_bare(tensor))
                stub.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_file), ("offset", str(offset)), ("length", str(data.tell() - offset))):
                    entry = stub.external_data.add()
                    entry.key, entry.value = key, value
        streamed = []
    top = onnx.ModelProto()
    top.CopyFrom(_without_graph(model))
    tensors = []
    for tensor, values in streamed:
        head = _bare(tensor).SerializeToString()
        nbytes = values.length if isinstance(values, FileSlice) else values.size * values.dtype.itemsize
        body = len(head) + len(_field_header(RAW_DATA_FIELD, nbytes)) + nbytes
        tensors.append((head, values, nbytes, body))
    graph_bytes = header_graph.SerializeToString()
    graph_length = len(graph_bytes) + sum(len(_field_header(INITIALIZER_FIELD, body)) + body for *_, body in tensors)
    with open(path, "wb") as out:
        out.write(top.SerializeToString())
        out.write(_field_header(GRAPH_FIELD, graph_length))
        out.write(graph_bytes)
        for head, values, nbytes, body in tensors:
            out.write(_field_header(INITIALIZER_FIELD, body))
            out.write(head)
            out.write(_field_header(RAW_DATA_FIELD, nbytes))
            _write_array(out, values)
        out.flush()
        os.fsync(out.fileno())


def _bare(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """Name, type, dims and doc of a tensor: everything but its values."""
    import onnx

    bare = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, doc_string=tensor.doc_string)
    bare.dims.extend(tensor.dims)
    return bare


def _without_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    top = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name == "graph":
            continue
        field = getattr(top, descriptor.name)
        repeated = getattr(descriptor, "is_repeated", None)
        if repeated is None:
            repeated = descriptor.label == descriptor.LABEL_REPEATED
        if repeated:
            field.extend(value)
        elif descriptor.message_type is not None:
            field.CopyFrom(value)
        else:
            setattr(top, descriptor.name, value)
    return top


def _write_array(out, values) -> None:
    if isinstance(values, FileSlice):
        with open(values.path, "rb") as source:
            source.seek(values.offset)
            left = values.length
            while left:
                chunk = source.read(min(CHUNK, left))
                if not chunk:
                    raise WireError(f"{values.path} ended before the tensor it holds")
                out.write(chunk)
                left -= len(chunk)
        return
    import numpy as np

    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype.byteorder == ">":
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    step = max(1, CHUNK // max(flat.dtype.itemsize, 1))
    for start in range(0, flat.size, step):
        out.write(flat[start:start + step].tobytes())
