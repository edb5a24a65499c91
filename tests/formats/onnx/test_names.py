"""Layers of a default ``torch.onnx.export`` (dynamo) file are named by the module
path the exporter records in each node's metadata, as the user wrote it in code."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import onnx
import pytest
from onnx import TensorProto, helper

from pwlint.formats.onnx.loader import load
from pwlint.formats.onnx.names import MAX_TEXT, module_path
from tests.conftest import run_inprocess


@pytest.fixture(scope="module")
def dynamo_file(tmp_path_factory):
    """A small AlexNet-like torch model, exported the default way (dynamo)."""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    path = tmp_path_factory.mktemp("dynamo") / "net.onnx"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        torch.onnx.export(Net().eval(), (torch.randn(1, 3, 8, 8),), str(path), dynamo=True)
    return path


def test_the_export_names_nodes_after_operations(dynamo_file):
    """What the file holds: generated node names, and the module path in metadata."""
    names = [node.name for node in onnx.load(str(dynamo_file)).graph.node]
    assert "node_linear" in names and "classifier.1" not in names
    linear = next(node for node in onnx.load(str(dynamo_file)).graph.node if node.name == "node_linear")
    assert "classifier.1" in {entry.key: entry.value for entry in linear.metadata_props}["pkg.torch.onnx.name_scopes"]


def test_messages_name_layers_by_module_path(dynamo_file):
    run = run_inprocess("check", str(dynamo_file), "--select", "PW001")
    assert run.code == 1, run.err
    assert "dense layer 'classifier.1 (node_linear)'" in run.out, run.out
    assert "'classifier.0 (node_view)'" in run.out or "'classifier.0 (node_flatten)'" in run.out, run.out


def test_json_keeps_node_names_and_adds_modules(dynamo_file):
    run = run_inprocess("check", str(dynamo_file), "--select", "PW001", "--format", "json")
    (finding,) = json.loads(run.out)["findings"]
    assert finding["nodes"][1] == "node_linear" and finding["nodes"][0].startswith("node_")
    assert finding["modules"] == ["classifier.0", "classifier.1"]


def test_every_module_layer_gets_its_path(dynamo_file):
    graph = load(str(dynamo_file))
    modules = {layer.name: layer.module for layer in graph.layers() if layer.kind in ("conv", "dense")}
    assert modules == {"node_conv2d": "features.0", "node_linear": "classifier.1", "node_linear_1": "classifier.3"}


def test_a_legacy_export_is_named_by_its_node_names(exported):
    """The TorchScript exporter's names are paths already (``/classifier/classifier.1/Gemm``)
    and it records no metadata: nothing to add."""
    graph = load(str(exported("lenet", "legacy")))
    assert all(layer.module is None for layer in graph.layers())


def _node(name: str, **meta: str):
    node = helper.make_node("Relu", ["x"], ["y"], name=name)
    for key, value in meta.items():
        entry = node.metadata_props.add()
        entry.key, entry.value = key.replace("__", "."), value
    return node


SCOPES = "pkg__torch__onnx__name_scopes"
CLASSES = "pkg__torch__onnx__class_hierarchy"


@pytest.mark.parametrize(
    "name, meta, expected",
    [
        ("node_relu", {SCOPES: "['', 'block', 'block.act', 'relu']"}, "block.act"),
        ("node_relu", {SCOPES: "['', 'block', 'block.act', 'relu']",
                       CLASSES: "['Net', 'torch.nn.Sequential', 'torch.nn.ReLU', 'aten.relu.default']"}, "block.act"),
        # an operation called in the root module's forward: no module to name
        ("node_flatten", {SCOPES: "['', 'flatten']", CLASSES: "['Net', 'aten.flatten.using_ints']"}, None),
        # the node's own name already is the path
        ("block.act", {SCOPES: "['', 'block', 'block.act', 'relu']"}, None),
        ("node_relu", {"namespace": ": Net/block: torch.nn.Sequential/block.act: torch.nn.ReLU/relu: aten.relu.default"},
         "block.act"),
        ("node_relu", {}, None),
        ("node_relu", {SCOPES: "['', " + "'x', " * MAX_TEXT + "'relu']"}, None),
        ("node_relu", {SCOPES: "__import__('os').system('false')"}, None),
        ("node_relu", {SCOPES: "['', 'a\\nb', 'relu']"}, None),
    ],
    ids=["scopes", "scopes-and-classes", "root-module", "already-the-path", "namespace-only", "no-metadata",
         "too-long", "not-a-list", "control-character"],
)
def test_module_path_from_metadata(name, meta, expected):
    assert module_path(_node(name, **meta), name) == expected


def test_a_file_with_odd_metadata_still_lints(tmp_path):
    """Metadata is read as text, never evaluated; values that are not an exporter's
    lists leave the node named by its name."""
    graph = helper.make_graph(
        [_node("act", **{SCOPES: "[[[[[[[[[[" * 1000, "namespace": "/" * 5000})],
        "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    (layer,) = [layer for layer in load(str(path)).layers() if layer.kind == "act"]
    assert layer.module is None
