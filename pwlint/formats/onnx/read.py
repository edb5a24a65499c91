"""Reading an ONNX file into a flat, shape-annotated list of nodes.

This is the format half of the ONNX loader: it reads the file without onnx
(:mod:`pwlint.formats.onnx.proto`), takes the shapes the file states and
propagates them (:mod:`pwlint.formats.onnx.shapes`), and walks If/Loop/Scan
subgraphs without recursion. :mod:`pwlint.formats.onnx.loader` turns the result
into layers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import chain
from math import prod
from typing import Iterator

from pwlint.errors import LoadError
from pwlint.limits import require_model_file
from pwlint.formats.onnx.contrib_shapes import infer_with_contrib

FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
#: Initializers at most this large keep their values for shape inference
#: (Reshape targets, axes); larger ones are weights whose values linting never needs.
SMALL_TENSOR = 64


@dataclass(slots=True)
class Node:
    index: int
    name: str
    op: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    proto: object
    graph_depth: int = 0
    #: position in its own graph's node list, Constant nodes included
    position: int = 0

    @property
    def display_name(self) -> str:
        """The name as written in the file, or ``<OpType>_<position>`` for an unnamed node."""
        return self.name or f"{self.op}_{self.position}"


@dataclass(slots=True)
class Tensor:
    """A constant tensor (initializer or Constant node): its dims, type and, if small, values."""

    dims: tuple[int, ...]
    dtype: int
    values: list | None = None

    @property
    def size(self) -> int:
        return prod(self.dims) if self.dims else 1


@dataclass
class OnnxModel:
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple | None] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    opset: int | None = None
    proto: object = None
    #: whether onnx's shape inference was needed
    shape_fallback: bool = False


def parse_file(path: str):
    """The file as an ``onnx.ModelProto`` (large weights left in the file): what the fix
    backend edits. Imports onnx; linting reads files with :func:`parse_light`."""
    from google.protobuf.message import DecodeError

    from pwlint.formats.onnx.wire import WireError, read_model

    require_model_file(path, "an ONNX model")
    try:
        # weights stay in the file: linting needs their shapes, fixing reads them one by one
        model = read_model(path)
    except (DecodeError, WireError, RuntimeError, ValueError, TypeError, OSError) as exc:
        raise _not_onnx(path, exc) from None
    _require_graph(model, path)
    return model


def parse_light(path: str):
    """The file as a light ModelProto (:mod:`pwlint.formats.onnx.proto`), checked by the
    guard, without importing onnx."""
    from pwlint.formats.onnx.proto import read_light_model
    from pwlint.formats.onnx.wire import WireError

    require_model_file(path, "an ONNX model")
    try:
        model = read_light_model(path)
    except (WireError, ValueError, TypeError, OSError, IndexError, struct.error) as exc:
        raise _not_onnx(path, exc) from None
    _require_graph(model, path)
    return model


def _not_onnx(path, exc) -> LoadError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return LoadError(f"{path}: not a valid ONNX model (truncated or not protobuf: {detail})")


def _require_graph(model, path) -> None:
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise LoadError(f"{path}: not an ONNX model (no IR version or graph)")
    if not model.graph.node and not model.graph.output:
        raise LoadError(f"{path}: ONNX model with an empty graph")


def _tensor_values(tensor) -> list | None:
    from pwlint.formats.onnx.proto import tensor_values

    return tensor_values(tensor, SMALL_TENSOR)


def _shapes_only_copy(model):
    """A copy of ``model`` for shape inference: weights keep their dims and type but not
    their bytes, so inference does not serialise hundreds of megabytes it never reads."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        if prod(init.dims) > SMALL_TENSOR or init.data_location == onnx.TensorProto.EXTERNAL:
            stub = graph.initializer.add()
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
        else:
            graph.initializer.append(init)
    return light


#: ONNX has no shape inference for 38 operators of opset 1-5 (Relu, Add, Gemm, Reshape,
#: BatchNormalization...): older models are upgraded for inference only
MIN_INFERRED_OPSET = 6


