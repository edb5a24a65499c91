"""Weights are counted from their shapes wherever the constant comes from.

paddle2onnx and spox keep weights in ``Constant`` nodes; graphs build them with
``ConstantOfShape``; half-precision and quantized files convert them in the graph
(``Cast``, ``DequantizeLinear``); exporters transpose or reshape them. Each model
here is written in ONNX text syntax the way such a file holds it.

Model: Conv 3x3 (3 -> 4, pad 1) on 4x4 -> ReLU -> Flatten (64) -> fc1 (64 -> 32)
-> ReLU -> fc2 (32 -> 10).
"""

from __future__ import annotations

import pytest

from pwlint.formats.onnx.loader import load
from pwlint.units import human
from tests.conftest import findings, init, lint

CIN, COUT, SIDE, HIDDEN, CLASSES = 3, 4, 4, 32, 10
FEATURES = COUT * SIDE * SIDE
FC1 = FEATURES * HIDDEN + HIDDEN
FC2 = HIDDEN * CLASSES + CLASSES
CONV = COUT * CIN * 3 * 3 + COUT
POINTWISE = COUT * HIDDEN + HIDDEN
#: 0.01 as float16 bits: the text syntax writes float16 values as integers
HALF = 0x211F


def values(count: int, value: float | int = 0.01) -> str:
    """``count`` literal values (integer tensors take integer literals)."""
    return "{" + ", ".join([repr(value)] * count) + "}"


