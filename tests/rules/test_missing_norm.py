"""PW003 missing-norm: a convolution whose output reaches the next layer unnormalised."""

from __future__ import annotations

import onnx
import pytest

from tests.conftest import codes, findings, init, lint

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'
KEEP_NORM = ["dynamo-keep-norm", "legacy-keep-norm"]


def _conv_names(path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


# --- exported models ---------------------------------------------------------------------


@pytest.mark.parametrize("exporter", KEEP_NORM)
def test_two_convs_without_norm_between_are_reported(exported, exporter):
    """zoo "plain": conv1 -> ReLU -> conv2 -> BN; only the first pair lacks a norm."""
    path = exported("plain", exporter)
    conv1, conv2 = _conv_names(path)
    (finding,) = findings(lint(path), "PW003")
    assert finding["nodes"] == [conv1, conv2]
    assert finding["severity"] == "warning"


@pytest.mark.parametrize("exporter", KEEP_NORM)
@pytest.mark.parametrize("name", ["resnet", "densenet", "se", "convnext"])
def test_normalised_architectures_are_not_reported(exported, name, exporter):
    """ResNet (Conv-BN-ReLU, shortcut convs), DenseNet (pre-activation BN-ReLU-Conv),
    squeeze-excite (unnormalised 1x1 convs into a sigmoid gate), ConvNeXt (GroupNorm stem,
    LayerNorm after depthwise convs)."""
    assert "PW003" not in codes(lint(exported(name, exporter)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_with_norm_folded_away_gets_one_info_finding(exported, pwlint, exporter):
    """Eval-mode exports fold BatchNorm into the convs: one info finding saying how to keep
    it, not a warning per conv; it does not fail the run."""
    path = exported("resnet", exporter)
    graph = onnx.load(str(path)).graph
    assert len(_conv_names(path)) > 2
    assert not any("Normalization" in n.op_type for n in graph.node)  # folded away
    report = lint(path)
    (finding,) = findings(report, "PW003")
    assert finding["severity"] == "info"
    assert finding["nodes"] == []
    assert "TrainingMode.PRESERVE" in finding["message"]
    assert [f for f in report["findings"] if f["severity"] != "info"] == []
    assert pwlint("check", str(path)).code == 0


# --- ONNX text ---------------------------------------------------------------------------------

TWO_CONVS = """
{opset}
two_convs (float[1,3,12,12] x) => (float[1,10] y)
<{w1}, {b1}, {w2}, {w3}, {bn}, {fc_w}, {fc_b}{extra_inits}>
{{
    [conv1] c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
    {between}
    [conv2] c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (h, w2)
    {tail}
    [gap] p = GlobalAveragePool (r2)
    [flatten] f = Flatten (p)
    [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)
}}
"""
#: conv2 -> BatchNorm -> ReLU
BN_TAIL = """
    [bn2] n2 = BatchNormalization (c2, bn, bn, bn, bn)
    [relu2] r2 = Relu (n2)
"""
#: conv2 -> ReLU -> conv3 -> ReLU: unnormalised
CONV_TAIL = """
    [relu2a] c2r = Relu (c2)
    [conv3] c3 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (c2r, w3)
    [relu2] r2 = Relu (c3)
"""


def _two_convs(between: str, extra_inits: str = "", tail: str = BN_TAIL) -> str:
    """conv1 (3 -> 8) on 12x12, then ``between`` (from c1 to h, 8 channels), then conv2, then
    ``tail`` (from c2 to r2), then global pooling and a classifier."""
    return TWO_CONVS.format(
        opset=OPSET, between=between, extra_inits=extra_inits, tail=tail,
        w1=init("w1", 8, 3, 3, 3), b1=init("b1", 8), w2=init("w2", 8, 8, 3, 3), w3=init("w3", 8, 8, 3, 3),
        bn=init("bn", 8, value=1.0), fc_w=init("fc_w", 10, 8), fc_b=init("fc_b", 10),
    )


def test_conv_relu_conv_is_reported_when_the_model_has_norm_elsewhere(onnx_text):
    report = lint(onnx_text(_two_convs("[relu1] h = Relu (c1)")))
    (finding,) = findings(report, "PW003")
    assert finding["nodes"] == ["conv1", "conv2"]
    assert finding["severity"] == "warning"


def test_conv_into_dense_is_reported(onnx_text):
    """A conv whose output is flattened straight into a dense layer, unnormalised."""
    path = onnx_text(f"""
    {OPSET}
    conv_dense (float[1,3,8,8] x) => (float[1,10] y)
    <{init("w1", 8, 3, 3, 3)}, {init("bn", 8, value=1.0)}, {init("w2", 8, 8, 3, 3)},
     {init("fc_w", 10, 32)}, {init("fc_b", 10)}>
    {{
        [conv1] c1 = Conv <kernel_shape = [3, 3]> (x, w1)
        [bn1] n1 = BatchNormalization (c1, bn, bn, bn, bn)
        [relu1] r1 = Relu (n1)
        [conv2] c2 = Conv <kernel_shape = [3, 3]> (r1, w2)
        [relu2] r2 = Relu (c2)
        [pool] p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r2)
        [flatten] f = Flatten (p)
        [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)
    }}
    """)
    (finding,) = findings(lint(path), "PW003")
    assert finding["nodes"] == ["conv2", "fc"]


DECOMPOSED_LAYER_NORM = """
    [mean] m = ReduceMean <axes = [1]> (c1)
    [centre] d = Sub (c1, m)
    [square] sq = Pow (d, two)
    [var] v = ReduceMean <axes = [1]> (sq)
    [eps] ve = Add (v, eps)
    [std] s = Sqrt (ve)
    [normalise] ln = Div (d, s)
    [relu1] h = Relu (ln)
"""
GROUP_NORM = """
    [groups] g1 = Reshape (c1, grouped)
    [instance_norm] g2 = InstanceNormalization (g1, gn_scale, gn_bias)
    [ungroup] g3 = Reshape (g2, ungrouped)
    [relu1] h = Relu (g3)
"""
FROZEN_BN = """
    [bn_scale] s = Mul (c1, scale)
    [bn_shift] t = Add (s, shift)
    [relu1] h = Relu (t)
"""


@pytest.mark.parametrize(
    "between, inits",
    [
        (DECOMPOSED_LAYER_NORM, ", float two = {2.0}, float eps = {0.00001}"),
        (GROUP_NORM, f", int64[3] grouped = {{1, 2, -1}}, int64[4] ungrouped = {{1, 8, 12, 12}}, "
                     f"{init('gn_scale', 2, value=1.0)}, {init('gn_bias', 2, value=0.0)}"),
        (FROZEN_BN, f", {init('scale', 8, 1, 1, value=0.5)}, {init('shift', 8, 1, 1, value=0.1)}"),
    ],
    ids=["decomposed-layer-norm", "reshape-instance-norm-reshape", "frozen-bn-mul-add"],
)
@pytest.mark.parametrize("tail", ["bn", "unnormalised-conv3"])
def test_decomposed_norms_count_as_norm(onnx_text, between, inits, tail):
    """conv1 -> (decomposed norm) -> ReLU -> conv2 is fine. With conv2 -> BN the model is
    clean; with conv2 -> ReLU -> conv3, conv2 is the only problem. Whether that is a
    warning depends on whether the file shows BatchNorm kept: a frozen BatchNorm
    (Mul+Add) right after conv1 does, so conv2 lacking one is real; a LayerNorm or
    GroupNorm after conv1 does not (only BatchNorm is folded at export, so conv2's may
    have been): one info naming conv2."""
    report = lint(onnx_text(_two_convs(between, inits, BN_TAIL if tail == "bn" else CONV_TAIL)))
    if tail == "bn":
        assert codes(report) == []
        return
    (finding,) = report["findings"]
    if between is FROZEN_BN:
        assert (finding["code"], finding["severity"], finding["nodes"]) == ("PW003", "warning", ["conv2", "conv3"])
    else:
        assert (finding["code"], finding["severity"], finding["nodes"]) == ("PW003", "info", ["conv2"])
        assert "folded" in finding["message"] and "TrainingMode.PRESERVE" in finding["message"]


def test_convs_feeding_a_sigmoid_gate_are_not_reported(onnx_text):
    """An attention gate on the full map (Attention U-Net): 1x1 conv -> ReLU -> 1x1 conv
    (-> 1 channel) -> Sigmoid, multiplied into the features. The gate's convs are not
    normalised, and need not be."""
    path = onnx_text(f"""
    {OPSET}
    attention_gate (float[1,3,8,8] x) => (float[1,16,8,8] y)
    <{init("w", 16, 3, 3, 3)}, {init("bn", 16, value=1.0)}, {init("wa", 8, 16, 1, 1)}, {init("ba", 8)},
     {init("wpsi", 1, 8, 1, 1)}, {init("bpsi", 1)}, {init("w2", 16, 16, 3, 3)}>
    {{
        [conv] c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w)
        [bn] n = BatchNormalization (c, bn, bn, bn, bn)
        [relu] f = Relu (n)
        [gate_conv] a = Conv <kernel_shape = [1, 1]> (f, wa, ba)
        [gate_relu] ar = Relu (a)
        [psi] p = Conv <kernel_shape = [1, 1]> (ar, wpsi, bpsi)
        [sigmoid] g = Sigmoid (p)
        [gated] m = Mul (f, g)
        [conv2] c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (m, w2)
        [bn2] y = BatchNormalization (c2, bn, bn, bn, bn)
    }}
    """)
    assert "PW003" not in codes(lint(path))


def test_convs_on_a_1x1_map_are_not_reported(onnx_text):
    """A pointwise head on pooled features: GAP -> Conv 1x1 -> ReLU -> Conv 1x1."""
    path = onnx_text(f"""
    {OPSET}
    pointwise_head (float[1,3,8,8] x) => (float[1,10] y)
    <{init("w", 16, 3, 3, 3)}, {init("bn", 16, value=1.0)}, {init("w1", 32, 16, 1, 1)}, {init("b1", 32)},
     {init("w2", 10, 32, 1, 1)}, {init("b2", 10)}>
    {{
        [conv] c = Conv <kernel_shape = [3, 3]> (x, w)
        [bn] n = BatchNormalization (c, bn, bn, bn, bn)
        [relu] r = Relu (n)
        [gap] p = GlobalAveragePool (r)
        [head1] h1 = Conv <kernel_shape = [1, 1]> (p, w1, b1)
        [relu1] r1 = Relu (h1)
        [head2] h2 = Conv <kernel_shape = [1, 1]> (r1, w2, b2)
        [flatten] y = Flatten (h2)
    }}
    """)
    assert "PW003" not in codes(lint(path))


@pytest.mark.parametrize(
    "head, output",
    [
        ("[gap] y = GlobalAveragePool (kr)", "float[1,10,1,1] y"),
        ("[gap] p = GlobalAveragePool (kr)\n [flatten] f = Flatten (p)\n [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)",
         "float[1,10] y"),
    ],
    ids=["conv-gap-output", "conv-gap-dense"],
)
def test_final_conv_before_global_pooling_is_not_reported(onnx_text, head, output):
    """NiN/SqueezeNet head: Conv -> BN -> ReLU -> Conv(classes) -> ReLU -> GlobalAveragePool,
    straight to the output or into a dense layer (the last conv of a ResNet stage)."""
    path = onnx_text(f"""
    {OPSET}
    conv_classifier (float[1,3,8,8] x) => ({output})
    <{init("w", 16, 3, 3, 3)}, {init("bn", 16, value=1.0)}, {init("cls_w", 10, 16, 1, 1)}, {init("cls_b", 10)},
     {init("fc_w", 10, 10)}, {init("fc_b", 10)}>
    {{
        [conv] c = Conv <kernel_shape = [3, 3]> (x, w)
        [bn] n = BatchNormalization (c, bn, bn, bn, bn)
        [relu] r = Relu (n)
        [classifier] k = Conv <kernel_shape = [1, 1]> (r, cls_w, cls_b)
        [relu_cls] kr = Relu (k)
        {head}
    }}
    """)
    assert "PW003" not in codes(lint(path))


def test_written_out_hardswish_is_an_activation_not_a_gate(onnx_text):
    """conv1 -> x * HardSigmoid(x) (HardSwish before opset 14) -> conv2: the sigmoid scales
    the conv's own output, so conv1 is no squeeze-excite conv and is reported."""
    between = "[hsig1] g = HardSigmoid (c1)\n [hswish1] h = Mul (c1, g)"
    (finding,) = findings(lint(onnx_text(_two_convs(between))), "PW003")
    assert finding["nodes"] == ["conv1", "conv2"]


@pytest.mark.parametrize("kernel, reported", [(12, False), (2, True)], ids=["whole-map", "2x2"])
def test_average_pool_over_the_whole_map_ends_the_walk_like_global_pooling(onnx_text, kernel, reported):
    """GoogLeNet ends with AveragePool(7x7) on a 7x7 map: the conv before it is the last one."""
    path = onnx_text(f"""
    {OPSET}
    pooled (float[1,3,12,12] x) => (float[1,10] y)
    <{init("w1", 8, 3, 3, 3)}, {init("bn", 8, value=1.0)}, {init("w2", 8, 8, 3, 3)},
     {init("fc_w", 10, 8 * (12 // kernel) ** 2)}, {init("fc_b", 10)}>
    {{
        [conv1] c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
        [bn1] n1 = BatchNormalization (c1, bn, bn, bn, bn)
        [relu1] r1 = Relu (n1)
        [conv2] c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, w2)
        [relu2] r2 = Relu (c2)
        [pool] p = AveragePool <kernel_shape = [{kernel}, {kernel}], strides = [{kernel}, {kernel}]> (r2)
        [flatten] f = Flatten (p)
        [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)
    }}
    """)
    found = [f["nodes"] for f in findings(lint(path), "PW003")]
    assert found == ([["conv2", "fc"]] if reported else [])


def test_factors_of_a_factorised_conv_are_one_linear_map(onnx_text):
    """conv1 -> 1x1 conv -> conv2 with nothing between (a low-rank pair, as PW002's and
    PW005's fixes write) is one linear map: a norm between its factors would change what it
    computes, so only the last factor is checked (conv2, which has its BatchNorm). With a
    ReLU after conv1 it is a layer of its own again, and is reported."""
    factor = ", " + init("wf", 8, 8, 1, 1)
    direct = lint(onnx_text(_two_convs("[factor] h = Conv <kernel_shape = [1, 1]> (c1, wf)", factor)))
    assert findings(direct, "PW003") == []
    relu = lint(onnx_text(_two_convs(
        "[relu1] c1r = Relu (c1)\n    [factor] h = Conv <kernel_shape = [1, 1]> (c1r, wf)", factor)))
    assert [f["nodes"] for f in findings(relu, "PW003")] == [["conv1", "factor"]]