def _upgraded(light):
    """``light`` converted to opset 6 for shape inference, tensor names kept; the model
    itself as it is when the converter cannot (shapes are then partly unknown)."""
    from onnx import helper, version_converter

    try:
        if not any(o.domain in ("", "ai.onnx") for o in light.opset_import):
            light = light.__class__.FromString(light.SerializeToString())
            light.opset_import.append(helper.make_opsetid("", 1))
            light.ir_version = max(light.ir_version, 3)
        return version_converter.convert_version(light, MIN_INFERRED_OPSET)
    except Exception:  # an adapter missing or failing: infer what the old opset allows
        return light


def _shape_of(type_proto) -> tuple | None:
    if type_proto is None or not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # an unset dim_value (a symbolic dim_param, or nothing) reads as 0: unknown
    return tuple(value if (value := d.dim_value) > 0 else None for d in tensor_type.shape.dim)


#: AttributeProto.AttributeType of the attributes that hold graphs, tensors
GRAPH, GRAPHS, TENSOR, SPARSE_TENSOR = 5, 10, 4, 11


def _attributes(node) -> dict:
    if not node.attribute:  # most nodes of a large graph
        return {}
    from pwlint.formats.onnx.proto import attribute_value

    attrs = {}
    for attr in node.attribute:
        kind = attr.type
        if kind in (GRAPH, GRAPHS):
            continue
        if kind in (TENSOR, SPARSE_TENSOR):
            attrs[attr.name] = attr
            continue
        value = attribute_value(attr)
        if value is None:
            continue  # no type, or one linting has no use for
        attrs[attr.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return attrs


def read_onnx(path: str) -> OnnxModel:
    """The model at ``path``, read without onnx; onnx's shape inference runs (on the
    file read again with onnx) only when :mod:`~pwlint.formats.onnx.shapes` says a
    shape the rules need is still unknown."""
    return describe_model(parse_light(path), real=lambda: parse_file(path))


def describe_model(model, real=None) -> OnnxModel:
    """Nodes, constants and shapes of a model, which is left unchanged: a light one
    (:mod:`pwlint.formats.onnx.proto`) or an ``onnx.ModelProto`` (the fix backend's,
    read again after each fix; it is serialised and read as a light one, and each
    :attr:`Node.proto` is then the backend's own NodeProto, which it edits).

    Every graph counts: the main graph and the If/Loop/Scan bodies inside it, found
    without recursion. Constants first, then the shapes the file declares, then the
    nodes in a stable order (main graph first); then shapes propagated through the
    nodes, and onnx's inference (``real()`` gives the ModelProto) where they fall short.
    """
    from pwlint.formats.onnx.proto import Message, parse_bytes

    originals = None
    if not isinstance(model, Message):  # an onnx.ModelProto
        original = model
        originals = [graph for graph, _ in _graphs_by_depth(original.graph)]
        # weights as dims and type only: a live model may hold hundreds of MB of them
        model = parse_bytes(_shapes_only_copy(original).SerializeToString())
        real = lambda: original  # noqa: E731
    else:
        original = model
    result = OnnxModel(proto=original)
    result.opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
    )
    all_graphs = _graphs_by_depth(model.graph)
    _record_initializers(all_graphs, result)
    _record_declared_shapes(all_graphs, result)
    for name, tensor in result.constants.items():
        result.shapes[name] = tensor.dims
    _record_nodes(model, all_graphs, result, originals)
    _complete_shapes(result, real)
    return result


def _complete_shapes(result: OnnxModel, real) -> None:
    """Shapes through the nodes; onnx's inference for those still missing that a rule needs."""
    from pwlint.formats.onnx.shapes import missing_shapes, propagate

    propagate(result)
    if real is None or not missing_shapes(result):
        return
    try:
        inferred = _inferred(real(), result.opset)
    except Exception:  # inference is best effort
        return
    found: dict[str, tuple | None] = {}
    _record_inferred_shapes(inferred, found, has_subgraphs=True)
    shapes = result.shapes
    for name, theirs in found.items():
        if theirs is None:
            continue
        ours = shapes.get(name)
        if ours is None or len(ours) != len(theirs):
            shapes[name] = theirs
        elif None in ours:
            shapes[name] = tuple(o if o is not None else t for o, t in zip(ours, theirs))
    result.shape_fallback = True


