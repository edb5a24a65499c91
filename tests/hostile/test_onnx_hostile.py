"""Hostile ONNX files, the kind an untrusted pull request can put in front of the CI gate.

Each one must give a lint or exit 2 with one ``pwlint: error: PATH: ...`` line, in
seconds and bounded memory (tests/hostile/harness.py runs pwlint in a child process
and measures it). Where pwlint must refuse a file, the test says why the user would
want it refused and checks that the line names the problem.

Decisions these tests pin down:
- a node input that nothing produces (no node, graph input, initializer, nor an
  enclosing graph for a subgraph) is an error, not a lint: onnxruntime refuses such
  a model, so a gate must not call it clean;
- cycles and self-loops are errors; nodes merely out of order are not (onnxruntime
  sorts them). The same holds inside If/Loop bodies, where a body's reads of the
  graphs around it count as inputs of the node holding it: those cases are in
  tests/formats/onnx/test_subgraphs.py;
- a missing ONNX opset is an error: the operators mean nothing without it; so is
  a node with fewer inputs than its operator takes, or an attribute of another
  type than the operator's schema declares (the ONNX checker's rules);
- a huge or negative dim in a graph input or value_info that pwlint can read is a
  shape like any other (negative ones are unknown); past 2**40 it is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from pwlint.formats.onnx import guard as onnx_guard

from pwlint.formats.onnx import wire as onnx_wire
from tests.conftest import cnn_model, run_inprocess
from tests.hostile import onnx_corpus as corpus
from tests.hostile.harness import assert_handled, run_bounded

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: what a small model costs to lint (about 80 MiB): a hostile one may not cost much more
SMALL_MIB = 400


def write(folder: Path, name: str, model) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def refused(path: Path, *phrases: str, timeout: float = 60, max_mib: float = SMALL_MIB) -> str:
    """Lint ``path`` in a child process; it must fail with one line naming the file and
    containing every phrase. Returns that line."""
    run = run_bounded("check", path, timeout=timeout)
    assert_handled(run, max_mib)
    assert run.code == 2, (run.code, run.out)
    line = run.err.strip()
    assert line.startswith(f"pwlint: error: {path}: "), line
    for phrase in phrases:
        assert phrase in line, line
    return line


def linted(path: Path, *args: str, timeout: float = 60, max_mib: float = SMALL_MIB):
    run = run_bounded("check", path, *args, timeout=timeout)
    assert_handled(run, max_mib)
    assert run.code in (0, 1) and run.err == "", (run.code, run.err)
    return run


def assert_every_file_refused(folder: Path, count: int) -> None:
    """One child lints every file in ``folder``: each gets its own error line, and the
    whole sweep stays in time and memory."""
    run = run_bounded("check", folder, timeout=120)
    assert run.code == 2
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err[-2000:]
    lines = run.err.splitlines()
    assert len(lines) == count and all(line.startswith(f"pwlint: error: {folder}") for line in lines), run.err[-2000:]
    assert run.peak_mib < SMALL_MIB, run.peak_mib


def assert_refused_inprocess(path: Path) -> None:
    run = run_inprocess("check", str(path))
    assert run.code == 2, (run.code, run.out)
    assert "Traceback" not in run.err and "internal error" not in run.err, run.err
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pwlint: error: {path}: "), run.err


# empty, truncated and random files --------------------------------------------------

def test_empty_file_is_an_error_not_a_clean_model(tmp_path):
    # onnx.load reads an empty file as an empty ModelProto without complaint
    assert onnx.load_model_from_string(b"") == onnx.ModelProto()
    refused(write(tmp_path, "empty.onnx", b""), "empty file")


@pytest.mark.parametrize("data", [b"\x08\x08", b"\x08\x08\x3a\x00", b"\x08\x08\x42\x02\x10\x11\x3a\x02\x0a\x00"], ids=["ir-only", "empty-graph", "empty-node"])
def test_a_model_without_a_real_graph_is_not_clean(tmp_path, data):
    """Bytes that protobuf reads as a model with no graph, an empty graph, or one node
    that is nothing (no op type, no inputs): never 'All checks passed'."""
    refused(write(tmp_path, "m.onnx", data))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    refused(tmp_path / "m.onnx", "not a regular file")


def _truncation_sources(folder: Path) -> dict[str, bytes]:
    sources = {path.name: path.read_bytes() for path in sorted(EXAMPLES.glob("*.onnx"))}
    sources["subgraphs.onnx"] = corpus.with_subgraphs().SerializeToString()
    # a model whose weights live in a data file beside it: cuts fall in its references
    onnx.save_model(cnn_model(), folder / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    sources["ext.onnx"] = (folder / "ext.onnx").read_bytes()
    return sources


def test_truncated_models_are_refused_at_every_cut(tmp_path):
    originals, folder = tmp_path / "originals", tmp_path / "cut"
    originals.mkdir()
    folder.mkdir()
    sources = _truncation_sources(originals)
    assert len(sources) >= 5
    (folder / "ext.onnx.data").write_bytes((originals / "ext.onnx.data").read_bytes())
    count = 0
    for name, data in sources.items():
        for cut in corpus.cut_points(len(data)):
            path = write(folder, f"{cut}-{name}", data[:cut])
            assert_refused_inprocess(path)
            count += 1
    assert_every_file_refused(folder, count)


def test_random_bytes_are_refused(tmp_path):
    count = 0
    for seed in range(5):
        for size in (1, 16, 1000, 65536):
            assert_refused_inprocess(write(tmp_path, f"random-{seed}-{size}.onnx", corpus.random_bytes(seed, size)))
            count += 1
    assert_every_file_refused(tmp_path, count)


# graphs that are not graphs ------------------------------------------------------------

def test_node_reading_its_own_output_is_refused(tmp_path):
    refused(write(tmp_path, "m.onnx", corpus.self_loop()), "node 'loop' reads its own output 'y'")


@pytest.mark.parametrize("length", [2, 3])
def test_cycle_is_refused_naming_its_nodes(tmp_path, length):
    line = refused(write(tmp_path, "m.onnx", corpus.cycle(length)), "cycle")
    for i in range(length):
        assert f"add{i}" in line


def test_nodes_out_of_order_are_linted_like_the_ordered_model(tmp_path):
    ordered = linted(write(tmp_path, "ordered.onnx", cnn_model()), "--format", "json")
    shuffled = linted(write(tmp_path, "reversed.onnx", corpus.reversed_nodes()), "--format", "json")
    assert ordered.code == shuffled.code == 1
    assert '"PW001"' in ordered.out and '"PW001"' in shuffled.out


def test_input_that_nothing_produces_is_refused(tmp_path):
    refused(write(tmp_path, "m.onnx", corpus.dangling_input()), "node 'add' reads 'ghost'", "no node, graph input or initializer")


def test_subgraph_input_that_nothing_produces_is_refused(tmp_path):
    refused(write(tmp_path, "m.onnx", corpus.dangling_in_subgraph()), "reads 'ghost'")


def test_subgraph_may_read_the_outer_graph(tmp_path):
    linted(write(tmp_path, "m.onnx", corpus.outer_scope_reads()))


def test_names_in_the_error_cannot_break_the_line(tmp_path):
    model = corpus.dangling_input()
    model.graph.node[1].input[1] = "gh\nost\u2028" + "x" * 500
    line = refused(write(tmp_path, "m.onnx", model), "gh\\x0aost")
    assert len(line) < 400


# declared sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["input", "value_info"])
def test_dimension_past_the_limit_in_a_shape_is_refused(tmp_path, where):
    refused(write(tmp_path, "m.onnx", corpus.huge_declared_dims(where, 2**62)), f"dimension of {2**62}")


@pytest.mark.parametrize("where", ["input", "value_info", "reshape"])
@pytest.mark.parametrize("dim", [10**12, -5])
def test_huge_or_negative_dimension_in_a_shape_is_read_without_allocating(tmp_path, where, dim):
    linted(write(tmp_path, "m.onnx", corpus.huge_declared_dims(where, dim)))


def test_dimensions_each_within_the_limit_but_absurd_together_are_refused(tmp_path, onnx_text):
    """2**40 x 2**40 passes the per-dimension limit; the element count is what no model
    has. The engine checks every loaded graph this way, whatever its format."""
    path = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[{2**40},{2**40}] x) => (float[{2**40},{2**40}] y)
        {{
            [r] y = Relu (x)
        }}
    """, name="m.onnx")
    refused(path, "over 2**50 elements")


