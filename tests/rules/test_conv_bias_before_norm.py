"""PW004 conv-bias-before-norm: a convolution's bias that the next BatchNorm cancels."""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import findings, init, lint, mentions

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
KEEP_NORM = ["dynamo-keep-norm", "legacy-keep-norm"]


def _conv_bn_pairs(path) -> dict[tuple[str, str], int]:
    """Each Conv whose output goes to a BatchNormalization: (conv name, BN name) -> out channels."""
    graph = onnx.load(str(path)).graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    pairs = {}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        (consumer,) = [n for n in graph.node if conv.output[0] in n.input]
        if consumer.op_type == "BatchNormalization":
            pairs[(conv.name, consumer.name)] = weights[conv.input[1]][0]
    return pairs


@pytest.mark.parametrize("exporter", KEEP_NORM)
def test_conv_bias_before_batchnorm_is_reported_once_per_conv(exported, exporter):
    """zoo "vgg_bias": three Conv(bias=True) -> BatchNorm -> ReLU blocks."""
    path = exported("vgg_bias", exporter)
    expected = _conv_bn_pairs(path)
    assert len(expected) == 3
    found = findings(lint(path), "PW004")
    assert sorted(tuple(f["nodes"]) for f in found) == sorted(expected)
    for finding in found:
        assert finding["severity"] == "warning"
        out_channels = expected[tuple(finding["nodes"])]
        assert mentions(finding["message"], out_channels), finding["message"]


@pytest.mark.parametrize("exporter", KEEP_NORM)
def test_conv_without_bias_is_not_reported(exported, exporter):
    """zoo "vgg": Conv(bias=False) -> BatchNorm. The dynamo exporter (optimize=False) still
    gives every Conv a third input, zeros computed in the graph: that is not a bias."""
    path = exported("vgg", exporter)
    assert len(_conv_bn_pairs(path)) == 3
    if exporter.startswith("dynamo"):
        graph = onnx.load(str(path)).graph
        assert all(len(n.input) == 3 for n in graph.node if n.op_type == "Conv")
    assert findings(lint(path), "PW004") == []


CONV = """
{opset}
conv_block (float[1,3,8,8] x) => (float[1,8,8,8] y)
<{w}, {b}, {bn}, {ln}, {ln3}, int64[1] channels = {{8}}>
{{
    [zeros] zeros = ConstantOfShape <value = float[1] {{0.0}}> (channels)
    [conv] c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> {inputs}
    {after}
}}
"""
BN = "BatchNormalization (c, bn, bn, bn, bn)"


@pytest.mark.parametrize(
    "inputs, after, reported",
    [
        ("(x, w, b)", f"[bn] y = {BN}", True),
        ("(x, w, b)", f"[identity] i = Identity (c)\n [dropout] d = Dropout (i)\n [bn] y = {BN.replace('(c,', '(d,')}", True),
        ("(x, w)", f"[bn] y = {BN}", False),
        ("(x, w, zeros)", f"[bn] y = {BN}", False),
        ("(x, w, b)", f"[relu] r = Relu (c)\n [bn] y = {BN.replace('(c,', '(r,')}", False),
        ("(x, w, b)", f"[bn] n = {BN}\n [relu] r = Relu (n)\n [residual] y = Add (r, c)", False),
        ("(x, w, b)", "[to_nhwc] t = Transpose <perm = [0, 2, 3, 1]> (c)\n"
                      " [ln] l = LayerNormalization <axis = -1> (t, ln, ln)\n"
                      " [to_nchw] y = Transpose <perm = [0, 3, 1, 2]> (l)", False),
        ("(x, w, b)", "[ln] y = LayerNormalization <axis = 1> (c, ln3, ln3)", False),
        ("(x, w, b)", "[bn] y = InstanceNormalization (c, bn, bn)", True),
    ],
    ids=[
        "conv-bn", "conv-identity-dropout-bn", "no-bias", "computed-zero-bias", "relu-before-bn",
        "output-also-feeds-add", "channels-last-layer-norm", "layer-norm-over-chw",
        "instance-norm",
    ],
)
def test_conv_bias_then_norm(onnx_text, inputs, after, reported):
    """Conv(3 -> 8, bias ``b`` of 8 values unless the inputs say otherwise), then ``after``."""
    text = CONV.format(
        opset=OPSET, inputs=inputs, after=after,
        w=init("w", 8, 3, 3, 3), b=init("b", 8), bn=init("bn", 8, value=1.0),
        ln=init("ln", 8, value=1.0), ln3=init("ln3", 8, 8, 8, value=1.0),
    )
    found = findings(lint(onnx_text(text)), "PW004")
    if reported:
        (finding,) = found
        assert finding["nodes"] == ["conv", "bn"]
        assert mentions(finding["message"], 8), finding["message"]
    else:
        assert found == []