def _subgraphs(graph) -> Iterator:
    """The graphs held directly by ``graph``'s nodes' attributes (If branches, Loop and
    Scan bodies), not those nested deeper."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == GRAPH:
                if attr.HasField("g"):
                    yield attr.g
            elif attr.type == GRAPHS:
                yield from attr.graphs


def _graphs_by_depth(main) -> list[tuple[object, int]]:
    """Every graph of the model with its nesting depth (0 for ``main``), walked with a
    stack rather than recursion: a hostile file may nest bodies thousands deep."""
    pending, found = [(main, 0)], []
    while pending:
        graph, depth = pending.pop()
        found.append((graph, depth))
        pending.extend((sub, depth + 1) for sub in _subgraphs(graph))
    return found


def _record_initializers(graphs: list[tuple[object, int]], result: OnnxModel) -> None:
    for graph, _ in graphs:
        for init in graph.initializer:
            result.constants[init.name] = Tensor(tuple(init.dims), init.data_type, _tensor_values(init))


def _record_declared_shapes(graphs: list[tuple[object, int]], result: OnnxModel) -> None:
    """The shapes the file states: every graph's inputs, outputs and value_info."""
    shapes = result.shapes
    for graph, _ in graphs:
        for value in chain(graph.input, graph.output, graph.value_info):
            shape = _shape_of(value.type)
            name = value.name
            if shape is not None or name not in shapes:
                shapes[name] = shape


def _inferred(model, opset: int | None):
    """``model`` with the shapes ONNX shape inference finds, on a copy without weight
    payloads; ``model`` itself when inference fails (unknown shapes make rules abstain)."""
    import onnx

    def infer(light):
        if (opset or 1) < MIN_INFERRED_OPSET:  # no opset import (IR 2): opset 1
            light = _upgraded(light)
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)

    try:
        # onnxruntime's quantized contrib operators are given their shapes between rounds
        return infer_with_contrib(_shapes_only_copy(model), infer)
    except Exception:  # inference is best effort
        return model


def _record_inferred_shapes(inferred, shapes: dict, has_subgraphs: bool) -> None:
    """The shapes of every graph's inputs, outputs and value_info; a known shape is never
    replaced by an unknown one of the same name."""
    pending = [inferred.graph]
    while pending:
        graph = pending.pop()
        for value in chain(graph.input, graph.output, graph.value_info):
            shape = _shape_of(value.type)
            name = value.name
            if shape is not None or name not in shapes:
                shapes[name] = shape
        if has_subgraphs:
            pending.extend(_subgraphs(graph))


def _record_nodes(model, graphs: list[tuple[object, int]], result: OnnxModel, originals=None) -> None:
    """The model's inputs and outputs, and the nodes of every graph, main graph first
    (graphs of equal depth in the order found); Constant nodes become constants.
    ``originals``: the ModelProto's graphs in the order of ``graphs``, whose nodes
    become the nodes' ``proto``."""
    initializer_names = set(result.constants)
    result.inputs = [i.name for i in model.graph.input if i.name not in initializer_names]
    result.outputs = [o.name for o in model.graph.output]
    nodes = result.nodes
    numbered = [(graph, depth, number) for number, (graph, depth) in enumerate(graphs)]
    for graph, depth, number in sorted(numbered, key=lambda item: item[1]):
        protos = originals[number].node if originals is not None else graph.node
        for position, node in enumerate(graph.node):
            op, domain = node.op_type, node.domain
            if op == "Constant" and domain in ("", "ai.onnx"):
                _record_constant(node, result)
                continue
            nodes.append(
                Node(
                    index=len(nodes), name=node.name, op=op,
                    domain=domain, inputs=list(node.input), outputs=list(node.output),
                    attrs=_attributes(node), proto=protos[position], graph_depth=depth, position=position,
                )
            )


def _record_constant(node, result: OnnxModel) -> None:
    from pwlint.formats.onnx.proto import attribute_value

    if not node.output:
        return
    for attr in node.attribute:
        if attr.name == "value":
            tensor = attr.t
            if tensor is None:
                return
            result.constants[node.output[0]] = Tensor(tuple(tensor.dims), tensor.data_type, _tensor_values(tensor))
            result.shapes[node.output[0]] = tuple(tensor.dims)
            return
        if attr.name in ("value_ints", "value_floats"):
            values = list(attribute_value(attr) or ())
            result.constants[node.output[0]] = Tensor((len(values),), 7 if attr.name == "value_ints" else 1, values)
            return
        if attr.name in ("value_int", "value_float"):
            result.constants[node.output[0]] = Tensor((), 7 if attr.name == "value_int" else 1, [attribute_value(attr)])
            return
