"""Faults inside If and Loop bodies are refused like faults in the main graph.

A cycle, a node reading its own output or a read of a tensor nothing produces is
as fatal in a subgraph as anywhere: onnxruntime will not load such a model, so a CI
gate that calls it clean lets a broken model through. Each case is put in an If's
then- and else-branch, a Loop body and an If nested inside a Loop body, and must give
exit 2 with one line naming the problem; onnxruntime is asked too, so each refusal is
one the runtime makes as well.

A subgraph reads tensors of the graphs around it (ONNX's outer scope). Those reads
are legal, and must never be refused; but they are inputs of the If or Loop holding
the subgraph all the same, so a branch reading the output of its own If, or of a node
that needs that If's result, closes a cycle through the main graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.conftest import run_inprocess
from tests.hostile import onnx_corpus as corpus
from tests.hostile.harness import assert_handled_inprocess

SITES = list(corpus.SUBGRAPH_SITES)


def write(folder: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def refusal(path: Path) -> str:
    """Lint ``path``: it must be refused with exactly one line naming the file; return
    the rest of that line."""
    assert_handled_inprocess(path)
    run = run_inprocess("check", str(path))
    assert run.code == 2, (run.code, run.out)
    [line] = run.err.splitlines()
    prefix = f"pwlint: error: {path}: "
    assert line.startswith(prefix), line
    return line[len(prefix):]


def linted_clean(path: Path) -> None:
    run = run_inprocess("check", str(path))
    assert (run.code, run.err) == (0, ""), (run.code, run.err)
    assert "All checks passed" in run.out, run.out


def onnxruntime_error(path: Path) -> str | None:
    """What onnxruntime says loading ``path`` (None if it loads), the independent
    judge of whether a model can run at all."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initializers are noise here
    try:
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        return str(exc)
    return None


def run_with_onnxruntime(path: Path) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 4), "c": np.array(True)}
    return session.run(None, feeds)[0]


# faults inside one subgraph ------------------------------------------------------------

@pytest.mark.parametrize("site", SITES)
def test_two_node_cycle_in_a_subgraph_is_refused_naming_its_nodes(tmp_path, site):
    path = write(tmp_path, corpus.in_subgraph(site, corpus.two_node_cycle()))
    assert "not acyclic" in onnxruntime_error(path)
    line = refusal(path)
    assert line in ("nodes form a cycle: p -> q -> p", "nodes form a cycle: q -> p -> q"), line


@pytest.mark.parametrize("site", SITES)
def test_node_reading_its_own_output_in_a_subgraph_is_refused(tmp_path, site):
    path = write(tmp_path, corpus.in_subgraph(site, corpus.self_reading_node()))
    assert "not acyclic" in onnxruntime_error(path)
    assert refusal(path) == "node 'me' reads its own output 'a'"


@pytest.mark.parametrize("site", SITES)
def test_subgraph_input_that_no_enclosing_graph_produces_is_refused(tmp_path, site):
    path = write(tmp_path, corpus.in_subgraph(site, corpus.dangling_read("ghost")))
    assert onnxruntime_error(path) is not None
    assert refusal(path) == "node 'stray' reads 'ghost', which no node, graph input or initializer produces"


def test_a_branch_cannot_read_a_tensor_of_its_sibling_branch(tmp_path):
    """The else-branch makes ``b``; the then-branch sees the main graph, not its sibling."""
    path = write(tmp_path, corpus.in_subgraph("If then-branch", corpus.dangling_read("b")))
    assert onnxruntime_error(path) is not None
    assert refusal(path) == "node 'stray' reads 'b', which no node, graph input or initializer produces"


def test_the_main_graph_cannot_read_a_tensor_made_inside_a_subgraph(tmp_path):
    """Scopes open inwards only: ``a`` exists inside the branch, not after the If."""
    leak = helper.make_node("Add", ["y", "a"], ["z"], name="leak")
    body = [helper.make_node("Relu", ["x"], ["a"], name="r")]
    path = write(tmp_path, corpus.in_subgraph("If then-branch", body, after=[leak]))
    assert onnxruntime_error(path) is not None
    assert refusal(path) == "node 'leak' reads 'a', which no node, graph input or initializer produces"


def test_a_loop_body_cannot_read_a_tensor_made_inside_its_nested_if(tmp_path):
    """``a`` is made in the then-branch of the If inside the Loop body; the body's own
    nodes (here its Add, which takes ``branch_out``) may not read it."""
    model = corpus.in_subgraph("If inside a Loop body", [helper.make_node("Relu", ["x"], ["a"], name="r")])
    body = next(a.g for a in model.graph.node[0].attribute if a.name == "body")
    carry = next(n for n in body.node if n.name == "carry")
    carry.input[1] = "a"
    path = write(tmp_path, model)
    assert onnxruntime_error(path) is not None
    assert refusal(path) == "node 'carry' reads 'a', which no node, graph input or initializer produces"


