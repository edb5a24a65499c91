"""A pure-Python reader of the part of the ONNX protobuf schema linting needs.

``import onnx`` costs about a second (most of it ``ml_dtypes``); linting a model
costs a tenth of that. So the lint path reads the file's wire format itself into
light objects (``__slots__`` classes) that carry the field names of onnx's own
classes (``node.op_type``, ``attr.ints``, ``tensor.dims``, ``HasField``...), so
the guard and the loader read either. Field numbers are those of ``onnx.proto``.

Weight payloads are not copied: a tensor's ``raw_data`` or typed values are kept
only when the field is small (:data:`SMALL_PAYLOAD` bytes, enough for the 64
values shape reasoning may need); a larger one becomes an :class:`Undecoded`
that only knows how many bytes or values it holds, which is all the guard checks.

The hostile-input limits hold while reading, before objects are built: nodes
(:data:`pwlint.formats.onnx.wire.MAX_NODES`), list-attribute values, subgraph
nesting, and nesting of messages in general (a type of a sequence of a sequence...).
Malformed bytes raise :class:`~pwlint.formats.onnx.wire.WireError`.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from pwlint.errors import LoadError
from pwlint.formats.onnx import wire
from pwlint.formats.onnx.wire import WireError, _LOW_BYTES

#: payload fields up to this many bytes are decoded (64 values of 16 bytes at most)
SMALL_PAYLOAD = 1024
#: messages inside messages; real models stay near 12 (a graph in an If in a graph...)
MAX_MESSAGE_DEPTH = 200


class Undecoded:
    """A payload left in the file: it knows its size only."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self):
        raise ValueError("payload not read")


# field kinds
VARINT, STRING, BYTES, FLOAT, DOUBLE, MESSAGE, PAYLOAD = range(7)


class Message:
    """Base of the light messages: each subclass lists ``FIELDS`` as
    number -> (name, kind, repeated, message class or None)."""

    __slots__ = ()
    FIELDS: dict = {}
    DEFAULTS: dict = {}

    def __init__(self) -> None:
        for name, default in self.DEFAULTS.items():
            setattr(self, name, [] if default is list else default)

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        value = getattr(self, name)
        return value is not None

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__ if getattr(self, n) not in (None, [], "", 0))
        return f"{type(self).__name__}({shown})"


def _message(name: str, fields: dict, **defaults) -> type:
    slots = tuple(spec[0] for spec in fields.values())
    init = {}
    for spec in fields.values():
        field_name, kind, repeated = spec[0], spec[1], spec[2]
        if repeated:
            init[field_name] = list
        elif field_name in defaults:
            init[field_name] = defaults[field_name]
        elif kind == VARINT:
            init[field_name] = 0
        elif kind in (FLOAT, DOUBLE):
            init[field_name] = 0.0
        elif kind == STRING:
            init[field_name] = ""
        elif kind == BYTES:
            init[field_name] = b""
        else:
            init[field_name] = None
    # a generated __init__ with one assignment per field: a loop of setattr over the
    # defaults was a third of the reading time of a large graph
    lines = [f"    self.{field_name} = []" if default is list else f"    self.{field_name} = {default!r}"
             for field_name, default in init.items()]
    namespace: dict = {}
    exec("def __init__(self):\n" + ("\n".join(lines) or "    pass"), namespace)  # noqa: S102 - our own field names
    return type(name, (Message,), {"__slots__": slots, "FIELDS": fields, "DEFAULTS": init, "__init__": namespace["__init__"]})


def _f(name, kind, repeated=False, cls=None):
    return (name, kind, repeated, cls)


