"""The PyTorch loader: ``.pt2`` archives and TorchScript, read without torch and without
unpickling; ``torch.save`` pickles refused.

Models come from tests/zoo.py, exported with ``torch.export.export`` + ``torch.export.save``
(in eval mode, so BatchNorm stays a norm operator) or saved with ``torch.jit``."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import warnings
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from pwlint.errors import LoadError
from pwlint.formats.pytorch.loader import load
from tests import zoo
from tests.conftest import findings, lint, one_line_error, run_inprocess
from tests.test_lazy_imports import HEAVY, run_child

GLOBAL_POOL_MODELS = ["resnet", "densenet", "se", "convnext"]
pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:DeprecationWarning")


def _save_pt2(model: nn.Module, example: torch.Tensor, path: Path, decompose=False, dynamic_batch=False) -> Path:
    kwargs = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamic_batch else {}
    with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.export.export(model.eval(), (example,), **kwargs)
        if decompose:
            program = program.run_decompositions()
        torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def pt2(tmp_path_factory):
    """``pt2(name, decompose=False, dynamic_batch=False)``: a zoo model saved as .pt2, cached."""
    folder = tmp_path_factory.mktemp("pt2")
    cache: dict = {}

    def get(name: str, decompose: bool = False, dynamic_batch: bool = False) -> Path:
        key = (name, decompose, dynamic_batch)
        if key not in cache:
            model = zoo.build(name)
            batch = 2 if dynamic_batch else 1
            example = torch.randn(batch, *zoo.input_shape(model)[1:])
            path = folder / f"{name}-{int(decompose)}{int(dynamic_batch)}.pt2"
            cache[key] = _save_pt2(model, example, path, decompose, dynamic_batch)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def torchscript(tmp_path_factory):
    """``torchscript(name, how)``: a zoo model saved with torch.jit.save after ``script`` or ``trace``."""
    folder = tmp_path_factory.mktemp("torchscript")
    cache: dict = {}

    def get(name: str, how: str) -> Path:
        if (name, how) not in cache:
            model = zoo.build(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if how == "script":
                    compiled = torch.jit.script(model)
                else:
                    compiled = torch.jit.trace(model, torch.randn(*zoo.input_shape(model)))
            path = folder / f"{name}-{how}.pt"
            torch.jit.save(compiled, str(path))
            cache[(name, how)] = path
        return cache[(name, how)]

    return get


def summary(report: dict) -> list[tuple[str, list[str]]]:
    return sorted((f["code"], f["nodes"]) for f in report["findings"])


# findings on .pt2 ----------------------------------------------------------------------

@pytest.mark.parametrize("name, flatten, first_dense", [("lenet", "flatten", "classifier.0"), ("vgg", "view", "classifier.1")])
def test_flatten_dense_head_is_reported_once_by_module_path(pt2, name, flatten, first_dense):
    path = pt2(name)
    [head] = findings(lint(path), "PW001")
    assert head["nodes"] == [flatten, first_dense]
    graph = load(str(path))
    assert graph.layer(flatten).kind in ("flatten", "reshape")
    assert graph.layer(first_dense).kind == "dense"


@pytest.mark.parametrize("name", GLOBAL_POOL_MODELS)
def test_global_pool_heads_report_no_head_or_norm_problem(pt2, name):
    report = lint(pt2(name))
    assert not findings(report, "PW001") and not findings(report, "PW003"), report["findings"]


def test_missing_norm_between_two_convs(pt2):
    [finding] = findings(lint(pt2("plain")), "PW003")
    assert finding["nodes"] == ["conv1", "conv2"]


def test_conv_bias_before_batchnorm_is_reported_per_conv(pt2):
    found = [f["nodes"] for f in findings(lint(pt2("vgg_bias")), "PW004")]
    assert found == [["features.0", "features.1"], ["features.4", "features.5"], ["features.8", "features.9"]]
    assert not findings(lint(pt2("vgg")), "PW004")


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_parameter_count_matches_the_module(pt2, name):
    model = zoo.build(name)
    graph = load(str(pt2(name)))
    expected = sum(p.numel() for p in model.parameters())
    assert graph.total_params == expected
    assert sum(layer.params for layer in graph.layers()) == expected


def test_buffers_are_not_parameters(pt2):
    graph = load(str(pt2("vgg")))
    norm = graph.layer("features.1")
    assert (norm.kind, norm.attrs["norm_type"]) == ("norm", "batch")
    assert norm.params == 2 * 8  # weight and bias; running mean and variance are buffers


# the graph -----------------------------------------------------------------------------

def test_layers_are_named_by_module_path(pt2):
    graph = load(str(pt2("lenet")))
    names = {layer.name for layer in graph.layers()}
    assert names == {
        "x", "features.0", "features.1", "features.2", "features.3", "features.4", "features.5",
        "flatten", "classifier.0", "classifier.1", "classifier.2", "classifier.3", "classifier.4", "output",
    }
    assert graph.format == "torch" and graph.meta["container"] == "pt2"


def test_conv_and_dense_attributes(pt2):
    graph = load(str(pt2("lenet")))
    conv = graph.layer("features.0")
    assert conv.kind == "conv" and conv.layout == "NCHW"
    assert (conv.attrs["in_channels"], conv.attrs["out_channels"], conv.attrs["kernel"]) == (1, 6, (5, 5))
    assert (conv.attrs["stride"], conv.attrs["groups"], conv.attrs["bias"]) == ((1, 1), 1, True)
    assert conv.input_shape == (1, 1, 32, 32) and conv.output_shape == (1, 6, 28, 28)
    assert conv.params == 6 * 1 * 5 * 5 + 6
    dense = graph.layer("classifier.0")
    assert (dense.attrs["in_features"], dense.attrs["out_features"], dense.attrs["per_position"]) == (400, 120, False)
    assert graph.data_producer(dense).name == "flatten"
    assert graph.layer("features.2").kind == "pool"


def test_convnext_block(pt2):
    graph = load(str(pt2("convnext")))
    assert graph.layer("blocks.0.dwconv").attrs["groups"] == 16
    assert graph.layer("blocks.0.pwconv1").attrs["per_position"] is True
    assert graph.layer("head").attrs["per_position"] is False
    assert graph.layer("stem_norm").attrs["norm_type"] == "group"
    assert graph.layer("blocks.0.norm").attrs["norm_type"] == "layer"
    permutes = [layer for layer in graph.layers("transpose")]
    assert permutes and all(layer.attrs["layout_change"] for layer in permutes)
    assert graph.layer("mean").kind == "global_pool"
    assert graph.layer("blocks.0/gelu").attrs["activation"] == "gelu"


def test_functional_calls_are_named_after_their_fx_node_in_their_module(pt2):
    graph = load(str(pt2("resnet")))
    relus = sorted(layer.name for layer in graph.layers("act") if layer.name.startswith("layer1/"))
    assert relus and all(name.startswith("layer1/relu") for name in relus)
    assert graph.layer("layer1/add").kind == "add"
    assert graph.layer("pool").kind == "global_pool"
    assert graph.layer("flatten").kind == "flatten"  # torch.flatten in the root module
    densenet = load(str(pt2("densenet")))
    assert densenet.layer("block.0/cat").kind == "concat"


def test_layer_source_holds_the_serialized_nodes(pt2):
    graph = load(str(pt2("lenet")))
    [node] = graph.layer("classifier.0").source
    assert node["target"] == "torch.ops.aten.linear.default"
    assert "classifier.0" in node["metadata"]["nn_module_stack"]


def test_decomposed_program_gives_the_same_layers(pt2):
    for name in ("vgg", "convnext"):
        plain, decomposed = pt2(name), pt2(name, decompose=True)
        assert summary(lint(decomposed)) == summary(lint(plain))
        # module layers keep their names; FX numbering of functional calls may shift
        modules = [{l.name for l in load(str(p)).layers() if l.attrs.get("module") == l.name} for p in (plain, decomposed)]
        assert modules[0] == modules[1]
    graph = load(str(pt2("convnext", decompose=True)))
    dense = graph.layer("blocks.0.pwconv1")  # view + permute(weight) + addmm + view, one layer
    assert dense.kind == "dense" and "aten.addmm.default" in dense.attrs["ops"]
    assert (dense.attrs["in_features"], dense.attrs["out_features"], dense.attrs["per_position"]) == (16, 64, True)
    assert dense.params == 16 * 64 + 64
    assert graph.layer("head").attrs["per_position"] is False


def test_dynamic_batch_size(pt2):
    path = pt2("lenet", dynamic_batch=True)
    graph = load(str(path))
    assert graph.layer("x").output_shape == (None, 1, 32, 32)
    [head] = findings(lint(path), "PW001")
    assert head["nodes"] == ["flatten", "classifier.0"]


class _Reused(nn.Module):
    """One ReLU module called twice, weights tied between two Linears, and functional
    layers: ``x @ W + b`` and a bias-free conv plus an added bias before BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.conv_bias = nn.Parameter(torch.randn(4))
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.w = nn.Parameter(torch.randn(4 * 6 * 6, 8))
        self.bias = nn.Parameter(torch.randn(8))

    def forward(self, x):
        y = nn.functional.conv2d(x, self.conv_weight) + self.conv_bias.view(1, -1, 1, 1)
        y = self.act(self.bn(y))
        z = self.act(torch.flatten(y, 1) @ self.w + self.bias)
        return self.b(self.a(z))