#: how fc1's weight w1 ([HIDDEN, FEATURES], read by Gemm transB=1) is made: (initializers, nodes)
FC1_WEIGHTS = {
    "initializer": (init("w1", HIDDEN, FEATURES), ""),
    "constant-node": ("", f"w1 = Constant <value = float[{HIDDEN},{FEATURES}] {values(FC1 - HIDDEN)}> ()"),
    "constant-of-shape": (
        f"int64[2] w1_shape = {{{HIDDEN}, {FEATURES}}}",
        "w1 = ConstantOfShape <value = float[1] {0.01}> (w1_shape)",
    ),
    "cast-from-float16": (init("w1_half", HIDDEN, FEATURES, value=HALF, dtype="float16"), "w1 = Cast <to = 1> (w1_half)"),
    "identity": (init("w1_stored", HIDDEN, FEATURES), "w1 = Identity (w1_stored)"),
    "transpose": (init("w1_t", FEATURES, HIDDEN), "w1 = Transpose <perm = [1, 0]> (w1_t)"),
    "reshape": (
        f"{init('w1_flat', FC1 - HIDDEN)}, int64[2] w1_dims = {{{HIDDEN}, -1}}",
        "w1 = Reshape (w1_flat, w1_dims)",
    ),
    "dequantize": (
        f"int8[{HIDDEN},{FEATURES}] w1_q = {values(FC1 - HIDDEN, 1)}, "
        "float w1_scale = {0.01}, int8 w1_zero = {0}",
        "w1 = DequantizeLinear (w1_q, w1_scale, w1_zero)",
    ),
    "constant-node-cast-transpose": (
        "",
        f"w1_c = Constant <value = float16[{FEATURES},{HIDDEN}] {values(FC1 - HIDDEN, HALF)}> ()\n"
        "    w1_f = Cast <to = 1> (w1_c)\n"
        "    w1 = Transpose <perm = [1, 0]> (w1_f)",
    ),
}

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[1,{cin},{side},{side}] x) => (float[1,{classes}] y)
<{inits}>
{{
    {conv_nodes}
    [conv] c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, cw, cb)
    [relu] r = Relu (c)
    [flatten] f = Flatten (r)
    {fc1_nodes}
    [fc1] h = Gemm <transB = 1> (f, w1, b1)
    [relu2] r2 = Relu (h)
    [fc2] y = Gemm <transB = 1> (r2, w2, b2)
}}
"""


def model_text(fc1: str = "initializer", conv: str = "initializer") -> str:
    fc1_inits, fc1_nodes = FC1_WEIGHTS[fc1]
    conv_inits, conv_nodes = CONV_WEIGHTS[conv]
    inits = [conv_inits, init("cb", COUT), fc1_inits, init("b1", HIDDEN), init("w2", CLASSES, HIDDEN), init("b2", CLASSES)]
    return MODEL.format(
        cin=CIN, side=SIDE, classes=CLASSES, inits=", ".join(i for i in inits if i),
        conv_nodes=conv_nodes, fc1_nodes=fc1_nodes,
    )


#: how the conv's weight cw ([COUT, CIN, 3, 3]) is made
CONV_WEIGHTS = {
    "initializer": (init("cw", COUT, CIN, 3, 3), ""),
    "constant-node": ("", f"cw = Constant <value = float[{COUT},{CIN},3,3] {values(CONV - COUT)}> ()"),
    "cast-from-float16": (init("cw_half", COUT, CIN, 3, 3, value=HALF, dtype="float16"), "cw = Cast <to = 1> (cw_half)"),
    # stored input-channels first: the Transpose gives the conv its [out, in, kh, kw]
    "transpose": (init("cw_io", CIN, COUT, 3, 3), "cw = Transpose <perm = [1, 0, 2, 3]> (cw_io)"),
    "dequantize": (
        f"int8[{COUT},{CIN},3,3] cw_q = {values(CONV - COUT, 1)}, float cw_scale = {{0.01}}, int8 cw_zero = {{0}}",
        "cw = DequantizeLinear (cw_q, cw_scale, cw_zero)",
    ),
}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "pwlint.toml"
    path.write_text(f"[rules.PW002]\nmax-params = {FC1 - 1}\n")
    return str(path)


def _no_zero_figures(message: str) -> None:
    assert " 0 parameters" not in message and "(0 " not in message and "0.0x" not in message, message
    assert "instead of 0" not in message, message


@pytest.mark.parametrize("fc1", list(FC1_WEIGHTS))
def test_dense_weight_is_counted_whatever_makes_it(onnx_text, config, fc1):
    path = onnx_text(model_text(fc1=fc1))
    report = lint(path, "--config", config)
    (head,) = findings(report, "PW001")
    assert head["nodes"] == ["flatten", "fc1"]
    assert f"({FEATURES} -> {HIDDEN}, {human(FC1)} parameters)" in head["message"], head["message"]
    assert f"it would have {human(POINTWISE)} " in head["message"]
    assert f"the head {human(POINTWISE + FC2)} instead of {human(FC1 + FC2)}" in head["message"]
    _no_zero_figures(head["message"])
    (oversized,) = findings(report, "PW002")  # the limit is one parameter below fc1's count
    assert oversized["nodes"] == ["fc1"] and f"has {human(FC1)} parameters" in oversized["message"]
    graph = load(str(path))
    fc1_layer = graph.layer("fc1")
    assert (fc1_layer.attrs["in_features"], fc1_layer.attrs["out_features"], fc1_layer.params) == (FEATURES, HIDDEN, FC1)
    assert graph.total_params == CONV + FC1 + FC2
    # the nodes that make the weight are part of fc1, not layers between others
    assert [layer.name for layer in graph.layers() if layer.attrs.get("constant")] == []


@pytest.mark.parametrize("conv", list(CONV_WEIGHTS))
def test_conv_weight_is_described_whatever_makes_it(onnx_text, conv):
    path = onnx_text(model_text(conv=conv))
    graph = load(str(path))
    layer = graph.layer("conv")
    assert (layer.attrs["in_channels"], layer.attrs["out_channels"], layer.attrs["kernel"]) == (CIN, COUT, (3, 3))
    assert layer.params == CONV and layer.attrs["bias"]
    assert graph.total_params == CONV + FC1 + FC2
    report = lint(path)
    assert report["files"][0]["coverage"]["unchecked"] == []
    (head,) = findings(report, "PW001")
    assert f"a {COUT}x{SIDE}x{SIDE} feature map" in head["message"]


def test_a_converted_weight_read_by_two_layers_is_counted_once(onnx_text):
    """One Cast feeds two dense layers: it stays a layer of its own (making a constant,
    off the data path); each dense layer has the weight's size, the model has it once,
    and both are marked as sharing weights."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,{FEATURES}] x) => (float[1,{HIDDEN}] y)
    <{init("w_half", HIDDEN, FEATURES, value=HALF, dtype="float16")}>
    {{
        [to_float] w = Cast <to = 1> (w_half)
        [fc_a] a = Gemm <transB = 1> (x, w)
        [fc_b] b = Gemm <transB = 1> (x, w)
        [sum] y = Add (a, b)
    }}
    """
    graph = load(str(onnx_text(text)))
    weight = FEATURES * HIDDEN
    assert [graph.layer(n).params for n in ("fc_a", "fc_b")] == [weight, weight]
    assert graph.total_params == weight
    assert all(graph.layer(n).attrs.get("shared_weights") for n in ("fc_a", "fc_b"))
    cast = graph.layer("to_float")
    assert (cast.kind, cast.params, cast.attrs.get("constant")) == ("identity", 0, True)
    assert graph.data_producer(graph.layer("fc_a")).kind == "input"


def test_a_transposed_matmul_weight_gives_permuted_features(onnx_text):
    """MatMul reads [in, out]; the file stores [out, in] and transposes it in the graph."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    net (float[1,{FEATURES}] x) => (float[1,{HIDDEN}] y)
    <{init("w_oi", HIDDEN, FEATURES)}, {init("b", HIDDEN)}>
    {{
        [transpose] w = Transpose <perm = [1, 0]> (w_oi)
        [fc] m = MatMul (x, w)
        [bias] y = Add (m, b)
    }}
    """
    graph = load(str(onnx_text(text)))
    (dense,) = graph.layers("dense")
    assert (dense.attrs["in_features"], dense.attrs["out_features"], dense.params) == (FEATURES, HIDDEN, FC1)
    assert dense.attrs["bias"]

