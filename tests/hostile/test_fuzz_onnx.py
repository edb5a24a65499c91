"""Fuzzing the ONNX reader with mutated copies of valid models.

Every mutant must give what a hostile file gives: a lint (exit 0 or 1) or exit 2 with
one ``pwlint: error:`` line, never a traceback or an internal error. pwlint runs
in-process here for speed; tests/hostile/test_onnx_hostile.py runs the named hostile
cases in a child process with time and memory limits.

Two kinds of mutants: bytes changed blindly (most break the protobuf framing, a few
land in names and values), and models changed a field at a time (an operator
swapped, an input rewired or dropped, an attribute of the wrong type, dims
rewritten), which parse and so reach the loader itself. Field mutations reach nodes
of If/Loop bodies as well as of the main graph, and rewire inputs to names of any
graph, so they make cycles, self-loops and reads across scopes inside subgraphs.
Each field mutant is also judged by :func:`wiring_fault`, a reference check written
apart from pwlint's guard: a mutant whose graphs are not graphs must be refused,
and one whose graphs are must not be refused for its wiring. The seeds' bodies are
small, so every single rewire of a body node's input is also tried in full, not
sampled: hypothesis favours small numbers, and would rarely pick the one rewire of
a three-node body that closes a cycle.

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

from tests.conftest import cnn_model, run_inprocess
from tests.hostile import onnx_corpus
from tests.hostile.harness import assert_handled_inprocess, fuzz_budget

EXAMPLES_FOLDER = Path(__file__).resolve().parents[2] / "examples"


def _seeds() -> list[bytes]:
    """Small valid models with different parts to break: a CNN with a PW001 head,
    Loop and If bodies, outer-scope reads (from an If inside a Loop body too), and a
    real example file."""
    return [
        cnn_model().SerializeToString(),
        onnx_corpus.with_subgraphs().SerializeToString(),
        onnx_corpus.outer_scope_reads().SerializeToString(),
        (EXAMPLES_FOLDER / "resnet_pointwise.onnx").read_bytes(),
        _nested_outer_reads().SerializeToString(),
    ]


def _nested_outer_reads() -> onnx.ModelProto:
    """An If inside a Loop body whose branch reads the main graph's input and a main-graph
    node, and the Loop body's carried value; a node after the Loop reads its result."""
    body = [
        helper.make_node("Add", ["r", "v_in"], ["s"], name="inner_add"),
        helper.make_node("Sigmoid", ["s"], ["t"], name="inner_sigmoid"),
        helper.make_node("Mul", ["t", "x"], ["a"], name="inner_mul"),
    ]
    before = [helper.make_node("Relu", ["x"], ["r"], name="relu")]
    after = [helper.make_node("Sigmoid", ["y"], ["z"], name="after")]
    return onnx_corpus.in_subgraph("If inside a Loop body", body, before=before, after=after)


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
    return [v.name for v in graph.input] + [t.name for t in graph.initializer] + [o for n in graph.node for o in n.output]


def _set_op(graph, node, pick, names):
    node.op_type = OPERATORS[pick % len(OPERATORS)]