def test_reshape_to_an_absurd_shape_is_read_without_allocating(tmp_path):
    linted(write(tmp_path, "m.onnx", corpus.huge_declared_dims("reshape", 2**62)))


def test_constant_of_shape_with_an_absurd_shape_is_not_materialised(tmp_path):
    # 2**31 x 2**31 inferred, never allocated (the run stays small), then refused as no model
    refused(write(tmp_path, "m.onnx", corpus.huge_constant_of_shape(2**31)), "'fill'", "over 2**50 elements")
    linted(write(tmp_path, "small.onnx", corpus.huge_constant_of_shape(2**20)))


@pytest.mark.parametrize("dim", [10**12, 2**62])
def test_weight_declaring_huge_dims_with_little_data_is_refused(tmp_path, dim):
    refused(write(tmp_path, "m.onnx", corpus.huge_declared_dims("initializer", dim)), "tensor 'w' declares", f"{dim * 4} elements")


def test_weight_whose_data_does_not_match_its_dims_is_refused(tmp_path):
    # 1000 x 4 floats declared, 64 bytes held: under every size limit, but corrupt
    refused(write(tmp_path, "m.onnx", corpus.huge_declared_dims("initializer", 1000)), "declares 4000 elements (16000 bytes) but holds 64 bytes")


