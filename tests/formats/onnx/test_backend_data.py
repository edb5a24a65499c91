"""Every model the onnx wheel ships for its own backend tests is read and linted.

They are real, odd, old and new ONNX files (operators one by one, pytorch
conversions, opset 6 models from 2017, ImageNet CNNs with their weights made by
ConstantOfShape): each must be linted (exit 0 or 1) with a JSON report whose coverage
says every layer was recognised and the rules saw everything. A refusal (exit 2)
would not be a lint: none of these models is one pwlint should refuse, so there is no
list of expected refusals.

Old opsets get tests of their own: most of the backend models are opset 6, and a
model built the way early exporters wrote it (IR version 3, weights listed as graph
inputs) is linted at every opset from 1 to 8.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_inprocess

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
MODELS = sorted(glob.glob(os.path.join(DATA, "**", "*.onnx"), recursive=True))
#: severities at or above the default fail-on level: a finding of these makes exit 1
FAILING = {"warning", "error"}


def onnx_opset(path: str) -> int:
    """The ONNX-domain opset a file imports, read with onnx (1 for files before IR 3)."""
    model = onnx.load(path, load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def graph_nodes(path: str) -> int:
    """Nodes of the main graph that could become layers (a Constant holds a value)."""
    model = onnx.load(path, load_external_data=False)
    return sum(1 for node in model.graph.node if node.op_type != "Constant")


def lint_json(*paths: str):
    run = run_inprocess("check", *paths, "--format", "json")
    assert run.err == "", run.err
    return run.code, json.loads(run.out)


def assert_read_and_linted(entry: dict, nodes: int) -> None:
    """A files[i] entry of a model read in full: no error, at least one layer and no
    more layers than nodes, every layer recognised, nothing the rules could not see."""
    assert entry["error"] is None, entry["error"]
    coverage = entry["coverage"]
    assert 1 <= coverage["layers"] <= nodes, (coverage, nodes)
    assert coverage["unknown_ops"] == {} and coverage["recognised"] == coverage["layers"], coverage
    assert coverage["unchecked"] == [], coverage["unchecked"]


def test_the_wheel_ships_backend_test_models():
    assert len(MODELS) >= 100, "the onnx wheel's backend test data moved: update DATA"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: os.path.relpath(p, DATA))
def test_backend_test_model_is_read_and_linted(path):
    code, report = lint_json(path)
    assert code in (0, 1), code
    [entry] = report["files"]
    assert_read_and_linted(entry, graph_nodes(path))
    assert code == (1 if any(f["severity"] in FAILING for f in report["findings"]) else 0), report["findings"]


def test_every_old_opset_backend_model_is_linted():
    """The backend models older than opset 9 (opset 6 in this wheel), linted in one run:
    every one read in full, none refused."""
    old = [path for path in MODELS if onnx_opset(path) < 9]
    assert len(old) >= 100, f"only {len(old)} backend models are older than opset 9"
    code, report = lint_json(*old, "--exit-zero")
    assert code == 0
    assert [entry["path"] for entry in report["files"]] == old
    for entry in report["files"]:
        assert_read_and_linted(entry, graph_nodes(entry["path"]))


# the ImageNet CNNs of the backend data: architectures whose heads are known ----------------

LIGHT = os.path.join(DATA, "light")
#: AlexNet, VGG-19 and ZFNet end in Flatten + fully-connected layers; DenseNet, Inception,
#: ResNet, ShuffleNet and SqueezeNet pool globally (or classify with a conv) first
DENSE_HEADS = {"light_bvlc_alexnet.onnx", "light_vgg19.onnx", "light_zfnet512.onnx"}


def test_imagenet_cnns_with_a_flatten_dense_head_get_pw001_and_the_others_do_not():
    paths = sorted(glob.glob(os.path.join(LIGHT, "*.onnx")))
    assert len(paths) >= 5 and DENSE_HEADS <= {os.path.basename(p) for p in paths}
    _, report = lint_json(*paths, "--exit-zero")
    flagged = {os.path.basename(f["path"]) for f in report["findings"] if f["code"] == "PW001" and f["severity"] == "warning"}
    assert flagged == DENSE_HEADS
    # every layer's output shape is known in these opset-6..12 CNNs (a Dropout's unused
    # mask output does not make its layer's shape unknown)
    for entry in report["files"]:
        assert entry["coverage"]["shapes_known"] == entry["coverage"]["layers"], entry


# a CNN at every old opset -------------------------------------------------------------------

def old_cnn(opset: int, ir_version: int = 3) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm (a 4x8x8 map into 10 classes), written the way
    exporters of 2017 wrote it: IR version 3 (no opset_import at all before IR 3), the
    weights listed as graph inputs too, and Gemm's ``broadcast`` flag before opset 7."""
    channels, side, classes = 4, 8, 10
    rng = np.random.default_rng(0)
    shapes = {"conv.weight": (channels, 3, 3, 3), "conv.bias": (channels,),
              "fc.weight": (classes, channels * side * side), "fc.bias": (classes,)}
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]
    legacy = {"broadcast": 1} if opset < 7 else {}
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["conv_out"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("Flatten", ["relu_out"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1, **legacy),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])]
    graph = helper.make_graph(nodes, "old_cnn", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    if ir_version < 3:
        del model.opset_import[:]
    onnx.checker.check_model(model, full_check=ir_version >= 3)
    return model


FLATTEN_NOTE = "the input shape of 'flatten' is unknown, so PW001 could not check the dense layer after it"


@pytest.mark.parametrize("opset, ir_version", [(o, 3) for o in range(1, 9)] + [(1, 2)],
                         ids=[f"opset{o}" for o in range(1, 9)] + ["ir2-no-opset-import"])
def test_cnn_at_an_old_opset_is_linted_and_its_head_found(tmp_path, opset, ir_version):
    path = tmp_path / "old.onnx"
    onnx.save(old_cnn(opset, ir_version), path)
    code, report = lint_json(str(path))
    [entry] = report["files"]
    assert entry["error"] is None
    coverage = entry["coverage"]
    assert (coverage["layers"], coverage["recognised"], coverage["unknown_ops"]) == (4, 4, {}), coverage
    heads = [f for f in report["findings"] if f["code"] == "PW001"]
    assert [f["nodes"] for f in heads] == [["flatten", "fc"]], report["findings"]
    # every shape is known (onnx has no shape inference for Relu-1 or Gemm-1: opsets 1-5
    # are upgraded for inference): PW001 decides, and the model fails the gate
    assert code == 1 and heads[0]["severity"] == "warning" and coverage["unchecked"] == []
    assert coverage["shapes_known"] == coverage["layers"]
