"""Hostile PyTorch files (.pt2 and TorchScript .pt) from an untrusted pull request: each
gives a lint or exit 2 with one line on stderr, in seconds, in bounded memory, and
nothing in them is ever run.

The corpus is built from a small model exported by torch once per module: truncated
copies, random bytes, zip bombs, archives of very many members, programs with cycles,
dangling inputs and absurd sizes, and pickles that would run a shell command."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import run_inprocess
from tests.hostile import zip_corpus as corpus
from tests.hostile.harness import assert_handled, assert_handled_inprocess, fuzz_budget, run_bounded
from tests.hostile.test_fuzz_keras import _mutate as mutate

BUDGET = fuzz_budget()

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROGRAM = "models/model.json"
#: a zip bomb inflates to this much: far past every limit, yet ~2 MB on disk
BOMB_MIB = 2048
#: well above what linting this model takes, far below what inflating a bomb would
BOMB_MAX_MIB = 400


#: saves the same small conv -> flatten -> linear model with torch.export.save and
#: torch.jit.save into the folder named by argv[1]
_SAVE_MODELS = """
import io, sys, warnings
from contextlib import redirect_stderr
import torch
import torch.nn as nn

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

model = Small().eval()
with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), sys.argv[1] + "/small.pt2")
    torch.jit.save(torch.jit.script(model), sys.argv[1] + "/small.pt")
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """The small model as ``.pt2`` and TorchScript ``.pt``. Saved by a child process, so
    that this one never holds torch: the bounded runs' peak memory is read in the child
    with getrusage, which counts the memory of the process that started it too."""
    folder = tmp_path_factory.mktemp("torch-models")
    script = folder / "save_models.py"  # a file, not -c: torch.jit.script reads the source
    script.write_text(_SAVE_MODELS)
    subprocess.run([sys.executable, str(script), str(folder)], check=True, timeout=300)
    return {".pt2": folder / "small.pt2", ".pt": folder / "small.pt"}


def program_of(pt2: Path) -> dict:
    with zipfile.ZipFile(pt2) as zf:
        return json.loads(zf.read(next(n for n in zf.namelist() if n.endswith(PROGRAM))))


def with_program(saved, tmp_path, document: dict, name: str = "edited.pt2") -> Path:
    return corpus.with_member(saved[".pt2"], tmp_path / name, PROGRAM, json.dumps(document).encode())


def error_of(path: Path, max_mib: float = 1500) -> str:
    """The one error line for a file that must be refused."""
    run = run_bounded("check", path, timeout=60)
    assert_handled(run, max_mib)
    assert run.code == 2, run.out
    assert run.err.startswith(f"pwlint: error: {path}: "), run.err
    return run.err


# the controls: the corpus starts from files that lint -----------------------------------

@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_the_saved_models_lint(saved, suffix):
    run = run_bounded("check", saved[suffix])
    assert_handled(run)
    assert run.code == 1 and "PW001" in run.out, run.out


# damaged files ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    assert "empty" in error_of(path)


@pytest.mark.parametrize("suffix", [".pt2", ".pt"])
def test_truncated_copies(saved, tmp_path, suffix):
    paths = corpus.truncations(saved[suffix], tmp_path / "cut")
    assert len(paths) == 30
    errors = corpus.lint_each(paths, timeout=120)
    # a zip's directory is at its end: no cut of it is readable
    assert all(errors[str(p)] for p in paths), errors


@pytest.mark.parametrize("suffix", [".pt2", ".pt", ".pth"])
def test_random_bytes(tmp_path, suffix):
    paths = corpus.random_bytes(tmp_path / "noise", suffix)
    errors = corpus.lint_each(paths, timeout=120)
    assert all(errors.values()), errors


# zip bombs and huge archives -------------------------------------------------------------

@pytest.mark.parametrize("member", [PROGRAM, "model_weights_config.json"])
def test_zip_bomb_is_refused_by_its_declared_size(saved, tmp_path, member):
    path = corpus.with_bomb(saved[".pt2"], tmp_path / "bomb.pt2", member, BOMB_MIB)
    assert path.stat().st_size < 4 * corpus.MIB
    assert "limit" in error_of(path, BOMB_MAX_MIB)