Entry = _message("StringStringEntryProto", {1: _f("key", STRING), 2: _f("value", STRING)})
OperatorSetId = _message("OperatorSetIdProto", {1: _f("domain", STRING), 2: _f("version", VARINT)})
Dimension = _message("Dimension", {1: _f("dim_value", VARINT), 2: _f("dim_param", STRING), 3: _f("denotation", STRING)})
Shape = _message("TensorShapeProto", {1: _f("dim", MESSAGE, True, Dimension)})
TensorType = _message("TypeProto_Tensor", {1: _f("elem_type", VARINT), 2: _f("shape", MESSAGE, False, Shape)})
TypeProto = _message("TypeProto", {})  # fields below: it holds itself
SequenceType = _message("TypeProto_Sequence", {1: _f("elem_type", MESSAGE, False, TypeProto)})
MapType = _message("TypeProto_Map", {1: _f("key_type", VARINT), 2: _f("value_type", MESSAGE, False, TypeProto)})
OptionalType = _message("TypeProto_Optional", {1: _f("elem_type", MESSAGE, False, TypeProto)})
SparseType = _message("TypeProto_SparseTensor", {1: _f("elem_type", VARINT), 2: _f("shape", MESSAGE, False, Shape)})
_TYPE_FIELDS = {
    1: _f("tensor_type", MESSAGE, False, TensorType), 4: _f("sequence_type", MESSAGE, False, SequenceType),
    5: _f("map_type", MESSAGE, False, MapType), 9: _f("optional_type", MESSAGE, False, OptionalType),
    8: _f("sparse_tensor_type", MESSAGE, False, SparseType), 6: _f("denotation", STRING),
}
TypeProto = _message("TypeProto", _TYPE_FIELDS)
for _holder in (SequenceType, OptionalType):
    _holder.FIELDS[1] = _f("elem_type", MESSAGE, False, TypeProto)
