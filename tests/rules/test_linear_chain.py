"""PW006 linear-chain: two linear layers with nothing non-linear between them.

Models in ONNX text syntax, Keras and torch.export (.pt2): a chain is reported with
the parameters one merged layer would have (worked out here from the sizes); a
deliberate bottleneck (MobileNetV2's linear projection), a chain whose middle has
another reader, and a chain with an activation between are not.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import findings, init, lint, mentions, run_inprocess


def dense_params(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def chains(report: dict) -> list[list[str]]:
    return sorted(f["nodes"] for f in findings(report, "PW006"))


# ONNX ------------------------------------------------------------------------------------

def gemm_pair(onnx_text, middle: str = "", widths=(64, 128, 32)) -> str:
    """Gemm fc1 (a -> b), ``middle`` (lines reading h1 and writing m), Gemm fc2 (b -> c)."""
    a, b, c = widths
    body = middle or "m = Identity(h1)"
    return onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,{a}] x) => (float[1,{c}] y)
        <{init("w1", b, a)}, {init("b1", b)}, {init("w2", c, b)}, {init("b2", c)},
         {init("scale", b, value=1.0)}, {init("shift", b)}, {init("mean", b)}, {init("var", b, value=1.0)}>
        {{
            [fc1] h1 = Gemm <transB = 1> (x, w1, b1)
            {body}
            [fc2] y = Gemm <transB = 1> (m, w2, b2)
        }}
    """)


def test_linear_then_linear_is_reported(onnx_text):
    report = lint(gemm_pair(onnx_text))
    (finding,) = findings(report, "PW006")
    assert finding["severity"] == "warning"
    assert finding["nodes"][0] == "fc1" and finding["nodes"][-1] == "fc2"
    message = finding["message"]
    pair = dense_params(64, 128) + dense_params(128, 32)  # 12,448 + 4,128
    merged = dense_params(64, 32)  # 2,080
    assert mentions(message, pair) and mentions(message, merged), message
    assert "(64 -> 32)" in message
    assert finding["fix"]["applicability"] == "safe"


@pytest.mark.parametrize("middle, between", [
    ("d = Dropout(h1)\nm = Identity(d)", 2),
    ("[bn] m = BatchNormalization(h1, scale, shift, mean, var)", 1),
    ("d = Dropout(h1)\n[bn] m = BatchNormalization(d, scale, shift, mean, var)", 2),
], ids=["dropout-identity", "batchnorm", "dropout-batchnorm"])
def test_seen_through_dropout_identity_and_batchnorm(onnx_text, middle, between):
    (nodes,) = chains(lint(gemm_pair(onnx_text, middle)))
    assert len(nodes) == 2 + between and nodes[0] == "fc1" and nodes[-1] == "fc2"


@pytest.mark.parametrize("middle", [
    "m = Relu(h1)",
    "d = Dropout(h1)\nm = Relu(d)",
    "[bn1] n = BatchNormalization(h1, scale, shift, mean, var)\n[bn2] m = BatchNormalization(n, scale, shift, mean, var)",
    "m = Sigmoid(h1)",
], ids=["relu", "dropout-relu", "two-norms", "sigmoid"])
def test_not_reported_through_a_non_linearity(onnx_text, middle):
    assert chains(lint(gemm_pair(onnx_text, middle))) == []


def test_bottleneck_is_not_reported(onnx_text):
    """64 -> 16 -> 64: the pair has 2,128 parameters, one 64 -> 64 layer 4,160."""
    assert chains(lint(gemm_pair(onnx_text, widths=(64, 16, 64)))) == []


def test_middle_with_another_reader_is_not_reported(onnx_text):
    path = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,64] x) => (float[1,32] y, float[1,128] h1)
        <{init("w1", 128, 64)}, {init("b1", 128)}, {init("w2", 32, 128)}, {init("b2", 32)}>
        {{
            [fc1] h1 = Gemm <transB = 1> (x, w1, b1)
            [fc2] y = Gemm <transB = 1> (h1, w2, b2)
        }}
    """)
    assert chains(lint(path)) == []  # h1 is a model output too: merging would lose it


def test_conv_then_pointwise_conv_through_batchnorm(onnx_text):
    """3x3 conv (16 -> 64) -> BatchNorm -> 1x1 conv (64 -> 8): one 3x3 conv 16 -> 8."""
    path = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,16,8,8] x) => (float[1,8,8,8] y)
        <{init("w1", 64, 16, 3, 3)}, {init("w2", 8, 64, 1, 1)}, {init("b2", 8)},
         {init("scale", 64, value=1.0)}, {init("shift", 64)}, {init("mean", 64)}, {init("var", 64, value=1.0)}>
        {{
            [conv1] c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
            [bn] n = BatchNormalization(c, scale, shift, mean, var)
            [conv2] y = Conv <kernel_shape = [1, 1]> (n, w2, b2)
        }}
    """)
    (finding,) = findings(lint(path), "PW006")
    assert finding["nodes"] == ["conv1", "bn", "conv2"]
    pair, merged = 64 * 16 * 9 + 8 * 64 + 8, 8 * 16 * 9 + 8  # 9,736 and 1,160
    assert mentions(finding["message"], pair) and mentions(finding["message"], merged)
    assert "3x3 conv conv1 (16 -> 64)" in finding["message"]