@pytest.mark.parametrize("member", [PROGRAM, "model_weights_config.json"])
def test_zip_bomb_whose_headers_understate_its_size_is_not_inflated(saved, tmp_path, member):
    path = corpus.with_bomb(saved[".pt2"], tmp_path / "liar.pt2", member, BOMB_MIB, declared=6000)
    error_of(path, BOMB_MAX_MIB)


@pytest.mark.parametrize("member", ["data/weights/weight_0", "data/sample_inputs/model.pt"])
def test_zip_bomb_in_a_member_pwlint_does_not_need_is_never_opened(saved, tmp_path, member):
    path = corpus.with_bomb(saved[".pt2"], tmp_path / "bomb.pt2", member, BOMB_MIB)
    run = run_bounded("check", path, timeout=60)
    assert_handled(run, BOMB_MAX_MIB)
    assert run.code == 1 and "PW001" in run.out, run.err


def test_zip_bomb_in_torchscript_code(saved, tmp_path):
    path = corpus.with_bomb(saved[".pt"], tmp_path / "bomb.pt", "code/__torch__.py", BOMB_MIB, declared=400)
    error_of(path, BOMB_MAX_MIB)


def test_archive_of_100k_members_still_lints(saved, tmp_path):
    path = corpus.many_members(tmp_path / "many.pt2", 100_000, head=corpus.members_of(saved[".pt2"]))
    run = run_bounded("check", path, timeout=60)
    assert_handled(run, 1000)
    assert run.code == 1 and "PW001" in run.out


@pytest.mark.parametrize("marker", ["archive_format", "data.pkl"])
def test_archive_of_many_candidate_roots_is_classified_in_linear_time(tmp_path, marker):
    """Each of 50k folders looks like the root of a model: finding that none is must not
    compare every folder with every member (it took minutes)."""
    path = corpus.many_members(tmp_path / "roots.pt2", 50_000, names=lambda i: f"d{i}/{marker}")
    error_of(path)


# malformed programs ----------------------------------------------------------------------

def _node(document: dict, index: int) -> dict:
    return document["graph_module"]["graph"]["nodes"][index]


def _output_name(node: dict) -> str:
    return node["outputs"][0]["as_tensor"]["name"]


@pytest.mark.parametrize("edit, where", [
    (lambda d: d.pop("graph_module"), "the program.graph_module is missing"),
    (lambda d: d["graph_module"]["graph"].update(nodes={}), "graph_module.graph.nodes is not a list"),
    (lambda d: d["graph_module"]["graph"]["nodes"].append("conv"), "holds a node that is not an object"),
    (lambda d: _node(d, 0).update(inputs="x"), ".inputs is not a list"),
    (lambda d: d["graph_module"]["signature"]["input_specs"].insert(0, []), "an input spec is not an object with one entry"),
    (lambda d: _node(d, 0)["outputs"].insert(0, {"as_tensor": {"name": 7}}), "as_tensor.name is not a string"),
])
def test_program_shaped_unlike_torch_export_writes_it(saved, tmp_path, edit, where):
    """Each was a KeyError or TypeError inside pwlint: the reader checks what it reads and
    says where the program is malformed."""
    document = program_of(saved[".pt2"])
    edit(document)
    path = with_program(saved, tmp_path, document)
    run = run_inprocess("check", str(path))
    assert run.code == 2, run.out
    prefix = f"pwlint: error: {path}: malformed serialized program in small/{PROGRAM}: "
    assert run.err.startswith(prefix) and where in run.err, run.err


@BUDGET
@given(data=st.data())
def test_mutated_programs(saved, tmp_path_factory, data):
    """The .pt2 program JSON mutated as the Keras fuzzer mutates configs: every outcome is a
    lint or one clear error line, never an internal error."""
    document = mutate(program_of(saved[".pt2"]), data)
    folder = tmp_path_factory.getbasetemp() / "pt2-fuzz"
    folder.mkdir(exist_ok=True)
    try:
        text = json.dumps(document)
    except RecursionError:  # nested deeper than json can write: nothing to lint
        return
    path = corpus.with_member(saved[".pt2"], folder / "fuzz.pt2", PROGRAM, text.encode())
    assert_handled_inprocess(path)


def test_program_with_a_cycle(saved, tmp_path):
    document = program_of(saved[".pt2"])
    last = _output_name(document["graph_module"]["graph"]["nodes"][-1])
    _node(document, 0)["inputs"][0]["arg"] = {"as_tensor": {"name": last}}
    line = error_of(with_program(saved, tmp_path, document))
    assert "cycle" in line and last in line


