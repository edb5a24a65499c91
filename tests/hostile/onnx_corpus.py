"""Hostile ONNX files, made on the spot: what an untrusted pull request could put in
front of the CI gate. Each function returns a ``ModelProto`` or raw bytes; the tests
write them into tmp_path.

Large or deep models (200k nodes, If nested thousands deep) are encoded as protobuf
wire bytes by hand: the protobuf library refuses to build or serialise messages
nested that deep, and onnx.helper takes seconds per 100k nodes.
"""

from __future__ import annotations

import random

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


# protobuf wire format ---------------------------------------------------------------

def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def message_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a sub-message, a string or packed values)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def int_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value & (2**64 - 1))


def text_field(number: int, value: str) -> bytes:
    return message_field(number, value.encode())


# field numbers of onnx.proto, for the hand-encoded models
MODEL_IR_VERSION, MODEL_OPSET, MODEL_GRAPH = 1, 8, 7
OPSET_VERSION = 2
GRAPH_NODE, GRAPH_NAME, GRAPH_INPUT, GRAPH_OUTPUT = 1, 2, 11, 12
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP, NODE_ATTRIBUTE = 1, 2, 3, 4, 5
ATTR_NAME, ATTR_GRAPH, ATTR_TYPE = 1, 6, 20
VALUE_NAME = 1
GRAPH_ATTRIBUTE = 5  # AttributeProto.GRAPH


def node_bytes(op: str, inputs: list[str], outputs: list[str], name: str = "", attributes: bytes = b"") -> bytes:
    body = b"".join(text_field(NODE_INPUT, i) for i in inputs)
    body += b"".join(text_field(NODE_OUTPUT, o) for o in outputs)
    if name:
        body += text_field(NODE_NAME, name)
    return body + text_field(NODE_OP, op) + attributes


def graph_attribute(name: str, graph: bytes) -> bytes:
    body = text_field(ATTR_NAME, name) + message_field(ATTR_GRAPH, graph) + int_field(ATTR_TYPE, GRAPH_ATTRIBUTE)
    return message_field(NODE_ATTRIBUTE, body)


def model_bytes(graph: bytes, opset: int | None = OPSET, ir_version: int = 8) -> bytes:
    top = int_field(MODEL_IR_VERSION, ir_version)
    if opset is not None:
        top += message_field(MODEL_OPSET, int_field(OPSET_VERSION, opset))
    return top + message_field(MODEL_GRAPH, graph)


def value_info(name: str) -> bytes:
    return text_field(VALUE_NAME, name)


# models built with onnx.helper -------------------------------------------------------

def make_model(nodes, inputs, outputs, initializers=(), value_info=(), opset: int | None = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers), value_info=list(value_info))
    opsets = [helper.make_opsetid("", opset)] if opset is not None else []
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def float_value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def self_loop() -> onnx.ModelProto:
    """``Add`` reading its own output."""
    nodes = [helper.make_node("Add", ["x", "y"], ["y"], name="loop")]
    return make_model(nodes, [float_value("x", [1, 4])], [float_value("y", [1, 4])])


def cycle(length: int) -> onnx.ModelProto:
    """``length`` Add nodes, each reading the previous one's output; the first reads the last's."""
    nodes = [
        helper.make_node("Add", ["x", f"t{(i - 1) % length}"], [f"t{i}"], name=f"add{i}") for i in range(length)
    ]
    return make_model(nodes, [float_value("x", [1, 4])], [float_value(f"t{length - 1}", [1, 4])])


