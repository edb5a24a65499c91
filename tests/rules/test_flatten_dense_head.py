"""PW001 flatten-dense-head: a spatial feature map flattened into a dense layer."""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import codes, findings, init, lint, mentions

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def dense_params(fan_in: int, units: int) -> int:
    return fan_in * units + units


# --- models exported from torch ------------------------------------------------------


def _flatten_and_first_dense(path) -> tuple[str, str]:
    """The ONNX names of the model's only Flatten/Reshape and of the Gemm/MatMul that
    consumes its output (through Identity/Dropout), read from the file itself."""
    graph = onnx.load(str(path)).graph
    flats = [n for n in graph.node if n.op_type in ("Flatten", "Reshape")]
    assert len(flats) == 1, [n.name for n in flats]
    tensor = flats[0].output[0]
    while True:
        (consumer,) = [n for n in graph.node if tensor in n.input]
        if consumer.op_type in ("Gemm", "MatMul"):
            return flats[0].name, consumer.name
        assert consumer.op_type in ("Identity", "Dropout"), consumer.op_type
        tensor = consumer.output[0]


def _head_counts(name: str) -> tuple[int, int]:
    """Parameters of the zoo model's dense head, and of the same head with its first layer
    made a pointwise layer on the C channels of the (globally pooled) CxHxW feature map."""
    import torch
    import torch.nn as nn

    from tests import zoo

    model = zoo.build(name)
    with torch.no_grad():
        fmap = tuple(model.features(torch.zeros(zoo.input_shape(model))).shape[1:])
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    head = sum(m.weight.numel() + m.bias.numel() for m in linears)
    first = linears[0]
    channels, height, width = fmap
    assert tuple(first.weight.shape) == (first.out_features, channels * height * width)
    pointwise = head - first.weight.numel() + channels * first.out_features
    return head, pointwise


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("name", ["lenet", "vgg"])
def test_flatten_head_of_exported_model_is_reported_once(exported, name, exporter):
    path = exported(name, exporter)
    report = lint(path)
    (finding,) = findings(report, "PW001")
    assert finding["nodes"] == list(_flatten_and_first_dense(path))
    assert finding["severity"] == "warning"
    head, pointwise = _head_counts(name)
    assert mentions(finding["message"], head), (head, finding["message"])
    assert mentions(finding["message"], pointwise), (pointwise, finding["message"])


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_resnet_global_pool_head_is_not_reported(exported, exporter):
    assert "PW001" not in codes(lint(exported("resnet", exporter)))


@pytest.mark.parametrize("exporter", ["dynamo-keep-norm", "legacy-keep-norm"])
def test_convnext_per_position_dense_layers_are_not_reported(exported, exporter):
    assert "PW001" not in codes(lint(exported("convnext", exporter)))


# --- positive cases in ONNX text -----------------------------------------------------------


def test_matmul_add_head(onnx_text):
    """Reshape of an 8x6x6 map into MatMul+Add layers (how some exporters write Linear)."""
    c, h, w, hidden, classes = 8, 6, 6, 16, 10
    path = onnx_text(f"""
    {OPSET}
    matmul_head (float[1,3,8,8] x) => (float[1,{classes}] y)
    <{init("conv_w", c, 3, 3, 3)}, {init("conv_b", c)}, int64[2] target = {{1, {c * h * w}}},
     {init("fc1_w", c * h * w, hidden)}, {init("fc1_b", hidden)},
     {init("fc2_w", hidden, classes)}, {init("fc2_b", classes)}>
    {{
        [conv] t1 = Conv <kernel_shape = [3, 3]> (x, conv_w, conv_b)
        [relu] t2 = Relu (t1)
        [flatten] t3 = Reshape (t2, target)
        [fc1] t4 = MatMul (t3, fc1_w)
        [fc1_bias] t5 = Add (t4, fc1_b)
        [relu1] t6 = Relu (t5)
        [fc2] t7 = MatMul (t6, fc2_w)
        [fc2_bias] y = Add (t7, fc2_b)
    }}
    """)
    (finding,) = findings(lint(path), "PW001")
    assert finding["nodes"] == ["flatten", "fc1"]
    head = dense_params(c * h * w, hidden) + dense_params(hidden, classes)
    pointwise = dense_params(c, hidden) + dense_params(hidden, classes)
    assert mentions(finding["message"], head), finding["message"]
    assert mentions(finding["message"], pointwise), finding["message"]