def test_program_with_a_self_loop(saved, tmp_path):
    document = program_of(saved[".pt2"])
    node = _node(document, 1)
    node["inputs"][0]["arg"] = {"as_tensor": {"name": _output_name(node)}}
    line = error_of(with_program(saved, tmp_path, document))
    assert "cycle" in line and node["name"] in line


def test_program_with_a_dangling_input(saved, tmp_path):
    document = program_of(saved[".pt2"])
    _node(document, 2)["inputs"][0]["arg"] = {"as_tensor": {"name": "ghost"}}
    assert "'ghost'" in error_of(with_program(saved, tmp_path, document))


def test_program_computing_one_tensor_many_times(saved, tmp_path):
    document = program_of(saved[".pt2"])
    nodes = document["graph_module"]["graph"]["nodes"]
    nodes[2:2] = [copy.deepcopy(nodes[1]) for _ in range(20_000)]
    assert "already" in error_of(with_program(saved, tmp_path, document))


def test_program_with_50k_outputs_lints_in_linear_time(saved, tmp_path):
    """Every output is a layer named ``output``, ``output#2``...: naming them must not
    search from ``#2`` again each time."""
    document = program_of(saved[".pt2"])
    document["graph_module"]["signature"]["output_specs"] *= 50_000
    run = run_bounded("check", with_program(saved, tmp_path, document), timeout=60)
    assert_handled(run)
    assert run.code == 1 and "PW001" in run.out


@pytest.mark.parametrize("sizes", [[2**62] * 4, [10**40, 3], [-7, 3, 8, 8]], ids=["2**62", "10**40", "negative"])
def test_program_with_absurd_tensor_sizes(saved, tmp_path, sizes):
    document = program_of(saved[".pt2"])
    for meta in document["graph_module"]["graph"]["tensor_values"].values():
        meta["sizes"] = [{"as_int": size} for size in sizes]
    assert "not a real model" in error_of(with_program(saved, tmp_path, document))


def test_program_with_a_tensor_of_200k_dimensions(saved, tmp_path):
    document = program_of(saved[".pt2"])
    for meta in document["graph_module"]["graph"]["tensor_values"].values():
        meta["sizes"] = [{"as_int": 3}] * 200_000
    assert "dimensions" in error_of(with_program(saved, tmp_path, document))