def test_negative_weight_dimension_is_refused(tmp_path):
    refused(write(tmp_path, "m.onnx", corpus.huge_declared_dims("initializer", -5)), "negative dimension")


def test_a_million_dimensions_are_refused(tmp_path):
    refused(write(tmp_path, "m.onnx", corpus.many_dims_tensor(1_000_000)), "1000000 dimensions")


@pytest.mark.parametrize("where", ["graph", "node", "dims"])
def test_field_claiming_more_bytes_than_the_file_has_is_refused(tmp_path, where):
    refused(write(tmp_path, "m.onnx", corpus.huge_declared_length(where)), "not a valid ONNX model")


def test_node_count_past_the_limit_is_refused_before_parsing(tmp_path, monkeypatch):
    # the real limit (2M nodes) needs an 80 MB file; the check is the same at 1000
    monkeypatch.setattr(onnx_wire, "MAX_NODES", 1000)
    path = write(tmp_path, "m.onnx", corpus.long_chain(1001))
    run = run_inprocess("check", str(path))
    assert run.code == 2 and "more than 1000 nodes" in run.err, run.err
    assert run_inprocess("check", str(write(tmp_path, "ok.onnx", corpus.long_chain(1000)))).code == 0


def test_subgraph_nodes_count_towards_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_guard, "MAX_NODES", 20)
    run = run_inprocess("check", str(write(tmp_path, "m.onnx", corpus.nested_ifs(10))))  # 10 If + 11 leaves
    assert run.code == 2 and "more than 20 nodes" in run.err, run.err


def test_node_inputs_and_outputs_past_the_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_guard, "MAX_CONNECTIONS", 100)
    run = run_inprocess("check", str(write(tmp_path, "m.onnx", corpus.long_chain(51))))  # 102 of them
    assert run.code == 2 and "more than 100 node inputs and outputs" in run.err, run.err
    assert run_inprocess("check", str(write(tmp_path, "ok.onnx", corpus.long_chain(50)))).code == 0


