"""PW002 oversized-dense: a fully-connected layer that dominates the parameter budget.

The models are real classifier heads at full size. Their weights are ONNX external
data in a sparse file (no disk blocks written): pwlint needs shapes, never weight values.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import findings, lint, mentions

DATA_FILE = "weights.bin"
ALIGN = 4096

VGG16_HEAD = [("fc1", 25088, 4096), ("fc2", 4096, 4096), ("fc3", 4096, 1000)]
ALEXNET_HEAD = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]
MOBILENET_V3_SMALL_HEAD = [("classifier.0", 576, 1024), ("classifier.3", 1024, 1000)]


def dense_params(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def _external(name: str, dims: list[int], offset: int) -> tuple[TensorProto, int]:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    length = 4
    for d in dims:
        length *= d
    for key, value in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor, offset + (length + ALIGN - 1) // ALIGN * ALIGN


def dense_model(folder: Path, layers, form: str = "gemm", batch_shape: tuple = (1,)) -> Path:
    """A chain of dense layers ``(name, fan_in, fan_out)`` with ReLU between them, on an
    input of shape ``batch_shape + (fan_in,)``. ``form`` is ``gemm`` (Gemm, transB=1, as
    torch exports Linear) or ``matmul`` (MatMul + Add, as for inputs of rank > 2)."""
    nodes, initializers, offset = [], [], 0
    current = "x"
    for i, (name, fan_in, fan_out) in enumerate(layers):
        if i:
            nodes.append(helper.make_node("Relu", [current], [f"{name}_in"], name=f"{name}_relu"))
            current = f"{name}_in"
        w_dims = [fan_out, fan_in] if form == "gemm" else [fan_in, fan_out]
        weight, offset = _external(f"{name}.weight", w_dims, offset)
        bias, offset = _external(f"{name}.bias", [fan_out], offset)
        initializers += [weight, bias]
        if form == "gemm":
            nodes.append(helper.make_node("Gemm", [current, weight.name, bias.name], [f"{name}_out"], name=name, transB=1))
        else:
            nodes.append(helper.make_node("MatMul", [current, weight.name], [f"{name}_mm"], name=name))
            nodes.append(helper.make_node("Add", [f"{name}_mm", bias.name], [f"{name}_out"], name=f"{name}_bias"))
        current = f"{name}_out"
    graph = helper.make_graph(
        nodes, "dense_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*batch_shape, layers[0][1]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [*batch_shape, layers[-1][2]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with open(folder / DATA_FILE, "wb") as f:
        f.truncate(offset)  # sparse: hundreds of MB in size, no blocks on disk
    onnx.checker.check_model(str(path))
    return path


def reported(report: dict) -> dict[str, dict]:
    result = {}
    for finding in findings(report, "PW002"):
        (name,) = finding["nodes"]
        result[name] = finding
    return result


@pytest.mark.parametrize(
    "head, form, expected",
    [(VGG16_HEAD, "gemm", {"fc1", "fc2"}), (ALEXNET_HEAD, "matmul", {"fc6", "fc7"})],
    ids=["vgg16", "alexnet"],
)
def test_classic_fc_layers_are_reported(tmp_path, head, form, expected):
    found = reported(lint(dense_model(tmp_path, head, form)))
    assert set(found) == expected  # fc3 / fc8 (4096 -> 1000, 4.1M) stay under the default
    for name, fan_in, fan_out in head:
        if name in expected:
            message = found[name]["message"]
            assert found[name]["severity"] == "warning"
            assert mentions(message, dense_params(fan_in, fan_out)), message
            assert mentions(message, fan_in) and mentions(message, fan_out), message


def test_weights_are_never_read(tmp_path):
    """The same report with the external weight file present and after it is deleted;
    ONNX itself cannot load the model's weights without it."""
    path = dense_model(tmp_path, VGG16_HEAD)
    before = lint(path)
    (tmp_path / DATA_FILE).unlink()
    with pytest.raises(onnx.checker.ValidationError, match=DATA_FILE):
        onnx.load(str(path))  # loading the weights needs the file...
    after = lint(path, "--allow-missing-weights")  # ...linting does not
    assert after["files"][0]["error"] is None
    assert after["findings"] == before["findings"]
    assert set(reported(after)) == {"fc1", "fc2"}


@pytest.mark.parametrize(
    "head",
    [
        [("fc", 512, 1000)],  # ResNet-18/34
        [("classifier", 1024, 1000)],  # DenseNet-121
        [("fc", 2048, 1000)],  # ResNet-50, Inception-v3
        MOBILENET_V3_SMALL_HEAD,  # Linear(576, 1024) -> Hardswish -> Linear(1024, 1000)
    ],
    ids=["512-1000", "1024-1000", "2048-1000", "mobilenet-v3-small"],
)
def test_classifiers_on_pooled_features_are_not_reported(tmp_path, head):
    assert reported(lint(dense_model(tmp_path, head))) == {}


