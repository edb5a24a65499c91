"""PW004's safe fix: a conv bias before a BatchNorm folded into the running mean, exactly."""

from __future__ import annotations

from math import prod

import onnx
import pytest

from tests.conftest import assert_same_outputs, codes, copy_model, fix_json, lint, randomised


def _constants(path):
    """The model, its float initializers' sizes, and a way to name the initializer behind a
    tensor: the legacy exporter stores equal weights once (a BatchNorm's zero running mean
    and its zero bias) and gives the other name by an Identity."""
    model = onnx.load(str(path), load_external_data=False)
    sizes = {t.name: prod(t.dims) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    identity = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def source(name):
        while name in identity:
            name = identity[name]
        return name

    return model, sizes, source


def layer_params(path) -> int:
    """Parameters as the layers see them: every weight input of every layer counted once,
    also when the file stores it as an Identity of another one."""
    model, sizes, source = _constants(path)
    names = {t for n in model.graph.node if n.op_type != "Identity" for t in n.input if source(t) in sizes}
    return sum(sizes[source(t)] for t in names)


def conv_biases(path) -> int:
    """Elements of the bias inputs of the model's Conv nodes."""
    model, sizes, source = _constants(path)
    return sum(
        sizes[source(n.input[2])] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2 and n.input[2]
    )


@pytest.fixture(params=["dynamo-keep-norm", "legacy-keep-norm"])
def vgg_bias(request, exported):
    return exported("vgg_bias", request.param)


@pytest.fixture(params=["as-exported", "random-statistics"])
def original(request, vgg_bias, tmp_path):
    """The export, or a copy whose weights and BatchNorm statistics are random (the zoo's
    untrained BatchNorms have a zero running mean, which a wrong fold could get right)."""
    if request.param == "as-exported":
        return vgg_bias
    path = tmp_path / "random" / vgg_bias.name
    path.parent.mkdir()
    onnx.save(randomised(onnx.load(str(vgg_bias)), seed=7), path)
    return path


def test_fold_keeps_the_outputs(original, tmp_path):
    assert codes(lint(original, "--select", "PW004")) == ["PW004"] * 3
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--select", "PW004")
    fix = report["files"][0]["fix"]
    assert [o["code"] for o in fix["applied"]] == ["PW004"] * 3
    assert fix["not_applied"] == []
    onnx.checker.check_model(str(model), full_check=True)
    assert_same_outputs(original, model, seeds=range(4))


def test_fold_drops_the_biases_and_exactly_their_parameters(original, tmp_path):
    biases = conv_biases(original)
    assert biases == 8 + 16 + 32
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--select", "PW004")
    convs = [n for n in onnx.load(str(model)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    assert all(len(n.input) == 2 for n in convs)
    assert layer_params(model) == layer_params(original) - biases
    fix = report["files"][0]["fix"]
    assert fix["before"]["params"] - fix["after"]["params"] == biases


def test_no_pw004_after_the_fold(vgg_bias, tmp_path):
    model = copy_model(vgg_bias, tmp_path)
    _, report = fix_json(model, "--fix", "--select", "PW004")
    assert codes(report) == []
    assert codes(lint(model)) == codes(lint(model, "--ignore", "PW004"))
    assert "PW004" not in codes(lint(model))


def test_fold_is_exact_when_one_tensor_is_every_batchnorm_parameter(onnx_text, tmp_path):
    """A hand-written model may pass one tensor as scale, bias, mean and variance; folding
    into it in place would change all four, so the mean must get a tensor of its own."""
    from tests.conftest import init

    model = onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        shared (float[1,3,8,8] x) => (float[1,4,8,8] y)
        <{init("w", 4, 3, 3, 3)}, {init("b", 4, value=0.25)}, {init("stats", 4, value=1.5)}>
        {{
            [conv] c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)
            [bn] y = BatchNormalization (c, stats, stats, stats, stats)
        }}
    """)
    original = copy_model(model, tmp_path / "original")
    _, report = fix_json(model, "--fix", "--select", "PW004")
    fix = report["files"][0]["fix"]
    assert [o["code"] for o in fix["applied"]] == ["PW004"], fix["not_applied"]
    assert codes(lint(model, "--select", "PW004")) == []
    assert_same_outputs(original, model, seeds=range(3))