def _rewire_input(graph, node, pick, names):
    if node.input:
        node.input[pick % len(node.input)] = names[pick // 7 % len(names)]


def _read_downstream(graph, node, pick, names):
    """An input rewired to a tensor made by a node after this one in its graph (nearest
    first), or last by this node itself: the way a cycle is written (when that node
    depends on this one) or nodes fall out of order."""
    position = list(graph.node).index(node)
    later = [o for n in graph.node[position + 1:] for o in n.output if o] + [o for o in node.output if o]
    if node.input and later:
        node.input[pick % len(node.input)] = later[pick // 7 % len(later)]


def _add_input(graph, node, pick, names):
    node.input.append(names[pick % len(names)])


def _drop_input(graph, node, pick, names):
    if node.input:
        del node.input[pick % len(node.input)]


def _rename_output(graph, node, pick, names):
    if node.output:
        node.output[0] = names[pick % len(names)]


def _set_attribute(graph, node, pick, names):
    name = ATTRIBUTE_NAMES[pick % len(ATTRIBUTE_NAMES)]
    value = ATTRIBUTE_VALUES[pick // 13 % len(ATTRIBUTE_VALUES)]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _drop_attribute(graph, node, pick, names):
    if node.attribute:
        del node.attribute[pick % len(node.attribute)]


def _set_dims(graph, node, pick, names):
    if graph.initializer:
        tensor = graph.initializer[pick % len(graph.initializer)]
        del tensor.dims[:]
        tensor.dims.extend(DIMS[(pick >> (3 * i)) % len(DIMS)] for i in range(pick % 5))


def _set_data_type(graph, node, pick, names):
    if graph.initializer:
        graph.initializer[pick % len(graph.initializer)].data_type = pick % 29


def _set_shape(graph, node, pick, names):
    value = (list(graph.input) + list(graph.output))[pick % (len(graph.input) + len(graph.output))]
    dims = value.type.tensor_type.shape.dim
    if dims:
        dims[pick % len(dims)].dim_value = DIMS[pick // 5 % len(DIMS)]


def _drop_node(graph, node, pick, names):
    graph.node.remove(node)


FIELD_MUTATIONS = [
    _set_op, _rewire_input, _read_downstream, _add_input, _drop_input, _rename_output, _set_attribute,
    _drop_attribute, _set_dims, _set_data_type, _set_shape, _drop_node,
]
field_mutation = st.tuples(st.sampled_from(FIELD_MUTATIONS), st.integers(0, 2**16), st.integers(0, 2**16))


def _graphs(model) -> list[tuple[onnx.GraphProto, list[str]]]:
    """Every graph of ``model`` (the main graph first), each with the names it can see:
    its own, then those of the graphs around it."""
    found = []
    pending = [(model.graph, [])]
    while pending:
        graph, outer = pending.pop()
        visible = _names(graph) + outer
        found.append((graph, visible))
        for node in graph.node:
            for attr in node.attribute:
                pending += [(sub, visible) for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]
    return found


def field_mutant(seed: int, steps) -> onnx.ModelProto:
    """The seed changed by ``steps``, each on one node of one graph (the main graph or
    a body, picked first, so that bodies of a few nodes are changed as often as a main
    graph of many). Names to rewire to are the ones the node's graph sees, then every
    other name of the model (a read out of scope), then "" (an optional input left out)."""
    model = onnx.ModelProto.FromString(SEEDS[seed])
    for change, which, pick in steps:
        graphs = _graphs(model)
        everywhere = [name for _, visible in graphs for name in visible]
        graph, visible = graphs[which % len(graphs)]
        if graph.node:
            node = graph.node[which // len(graphs) % len(graph.node)]
            change(graph, node, pick, visible + [n for n in everywhere if n not in visible] + [""])
    return model


def wiring_fault(model) -> str | None:
    """Why ``model``'s graphs are not graphs (a cycle, a node reading its own output, a
    read of a name no visible graph makes), or None; ``"ambiguous"`` where a name is
    made twice (ONNX names are made once) so no answer is certain.

    A reference for the fuzz test, written apart from pwlint.formats.onnx.guard: a
    recursive walk with networkx. A subgraph's reads of outer names are inputs of the
    node holding it, as onnxruntime sorts them."""
    import networkx as nx

    def free_reads(graph, outer: set[str]) -> set[str] | str:
        """The names ``graph`` (with its subgraphs) reads from outside, or a fault."""
        made = [o for node in graph.node for o in node.output if o]
        given = {v.name for v in graph.input} | {t.name for t in graph.initializer}  # may overlap (IR < 4)
        if len(set(made)) < len(made) or given & set(made) or (given | set(made)) & outer:
            return "ambiguous"
        producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
        visible = given | set(made) | outer
        edges = nx.DiGraph()
        edges.add_nodes_from(range(len(graph.node)))
        reads_outside: set[str] = set()
        for i, node in enumerate(graph.node):
            reads = {name for name in node.input if name}
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    inner = free_reads(sub, visible)
                    if isinstance(inner, str):
                        return inner
                    reads |= inner
            for name in reads:
                if name not in visible:
                    return f"'{name}' is read but not made"
                if name in producer:
                    edges.add_edge(producer[name], i)
                elif name in outer:
                    reads_outside.add(name)
        if not nx.is_directed_acyclic_graph(edges):
            return "cycle"
        return reads_outside

    found = free_reads(model.graph, set())
    return found if isinstance(found, str) else None


#: what pwlint says when it refuses a model for its wiring
WIRING_REFUSALS = ("nodes form a cycle", "reads its own output", "which no node, graph input or initializer produces")


@fuzz_budget()
@given(seed=st.integers(0, len(SEEDS) - 1), steps=st.lists(field_mutation, min_size=1, max_size=4))
def test_models_changed_field_by_field_lint_or_fail_in_one_line(scratch, seed, steps):
    """Handled as any hostile file; and a mutant whose graphs are not graphs (in the
    main graph or any body) is never linted, one whose graphs are is never refused for
    its wiring."""
    model = field_mutant(seed, steps)
    path = scratch / "field-mutant.onnx"
    path.write_bytes(model.SerializeToString())
    assert_handled_inprocess(path)
    assert_wiring_judged(path, model)


def assert_wiring_judged(path: Path, model: onnx.ModelProto) -> None:
    """pwlint refuses ``model`` (written at ``path``) if :func:`wiring_fault` finds a
    fault, and does not refuse it for its wiring if that finds none."""
    fault = wiring_fault(model)
    run = run_inprocess("check", str(path))
    if fault not in (None, "ambiguous"):
        assert run.code == 2, f"a model with {fault} was linted: {run.out}"
    elif fault is None:
        assert not any(phrase in run.err for phrase in WIRING_REFUSALS), f"refused a well-wired model: {run.err}"


def body_rewires(model: onnx.ModelProto):
    """Every model that differs from ``model`` in one input of one node of an If/Loop
    body: rewired to each name that body sees (its own, then its enclosing graphs'),
    then to each name of the model it does not see. The sweep the fuzzer samples, done
    in full where bodies are small enough."""
    graphs = _graphs(model)
    everywhere = [name for _, visible in graphs for name in visible]
    for g, (graph, visible) in enumerate(graphs):
        if g == 0:
            continue  # the main graph's nodes are the fuzzer's
        names = list(dict.fromkeys(visible + everywhere))
        for n, node in enumerate(graph.node):
            for i in range(len(node.input)):
                for name in names:
                    if name == node.input[i]:
                        continue
                    changed = onnx.ModelProto()
                    changed.CopyFrom(model)
                    _graphs(changed)[g][0].node[n].input[i] = name
                    yield f"{graph.name}/{node.name or node.op_type}.input[{i}]={name}", changed


@pytest.mark.parametrize("seed", [i for i, data in enumerate(SEEDS) if len(_graphs(onnx.ModelProto.FromString(data))) > 1])
def test_every_input_of_every_body_node_rewired_is_judged_right(scratch, seed):
    """Each single rewire of a body node's input (a cycle inside the body, a read of its
    own output, of its If's output, of a sibling branch, or a legal outer read) gives
    the verdict of the reference check: refused if the graphs are not graphs, not
    refused for wiring if they are."""
    path = scratch / "rewired.onnx"
    verdicts = {"fault": 0, "fine": 0}
    for what, model in body_rewires(onnx.ModelProto.FromString(SEEDS[seed])):
        path.write_bytes(model.SerializeToString())
        try:
            assert_wiring_judged(path, model)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None
        verdicts["fine" if wiring_fault(model) in (None, "ambiguous") else "fault"] += 1
    assert verdicts["fault"] and verdicts["fine"], verdicts  # the sweep makes both kinds