def dangling_input() -> onnx.ModelProto:
    """A node reading a tensor that no node, graph input or initializer produces."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "ghost"], ["y"], name="add"),
    ]
    return make_model(nodes, [float_value("x", [1, 4])], [float_value("y", [1, 4])])


def dangling_in_subgraph() -> onnx.ModelProto:
    """An If branch reading a tensor that neither it nor the outer graph has."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["ghost"], ["a"])], "then", [], [float_value("a", [1, 4])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])], "else", [], [float_value("b", [1, 4])]
    )
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch)]
    inputs = [float_value("x", [1, 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    return make_model(nodes, inputs, [float_value("y", [1, 4])])


def outer_scope_reads() -> onnx.ModelProto:
    """A valid model whose If branches read a tensor of the outer graph (no dangling input)."""
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["r"], ["a"])], "then", [], [float_value("a", [1, 4])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["b"])], "else", [], [float_value("b", [1, 4])]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch),
    ]
    inputs = [float_value("x", [1, 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    model = make_model(nodes, inputs, [float_value("y", [1, 4])])
    onnx.checker.check_model(model, full_check=True)
    return model


def huge_declared_dims(where: str, dim: int) -> onnx.ModelProto:
    """A small Gemm model with one absurd dimension declared ``where``:
    ``input`` (graph input), ``value_info``, ``initializer`` (dims of a weight whose data
    is a few bytes) or ``reshape`` (the values of a Reshape's shape constant)."""
    weight_dims = [4, 4]
    inputs = [float_value("x", [dim if where == "input" else 1, 4])]
    values = [float_value("h", [1, dim])] if where == "value_info" else []
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="fc")]
    if where == "initializer":
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, raw_data=b"\0" * 64)
        weight.dims.extend([dim, 4])
    else:
        weight = numpy_helper.from_array(np.zeros(weight_dims, np.float32), "w")
    inits = [weight]
    if where == "reshape":
        inits.append(numpy_helper.from_array(np.array([dim, dim], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape"))
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["y"], name="relu"))
    return make_model(nodes, inputs, [float_value("y", None)], inits, values)


def huge_constant_of_shape(dim: int) -> onnx.ModelProto:
    """A ConstantOfShape asked for ``dim`` x ``dim`` values: a shape a value-propagating
    reader must not materialise."""
    shape = numpy_helper.from_array(np.array([dim, dim], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
        helper.make_node("Add", ["x", "big"], ["y"], name="add"),
    ]
    return make_model(nodes, [float_value("x", [1, 1])], [float_value("y", None)], [shape])


def no_opset() -> onnx.ModelProto:
    """A CNN with its opset_import removed."""
    from tests.conftest import cnn_model

    model = cnn_model()
    del model.opset_import[:]
    return model


def external_weight(location: str) -> onnx.ModelProto:
    """The CNN of tests.conftest (a PW001 head with a safe fix) with the classifier weight
    moved to external data at ``location``."""
    from tests.conftest import cnn_model

    model = cnn_model()
    for tensor in model.graph.initializer:
        if tensor.name == "fc.weight":
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(tensor.dims))))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    return model


def external_in_subgraph(location: str) -> onnx.ModelProto:
    """An If branch holding a Constant whose tensor lives in external data at ``location``."""
    value = TensorProto(name="c", data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    value.dims.extend([1, 4])
    entry = value.external_data.add()
    entry.key, entry.value = "location", location
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["a"], value=value)], "then", [], [float_value("a", [1, 4])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])], "else", [], [float_value("b", [1, 4])]
    )
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch)]
    inputs = [float_value("x", [1, 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    return make_model(nodes, inputs, [float_value("y", [1, 4])])


def with_subgraphs() -> onnx.ModelProto:
    """A valid model with a Loop whose body holds an If, and a large initializer: cut
    points fall inside nested graphs and inside a weight payload."""
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["v"], ["a"])], "then", [], [float_value("a", [1, 64])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["v"], ["b"])], "else", [], [float_value("b", [1, 64])]
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "x"], ["v"]),
            helper.make_node("If", ["cond_in"], ["v_out"], then_branch=then_branch, else_branch=else_branch),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            float_value("v_in", [1, 64]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), float_value("v_out", [1, 64])],
    )
    inits = [
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), "w"),
    ]
    nodes = [
        helper.make_node("Loop", ["trips", "go", "x"], ["looped"], name="loop", body=body),
        helper.make_node("Gemm", ["looped", "w"], ["y"], name="fc"),
    ]
    model = make_model(nodes, [float_value("x", [1, 64])], [float_value("y", [1, 64])], inits)
    onnx.checker.check_model(model, full_check=True)
    return model


# faults inside If/Loop bodies -------------------------------------------------------

#: where :func:`in_subgraph` puts a body of nodes: each a path of (node, attribute) from
#: the main graph down to the graph holding the body
SUBGRAPH_SITES = {
    "If then-branch": [("if", "then_branch")],
    "If else-branch": [("if", "else_branch")],
    "Loop body": [("loop", "body")],
    "If inside a Loop body": [("loop", "body"), ("inner_if", "then_branch")],
}


def _branch(nodes, output: str, name: str) -> onnx.GraphProto:
    """An If branch: no inputs, one [1, 4] output."""
    return helper.make_graph(list(nodes), name, [], [float_value(output, [1, 4])])