MapType.FIELDS[2] = _f("value_type", MESSAGE, False, TypeProto)
ValueInfo = _message("ValueInfoProto", {
    1: _f("name", STRING), 2: _f("type", MESSAGE, False, TypeProto), 3: _f("doc_string", STRING),
    4: _f("metadata_props", MESSAGE, True, Entry),
})
Tensor = _message("TensorProto", {
    1: _f("dims", VARINT, True), 2: _f("data_type", VARINT), 4: _f("float_data", PAYLOAD, False, FLOAT),
    5: _f("int32_data", PAYLOAD, False, VARINT), 6: _f("string_data", PAYLOAD, False, BYTES),
    7: _f("int64_data", PAYLOAD, False, VARINT), 8: _f("name", STRING), 12: _f("doc_string", STRING),
    9: _f("raw_data", PAYLOAD, False, BYTES), 13: _f("external_data", MESSAGE, True, Entry),
    14: _f("data_location", VARINT), 10: _f("double_data", PAYLOAD, False, DOUBLE),
    11: _f("uint64_data", PAYLOAD, False, VARINT), 16: _f("metadata_props", MESSAGE, True, Entry),
}, float_data=list, int32_data=list, string_data=list, int64_data=list, double_data=list, uint64_data=list)
SparseTensor = _message("SparseTensorProto", {
    1: _f("values", MESSAGE, False, Tensor), 2: _f("indices", MESSAGE, False, Tensor), 3: _f("dims", VARINT, True),
})
Attribute = _message("AttributeProto", {})
Node = _message("NodeProto", {
    1: _f("input", STRING, True), 2: _f("output", STRING, True), 3: _f("name", STRING), 4: _f("op_type", STRING),
    7: _f("domain", STRING), 8: _f("overload", STRING), 5: _f("attribute", MESSAGE, True, Attribute),
    6: _f("doc_string", STRING), 9: _f("metadata_props", MESSAGE, True, Entry),
})
Graph = _message("GraphProto", {
    1: _f("node", MESSAGE, True, Node), 2: _f("name", STRING), 5: _f("initializer", MESSAGE, True, Tensor),
    15: _f("sparse_initializer", MESSAGE, True, SparseTensor), 10: _f("doc_string", STRING),
    11: _f("input", MESSAGE, True, ValueInfo), 12: _f("output", MESSAGE, True, ValueInfo),
    13: _f("value_info", MESSAGE, True, ValueInfo), 16: _f("metadata_props", MESSAGE, True, Entry),
})
Attribute = _message("AttributeProto", {
    1: _f("name", STRING), 21: _f("ref_attr_name", STRING), 13: _f("doc_string", STRING), 20: _f("type", VARINT),
    2: _f("f", FLOAT), 3: _f("i", VARINT), 4: _f("s", BYTES), 5: _f("t", MESSAGE, False, Tensor),
    6: _f("g", MESSAGE, False, Graph), 22: _f("sparse_tensor", MESSAGE, False, SparseTensor),
    14: _f("tp", MESSAGE, False, TypeProto), 7: _f("floats", FLOAT, True), 8: _f("ints", VARINT, True),
    9: _f("strings", BYTES, True), 10: _f("tensors", MESSAGE, True, Tensor), 11: _f("graphs", MESSAGE, True, Graph),
    23: _f("sparse_tensors", MESSAGE, True, SparseTensor), 15: _f("type_protos", MESSAGE, True, TypeProto),
})
Node.FIELDS[5] = _f("attribute", MESSAGE, True, Attribute)
Function = _message("FunctionProto", {
    1: _f("name", STRING), 4: _f("input", STRING, True), 5: _f("output", STRING, True),
    6: _f("attribute", STRING, True), 11: _f("attribute_proto", MESSAGE, True, Attribute),
    7: _f("node", MESSAGE, True, Node), 8: _f("doc_string", STRING), 9: _f("opset_import", MESSAGE, True, OperatorSetId),
    10: _f("domain", STRING), 13: _f("overload", STRING), 12: _f("value_info", MESSAGE, True, ValueInfo),
    14: _f("metadata_props", MESSAGE, True, Entry),
})
Model = _message("ModelProto", {
    1: _f("ir_version", VARINT), 8: _f("opset_import", MESSAGE, True, OperatorSetId), 2: _f("producer_name", STRING),
    3: _f("producer_version", STRING), 4: _f("domain", STRING), 5: _f("model_version", VARINT),
    6: _f("doc_string", STRING), 7: _f("graph", MESSAGE, False, Graph), 14: _f("metadata_props", MESSAGE, True, Entry),
    25: _f("functions", MESSAGE, True, Function),
})

# AttributeProto.AttributeType
ATTR_FLOAT, ATTR_INT, ATTR_STRING, ATTR_TENSOR, ATTR_GRAPH = 1, 2, 3, 4, 5
ATTR_FLOATS, ATTR_INTS, ATTR_STRINGS, ATTR_TENSORS, ATTR_GRAPHS = 6, 7, 8, 9, 10
ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS, ATTR_TYPE_PROTO, ATTR_TYPE_PROTOS = 11, 12, 13, 14

_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