# reads across the subgraph's boundary --------------------------------------------------

@pytest.mark.parametrize("site", SITES)
def test_subgraph_reading_the_output_of_the_node_holding_it_is_refused(tmp_path, site):
    """A branch (or body) reading ``y``, which its own If (or Loop) computes: the node
    needs its own result before it can run. onnxruntime refuses this as a cycle."""
    holder = corpus.SUBGRAPH_SITES[site][0][0]
    path = write(tmp_path, corpus.in_subgraph(site, [helper.make_node("Relu", ["y"], ["a"], name="late")]))
    assert "not acyclic" in onnxruntime_error(path)
    assert refusal(path) == f"node '{holder}' reads its own output 'y' from within its subgraph"


@pytest.mark.parametrize("site", SITES)
def test_subgraph_reading_a_node_that_needs_its_result_is_a_cycle(tmp_path, site):
    """The branch reads ``z``; ``z`` is computed from ``y``, the If's (or Loop's) output."""
    holder = corpus.SUBGRAPH_SITES[site][0][0]
    after = [helper.make_node("Relu", ["y"], ["z"], name="after")]
    path = write(tmp_path, corpus.in_subgraph(site, [helper.make_node("Relu", ["z"], ["a"], name="late")], after=after))
    assert "not acyclic" in onnxruntime_error(path)
    line = refusal(path)
    assert line in (f"nodes form a cycle: {holder} -> after -> {holder}", f"nodes form a cycle: after -> {holder} -> after"), line


# what a subgraph may do ----------------------------------------------------------------

@pytest.mark.parametrize("site", SITES)
def test_subgraph_reading_every_enclosing_scope_lints(tmp_path, site):
    """The body reads the main graph's input ``x`` and a main-graph node's output ``r``
    (and, inside a Loop, the body's carried value ``v_in``): legal reads, no refusal.
    onnxruntime runs the model and gets the value the graph says."""
    reads = ["r", "v_in"] if "Loop" in site else ["r", "x"]
    body = [
        helper.make_node("Neg", [reads[0]], ["s"], name="first"),
        helper.make_node("Add", ["s", reads[1]], ["a"], name="second"),
    ]
    path = write(tmp_path, corpus.in_subgraph(site, body, before=[helper.make_node("Relu", ["x"], ["r"], name="relu")]))
    x = np.arange(4, dtype=np.float32)
    if "Loop" in site:  # two trips of v <- v + (v - relu(x)), from v = x
        expected = x
        for _ in range(2):
            expected = expected + (expected - np.maximum(x, 0))
    else:  # the then-branch runs (c is true); an else-branch body is not taken
        expected = -np.maximum(x, 0) + x if site != "If else-branch" else x
    np.testing.assert_allclose(run_with_onnxruntime(path).ravel(), expected)
    linted_clean(path)


@pytest.mark.parametrize("site", SITES)
def test_subgraph_reading_a_main_graph_node_listed_after_it_lints(tmp_path, site):
    """The body reads ``w``, made by a node written after the If (or Loop) that does not
    depend on it: out of order, not a cycle. onnxruntime sorts the main graph and runs it."""
    after = [
        helper.make_node("Relu", ["x"], ["w"], name="early"),
        helper.make_node("Add", ["y", "w"], ["z"], name="join"),
    ]
    path = write(tmp_path, corpus.in_subgraph(site, [helper.make_node("Relu", ["w"], ["a"], name="late")], after=after))
    assert onnxruntime_error(path) is None
    linted_clean(path)


def test_outer_scope_reads_across_two_levels_are_resolved_at_the_right_level(tmp_path):
    """The If inside the Loop body reads ``y2``, the output of a main-graph node listed
    after the Loop that depends on nothing the Loop makes. The read passes through the
    Loop body (which does not make ``y2``) to the main graph, where it is a plain
    out-of-order dependency of the Loop."""
    after = [
        helper.make_node("Neg", ["x"], ["y2"], name="late_neg"),
        helper.make_node("Add", ["y", "y2"], ["z"], name="join"),
    ]
    body = [helper.make_node("Relu", ["y2"], ["a"], name="r")]
    path = write(tmp_path, corpus.in_subgraph("If inside a Loop body", body, after=after))
    assert onnxruntime_error(path) is None
    linted_clean(path)