def test_reused_modules_tied_weights_and_functional_layers(tmp_path):
    model = _Reused()
    path = _save_pt2(model, torch.randn(1, 3, 8, 8), tmp_path / "reused.pt2")
    graph = load(str(path))
    assert graph.layer("act").kind == "act" and graph.layer("act#2").kind == "act"
    assert graph.layer("a").attrs.get("shared_weights") and graph.layer("b").attrs.get("shared_weights")
    assert graph.total_params == sum(p.numel() for p in model.parameters())
    [matmul] = [layer for layer in graph.layers("dense") if layer.name not in ("a", "b")]
    assert matmul.attrs["bias"] is True and matmul.params == 4 * 6 * 6 * 8 + 8
    [conv] = graph.layers("conv")
    assert conv.attrs["bias"] is True and conv.params == 4 * 3 * 3 * 3 + 4
    report = lint(path)
    assert [f["nodes"] for f in findings(report, "PW004")] == [[conv.name, "bn"]]
    assert [f["nodes"] for f in findings(report, "PW001")] == [["flatten", matmul.name]]


# TorchScript ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_torchscript_gives_the_same_findings_as_pt2(pt2, torchscript, name, how):
    path = torchscript(name, how)
    assert summary(lint(path)) == summary(lint(pt2(name)))
    graph = load(str(path))
    assert graph.meta["container"] == "torchscript"
    assert graph.total_params == sum(p.numel() for p in zoo.build(name).parameters())