def _text(raw: bytes):
    """A string field: text, or the bytes themselves when they are not UTF-8 (as
    protobuf hands them back; the guard refuses them with the name)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _varints(buf, start: int, end: int) -> list[int]:
    out = []
    pos = start
    while pos < end:
        byte = buf[pos]
        if byte < 0x80:
            out.append(byte)
            pos += 1
            continue
        value, pos = wire._varint(buf, pos, end)
        out.append(_signed(value))
    return out


def _varint_count(buf, start: int, end: int) -> int:
    return end - start - len(bytes(buf[start:end]).translate(None, _LOW_BYTES))


class _Reader:
    """One file's reading: its buffer and the running totals the limits bound."""

    def __init__(self, buf, path) -> None:
        self.buf = buf
        self.path = path
        self.nodes = 0
        self.values = 0

    def attribute_values(self, count: int) -> None:
        self.values += count
        limit = wire.MAX_ATTRIBUTE_VALUES
        if self.values > limit:
            raise LoadError(f"{self.path}: more than {limit} attribute values; pwlint reads models of at most {limit}")

    def parse(self, cls, start: int, end: int, depth: int = 0, graph_depth: int = 0):
        if depth > MAX_MESSAGE_DEPTH:
            raise WireError("messages nested too deep")
        buf = self.buf
        message = cls()
        specs = cls.FIELDS
        is_node = cls is Node
        is_attribute = cls is Attribute
        pos = start
        varint = wire._varint
        while pos < end:
            key = buf[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = varint(buf, pos, end)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise WireError("field number 0")
            if wire_type == 2:
                length = buf[pos] if pos < end else 0x80
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = varint(buf, pos, end)
                value_start, value_end = pos, pos + length
            elif wire_type == 0:
                value_start = pos
                byte = buf[pos] if pos < end else 0x80
                if byte < 0x80:
                    value_end = pos + 1
                else:
                    _, value_end = varint(buf, pos, end)
            elif wire_type == 1:
                value_start, value_end = pos, pos + 8
            elif wire_type == 5:
                value_start, value_end = pos, pos + 4
            else:
                raise WireError(f"unsupported wire type {wire_type}")
            if value_end > end:
                raise WireError("field runs past the end of its message")
            pos = value_end
            spec = specs.get(number)
            if spec is None:
                continue  # a field linting does not read
            name, kind, repeated, sub = spec
            if kind == MESSAGE:
                if wire_type != 2:
                    continue
                inner_graph_depth = graph_depth
                if sub is Graph:
                    inner_graph_depth += 1
                    if inner_graph_depth - 1 > wire.MAX_SUBGRAPH_DEPTH:
                        from pwlint.formats.onnx.guard import subgraphs_too_deep

                        raise LoadError(f"{self.path}: {subgraphs_too_deep()}")
                if sub is Node:
                    self.nodes += 1
                    if self.nodes > wire.MAX_NODES:
                        limit = wire.MAX_NODES
                        raise LoadError(f"{self.path}: more than {limit} nodes; pwlint reads models of at most {limit}")
                if sub is Node:
                    value = self.parse_node(value_start, value_end, depth + 1, graph_depth)
                else:
                    value = self.parse(sub, value_start, value_end, depth + 1, inner_graph_depth)
                if repeated:
                    getattr(message, name).append(value)
                else:
                    setattr(message, name, value)
            elif kind == STRING:
                if wire_type != 2:
                    continue
                raw = buf[value_start:value_end]
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    value = raw  # as protobuf hands it back: the guard refuses it, naming it
                if repeated:
                    getattr(message, name).append(value)
                else:
                    setattr(message, name, value)
            elif kind == VARINT:
                if repeated:
                    if wire_type == 2:
                        if is_attribute:
                            self.attribute_values(_varint_count(buf, value_start, value_end))
                        getattr(message, name).extend(_varints(buf, value_start, value_end))
                    elif wire_type == 0:
                        if is_attribute:
                            self.attribute_values(1)
                        getattr(message, name).append(_signed(varint(buf, value_start, value_end)[0]))
                elif wire_type == 0:
                    setattr(message, name, _signed(varint(buf, value_start, value_end)[0]))
            elif kind == FLOAT:
                if repeated:
                    if wire_type == 2:
                        count = (value_end - value_start) // 4
                        self.attribute_values(count)
                        getattr(message, name).extend(
                            struct.unpack_from(f"<{count}f", buf, value_start) if count else ()
                        )
                    elif wire_type == 5:
                        self.attribute_values(1)
                        getattr(message, name).append(_FLOAT.unpack_from(buf, value_start)[0])
                elif wire_type == 5:
                    setattr(message, name, _FLOAT.unpack_from(buf, value_start)[0])
            elif kind == BYTES:
                if wire_type != 2:
                    continue
                value = bytes(buf[value_start:value_end])
                if repeated:
                    self.attribute_values(1)
                    getattr(message, name).append(value)
                else:
                    setattr(message, name, value)
            elif kind == PAYLOAD:
                self._payload(message, name, sub, wire_type, value_start, value_end)
        if is_node and not isinstance(message.op_type, (str, bytes)):
            raise WireError("malformed node")
        return message

    def parse_node(self, start: int, end: int, depth: int, graph_depth: int):
        """A NodeProto: :meth:`parse` unrolled for the message a large graph holds
        hundreds of thousands of (names, inputs, outputs, op type, most of them one
        byte of length each)."""
        buf = self.buf
        node = Node()
        inputs, outputs = node.input, node.output
        pos = start
        while pos < end:
            key = buf[pos]
            if key in (0x0A, 0x12, 0x1A, 0x22, 0x3A) and pos + 1 < end and buf[pos + 1] < 0x80:
                # a short string field: input, output, name, op_type, domain
                value_start = pos + 2
                value_end = value_start + buf[pos + 1]
                if value_end > end:
                    raise WireError("field runs past the end of its message")
                raw = buf[value_start:value_end]
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    value = raw
                pos = value_end
                if key == 0x0A:
                    inputs.append(value)
                elif key == 0x12:
                    outputs.append(value)
                elif key == 0x1A:
                    node.name = value
                elif key == 0x22:
                    node.op_type = value
                else:
                    node.domain = value
                continue
            # anything else: the general reader, from this field to the end of the node
            rest = self.parse(Node, pos, end, depth, graph_depth)
            node.input.extend(rest.input)
            node.output.extend(rest.output)
            for name in ("name", "op_type", "domain", "overload", "doc_string"):
                value = getattr(rest, name)
                if value != "":
                    setattr(node, name, value)
            node.attribute.extend(rest.attribute)
            node.metadata_props.extend(rest.metadata_props)
            break
        if not isinstance(node.op_type, (str, bytes)):
            raise WireError("malformed node")
        return node

    def _payload(self, tensor, name: str, element, wire_type: int, start: int, end: int) -> None:
        """A tensor's values: kept when small, counted otherwise."""
        buf = self.buf
        size = end - start
        if name == "raw_data":
            if wire_type == 2:
                tensor.raw_data = bytes(buf[start:end]) if size <= SMALL_PAYLOAD else Undecoded(size)
            return
        held = getattr(tensor, name)
        if element == BYTES:  # string_data: one string per field
            if wire_type == 2:
                _grow(tensor, name, held, 1, lambda: [bytes(buf[start:end])])
            return
        if wire_type == 2:  # packed
            if element == VARINT:
                count = _varint_count(buf, start, end)
                decode = lambda: _varints(buf, start, end)  # noqa: E731
            else:
                width = 4 if element == FLOAT else 8
                count = size // width
                decode = lambda: list(struct.unpack_from(f"<{count}{'f' if width == 4 else 'd'}", buf, start))  # noqa: E731
            _grow(tensor, name, held, count, decode)
        elif wire_type == 0 and element == VARINT:
            _grow(tensor, name, held, 1, lambda: [_signed(wire._varint(buf, start, end)[0])])
        elif wire_type == 5 and element == FLOAT:
            _grow(tensor, name, held, 1, lambda: [_FLOAT.unpack_from(buf, start)[0]])
        elif wire_type == 1 and element == DOUBLE:
            _grow(tensor, name, held, 1, lambda: [_DOUBLE.unpack_from(buf, start)[0]])


#: values kept per typed payload field; past it only their number is
SMALL_VALUES = 128


def _grow(tensor, name: str, held, count: int, decode) -> None:
    if isinstance(held, Undecoded):
        held.count += count
    elif len(held) + count > SMALL_VALUES:
        setattr(tensor, name, Undecoded(len(held) + count))
    else:
        held.extend(decode())


def parse_bytes(data, path="<bytes>"):
    """The light ModelProto of serialised bytes (or any buffer)."""
    return _Reader(data, path).parse(Model, 0, len(data))


def read_light_model(path: str | Path):
    """The light ModelProto of the file at ``path``, checked by the guard. Raises
    WireError on malformed bytes and LoadError (naming ``path``) for a model the guard
    refuses."""
    from pwlint.formats.onnx.guard import check_model

    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            model = Model()
        else:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                model = _Reader(buf, path).parse(Model, 0, size)
    if model.graph is not None:
        check_model(model, path)
    return model


# values of small tensors -------------------------------------------------------------

#: struct codes of the fixed-size types (TensorProto.DataType)
_RAW_CODES = {1: "f", 2: "B", 3: "b", 4: "H", 5: "h", 6: "i", 7: "q", 9: "?", 10: "e", 11: "d", 12: "I", 13: "Q"}
_INT32_TYPES = {2, 3, 4, 5, 6, 9}


def tensor_values(tensor, limit: int = 64) -> list | None:
    """The values of a small tensor (at most ``limit`` elements) as a flat list, like
    ``numpy_helper.to_array(t).reshape(-1).tolist()``; None when it is larger, external,
    of a type read here not at all, or malformed."""
    if tensor is None:
        return None
    count = 1
    for d in tensor.dims:
        count *= d
    if count > limit or count < 0 or tensor.data_location == 1:
        return None
    dtype = tensor.data_type
    raw = tensor.raw_data
    try:
        if raw is not None and not isinstance(raw, Undecoded) and (raw or not _typed(tensor)):
            if dtype == 16:  # bfloat16: the high half of a float32
                halves = struct.unpack(f"<{count}H", raw)
                return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
            code = _RAW_CODES.get(dtype)
            if code is None:
                return None
            return list(struct.unpack(f"<{count}{code}", raw))
        if dtype == 1:
            values = list(tensor.float_data)
        elif dtype == 7:
            values = list(tensor.int64_data)
        elif dtype == 11:
            values = list(tensor.double_data)
        elif dtype in (12, 13):
            values = [v & 0xFFFFFFFFFFFFFFFF for v in tensor.uint64_data]
        elif dtype in _INT32_TYPES:
            values = list(tensor.int32_data)
            if dtype == 9:
                values = [bool(v) for v in values]
        elif dtype == 10:  # float16 bits in int32_data
            values = [struct.unpack("<e", struct.pack("<H", v & 0xFFFF))[0] for v in tensor.int32_data]
        else:
            return None
    except (struct.error, ValueError, TypeError):
        return None
    return values if len(values) == count else None


def _typed(tensor) -> bool:
    return any(
        len(getattr(tensor, name)) for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    )


def attribute_value(attr):
    """The value of an attribute, as ``onnx.helper.get_attribute_value`` gives it; None
    for a type it has none of."""
    kind = attr.type
    if kind == ATTR_FLOAT:
        return attr.f
    if kind == ATTR_INT:
        return attr.i
    if kind == ATTR_STRING:
        return attr.s
    if kind == ATTR_TENSOR:
        return attr.t
    if kind == ATTR_GRAPH:
        return attr.g
    if kind == ATTR_FLOATS:
        return list(attr.floats)
    if kind == ATTR_INTS:
        return list(attr.ints)
    if kind == ATTR_STRINGS:
        return list(attr.strings)
    if kind == ATTR_TENSORS:
        return list(attr.tensors)
    if kind == ATTR_GRAPHS:
        return list(attr.graphs)
    if kind == ATTR_SPARSE_TENSOR:
        return attr.sparse_tensor
    if kind == ATTR_SPARSE_TENSORS:
        return list(attr.sparse_tensors)
    if kind == ATTR_TYPE_PROTO:
        return attr.tp
    if kind == ATTR_TYPE_PROTOS:
        return list(attr.type_protos)
    return None