def _loop_body(nodes, result: str) -> onnx.GraphProto:
    """A Loop body carrying one [1, 4] value: ``v_out = v_in + result``, where ``nodes``
    compute ``result``."""
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"), *nodes,
         helper.make_node("Add", ["v_in", result], ["v_out"], name="carry")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), float_value("v_in", [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), float_value("v_out", [1, 4])],
    )


def in_subgraph(site: str, body: list, before: list = (), after: list = ()) -> onnx.ModelProto:
    """A model whose graph at ``site`` (a key of :data:`SUBGRAPH_SITES`) holds the nodes
    ``body``, which must compute a [1, 4] tensor ``a`` (they may read the main graph's
    input ``x``). The main graph runs the nodes ``before``, computes ``y`` with the If
    or Loop, then runs the nodes ``after`` (which may read ``y``; the last one's output
    is the model's). Every other graph is valid, so the model is as wrong as ``body``,
    ``before`` and ``after`` make it, and no more."""
    passing = [helper.make_node("Identity", ["x"], ["b"], name="pass")]
    if site == "If then-branch":
        holder = helper.make_node("If", ["c"], ["y"], name="if", then_branch=_branch(body, "a", "then"),
                                  else_branch=_branch(passing, "b", "else"))
    elif site == "If else-branch":
        holder = helper.make_node("If", ["c"], ["y"], name="if", then_branch=_branch(passing, "b", "then"),
                                  else_branch=_branch(body, "a", "else"))
    elif site == "Loop body":
        holder = helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=_loop_body(body, "a"))
    elif site == "If inside a Loop body":
        inner = helper.make_node("If", ["cond_in"], ["branch_out"], name="inner_if", then_branch=_branch(body, "a", "then"),
                                 else_branch=_branch(passing, "b", "else"))
        holder = helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=_loop_body([inner], "branch_out"))
    else:
        raise ValueError(site)
    last = after[-1].output[0] if after else "y"
    inputs = [float_value("x", [1, 4]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    trips = [numpy_helper.from_array(np.array(2, np.int64), "trips")] if holder.op_type == "Loop" else []
    return make_model([*before, holder, *after], inputs, [float_value(last, [1, 4])], trips)


def two_node_cycle() -> list:
    """``p`` reads ``q``'s output and ``q`` reads ``p``'s; ``out`` gives ``a``."""
    return [
        helper.make_node("Add", ["x", "t1"], ["t0"], name="p"),
        helper.make_node("Relu", ["t0"], ["t1"], name="q"),
        helper.make_node("Identity", ["t1"], ["a"], name="out"),
    ]


def self_reading_node() -> list:
    return [helper.make_node("Add", ["x", "a"], ["a"], name="me")]


def dangling_read(name: str = "ghost") -> list:
    """A node reading ``name``, which no graph this body can see produces."""
    return [helper.make_node("Add", ["x", name], ["a"], name="stray")]


# hand-encoded models -----------------------------------------------------------------

def long_chain(count: int) -> bytes:
    """``count`` Relu nodes in a chain, x -> t1 -> ... -> y."""
    names = ["x"] + [f"t{i}" for i in range(1, count)] + ["y"]
    nodes = b"".join(
        message_field(GRAPH_NODE, node_bytes("Relu", [names[i]], [names[i + 1]], name=f"relu{i}"))
        for i in range(count)
    )
    graph = text_field(GRAPH_NAME, "chain") + message_field(GRAPH_INPUT, value_info("x")) + nodes
    return model_bytes(graph + message_field(GRAPH_OUTPUT, value_info("y")))


def nested_ifs(depth: int) -> bytes:
    """If nodes nested ``depth`` deep through their then-branches; every else-branch
    and the innermost then-branch pass the outer input ``x`` through."""
    def leaf(output: str) -> bytes:
        return message_field(GRAPH_NODE, node_bytes("Identity", ["x"], [output])) + message_field(GRAPH_OUTPUT, value_info(output))

    graph = leaf(f"o{depth}")
    for level in reversed(range(depth)):
        attributes = graph_attribute("then_branch", graph) + graph_attribute("else_branch", leaf(f"e{level}"))
        graph = message_field(GRAPH_NODE, node_bytes("If", ["c"], [f"o{level}"], name=f"if{level}", attributes=attributes))
        graph += message_field(GRAPH_OUTPUT, value_info(f"o{level}"))
    graph += message_field(GRAPH_INPUT, value_info("x")) + message_field(GRAPH_INPUT, value_info("c"))
    return model_bytes(graph)


def huge_declared_length(where: str) -> bytes:
    """A length-delimited field that claims far more bytes than the file has: the
    ``graph``, a ``node`` inside it, or the packed ``dims`` of an initializer."""
    claim = 2**62
    node = node_bytes("Relu", ["x"], ["y"])
    if where == "graph":
        return int_field(MODEL_IR_VERSION, 8) + varint(MODEL_GRAPH << 3 | 2) + varint(claim) + node
    if where == "node":
        graph = varint(GRAPH_NODE << 3 | 2) + varint(claim) + node
    elif where == "dims":
        tensor = varint(1 << 3 | 2) + varint(claim) + varint(4)  # TensorProto.dims, packed
        graph = message_field(GRAPH_NODE, node) + message_field(5, tensor)
    else:
        raise ValueError(where)
    return int_field(MODEL_IR_VERSION, 8) + varint(MODEL_GRAPH << 3 | 2) + varint(len(graph)) + graph


def many_dims_tensor(count: int) -> bytes:
    """An initializer declaring ``count`` dimensions of size 1 (packed): a repeated field
    far larger than any real model has, in a few bytes per entry."""
    dims = message_field(1, b"\x01" * count)
    tensor = dims + int_field(2, TensorProto.FLOAT) + text_field(8, "w") + message_field(9, b"\0" * 4)
    graph = message_field(GRAPH_NODE, node_bytes("Relu", ["w"], ["y"])) + message_field(5, tensor)
    return model_bytes(graph + message_field(GRAPH_OUTPUT, value_info("y")))


def huge_list_attribute(count: int) -> bytes:
    """A Relu carrying an ``ints`` attribute of ``count`` values, one byte each in the
    file (packed) and a Python object each once read."""
    values = message_field(8, b"\x07" * count)  # AttributeProto.ints, packed
    attribute = message_field(NODE_ATTRIBUTE, text_field(ATTR_NAME, "extra") + values + int_field(ATTR_TYPE, 7))
    node = node_bytes("Relu", ["x"], ["y"], name="relu", attributes=attribute)
    graph = message_field(GRAPH_NODE, node) + message_field(GRAPH_INPUT, value_info("x"))
    return model_bytes(graph + message_field(GRAPH_OUTPUT, value_info("y")))


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def cut_points(size: int, count: int = 40) -> list[int]:
    """``count`` evenly spaced lengths to truncate a file of ``size`` bytes to, plus
    the first and last few bytes."""
    spaced = {size * i // count for i in range(1, count)}
    return sorted(spaced | {1, 2, 3, size - 3, size - 2, size - 1})


def invalid_utf8(where: str) -> bytes:
    """The CNN with one string that is not UTF-8: a node's ``name`` or ``op_type``, an
    initializer's name (with the node input reading it), or the graph output's name
    (with the node writing it). protobuf hands such strings back as bytes."""
    from tests.conftest import cnn_model

    model = cnn_model()
    marker = "\x01\x02\x03\x04"
    if where == "node name":
        model.graph.node[0].name = marker
    elif where == "op type":
        model.graph.node[2].op_type = marker
    elif where == "tensor name":
        model.graph.initializer[0].name = marker
        model.graph.node[0].input[1] = marker
    elif where == "output name":
        model.graph.output[0].name = marker
        model.graph.node[-1].output[0] = marker
    else:
        raise ValueError(where)
    data = model.SerializeToString()
    assert marker.encode() in data
    return data.replace(marker.encode(), b"\xff\xfe\xfd\xfc")


def reversed_nodes() -> onnx.ModelProto:
    """The CNN with its nodes listed last to first: out of order, but no cycle."""
    from tests.conftest import cnn_model

    model = cnn_model()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def wrong_attribute_type(attribute: str, value) -> onnx.ModelProto:
    """The CNN with one attribute of its Conv replaced by ``value`` (of whatever type
    onnx.helper gives it)."""
    from tests.conftest import cnn_model

    model = cnn_model()
    conv = model.graph.node[0]
    kept = [a for a in conv.attribute if a.name != attribute]
    del conv.attribute[:]
    conv.attribute.extend(kept + [helper.make_attribute(attribute, value)])
    return model


def missing_weight() -> onnx.ModelProto:
    """The CNN whose Gemm has only its data input."""
    from tests.conftest import cnn_model

    model = cnn_model()
    del model.graph.node[-1].input[1:]
    return model