def test_torchscript_setstate_is_not_run(tmp_path, capfd):
    """Loading a TorchScript file runs its ``__setstate__`` (TorchScript code from the file);
    pwlint reads the same file without running it."""

    class Stateful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

        @torch.jit.export
        def __getstate__(self) -> int:
            return 1

        @torch.jit.export
        def __setstate__(self, state: int) -> None:
            self.training = False
            print("PWLINT-SETSTATE-RAN")

    path = tmp_path / "stateful.pt"
    torch.jit.save(torch.jit.script(Stateful()), str(path))
    capfd.readouterr()
    with pytest.raises(RuntimeError):  # the state holds no conv: loading fails, but only after running the code
        torch.jit.load(str(path))
    assert "PWLINT-SETSTATE-RAN" in capfd.readouterr().out
    run = run_inprocess("check", str(path))
    assert "PWLINT-SETSTATE-RAN" not in run.out + run.err + capfd.readouterr().out


def test_torchscript_that_cannot_be_followed_is_a_load_error(tmp_path):
    class Repeat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, times: int):
            for _ in range(times):
                x = self.fc(x)
            return x

    path = tmp_path / "repeat.pt"
    torch.jit.save(torch.jit.script(Repeat()), str(path))
    line = one_line_error(run_inprocess("check", str(path)))
    assert str(path) in line and "torch.export" in line