@pytest.mark.parametrize(
    "batch_shape, expected",
    [
        ((1, 197), set()),  # transformer MLP on [B, T, C]
        ((1, 7, 7), set()),  # ConvNeXt pointwise layers on [B, H, W, C]
        ((1,), {"mlp.fc1", "mlp.fc2"}),  # the same layers on one vector each are heads
    ],
    ids=["tokens", "channels-last-map", "rank-2"],
)
def test_per_position_dense_layers_are_not_reported(tmp_path, batch_shape, expected):
    mlp = [("mlp.fc1", 2048, 8192), ("mlp.fc2", 8192, 2048)]  # 16.8M each
    path = dense_model(tmp_path, mlp, form="matmul", batch_shape=batch_shape)
    assert set(reported(lint(path))) == expected


def test_max_params_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "models"\n\n[tool.pwlint.rules.PW002]\nmax-params = 1_000_000\n'
    )
    found = reported(lint(dense_model(tmp_path, MOBILENET_V3_SMALL_HEAD)))
    # Linear(576, 1024) has 590,848 parameters, Linear(1024, 1000) 1,025,000
    assert set(found) == {"classifier.3"}
    assert mentions(found["classifier.3"]["message"], dense_params(1024, 1000))


def test_max_params_from_pwlint_toml(tmp_path):
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 200_000_000\n")
    assert reported(lint(dense_model(tmp_path, VGG16_HEAD))) == {}
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 16_000_000\n")
    assert set(reported(lint(tmp_path / "model.onnx"))) == {"fc1", "fc2"}
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 17_000_000\n")
    assert set(reported(lint(tmp_path / "model.onnx"))) == {"fc1"}


@pytest.mark.parametrize("kernel, reported", [(7, True), (3, False)], ids=["kernel-covers-map", "3x3"])
def test_conv_covering_its_whole_input_is_fully_connected(tmp_path, kernel, reported):
    """PW001's safe fix turns VGG16's fc1 into a 7x7 conv on a 7x7 map: still 102.8M
    parameters, still one weight per input position and unit, so PW002 still reports
    it. An ordinary 3x3 conv of the same size is not a fully-connected layer."""
    channels, units = 512, 4096
    out = 1 if kernel == 7 else 5
    dims = [units, channels, kernel, kernel]
    tensor, _ = _external("w", dims, 0)
    with open(tmp_path / DATA_FILE, "wb") as handle:  # sparse: no disk blocks written
        handle.truncate(channels * kernel * kernel * units * 4)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="fc1_conv", kernel_shape=[kernel, kernel])],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, units, out, out])], [tensor],
    )
    path = tmp_path / "conv_head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    found = findings(lint(path), "PW002")
    if reported:
        (finding,) = found
        assert finding["nodes"] == ["fc1_conv"]
        assert mentions(finding["message"], channels * 7 * 7 * units)
    else:
        assert found == []


def _conv_head(folder: Path, kernel: int, channels: int, units: int, groups: int = 1) -> Path:
    """One conv whose kernel covers its ``kernel`` x ``kernel`` input (a convolutionalised
    head layer), its weights sparse external data."""
    tensor, end = _external("w", [units, channels // groups, kernel, kernel], 0)
    with open(folder / DATA_FILE, "wb") as handle:
        handle.truncate(end)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="head_conv", kernel_shape=[kernel, kernel], group=groups)],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, kernel, kernel])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, units, 1, 1])], [tensor],
    )
    path = folder / "conv_head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("kernel, channels, factors", [
    (1, 4096, "two 1x1 convs (a pointwise bottleneck)"),  # VGG16's fc2 after the pool-pointwise fix
    (7, 512, "a 7x7 conv to rank r then a 1x1 conv"),  # fc1 after the convolutionalise fix
], ids=["pointwise", "7x7"])
def test_fully_connected_conv_is_factorised_like_a_dense_layer(tmp_path, kernel, channels, factors):
    (finding,) = findings(lint(_conv_head(tmp_path, kernel, channels, 4096), "--unsafe-fixes"), "PW002")
    fix = finding["fix"]
    assert fix["applicability"] == "unsafe"
    assert factors in fix["description"]
    assert "cannot be applied" not in fix["description"]


def test_grouped_conv_factorisation_is_blocked(tmp_path):
    (finding,) = findings(lint(_conv_head(tmp_path, 1, 8192, 4096, groups=2), "--unsafe-fixes"), "PW002")
    assert "cannot be applied here: factorising a grouped convolution is not supported" in finding["fix"]["description"]