def test_flatten_seen_through_cast_identity_dropout(onnx_text):
    c, h, w, classes = 16, 4, 4, 10
    path = onnx_text(f"""
    {OPSET}
    passthrough (float[1,3,10,10] x) => (float[1,{classes}] y)
    <{init("conv_w", c, 3, 3, 3)}, {init("fc_w", classes, c * h * w)}, {init("fc_b", classes)}>
    {{
        [conv] t1 = Conv <kernel_shape = [3, 3]> (x, conv_w)
        [pool] t2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (t1)
        [flatten] t3 = Flatten <axis = 1> (t2)
        [cast] t4 = Cast <to = 1> (t3)
        [identity] t5 = Identity (t4)
        [dropout] t6 = Dropout (t5)
        [fc] y = Gemm <transB = 1> (t6, fc_w, fc_b)
    }}
    """)
    (finding,) = findings(lint(path), "PW001")
    assert finding["nodes"] == ["flatten", "fc"]
    assert mentions(finding["message"], dense_params(c * h * w, classes)), finding["message"]
    assert mentions(finding["message"], dense_params(c, classes)), finding["message"]


def test_channels_last_flatten_uses_the_channel_axis(onnx_text):
    """TF-style: NHWC input, Transposes around the Conv, then Reshape of the NHWC map.
    The map is 12 channels on 4x6 positions, not 4 channels on 6x12."""
    c, h, w, units = 12, 4, 6, 20
    path = onnx_text(f"""
    {OPSET}
    tf_style (float[1,6,8,3] x) => (float[1,{units}] y)
    <{init("conv_w", c, 3, 3, 3)}, {init("conv_b", c)}, int64[2] target = {{1, {h * w * c}}},
     {init("fc_w", h * w * c, units)}, {init("fc_b", units)}>
    {{
        [to_nchw] t1 = Transpose <perm = [0, 3, 1, 2]> (x)
        [conv] t2 = Conv <kernel_shape = [3, 3]> (t1, conv_w, conv_b)
        [relu] t3 = Relu (t2)
        [to_nhwc] t4 = Transpose <perm = [0, 2, 3, 1]> (t3)
        [flatten] t5 = Reshape (t4, target)
        [fc] t6 = MatMul (t5, fc_w)
        [fc_bias] y = Add (t6, fc_b)
    }}
    """)
    (finding,) = findings(lint(path), "PW001")
    assert finding["nodes"] == ["flatten", "fc"]
    assert mentions(finding["message"], dense_params(h * w * c, units)), finding["message"]
    assert mentions(finding["message"], dense_params(c, units)), finding["message"]


# --- exemptions, each next to the same graph without the exemption --------------------------------

HEAD = """
{opset}
head (float[1,3,8,8] x) => (float[1,10] y)
<{conv_w}, {fc_w}, {fc_b}, int64[2] axes = {{2, 3}}>
{{
    [conv] t1 = Conv <kernel_shape = [3, 3]> (x, conv_w)
    [relu] t2 = Relu (t1)
    {middle}
    [fc] y = Gemm <transB = 1> (flat, fc_w, fc_b)
}}
"""


def _head(middle: str, fc_in: int) -> str:
    """Conv to an 8x6x6 map, then ``middle`` (from t2 to ``flat``), then Gemm(fc_in -> 10)."""
    return HEAD.format(
        opset=OPSET, middle=middle, conv_w=init("conv_w", 8, 3, 3, 3),
        fc_w=init("fc_w", 10, fc_in), fc_b=init("fc_b", 10),
    )


@pytest.mark.parametrize(
    "middle, fc_in, reported",
    [
        ("[flatten] flat = Flatten (t2)", 288, True),
        ("[gap] t3 = GlobalAveragePool (t2)\n [flatten] flat = Flatten (t3)", 8, False),
        ("[avgpool] t3 = AveragePool <kernel_shape = [6, 6]> (t2)\n [flatten] flat = Flatten (t3)", 8, False),
        ("[avgpool] t3 = AveragePool <kernel_shape = [3, 3], strides = [3, 3]> (t2)\n [flatten] flat = Flatten (t3)", 32, True),
        ("[gap] t3 = GlobalAveragePool (t2)\n [squeeze] flat = Squeeze (t3, axes)", 8, False),
        ("[avgpool] t3 = AveragePool <kernel_shape = [6, 6]> (t2)\n [squeeze] flat = Squeeze (t3, axes)", 8, False),
        ("[mean] flat = ReduceMean <axes = [2, 3], keepdims = 0> (t2)", 8, False),
    ],
    ids=["flatten-6x6", "global-pool", "pool-to-1x1", "pool-to-2x2", "squeeze-gap", "squeeze-pool-to-1x1", "mean-over-HW"],
)
def test_only_maps_with_several_positions_are_reported(onnx_text, middle, fc_in, reported):
    report = lint(onnx_text(_head(middle, fc_in)))
    assert ("PW001" in codes(report)) is reported