# security --------------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unpickling_the_payload_really_runs_it(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("what", ["module", "state_dict"])
def test_torch_save_pickles_are_refused(tmp_path, what):
    model = zoo.build("lenet")
    path = tmp_path / f"{what}.pt"
    torch.save(model if what == "module" else model.state_dict(), path)
    line = one_line_error(run_inprocess("check", str(path)))
    assert str(path) in line and "torch.export" in line


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, container):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    if container == "zip":
        torch.save(_Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    line = one_line_error(run_inprocess("check", str(path)))
    assert "torch.export" in line
    assert not marker.exists()


def _rewrite_member(source: Path, target: Path, suffix: str, data: bytes | None) -> Path:
    """Copy a zip, replacing (or, with ``data=None``, dropping) the member ending with ``suffix``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename.endswith(suffix):
                if data is not None:
                    new.writestr(info.filename, data)
            else:
                new.writestr(info, old.read(info.filename))
    return target


def test_pt2_with_a_malicious_embedded_pickle_is_linted_without_running_it(pt2, tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Payload(marker))
    path = _rewrite_member(pt2("lenet"), tmp_path / "evil.pt2", "data/sample_inputs/model.pt", payload)
    [head] = findings(lint(path), "PW001")
    assert head["nodes"] == ["flatten", "classifier.0"]
    assert not marker.exists()


def test_torchscript_with_a_malicious_data_pickle_is_not_unpickled(torchscript, tmp_path):
    marker = tmp_path / "ran"
    path = _rewrite_member(torchscript("lenet", "script"), tmp_path / "evil.pt", "/data.pkl", pickle.dumps(_Payload(marker)))
    line = one_line_error(run_inprocess("check", str(path)))
    assert str(path) in line
    assert not marker.exists()


def test_linting_pt2_and_torchscript_imports_no_framework(pt2, torchscript):
    for path in (pt2("lenet"), torchscript("lenet", "trace")):
        code, modules = run_child(str(path))
        assert code == 1  # really linted: the flatten-dense head was found
        assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_legacy_pt2_layout_is_read(pt2, tmp_path):
    """Archives from torch 2.7 and older: serialized_exported_program.json and pickles at the top."""
    with zipfile.ZipFile(pt2("lenet")) as source:
        program = next(source.read(n) for n in source.namelist() if n.endswith("models/model.json"))
    path = tmp_path / "legacy.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("serialized_exported_program.json", program)
        archive.writestr("serialized_state_dict.pt", pickle.dumps(_Payload(tmp_path / "ran")))
        archive.writestr("version", "8.20")
    graph = load(str(path))
    assert graph.total_params == sum(p.numel() for p in zoo.build("lenet").parameters())
    assert findings(lint(path), "PW001")[0]["nodes"] == ["flatten", "classifier.0"]
    assert not (tmp_path / "ran").exists()


# bad files -------------------------------------------------------------------------------

def _bad_files(source: Path, folder: Path) -> dict[str, Path]:
    files = {}
    files["random.pt2"] = folder / "random.pt2"
    files["random.pt2"].write_bytes(os.urandom(4096))
    files["empty.pt2"] = folder / "empty.pt2"
    files["empty.pt2"].write_bytes(b"")
    files["truncated.pt2"] = folder / "truncated.pt2"
    files["truncated.pt2"].write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    files["no-program.pt2"] = _rewrite_member(source, folder / "no-program.pt2", "models/model.json", None)
    files["bad-json.pt2"] = _rewrite_member(source, folder / "bad-json.pt2", "models/model.json", b"{not json")
    files["wrong-json.pt2"] = _rewrite_member(source, folder / "wrong-json.pt2", "models/model.json", b'{"graph_module": {}}')
    files["no-code.pt"] = folder / "no-code.pt"
    with zipfile.ZipFile(files["no-code.pt"], "w") as archive:
        archive.writestr("m/readme.txt", "hello")
    files["text.pth"] = folder / "text.pth"
    files["text.pth"].write_text("not a model\n")
    return files


def test_bad_files_are_one_line_load_errors(pt2, tmp_path):
    for label, path in _bad_files(pt2("lenet"), tmp_path).items():
        line = one_line_error(run_inprocess("check", str(path)))
        assert str(path) in line, (label, line)


def _mutated(value, rng, rate):
    """``value`` with a few entries dropped or replaced: a damaged or hand-made program."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            roll = rng.random()
            if roll >= rate:
                out[key] = _mutated(item, rng, rate)
            elif roll >= rate / 2:
                out[key] = rng.choice([None, 0, -1, "x", [], {}, [1, 2], {"as_int": 3}])
        return out
    if isinstance(value, list):
        return [_mutated(item, rng, rate) for item in value if rng.random() >= rate]
    return value


def test_damaged_programs_never_crash(pt2, torchscript, tmp_path):
    """Each damaged file either loads or gives a LoadError: never another exception."""
    import random

    source = pt2("resnet", decompose=True)
    with zipfile.ZipFile(source) as archive:
        member = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        document = json.loads(archive.read(member))
    script = torchscript("se", "script")
    with zipfile.ZipFile(script) as archive:
        data = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        payload = archive.read(data)
    for seed in range(30):
        rng = random.Random(seed)
        damaged = json.dumps(_mutated(document, rng, 0.004)).encode()
        flipped = bytearray(payload)
        for _ in range(3):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        for path in (_rewrite_member(source, tmp_path / "d.pt2", member, damaged),
                     _rewrite_member(script, tmp_path / "d.pt", data, bytes(flipped))):
            try:
                load(str(path))
            except LoadError:
                pass


def test_oversized_program_is_refused(pt2, monkeypatch):
    monkeypatch.setattr("pwlint.formats.pytorch.pt2.read.MAX_PROGRAM", 1000)
    with pytest.raises(LoadError, match="limit"):
        load(str(pt2("lenet")))


def test_json_report_names_the_torch_format(pt2):
    report = lint(pt2("lenet"))
    assert report["files"][0]["format"] == "torch"
    assert json.dumps(report)  # findings cite plain names


def test_copy_keeps_findings(pt2, tmp_path):
    """A .pth suffix is read the same way (the loader looks at the content, not the name)."""
    path = tmp_path / "model.pth"
    shutil.copyfile(pt2("plain"), path)
    assert findings(lint(path), "PW003")[0]["nodes"] == ["conv1", "conv2"]
