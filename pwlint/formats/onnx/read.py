"""Reading an ONNX file into a flat, shape-annotated list of nodes.

This is the format half of the ONNX loader: it parses the file, runs shape
inference without weight payloads, and walks If/Loop/Scan subgraphs without
recursion. :mod:`pwlint.formats.onnx.loader` turns the result into layers.
"""

from __future__ import annotations

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


def parse_file(path: str):
    from google.protobuf.message import DecodeError

    from pwlint.formats.onnx.wire import WireError, read_model

    require_model_file(path, "an ONNX model")
    try:
        # weights stay in the file: linting needs their shapes, fixing reads them one by one
        model = read_model(path)
    except (DecodeError, WireError, RuntimeError, ValueError, TypeError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LoadError(f"{path}: not a valid ONNX model (truncated or not protobuf: {detail})") from None
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise LoadError(f"{path}: not an ONNX model (no IR version or graph)")
    if not model.graph.node and not model.graph.output:
        raise LoadError(f"{path}: ONNX model with an empty graph")
    return model


def _tensor_values(tensor) -> list | None:
    from onnx import numpy_helper

    if prod(tensor.dims) > SMALL_TENSOR or tensor.data_location == 1:
        return None
    try:
        return numpy_helper.to_array(tensor).reshape(-1).tolist()
    except Exception:  # malformed payload: the values are a nicety, not a requirement
        return None


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
    if not type_proto.HasField("tensor_type"):
        return None
    tensor_type = type_proto.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # an unset dim_value (a symbolic dim_param, or nothing) reads as 0: unknown
    return tuple(value if (value := d.dim_value) > 0 else None for d in tensor_type.shape.dim)


def _attributes(node) -> dict:
    if not node.attribute:  # most nodes of a large graph: skip the import look-up too
        return {}
    from onnx import AttributeProto, helper

    attrs = {}
    for attr in node.attribute:
        if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            continue
        if attr.type in (AttributeProto.TENSOR, AttributeProto.SPARSE_TENSOR):
            attrs[attr.name] = attr
            continue
        value = helper.get_attribute_value(attr)
        attrs[attr.name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return attrs


def read_onnx(path: str) -> OnnxModel:
    return describe_model(parse_file(path))


def describe_model(model) -> OnnxModel:
    """Nodes, constants and shapes of an in-memory ModelProto, which is left unchanged.

    Every graph counts: the main graph and the If/Loop/Scan bodies inside it, found
    without recursion. Constants first (their small values help shape inference), then
    the shapes inference finds, then the nodes in a stable order (main graph first).
    """
    result = OnnxModel(proto=model)
    result.opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
    )
    all_graphs = _graphs_by_depth(model.graph)
    _record_initializers(all_graphs, result)
    # inference adds no subgraph: a model without them need not be searched again
    _record_inferred_shapes(_inferred(model, result.opset), result, has_subgraphs=len(all_graphs) > 1)
    for name, tensor in result.constants.items():
        result.shapes[name] = tensor.dims
    _record_nodes(model, all_graphs, result)
    return result


def _subgraphs(graph) -> Iterator:
    """The graphs held directly by ``graph``'s nodes' attributes (If branches, Loop and
    Scan bodies), not those nested deeper."""
    from onnx import AttributeProto

    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == AttributeProto.GRAPHS:
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


def _record_inferred_shapes(inferred, result: OnnxModel, has_subgraphs: bool) -> None:
    """The shapes of every graph's inputs, outputs and value_info; a known shape is never
    replaced by an unknown one of the same name."""
    pending = [inferred.graph]
    shapes = result.shapes
    while pending:
        graph = pending.pop()
        for value in chain(graph.input, graph.output, graph.value_info):
            shape = _shape_of(value.type)
            name = value.name
            if shape is not None or name not in shapes:
                shapes[name] = shape
        if has_subgraphs:
            pending.extend(_subgraphs(graph))


def _record_nodes(model, graphs: list[tuple[object, int]], result: OnnxModel) -> None:
    """The model's inputs and outputs, and the nodes of every graph, main graph first
    (graphs of equal depth in the order found); Constant nodes become constants."""
    initializer_names = set(result.constants)
    result.inputs = [i.name for i in model.graph.input if i.name not in initializer_names]
    result.outputs = [o.name for o in model.graph.output]
    nodes = result.nodes
    for graph, depth in sorted(graphs, key=lambda item: item[1]):
        for position, node in enumerate(graph.node):
            op, domain = node.op_type, node.domain
            if op == "Constant" and domain in ("", "ai.onnx"):
                _record_constant(node, result)
                continue
            nodes.append(
                Node(
                    index=len(nodes), name=node.name, op=op,
                    domain=domain, inputs=list(node.input), outputs=list(node.output),
                    attrs=_attributes(node), proto=node, graph_depth=depth, position=position,
                )
            )


def _record_constant(node, result: OnnxModel) -> None:
    from onnx import helper

    if not node.output:
        return
    for attr in node.attribute:
        if attr.name == "value":
            tensor = attr.t
            result.constants[node.output[0]] = Tensor(tuple(tensor.dims), tensor.data_type, _tensor_values(tensor))
            result.shapes[node.output[0]] = tuple(tensor.dims)
            return
        if attr.name in ("value_ints", "value_floats"):
            values = list(helper.get_attribute_value(attr))
            result.constants[node.output[0]] = Tensor((len(values),), 7 if attr.name == "value_ints" else 1, values)
            return
        if attr.name in ("value_int", "value_float"):
            result.constants[node.output[0]] = Tensor((), 7 if attr.name == "value_int" else 1, [helper.get_attribute_value(attr)])
            return