def test_weights_with_absurd_sizes(saved, tmp_path):
    with zipfile.ZipFile(saved[".pt2"]) as zf:
        member = next(n for n in zf.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(zf.read(member))
    for entry in config["config"].values():
        entry["tensor_meta"]["sizes"] = [{"as_int": 2**62}] * 3
    path = corpus.with_member(saved[".pt2"], tmp_path / "weights.pt2", member, json.dumps(config).encode())
    assert "parameters" in error_of(path)


def test_program_nested_10k_deep(saved, tmp_path):
    document = program_of(saved[".pt2"])
    text = json.dumps(document).replace('"nodes": [', '"nodes": [' + "[" * 10_000 + "]" * 10_000 + ",", 1)
    path = corpus.with_member(saved[".pt2"], tmp_path / "deep.pt2", PROGRAM, text.encode())
    error_of(path)


# pickles that would run code ---------------------------------------------------------------

class _Shell:
    """Unpickling this runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_control_unpickling_the_payload_runs_the_shell(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Shell(marker)))
    assert marker.exists()


def _lint_keeps_marker_absent(path: Path, marker: Path) -> object:
    run = run_bounded("check", path, timeout=60)
    assert_handled(run)
    assert not marker.exists(), "code from the model file ran"
    return run


@pytest.mark.parametrize("protocol", [2, 5])
def test_plain_pickle_calling_os_system_is_refused_unrun(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_Shell(marker), protocol=protocol))
    run = _lint_keeps_marker_absent(path, marker)
    assert run.code == 2 and "pickle" in run.err


def test_torch_save_zip_with_os_system_pickle_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    path = corpus.write_zip(tmp_path / "model.pt", [
        corpus.Member("model/data.pkl", pickle.dumps(_Shell(marker), protocol=2)),
        corpus.Member("model/version", b"3\n"),
    ])
    run = _lint_keeps_marker_absent(path, marker)
    assert run.code == 2 and "pickle" in run.err


@pytest.mark.parametrize("member", ["data.pkl", "constants.pkl"])
def test_torchscript_with_os_system_pickles_is_not_unpickled(saved, tmp_path, member):
    marker = tmp_path / "ran"
    path = corpus.with_member(saved[".pt"], tmp_path / "evil.pt", f"/{member}", pickle.dumps(_Shell(marker)))
    _lint_keeps_marker_absent(path, marker)


@pytest.mark.parametrize("member", ["data/sample_inputs/model.pt", "data/weights/weight_0"])
def test_pt2_with_os_system_pickles_embedded_is_linted_unrun(saved, tmp_path, member):
    """Weight payloads and sample inputs are never opened (linting needs shapes, and their
    presence is checked by name): a pickle there changes nothing, the model lints as the
    intact one does."""
    marker = tmp_path / "ran"
    path = corpus.with_member(saved[".pt2"], tmp_path / "evil.pt2", member, pickle.dumps(_Shell(marker)))
    run = _lint_keeps_marker_absent(path, marker)
    intact = run_bounded("check", saved[".pt2"])
    assert (run.code, run.err) == (1, ""), run.err
    assert run.out == intact.out.replace(str(saved[".pt2"]), str(path))
    assert "PW001" in run.out


def test_pt2_with_an_os_system_pickle_for_its_constants_config_is_refused_unrun(saved, tmp_path):
    """The constants config is JSON pwlint reads: a pickle in its place is not JSON."""
    marker = tmp_path / "ran"
    member = "data/constants/model_constants_config.json"
    path = corpus.with_member(saved[".pt2"], tmp_path / "evil.pt2", member, pickle.dumps(_Shell(marker)))
    run = _lint_keeps_marker_absent(path, marker)
    assert run.code == 2
    assert run.err.startswith(f"pwlint: error: {path}: small/{member} is not valid JSON ("), run.err


# targets that are not torch operators --------------------------------------------------------

@pytest.mark.parametrize("target", [
    "os.system", "posix.system", "subprocess.call", "builtins.exec", "builtins.eval",
    "torch.os.system",  # torch's loader would resolve this one to os.system by getattr
    "_operator.call", "math.__import__", "torch.ops", "#custom:os.system", "",
])
def test_pt2_node_calling_a_python_function_is_refused_unrun(saved, tmp_path, target):
    marker = tmp_path / "ran"
    document = program_of(saved[".pt2"])
    node = _node(document, 0)
    node["target"] = target
    node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}}]
    run = _lint_keeps_marker_absent(with_program(saved, tmp_path, document), marker)
    assert run.code == 2, run.out
    assert f"node '{node['name']}'" in run.err and f"calls '{target}'" in run.err, run.err


def test_pt2_node_with_no_tensor_output_is_checked_too(saved, tmp_path):
    """Nodes without tensor outputs (size arithmetic, assertions) are skipped as layers,
    not as targets."""
    marker = tmp_path / "ran"
    document = program_of(saved[".pt2"])
    document["graph_module"]["graph"]["nodes"].insert(0, {
        "name": "side_effect", "target": "os.system", "outputs": [], "metadata": {},
        "inputs": [{"name": "command", "arg": {"as_string": f"touch {marker}"}}],
    })
    run = _lint_keeps_marker_absent(with_program(saved, tmp_path, document), marker)
    assert run.code == 2 and "'side_effect'" in run.err and "'os.system'" in run.err, run.err


def test_pt2_custom_operator_is_linted_but_not_understood(saved, tmp_path):
    """A custom op (torch.ops.mylib.*) is a real target, but pwlint cannot see into it:
    coverage names it, and the rules that needed the conv there say they could not look."""
    document = program_of(saved[".pt2"])
    conv = next(n for n in document["graph_module"]["graph"]["nodes"] if n["target"].endswith("conv2d.default"))
    conv["target"] = "torch.ops.mylib.fused_conv.default"
    run = run_bounded("check", with_program(saved, tmp_path, document), "--format", "json", timeout=60)
    assert_handled(run)
    [entry] = json.loads(run.out)["files"]
    assert entry["error"] is None, entry
    assert entry["coverage"]["unknown_ops"] == {"mylib.fused_conv.default": 1}
    assert entry["coverage"]["recognised"] == entry["coverage"]["layers"] - 1
