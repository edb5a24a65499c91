"""PW007 channel-alignment: pointwise layers whose channel counts accelerators pad.

Models are written in ONNX text syntax (weights are small constants) and as Keras
files; the expected counts and aligned widths are worked out here from the sizes.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import findings, init, lint, run_inprocess


def _aligned(count: int, multiple: int = 8) -> int:
    return -(-count // multiple) * multiple


def conv_model(onnx_text, cout: int, kernel: int = 1, classes: int = 10) -> str:
    """x [1,16,4,4] -> Conv kxk (16 -> cout) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(cout -> classes)."""
    pad = (kernel - 1) // 2
    return onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,16,4,4] x) => (float[1,{classes}] y)
        <{init("w", cout, 16, kernel, kernel)}, {init("b", cout)}, {init("fw", classes, cout)}, {init("fb", classes)}>
        {{
            [conv] c = Conv <kernel_shape = [{kernel},{kernel}], pads = [{pad},{pad},{pad},{pad}]> (x, w, b)
            r = Relu(c)
            p = GlobalAveragePool(r)
            f = Flatten(p)
            [classifier] y = Gemm <transB = 1> (f, fw, fb)
        }}
    """)


def dense_chain(onnx_text, widths: list[int], softmax: bool = False) -> str:
    """Gemm layers fc1, fc2... through widths[0] -> widths[1] -> ..., ReLU between them."""
    lines, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:]), 1):
        if i > 1:
            lines.append(f"a{i} = Relu({current})")
            current = f"a{i}"
        inits += [init(f"w{i}", fan_out, fan_in), init(f"b{i}", fan_out)]
        lines.append(f"[h{i}] h{i} = Gemm <transB = 1> ({current}, w{i}, b{i})")
        current = f"h{i}"
    if softmax:
        lines.append(f"s = Softmax <axis = 1> ({current})")
        current = "s"
    lines.append(f"y = Identity({current})")
    body = "\n".join(lines)
    return onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[1,{widths[0]}] x) => (float[1,{widths[-1]}] y)
        <{", ".join(inits)}>
        {{
            {body}
        }}
    """)


def by_layer(report: dict) -> dict[str, str]:
    result = {}
    for finding in findings(report, "PW007"):
        (name,) = finding["nodes"]
        assert finding["severity"] == "info"
        result[name] = finding["message"]
    return result


def test_pointwise_conv_with_30_output_channels_is_reported(onnx_text):
    found = by_layer(lint(conv_model(onnx_text, cout=30)))
    message = found["conv"]
    assert message.startswith("1x1 conv conv (16 -> 30)")
    assert "30 output channels" in message and "not a multiple of 8" in message
    assert f"{_aligned(30)} output would be aligned" in message  # 32
    assert "Tensor Cores" in message and "16 (int8)" in message
    # the classifier reads the 30 channels too: reported for its input side, not for the
    # 10 classes it writes to the model's output
    assert set(found) == {"conv", "classifier"}
    assert "30 input channels" in found["classifier"] and "output channels" not in found["classifier"]


def test_kxk_convs_are_not_reported(onnx_text):
    """Only pointwise layers: a 3x3 conv's channels are one factor of its K*K*Cin
    reduction. The classifier reading its 30 channels is still reported."""
    assert set(by_layer(lint(conv_model(onnx_text, cout=30, kernel=3)))) == {"classifier"}


@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "softmax"])
def test_thousand_class_classifier_is_not_reported(onnx_text, softmax):
    """2048 pooled features -> 1000 classes (ResNet-50): 1000 is a multiple of 8, but a
    1001-class head (Inception's background class) is the task's width too."""
    for classes in (1000, 1001):
        assert by_layer(lint(dense_chain(onnx_text, [2048, classes], softmax=softmax))) == {}


def test_misaligned_hidden_width_is_reported_on_both_layers(onnx_text):
    """100 -> 30 -> 10: the model's 100 inputs and 10 outputs are given; the 30 between
    is chosen, and both layers that touch it pad it to 32."""
    found = by_layer(lint(dense_chain(onnx_text, [100, 30, 10])))
    assert set(found) == {"h1", "h2"}
    assert "30 output channels" in found["h1"] and "input channels" not in found["h1"]
    assert "30 input channels" in found["h2"] and "10 output" not in found["h2"]
    assert "32 output would be aligned" in found["h1"] and "32 input would be aligned" in found["h2"]


def test_widths_narrower_than_the_multiple_are_not_reported(onnx_text):
    """An SE-style squeeze to 4 (or 6) channels is too small for padding to matter; a
    hidden width of 12 is above the multiple and is reported on both of its layers."""
    assert by_layer(lint(dense_chain(onnx_text, [64, 4, 64]))) == {}
    assert by_layer(lint(dense_chain(onnx_text, [64, 6, 64]))) == {}
    assert set(by_layer(lint(dense_chain(onnx_text, [64, 12, 64])))) == {"h1", "h2"}


def test_both_sides_in_one_finding(onnx_text):
    found = by_layer(lint(dense_chain(onnx_text, [64, 30, 60, 10])))
    assert set(found) == {"h1", "h2", "h3"}
    assert "30 input channels and 60 output channels" in found["h2"]
    assert "32 input, 64 output would be aligned" in found["h2"]


def test_multiple_of_from_config(onnx_text, tmp_path):
    path = dense_chain(onnx_text, [64, 24, 10])
    assert by_layer(lint(path)) == {}  # 24 = 3 x 8
    config = tmp_path / "pwlint.toml"
    config.write_text("[rules.PW007]\nmultiple-of = 16\n")
    found = by_layer(lint(path, "--config", str(config)))
    assert set(found) == {"h1", "h2"}
    assert "not a multiple of 16" in found["h1"] and "32 output would be aligned" in found["h1"]


def test_info_only_exits_zero(onnx_text):
    run = run_inprocess("check", str(dense_chain(onnx_text, [100, 30, 10])))
    assert run.code == 0, run.out
    assert "PW007 (info)" in run.out


def test_keras_dense_and_pointwise_conv(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(30, 1, activation="relu", name="pointwise")(x)  # 30 channels out
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(10, activation="softmax", name="classifier")(x)  # 30 in, 10 classes out
    path = tmp_path / "model.keras"
    keras.Model(inputs, x).save(path)
    found = by_layer(lint(path))
    assert set(found) == {"pointwise", "classifier"}  # the stem is 3x3 and reads the 3 input channels
    assert "30 output channels" in found["pointwise"] and "input channels" not in found["pointwise"]
    assert "30 input channels" in found["classifier"] and "10 output" not in found["classifier"]


def test_graph_without_input_and_output_layers():
    """A plugin's loader may write no input or output layers: the first layer's input and
    the last layer's output are still the model's own."""
    from pwlint.ir import Layer, ModelGraph
    from pwlint_rules.channel_alignment import RULE

    graph = ModelGraph()
    for name, fan_in, fan_out in (("fc1", 100, 30), ("fc2", 30, 10)):
        graph.add_layer(Layer(name=name, kind="dense", op="Dense",
                              attrs={"in_features": fan_in, "out_features": fan_out},
                              input_shapes=[(1, fan_in)], output_shapes=[(1, fan_out)]))
    graph.connect("fc1", "fc2", "h", (1, 30), data=True)
    found = {f.nodes[0]: f.message for f in RULE.check(graph, RULE.options())}
    assert set(found) == {"fc1", "fc2"}
    assert "input channels" not in found["fc1"] and "output channels" not in found["fc2"]