def test_list_attribute_with_millions_of_values_is_refused_in_bounded_memory(tmp_path):
    # 20M values: a 20 MB file that took 1.4 GB to lint before the limit
    refused(write(tmp_path, "m.onnx", corpus.huge_list_attribute(20_000_000)), "more than 4000000 attribute values")


def test_large_constant_node_is_not_mistaken_for_a_list_attribute(tmp_path):
    """Nodes over 1 MiB have their list attributes counted before parsing; a Constant
    holding a 2 MiB tensor has none and lints like any model."""
    import numpy as np

    values = onnx.numpy_helper.from_array(np.ones((512, 1024), np.float32), "v")
    nodes = [onnx.helper.make_node("Constant", [], ["c"], name="const", value=values),
             onnx.helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    model = corpus.make_model(nodes, [corpus.float_value("x", [512, 1024])], [corpus.float_value("y", [512, 1024])])
    assert linted(write(tmp_path, "m.onnx", model)).code == 0


def test_200k_node_graph_lints_in_bounded_time_and_memory(tmp_path):
    run = linted(write(tmp_path, "m.onnx", corpus.long_chain(200_000)), timeout=120, max_mib=1500)
    assert run.code == 0 and "All checks passed" in run.out


# nesting -------------------------------------------------------------------------------

def test_if_nested_to_the_limit_lints(tmp_path):
    linted(write(tmp_path, "m.onnx", corpus.nested_ifs(onnx_guard.MAX_SUBGRAPH_DEPTH)))


@pytest.mark.parametrize("depth", [onnx_guard.MAX_SUBGRAPH_DEPTH + 1, 200, 2000])
def test_if_nested_too_deep_is_refused_without_recursion(tmp_path, depth):
    line = refused(write(tmp_path, "m.onnx", corpus.nested_ifs(depth)), "nested more than 30 levels deep")
    assert "Recursion" not in line


# external data -------------------------------------------------------------------------

@pytest.fixture
def model_folder(tmp_path):
    """A model folder with a secret beside it, the way a repository checkout has files
    outside the folder a model lives in."""
    (tmp_path / "secret.bin").write_bytes(b"\x01" * 4096)
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    "location, phrase",
    [
        ("../secret.bin", "outside the model's folder"),
        ("sub/../../secret.bin", "outside the model's folder"),
        ("..\\secret.bin", "outside the model's folder"),
        ("/etc/passwd", "absolute path"),
        ("C:\\secret.bin", "absolute path"),
    ],
)
def test_external_data_outside_the_folder_is_refused(model_folder, location, phrase):
    line = refused(write(model_folder, "m.onnx", corpus.external_weight(location)), "tensor 'fc.weight'", phrase)
    assert location in line


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(model_folder):
    (model_folder / "weights.bin").symlink_to(model_folder.parent / "secret.bin")
    refused(write(model_folder, "m.onnx", corpus.external_weight("weights.bin")), "outside the model's folder")


def test_external_data_in_a_subgraph_is_checked(model_folder):
    refused(write(model_folder, "m.onnx", corpus.external_in_subgraph("../secret.bin")), "tensor 'c'", "outside the model's folder")


@pytest.mark.parametrize("location", ["weights.bin", "sub/weights.bin"])
def test_external_data_inside_the_folder_lints(model_folder, location):
    (model_folder / "sub").mkdir()
    path = model_folder / "m.onnx"
    onnx.save_model(cnn_model(), path, save_as_external_data=True, location=location, size_threshold=0)
    assert linted(path).code == 1  # the CNN's Flatten + Gemm head: PW001