def test_conv_with_full_size_kernel_then_flatten_is_not_reported(onnx_text):
    """A convolutionalised head (Conv with an HxW kernel gives a 1x1 map) is the fix, not the problem."""
    path = onnx_text(f"""
    {OPSET}
    conv_head (float[1,3,8,8] x) => (float[1,10] y)
    <{init("conv_w", 8, 3, 3, 3)}, {init("head_w", 32, 8, 6, 6)}, {init("fc_w", 10, 32)}, {init("fc_b", 10)}>
    {{
        [conv] t1 = Conv <kernel_shape = [3, 3]> (x, conv_w)
        [relu] t2 = Relu (t1)
        [head_conv] t3 = Conv <kernel_shape = [6, 6]> (t2, head_w)
        [relu2] t4 = Relu (t3)
        [flatten] t5 = Flatten (t4)
        [fc] y = Gemm <transB = 1> (t5, fc_w, fc_b)
    }}
    """)
    assert "PW001" not in codes(lint(path))


PER_POSITION = f"""
{OPSET}
per_position (float[1,3,16,16] x) => (float[1,16,16] y)
<{init("patch_w", 16, 3, 4, 4)}, int64[3] tokens = {{1, 16, 16}},
 {init("mlp1_w", 16, 64)}, {init("mlp1_b", 64)}, {init("mlp2_w", 64, 16)}, {init("mlp2_b", 16)}>
{{
    [patch] t1 = Conv <kernel_shape = [4, 4], strides = [4, 4]> (x, patch_w)
    [to_tokens] t2 = Reshape (t1, tokens)
    [to_btc] t3 = Transpose <perm = [0, 2, 1]> (t2)
    [mlp1] t4 = MatMul (t3, mlp1_w)
    [mlp1_bias] t5 = Add (t4, mlp1_b)
    [act] t6 = Relu (t5)
    [mlp2] t7 = MatMul (t6, mlp2_w)
    [mlp2_bias] y = Add (t7, mlp2_b)
}}
"""


def test_dense_per_position_of_token_sequence_is_not_reported(onnx_text):
    """Patch embedding (Conv 4x4/4 -> 16 tokens of 16 channels), then a transformer MLP on [B, T, C]."""
    report = lint(onnx_text(PER_POSITION))
    assert "PW001" not in codes(report)


def test_dense_per_position_of_channels_last_map_is_not_reported(onnx_text):
    """ConvNeXt block: depthwise Conv, permute to NHWC, Linear on [B, H, W, C], permute back, residual."""
    path = onnx_text(f"""
    {OPSET}
    convnext_block (float[1,16,8,8] x) => (float[1,16,8,8] y)
    <{init("dw_w", 16, 1, 7, 7)}, {init("dw_b", 16)},
     {init("pw1_w", 16, 64)}, {init("pw1_b", 64)}, {init("pw2_w", 64, 16)}, {init("pw2_b", 16)}>
    {{
        [dwconv] t1 = Conv <kernel_shape = [7, 7], pads = [3, 3, 3, 3], group = 16> (x, dw_w, dw_b)
        [to_nhwc] t2 = Transpose <perm = [0, 2, 3, 1]> (t1)
        [pwconv1] t3 = MatMul (t2, pw1_w)
        [pwconv1_bias] t4 = Add (t3, pw1_b)
        [act] t5 = Relu (t4)
        [pwconv2] t6 = MatMul (t5, pw2_w)
        [pwconv2_bias] t7 = Add (t6, pw2_b)
        [to_nchw] t8 = Transpose <perm = [0, 3, 1, 2]> (t7)
        [residual] y = Add (x, t8)
    }}
    """)
    assert "PW001" not in codes(lint(path))