@pytest.mark.parametrize("second", [
    "Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (c, w2)",  # a 3x3 second layer mixes positions
    "Conv <kernel_shape = [1, 1], strides = [2, 2]> (c, w2)",
], ids=["3x3-second", "strided-second"])
def test_second_layer_must_be_pointwise(onnx_text, second):
    kernel = 3 if "[3, 3]" in second else 1
    side = 8 if "strides" not in second else 4
    path = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,16,8,8] x) => (float[1,8,{side},{side}] y)
        <{init("w1", 64, 16, 1, 1)}, {init("w2", 8, 64, kernel, kernel)}>
        {{
            [conv1] c = Conv <kernel_shape = [1, 1]> (x, w1)
            [conv2] y = {second}
        }}
    """)
    assert chains(lint(path)) == []


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "stage-transition"])
def test_mobilenet_v2_bottleneck_is_not_reported(onnx_text, residual):
    """1x1 expand -> ReLU6 -> depthwise 3x3 -> ReLU6 -> 1x1 project (linear), then the next
    block's 1x1 expansion, with the residual Add between or (the first block of a stage)
    without: project 96 -> 16 and expand 16 -> 96 have 3,072 weights, one 96 -> 96 layer
    9,312. With the Add the projection's output has a second reader as well."""
    tail = "s = Add(x, p)\n[next_expand] y = Conv <kernel_shape = [1, 1]> (s, wn)" if residual else (
        "[next_expand] y = Conv <kernel_shape = [1, 1]> (p, wn)")
    path = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,16,8,8] x) => (float[1,96,8,8] y)
        <{init("we", 96, 16, 1, 1)}, {init("wd", 96, 1, 3, 3)}, {init("wp", 16, 96, 1, 1)},
         {init("wn", 96, 16, 1, 1)}, float lo = {{0.0}}, float hi = {{6.0}}>
        {{
            [expand] e = Conv <kernel_shape = [1, 1]> (x, we)
            e6 = Clip(e, lo, hi)
            [dw] d = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 96> (e6, wd)
            d6 = Clip(d, lo, hi)
            [project] p = Conv <kernel_shape = [1, 1]> (d6, wp)
            {tail}
        }}
    """)
    assert chains(lint(path)) == []


# torch.export (.pt2) -----------------------------------------------------------------------

def _pt2(module, shape, path):
    import torch

    module.eval()
    torch.export.save(torch.export.export(module, (torch.randn(*shape),)), str(path))
    return path


def test_pt2_linear_chains(tmp_path):
    import torch.nn as nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.drop, self.bn = nn.Linear(64, 256), nn.Dropout(), nn.BatchNorm1d(256)
            self.fc2 = nn.Linear(256, 32)  # fc1 -> Dropout -> BN -> fc2: a chain
            self.fc3 = nn.Linear(32, 32)
            self.fc4 = nn.Linear(32, 10)  # fc3 -> ReLU -> fc4: not

        def forward(self, x):
            x = self.fc2(self.bn(self.drop(self.fc1(x)))).relu()
            return self.fc4(self.fc3(x).relu())

    report = lint(_pt2(Model(), (2, 64), tmp_path / "model.pt2"))
    (finding,) = findings(report, "PW006")
    assert finding["nodes"] == ["fc1", "drop", "bn", "fc2"]
    assert mentions(finding["message"], dense_params(64, 256) + dense_params(256, 32))
    assert mentions(finding["message"], dense_params(64, 32))
    assert "BatchNorm bn" in finding["message"]


def test_pt2_mobilenet_v2_blocks_are_not_reported(tmp_path):
    import torch.nn as nn

    def block(cin, cout, expand=6):
        mid = cin * expand
        return nn.ModuleDict(dict(
            expand=nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()),
            dw=nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()),
            project=nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)),
        ))

    class MobileNetV2ish(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
            self.b1, self.b2, self.b3 = block(16, 24), block(24, 32), block(32, 32)
            self.fc = nn.Linear(32, 10)

        @staticmethod
        def run(b, x):
            return b["project"](b["dw"](b["expand"](x)))

        def forward(self, x):
            # b1's projection (96 -> 24, BN) is read by b2's expansion (24 -> 144) alone: a
            # bottleneck, smaller than one 96 -> 144 layer; b2's output has a residual reader
            x = self.run(self.b2, self.run(self.b1, self.stem(x)))
            x = x + self.run(self.b3, x)
            return self.fc(x.mean((2, 3)))

    report = lint(_pt2(MobileNetV2ish(), (1, 3, 16, 16), tmp_path / "mbv2.pt2"))
    assert chains(report) == []


# Keras -------------------------------------------------------------------------------------

def test_keras_chains(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 16))
    x = layers.Conv2D(64, 3, padding="same", name="c1")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    x = layers.Conv2D(8, 1, name="c2")(x)  # c1 -> BN -> Dropout -> c2: a chain
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(64, name="d1")(x)
    x = layers.Dense(32, activation="relu", name="d2")(x)  # d1 -> d2: a chain (the ReLU comes after d2)
    x = layers.Dense(10, name="d3")(x)  # d2 -> ReLU -> d3: not
    path = tmp_path / "model.keras"
    keras.Model(inputs, x).save(path)
    report = lint(path)
    assert chains(report) == [["c1", "bn", "drop", "c2"], ["d1", "d2"]]
    conv = next(f for f in findings(report, "PW006") if f["nodes"][0] == "c1")
    assert mentions(conv["message"], 64 * 16 * 9 + 64 + 8 * 64 + 8) and mentions(conv["message"], 8 * 16 * 9 + 8)


def test_warning_exit_code(onnx_text):
    run = run_inprocess("check", str(gemm_pair(onnx_text)))
    assert run.code == 1 and "PW006 (warning)" in run.out
