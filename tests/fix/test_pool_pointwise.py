"""PW001's unsafe fix: global average pooling + pointwise convs. The head's first layer
loses a factor H*W of its parameters; the outputs change (fine-tuning needed), except
when the feature map is spatially constant."""

from __future__ import annotations

from math import prod

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import (
    assert_same_outputs, copy_model, fix_json, float_params, max_output_diff, randomised, run_inprocess,
)
from tests.fix.test_convolutionalise import EXPORTERS, FLATTENED, flatten_input_shape


def _params(model: onnx.ModelProto, names) -> int:
    sizes = {t.name: prod(t.dims) for t in model.graph.initializer}
    return sum(sizes[n] for n in names if n)


def first_dense_params(path) -> tuple[int, int]:
    """(parameters, units) of the first Gemm of an original model."""
    model = onnx.load(str(path), load_external_data=False)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weight = next(t for t in model.graph.initializer if t.name == gemm.input[1])
    trans_b = any(a.name == "transB" and a.i for a in gemm.attribute)
    units = weight.dims[0] if trans_b else weight.dims[1]
    return _params(model, gemm.input[1:]), units


def pooled_conv_params(path) -> int:
    """Parameters of the conv that reads the GlobalAveragePool in a fixed model."""
    model = onnx.load(str(path), load_external_data=False)
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    assert len(pools) == 1
    conv = next(n for n in model.graph.node if pools[0].output[0] in n.input)
    assert conv.op_type == "Conv"
    return _params(model, conv.input[1:])


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(FLATTENED))
def test_first_layer_parameters_fall_by_hxw(exported, tmp_path, name, exporter):
    original = exported(name, exporter)
    _, channels, height, width = flatten_input_shape(original)
    before, units = first_dense_params(original)
    assert before == channels * height * width * units + units
    model = copy_model(original, tmp_path)
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW001")

    after = pooled_conv_params(model)
    assert after == channels * units + units
    assert float_params(model) == float_params(original) - (before - after)
    fix = report["files"][0]["fix"]
    assert [(o["code"], o["applicability"]) for o in fix["applied"]] == [("PW001", "unsafe")]
    assert fix["before"]["params"] - fix["after"]["params"] == before - after
    # it runs, with outputs of the same shape (max_output_diff asserts the shapes)
    assert max_output_diff(original, model) > 1e-3


def test_report_says_the_outputs_changed_and_to_fine_tune(exported, tmp_path):
    original = exported("lenet", "legacy")
    model = copy_model(original, tmp_path)
    _, report = fix_json(copy_model(original, tmp_path / "json"), "--fix", "--unsafe-fixes")
    fix = report["files"][0]["fix"]
    pw001 = next(o for o in fix["applied"] if o["code"] == "PW001")
    assert pw001["applicability"] == "unsafe"
    assert pw001["max_abs_diff"] > 0 and pw001["max_rel_diff"] > 0
    assert fix["max_abs_diff"] > 0 and fix["verified"] is True
    assert "fine-tune" in pw001["description"]

    run = run_inprocess(str(model), "--fix", "--unsafe-fixes")
    assert run.code in (0, 1), run.err
    assert "fine-tune" in run.out
    diff_line = next(line for line in run.out.splitlines() if "max abs diff" in line)
    assert not diff_line.rstrip().endswith("max abs diff 0")


def test_without_unsafe_fixes_the_safe_fix_is_applied_instead(exported, tmp_path):
    original = exported("vgg", "legacy")
    model = copy_model(original, tmp_path)
    _, report = fix_json(model, "--fix")
    fix = report["files"][0]["fix"]
    assert [(o["code"], o["applicability"]) for o in fix["applied"]] == [("PW001", "safe")]
    ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    assert "GlobalAveragePool" not in ops
    assert float_params(model) == float_params(original)


def test_unsafe_only_fix_is_not_applied_without_the_flag(exported, tmp_path):
    """PW002's factorisation is unsafe only: --fix reports it and leaves the model alone."""
    original = exported("lenet", "legacy")
    model = copy_model(original, tmp_path)
    _, report = fix_json(model, "--fix", "--select", "PW002", "--config", str(_pw002_config(tmp_path)))
    fix = report["files"][0]["fix"]
    assert fix["applied"] == []
    assert [o["code"] for o in fix["not_applied"]] == ["PW002"]
    assert "--unsafe-fixes" in fix["not_applied"][0]["note"]
    assert fix["written"] is None
    assert model.read_bytes() == original.read_bytes()
    assert [f["code"] for f in report["findings"]] == ["PW002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet-legacy.onnx", "pwlint.toml"]


def _pw002_config(folder):
    path = folder / "pwlint.toml"
    path.write_text("[rules.PW002]\nmax-params = 40000\n")
    return path


# exact for spatially constant features -------------------------------------------------

def _constant_map_model(channels=4, side=5, hidden=16, classes=10):
    """x [1, 3, 1, 1] broadcast by Expand to 3 x side x side, a 1x1 conv (so the map stays
    constant over positions), ReLU, Flatten, Gemm, ReLU, Gemm."""
    c, s = channels, side
    nodes = [
        helper.make_node("Expand", ["x", "shape"], ["wide"], name="broadcast"),
        helper.make_node("Conv", ["wide", "cw", "cb"], ["c"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="fc1_relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    zeros = lambda name, *shape: numpy_helper.from_array(np.zeros(shape, np.float32), name)
    inits = [
        numpy_helper.from_array(np.array([1, 3, s, s], np.int64), "shape"),
        zeros("cw", c, 3, 1, 1), zeros("cb", c), zeros("w1", hidden, c * s * s), zeros("b1", hidden),
        zeros("w2", classes, hidden), zeros("b2", classes),
    ]
    graph = helper.make_graph(
        nodes, "constant_map", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return randomised(model, seed=11)


def test_pool_pointwise_is_exact_on_a_spatially_constant_map(tmp_path):
    original = tmp_path / "constant.onnx"
    onnx.save(_constant_map_model(), original)
    model = copy_model(original, tmp_path / "fixed")
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW001")
    fix = report["files"][0]["fix"]
    assert [(o["code"], o["applicability"]) for o in fix["applied"]] == [("PW001", "unsafe")]
    assert pooled_conv_params(model) == 4 * 16 + 16  # was 4*5*5*16 + 16
    assert_same_outputs(original, model, seeds=range(5))
    assert fix["max_abs_diff"] < 1e-4
