"""PW005 heavy-conv: a standard KxK convolution that pointwise layers could mostly replace.

Convolutions at real sizes (VGG16's 512 -> 512 3x3, ResNet-50's last stage, MobileNetV2's
last blocks), their weights ONNX external data in a sparse file: the rule needs shapes
only. Costs in the messages are worked out here from the layer sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import codes, findings, fix_json, lint, mentions, run_inprocess

DATA_FILE = "weights.bin"


def _external(name: str, dims: list[int], offset: int) -> tuple[TensorProto, int]:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    length = 4 * int(np.prod(dims))
    for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor, offset + (length + 4095) // 4096 * 4096


def conv_stack(folder: Path, convs, side: int, classes: int | None = None, name: str = "model.onnx") -> Path:
    """Convs ``(name, cin, cout, kernel, groups)`` with 'same' padding (none for a kernel as
    large as the map) and ReLU between them on a ``side`` x ``side`` map, then (with
    ``classes``) global pooling and a classifier."""
    nodes, inits, offset, current, size = [], [], 0, "x", side
    for i, (layer, cin, cout, kernel, groups) in enumerate(convs):
        weight, offset = _external(f"{layer}.weight", [cout, cin // groups, kernel, kernel], offset)
        bias, offset = _external(f"{layer}.bias", [cout], offset)
        inits += [weight, bias]
        pad = 0 if kernel == size else kernel // 2
        size = size + 2 * pad - kernel + 1
        nodes.append(helper.make_node("Conv", [current, weight.name, bias.name], [f"{layer}_out"], name=layer,
                                      kernel_shape=[kernel, kernel], pads=[pad] * 4, group=groups))
        nodes.append(helper.make_node("Relu", [f"{layer}_out"], [f"{layer}_act"], name=f"{layer}_relu"))
        current = f"{layer}_act"
    out_shape = [1, convs[-1][2], size, size]
    if classes:
        weight, offset = _external("fc.weight", [classes, convs[-1][2]], offset)
        bias, offset = _external("fc.bias", [classes], offset)
        inits += [weight, bias]
        nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"], name="pool"))
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"))
        nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
        current, out_shape = "logits", [1, classes]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, convs[0][1], side, side])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, out_shape)], inits,
    )
    path = folder / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with open(folder / DATA_FILE, "wb") as handle:
        handle.truncate(offset)  # sparse: no disk blocks written
    return path


def reported(report: dict) -> dict[str, dict]:
    return {f["nodes"][0]: f for f in findings(report, "PW005")}


def separable_weights(cin, cout, k):
    return cin * k * k + cout * cin


def tucker2_weights(cin, cout, k, r1, r2):
    return cin * r1 + r1 * r2 * k * k + r2 * cout


def test_vgg16_512_conv_is_reported_as_info(tmp_path):
    """VGG16's conv5 block: 512 -> 512 3x3 on 14x14, 2,359,808 parameters each."""
    path = conv_stack(tmp_path, [("conv5_1", 512, 512, 3, 1), ("conv5_2", 512, 512, 3, 1)], side=14)
    found = reported(lint(path))
    assert set(found) == {"conv5_1", "conv5_2"}
    finding = found["conv5_1"]
    assert finding["severity"] == "info"
    message = finding["message"]
    params, positions = 512 * 512 * 9 + 512, 14 * 14
    assert mentions(message, params), message  # 2.4M
    assert mentions(message, 512 * 512 * 9 * positions)  # 462.4M MACs per sample
    assert mentions(message, separable_weights(512, 512, 3))  # 266.8k
    assert mentions(message, separable_weights(512, 512, 3) * positions)  # 52.3M MACs
    assert "ranks 128 and 128" in message  # a quarter of 512, already a multiple of 8
    assert mentions(message, tucker2_weights(512, 512, 3, 128, 128))  # 278.5k
    assert mentions(message, tucker2_weights(512, 512, 3, 128, 128) * positions)  # 54.6M MACs
    assert "the fix picks them from the weights" in message
    fix = finding["fix"]
    assert fix["applicability"] == "unsafe" and "fine-tuning" in fix["description"]
    assert "Tucker-2" in fix["description"]


def test_info_findings_alone_exit_zero(tmp_path):
    path = conv_stack(tmp_path, [("conv5_1", 512, 512, 3, 1)], side=14)
    run = run_inprocess("check", str(path), "--select", "PW005")
    assert run.code == 0, run.out
    assert "PW005 (info)" in run.out
    assert run_inprocess("check", str(path), "--select", "PW005", "--fail-on", "info").code == 1


