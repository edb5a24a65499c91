"""Fuzzing the ONNX reader with mutated copies of valid models.

Every mutant must give what a hostile file gives: a lint (exit 0 or 1) or exit 2 with
one ``pwlint: error:`` line, never a traceback or an internal error. pwlint runs
in-process here for speed; tests/hostile/test_onnx_hostile.py runs the named hostile
cases in a child process with time and memory limits.

Two kinds of mutants: bytes changed blindly (most break the protobuf framing, a few
land in names and values), and models changed a field at a time (an operator
swapped, an input rewired or dropped, an attribute of the wrong type, dims
rewritten), which parse and so reach the loader itself.

The budget is fixed and the search derandomised, so CI runs the same mutants every
time (well under a minute); ``PWLINT_FUZZ_EXAMPLES=20000`` searches further locally.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

from tests.conftest import cnn_model
from tests.hostile import onnx_corpus
from tests.hostile.harness import assert_handled_inprocess, fuzz_budget

EXAMPLES_FOLDER = Path(__file__).resolve().parents[2] / "examples"


def _seeds() -> list[bytes]:
    """Small valid models with different parts to break: a CNN with a PW001 head,
    Loop and If bodies, outer-scope reads, and a real example file."""
    return [
        cnn_model().SerializeToString(),
        onnx_corpus.with_subgraphs().SerializeToString(),
        onnx_corpus.outer_scope_reads().SerializeToString(),
        (EXAMPLES_FOLDER / "resnet_pointwise.onnx").read_bytes(),
    ]


SEEDS = _seeds()


def _flip_bit(data: bytearray, where: int, value: int) -> None:
    data[where % len(data)] ^= 1 << (value % 8)


def _overwrite(data: bytearray, where: int, value: int) -> None:
    data[where % len(data)] = value % 256


def _insert(data: bytearray, where: int, value: int) -> None:
    # a varint-looking run: lengths and field keys are where readers go wrong
    data[where % len(data):where % len(data)] = bytes([0x80 | value % 128] * (value % 7) + [value % 128])


def _delete(data: bytearray, where: int, value: int) -> None:
    start = where % len(data)
    del data[start:start + 1 + value % 64]


def _truncate(data: bytearray, where: int, value: int) -> None:
    del data[max(1, where % len(data)):]


def _duplicate(data: bytearray, where: int, value: int) -> None:
    start = where % len(data)
    span = data[start:start + 1 + value % 256]
    at = (where * 31 + value) % len(data)
    data[at:at] = span


MUTATIONS = [_flip_bit, _overwrite, _insert, _delete, _truncate, _duplicate]

mutation = st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 2**20), st.integers(0, 255))


def mutant(seed: int, steps) -> bytes:
    data = bytearray(SEEDS[seed])
    for change, where, value in steps:
        if data:
            change(data, where, value)
    return bytes(data)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def test_the_seeds_are_valid_models():
    for data in SEEDS:
        onnx.checker.check_model(onnx.ModelProto.FromString(data), full_check=True)


@fuzz_budget()
@given(seed=st.integers(0, len(SEEDS) - 1), steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_models_lint_or_fail_in_one_line(scratch, seed, steps):
    path = scratch / "mutant.onnx"
    path.write_bytes(mutant(seed, steps))
    assert_handled_inprocess(path)


# field-level mutations ---------------------------------------------------------------

OPERATORS = [
    "Conv", "ConvTranspose", "QLinearConv", "Gemm", "MatMul", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
    "BatchNormalization", "LayerNormalization", "GlobalAveragePool", "ReduceMean", "MaxPool", "Add", "Mul",
    "Div", "Sub", "Pow", "Sqrt", "Transpose", "Relu", "Sigmoid", "Softmax", "Identity", "Dropout", "Cast",
    "Concat", "If", "Loop", "Constant", "NotAnOperator",
]
ATTRIBUTE_NAMES = ["kernel_shape", "strides", "pads", "group", "axis", "axes", "perm", "transA", "transB", "keepdims", "to", "value", "body"]
ATTRIBUTE_VALUES = [0, 1, -1, 2**40, -(2**63), 1.5, float("nan"), "abc", [0], [1, -1, 2**40], [1.5, 2.5], ["a"],
                    helper.make_tensor("t", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])]
DIMS = [0, 1, 3, 7, 64, 2**31, 2**40]


def _names(graph) -> list[str]:
    return [v.name for v in graph.input] + [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output] + [""]


def _set_op(graph, node, pick):
    node.op_type = OPERATORS[pick % len(OPERATORS)]


def _rewire_input(graph, node, pick):
    if node.input:
        names = _names(graph)
        node.input[pick % len(node.input)] = names[pick // 7 % len(names)]


def _add_input(graph, node, pick):
    names = _names(graph)
    node.input.append(names[pick % len(names)])


def _drop_input(graph, node, pick):
    if node.input:
        del node.input[pick % len(node.input)]


def _rename_output(graph, node, pick):
    if node.output:
        names = _names(graph)
        node.output[0] = names[pick % len(names)]


def _set_attribute(graph, node, pick):
    name = ATTRIBUTE_NAMES[pick % len(ATTRIBUTE_NAMES)]
    value = ATTRIBUTE_VALUES[pick // 13 % len(ATTRIBUTE_VALUES)]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _drop_attribute(graph, node, pick):
    if node.attribute:
        del node.attribute[pick % len(node.attribute)]


def _set_dims(graph, node, pick):
    if graph.initializer:
        tensor = graph.initializer[pick % len(graph.initializer)]
        del tensor.dims[:]
        tensor.dims.extend(DIMS[(pick >> (3 * i)) % len(DIMS)] for i in range(pick % 5))


def _set_data_type(graph, node, pick):
    if graph.initializer:
        graph.initializer[pick % len(graph.initializer)].data_type = pick % 29


def _set_shape(graph, node, pick):
    value = (list(graph.input) + list(graph.output))[pick % (len(graph.input) + len(graph.output))]
    dims = value.type.tensor_type.shape.dim
    if dims:
        dims[pick % len(dims)].dim_value = DIMS[pick // 5 % len(DIMS)]


def _drop_node(graph, node, pick):
    graph.node.remove(node)


FIELD_MUTATIONS = [
    _set_op, _rewire_input, _add_input, _drop_input, _rename_output, _set_attribute, _drop_attribute,
    _set_dims, _set_data_type, _set_shape, _drop_node,
]
field_mutation = st.tuples(st.sampled_from(FIELD_MUTATIONS), st.integers(0, 2**16), st.integers(0, 2**16))


def field_mutant(seed: int, steps) -> bytes:
    model = onnx.ModelProto.FromString(SEEDS[seed])
    graph = model.graph
    for change, which, pick in steps:
        if graph.node:
            change(graph, graph.node[which % len(graph.node)], pick)
    return model.SerializeToString()


@fuzz_budget()
@given(seed=st.integers(0, len(SEEDS) - 1), steps=st.lists(field_mutation, min_size=1, max_size=4))
def test_models_changed_field_by_field_lint_or_fail_in_one_line(scratch, seed, steps):
    path = scratch / "field-mutant.onnx"
    path.write_bytes(field_mutant(seed, steps))
    assert_handled_inprocess(path)