def test_flatten_of_attention_output_is_not_reported(onnx_text):
    """A hybrid model: conv stem, tokens, one self-attention head, and a classifier that
    flattens the attention output. The reshapes come from attention, not from a conv map."""
    t, c, classes = 16, 32, 10
    path = onnx_text(f"""
    {OPSET}
    attention (float[1,3,16,16] x) => (float[1,{classes}] y)
    <{init("stem_w", c, 3, 4, 4)}, int64[3] tokens = {{1, {c}, {t}}},
     {init("q_w", c, c)}, {init("k_w", c, c)}, {init("v_w", c, c)},
     int64[4] heads = {{1, {t}, 4, {c // 4}}}, int64[3] merged = {{1, {t}, {c}}},
     int64[2] flat_shape = {{1, {t * c}}}, {init("fc_w", classes, t * c)}, {init("fc_b", classes)}>
    {{
        [stem] s1 = Conv <kernel_shape = [4, 4], strides = [4, 4]> (x, stem_w)
        [to_tokens] s2 = Reshape (s1, tokens)
        [to_btc] s3 = Transpose <perm = [0, 2, 1]> (s2)
        [q] q1 = MatMul (s3, q_w)
        [k] k1 = MatMul (s3, k_w)
        [v] v1 = MatMul (s3, v_w)
        [q_heads] q2 = Reshape (q1, heads)
        [k_heads] k2 = Reshape (k1, heads)
        [v_heads] v2 = Reshape (v1, heads)
        [q_t] q3 = Transpose <perm = [0, 2, 1, 3]> (q2)
        [k_t] k3 = Transpose <perm = [0, 2, 3, 1]> (k2)
        [v_t] v3 = Transpose <perm = [0, 2, 1, 3]> (v2)
        [scores] a1 = MatMul (q3, k3)
        [softmax] a2 = Softmax <axis = -1> (a1)
        [context] a3 = MatMul (a2, v3)
        [merge_t] a4 = Transpose <perm = [0, 2, 1, 3]> (a3)
        [merge] a5 = Reshape (a4, merged)
        [flatten] a6 = Reshape (a5, flat_shape)
        [fc] y = Gemm <transB = 1> (a6, fc_w, fc_b)
    }}
    """)
    assert "PW001" not in codes(lint(path))


def test_flatten_of_raw_input_image_into_mlp_is_not_reported(onnx_text):
    path = onnx_text(f"""
    {OPSET}
    mlp (float[1,1,28,28] x) => (float[1,10] y)
    <{init("fc1_w", 64, 784)}, {init("fc1_b", 64)}, {init("fc2_w", 10, 64)}, {init("fc2_b", 10)}>
    {{
        [flatten] t1 = Flatten (x)
        [fc1] t2 = Gemm <transB = 1> (t1, fc1_w, fc1_b)
        [relu] t3 = Relu (t2)
        [fc2] y = Gemm <transB = 1> (t3, fc2_w, fc2_b)
    }}
    """)
    assert "PW001" not in codes(lint(path))


# --- the "N x fewer" figure on small maps ------------------------------------------------------

def _rule_findings(path) -> list:
    """PW001's findings on a model file, fixes included, straight from the rule."""
    from pwlint.formats.onnx.loader import load
    from pwlint_rules.flatten_dense_head import RULE

    return list(RULE.check(load(str(path)), RULE.options()))


def _fewer(text: str) -> str:
    """The figure of ``(3.7x fewer)`` in a message, checked to appear exactly once."""
    import re

    (figure,) = re.findall(r"\((\d+(?:\.\d+)?)x fewer\)", text)
    return figure


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("h, w", [(1, 2), (2, 2), (2, 3), (3, 3), (4, 4)])
def test_fewer_figure_on_maps_below_ten_positions_is_the_parameter_ratio(onnx_text, h, w, bias):
    """2x2 and 3x3 maps give ratios below 10x, which are shown with a decimal: the figure
    must be dense parameters / pointwise parameters, computed here from the layer sizes."""
    c, classes = 8, 10
    gemm_inputs = "flat, fc_w, fc_b" if bias else "flat, fc_w"
    path = onnx_text(f"""
    {OPSET}
    small_map (float[1,3,{h + 2},{w + 2}] x) => (float[1,{classes}] y)
    <{init("conv_w", c, 3, 3, 3)}, {init("fc_w", classes, c * h * w)}, {init("fc_b", classes)}>
    {{
        [conv] t1 = Conv <kernel_shape = [3, 3]> (x, conv_w)
        [relu] t2 = Relu (t1)
        [flatten] flat = Flatten (t2)
        [fc] y = Gemm <transB = 1> ({gemm_inputs})
    }}
    """)
    (finding,) = findings(lint(path), "PW001")
    per_output = 1 if bias else 0
    dense = (c * h * w + per_output) * classes
    pointwise = (c + per_output) * classes
    expected = dense / pointwise
    # the unsafe pool fix's description repeats the figure; JSON shows only the safe fix
    (unsafe,) = [fix.description for fix in _rule_findings(path)[0].fixes if fix.applicability == "unsafe"]
    for text in (finding["message"], unsafe):
        shown = _fewer(text)
        decimals = len(shown.partition(".")[2])
        assert abs(float(shown) - expected) <= 0.5 * 10 ** -decimals, (expected, text)