def test_illustrative_ranks_round_up_to_rank_multiple_of(tmp_path):
    """300 -> 200 3x3 (540,200 parameters, over max-params = 500,000): a quarter is 75
    and 50, rounded up to 80 and 56 by default, as they are with rank-multiple-of = 1."""
    path = conv_stack(tmp_path, [("conv", 300, 200, 3, 1)], side=4)  # 2.2M MACs: its share does not count
    config = tmp_path / "pwlint.toml"
    config.write_text("[rules.PW005]\nmax-params = 500_000\n")
    message = reported(lint(path, "--config", str(config)))["conv"]["message"]
    assert "ranks 80 and 56" in message and mentions(message, tucker2_weights(300, 200, 3, 80, 56))
    config.write_text("[rules.PW005]\nmax-params = 500_000\nrank-multiple-of = 1\n")
    message = reported(lint(path, "--config", str(config)))["conv"]["message"]
    assert "ranks 75 and 50" in message and mentions(message, tucker2_weights(300, 200, 3, 75, 50))


def test_max_params_option(tmp_path):
    """VGG16's conv4 block: three 256 -> 256 3x3 convs, 590,080 parameters and a third of
    the MACs each."""
    names = ["conv4_1", "conv4_2", "conv4_3"]
    path = conv_stack(tmp_path, [(name, 256, 256, 3, 1) for name in names], side=28)
    assert reported(lint(path, "--select", "PW005")) == {}
    config = tmp_path / "pwlint.toml"
    config.write_text("[rules.PW005]\nmax-params = 590_079\n")
    assert set(reported(lint(path, "--config", str(config)))) == set(names)
    config.write_text("[rules.PW005]\nmax-params = 590_080\n")
    assert reported(lint(path, "--config", str(config))) == {}


def test_conv_doing_most_of_the_models_macs(tmp_path):
    """A 64 -> 64 3x3 conv on 56x56 has 36,928 parameters but 115.6M MACs, 95% of a model
    whose other layer is a 3 -> 64 3x3 stem (5.4M MACs) and a 10-class head."""
    path = conv_stack(tmp_path, [("stem", 3, 64, 3, 1), ("conv", 64, 64, 3, 1)], side=56, classes=10)
    conv_macs = 64 * 64 * 9 * 56 * 56
    total = 3 * 64 * 9 * 56 * 56 + conv_macs + 64 * 10
    found = reported(lint(path))
    assert set(found) == {"conv"}
    message = found["conv"]["message"]
    assert mentions(message, conv_macs) and f"({conv_macs / total:.0%} of the model's)" in message
    assert "over 50% of the model's MACs" in message
    config = tmp_path / "pwlint.toml"
    config.write_text("[rules.PW005]\nmax-macs-share = 0.96\n")
    assert reported(lint(path, "--config", str(config))) == {}
    config.write_text("[rules.PW005]\nmin-macs = 200_000_000\n")
    assert reported(lint(path, "--config", str(config))) == {}


def test_small_models_are_not_reported_for_their_macs_share(exported):
    """LeNet's second conv does more than half of its 0.4M MACs, far below min-macs."""
    assert reported(lint(exported("lenet", "legacy"))) == {}


@pytest.mark.parametrize("conv", [
    ("grouped", 1024, 1024, 3, 2),  # 4.7M parameters in two groups (ResNeXt-like)
    ("depthwise", 1024, 1024, 3, 1024),
    ("pointwise", 2048, 2048, 1, 1),  # 4.2M, but already pointwise
], ids=["grouped", "depthwise", "pointwise"])
def test_not_a_standard_kxk_conv(tmp_path, conv):
    assert reported(lint(conv_stack(tmp_path, [conv], side=7))) == {}


def test_fully_connected_conv_is_left_to_pw002(tmp_path):
    """VGG16's fc1 as a 7x7 conv over the 7x7 map (PW001's safe fix): PW002's finding."""
    report = lint(conv_stack(tmp_path, [("fc1_conv", 512, 4096, 7, 1)], side=7))
    assert reported(report) == {}
    assert [f["nodes"] for f in findings(report, "PW002")] == [["fc1_conv"]]


def test_resnet50_last_stage_gives_info_only(tmp_path):
    """ResNet-50's last bottleneck at full size: 1x1 2048 -> 512, 3x3 512 -> 512, 1x1 512 ->
    2048 on 7x7, then the 1000-class head. The 3x3 (2.36M) crosses max-params and is an
    info finding; the 1x1s (1.05M) are pointwise. Nothing fails the run."""
    path = conv_stack(tmp_path, [("conv1", 2048, 512, 1, 1), ("conv2", 512, 512, 3, 1), ("conv3", 512, 2048, 1, 1)],
                      side=7, classes=1000)
    report = lint(path)
    assert set(reported(report)) == {"conv2"}
    assert all(f["severity"] == "info" for f in findings(report, "PW005"))
    assert run_inprocess("check", str(path), "--select", "PW005").code == 0