def test_external_data_of_a_model_without_its_data_file_is_refused_unless_allowed(model_folder):
    """Missing weights are said, not passed over (issue 10); architecture shared without
    weights is linted from its shapes when the user says so."""
    path = write(model_folder, "m.onnx", corpus.external_weight("missing.bin"))
    refused(path, "'missing.bin'", "'fc.weight'", "is missing", "--allow-missing-weights")
    assert linted(path, "--allow-missing-weights").code == 1


@pytest.mark.parametrize("key, value, phrase", [
    ("offset", "-1", "not a byte count"),
    ("length", "lots", "not a byte count"),
    ("length", "4", "holds 4 bytes"),
    ("length", str(2**62), "runs past the end"),
])
def test_external_data_with_a_bad_offset_or_length_is_refused(model_folder, key, value, phrase):
    (model_folder / "weights.bin").write_bytes(b"\0" * 4 * 10 * 256)
    model = corpus.external_weight("weights.bin")
    [weight] = [t for t in model.graph.initializer if t.name == "fc.weight"]
    for entry in weight.external_data:
        if entry.key == key:
            entry.value = value
    refused(write(model_folder, "m.onnx", model), phrase)


@pytest.mark.parametrize("mode", ["--fix", "--diff"])
@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd"])
def test_fix_refuses_external_data_outside_the_folder_and_writes_nothing(model_folder, mode, location):
    path = write(model_folder, "m.onnx", corpus.external_weight(location))
    before = {p: p.read_bytes() for p in model_folder.parent.rglob("*") if p.is_file()}
    run = run_bounded("check", path, mode, "--unsafe-fixes", timeout=60)
    assert_handled(run, SMALL_MIB)
    assert run.code == 2 and ("outside the model's folder" in run.err or "absolute path" in run.err), run.err
    after = {p: p.read_bytes() for p in model_folder.parent.rglob("*") if p.is_file()}
    assert after == before


def test_fix_backend_refuses_external_data_outside_the_folder(model_folder):
    """Even called without a lint before it, opening the model for fixing refuses it."""
    from pwlint.formats.onnx.backend import OnnxBackend
    from pwlint.errors import LoadError

    path = write(model_folder, "m.onnx", corpus.external_weight("../secret.bin"))
    with pytest.raises(LoadError, match="outside the model's folder"):
        OnnxBackend.open(str(path))
    assert sorted(os.listdir(model_folder)) == ["m.onnx"]


# what the operators need ---------------------------------------------------------------

def test_model_without_an_onnx_opset_is_refused(tmp_path):
    refused(write(tmp_path, "m.onnx", corpus.no_opset()), "no opset is imported for the ONNX domain", "'conv' (Conv)")


def test_node_with_fewer_inputs_than_its_operator_takes_is_refused(tmp_path):
    # found by fuzzing: the loader indexed the Gemm's weight and failed inside
    refused(write(tmp_path, "m.onnx", corpus.missing_weight()), "node 'fc' (Gemm) has 1 input", "at least 2")


@pytest.mark.parametrize("attribute, value, found", [
    ("strides", 2, "INT, not INTS"),
    ("strides", "2", "STRING, not INTS"),
    ("group", [1, 2], "INTS, not INT"),
    ("group", onnx.helper.make_tensor("g", onnx.TensorProto.INT64, [], [1]), "TENSOR, not INT"),
])
def test_attribute_of_the_wrong_type_is_refused(tmp_path, attribute, value, found):
    # found by fuzzing: a Conv's strides as an int, or its group as a tensor, failed inside the loader
    refused(write(tmp_path, "m.onnx", corpus.wrong_attribute_type(attribute, value)), f"attribute '{attribute}' of node 'conv' (Conv) is {found}")


@pytest.mark.parametrize("where", ["node name", "op type", "tensor name", "output name"])
def test_names_that_are_not_utf8_are_refused(tmp_path, where):
    # found by fuzzing: protobuf returns such strings as bytes, which the loader joined with str
    refused(write(tmp_path, "m.onnx", corpus.invalid_utf8(where)), "not valid UTF-8")