def test_mobilenet_v2_last_blocks_are_not_reported(tmp_path):
    """MobileNetV2's widest blocks: 1x1 160 -> 960, depthwise 3x3 960, 1x1 960 -> 320, and
    the final 1x1 320 -> 1280 on 7x7: none is a standard KxK conv."""
    convs = [("expand", 160, 960, 1, 1), ("dw", 960, 960, 3, 960), ("project", 960, 320, 1, 1),
             ("last", 320, 1280, 1, 1)]
    assert reported(lint(conv_stack(tmp_path, convs, side=7, classes=1000))) == {}


@pytest.mark.parametrize("name", ["resnet", "se", "convnext", "densenet", "vgg"])
def test_small_zoo_models_cross_no_threshold(exported, name):
    """The zoo's miniatures (16 to 32 channels, at most 2.4M MACs per conv) stay silent."""
    assert findings(lint(exported(name, "dynamo")), "PW005") == []


# the fix, end to end on a small model ------------------------------------------------------

def _small_conv(path: Path, seed: int = 0) -> np.ndarray:
    """x [1,32,8,8] -> Conv 3x3 (32 -> 32, pads 1, bias); the kernel has rank 4 along both
    channel axes, so Tucker-2 at ranks 8 is exact and 32x32 fits in under break-even."""
    rng = np.random.default_rng(seed)
    core = rng.standard_normal((4, 4, 3, 3))
    kernel = np.einsum("or,rs...,si->oi...", rng.standard_normal((32, 4)), core, rng.standard_normal((4, 32)))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
        [numpy_helper.from_array(kernel.astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return kernel


@pytest.mark.parametrize("method, kernels", [("tucker2", [(1, 1), (3, 3), (1, 1)]), ("separable", [(3, 3), (1, 1)])])
def test_method_option_chooses_the_rewrite(tmp_path, method, kernels):
    path = tmp_path / "conv.onnx"
    _small_conv(path)
    (tmp_path / "pwlint.toml").write_text(f'[rules.PW005]\nmax-params = 1000\nmethod = "{method}"\n')
    _, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW005")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert outcome["code"] == "PW005" and outcome["applicability"] == "unsafe"
    assert "fine-tune" in outcome["note"]
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    written = [tuple(next(a.ints for a in n.attribute if a.name == "kernel_shape")) for n in convs]
    assert written == kernels
    if method == "separable":
        assert next(a.i for a in convs[0].attribute if a.name == "group") == 32  # depthwise
    assert codes(report) == []  # the pieces are far below max-params and pointwise or depthwise


def _sandwich(folder: Path, relu_before_core: bool) -> Path:
    """1x1 (512 -> 424) -> 3x3 (424 -> 424, 1.6M parameters) -> 1x1 (424 -> 512) -> ReLU on a
    14x14 map: what the tucker2 fix writes for VGG16's 512 -> 512 conv at rank 424."""
    inits, offset = [], 0
    specs = [("first", 512, 424, 1), ("core", 424, 424, 3), ("last", 424, 512, 1)]
    nodes, current = [], "x"
    for layer, cin, cout, kernel in specs:
        weight, offset = _external(f"{layer}.weight", [cout, cin, kernel, kernel], offset)
        inits.append(weight)
        if layer == "core" and relu_before_core:
            nodes.append(helper.make_node("Relu", [current], ["first_act"], name="first_relu"))
            current = "first_act"
        nodes.append(helper.make_node("Conv", [current, weight.name], [f"{layer}_out"], name=layer,
                                      kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4))
        current = f"{layer}_out"
    nodes.append(helper.make_node("Relu", [current], ["y"], name="relu"))
    graph = helper.make_graph(
        nodes, "sandwich", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512, 14, 14])], inits,
    )
    path = folder / "sandwich.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with open(folder / DATA_FILE, "wb") as handle:
        handle.truncate(offset)
    return path


def test_the_core_of_a_tucker2_sandwich_is_not_split_again(tmp_path):
    """The tucker2 fix's core (424 -> 424 3x3, over 1M parameters) between its two 1x1
    convs is already factorised; the same conv behind a ReLU is a layer of its own."""
    assert 424 * 424 * 9 > 1_000_000
    assert reported(lint(_sandwich(tmp_path, relu_before_core=False))) == {}
    assert set(reported(lint(_sandwich(tmp_path, relu_before_core=True)))) == {"core"}
