"""Quantized ONNX models give the findings of their float originals.

Each model is quantized in the test run by ``onnxruntime.quantization``, in the
three formats it writes (QDQ, QOperator, dynamic), per tensor and per channel.
The quantizer renames nodes (``fc1`` -> ``fc1_quant``), so findings are compared
with the layer names taken out; everything else, parameter figures included,
must be the float model's. The figures are also computed here from the layer
sizes.
"""

from __future__ import annotations

import pytest

from pwlint.formats.onnx.loader import load
from pwlint.units import human
from tests.conftest import lint
from tests.formats.onnx.quantized_models import (
    C1,
    C2,
    CLASSES,
    FEATURES,
    FORMS,
    HIDDEN,
    float_model,
    op_types,
    quantize,
)

FC1 = FEATURES * HIDDEN + HIDDEN
FC2 = HIDDEN * CLASSES + CLASSES
#: fc1 as a pointwise conv after global pooling
POINTWISE = C2 * HIDDEN + HIDDEN
CONV1, CONV2 = C1 * 3 * 3 * 3 + C1, C2 * C1 * 3 * 3 + C2
#: the operators that show a file really is in the form it is named after
EXPECTED_OPS = {
    "qdq": {"QuantizeLinear", "DequantizeLinear", "Conv"},
    "qoperator": {"QLinearConv"},
    "dynamic": {"DynamicQuantizeLinear", "ConvInteger"},
    "dynamic-ort-optimised": {"DynamicQuantizeMatMul", "ConvInteger"},
}
HEAD_OPS = {
    ("qoperator", "gemm"): {"QGemm"}, ("qoperator", "matmul"): {"QLinearMatMul", "QLinearAdd"},
    ("dynamic", "gemm"): {"MatMulInteger"}, ("dynamic", "matmul"): {"MatMulInteger"},
    ("qdq", "gemm"): {"Gemm"}, ("qdq", "matmul"): {"MatMul"},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``models(form, head="gemm", norm=False)``: the float model (form None) or its
    quantized copy, written once per module; plus the config that lowers PW002's limit
    below the smaller dense layer, so both dense layers are reported."""
    folder = tmp_path_factory.mktemp("quantized")
    config = folder / "pwlint.toml"
    config.write_text(f"[rules.PW002]\nmax-params = {FC2 - 1}\n")
    cache = {}

    def get(form: str | None, head: str = "gemm", norm: bool = False):
        key = (form, head, norm)
        if key not in cache:
            import onnx

            stem = f"{head}{'-bn' if norm else ''}"
            source = folder / f"{stem}.onnx"
            if not source.exists():
                onnx.save(float_model(head, norm), source)
            cache[key] = source if form is None else quantize(source, folder / f"{stem}-{form}.onnx", form)
        return cache[key]

    get.config = config
    return get


def report(models, path) -> dict:
    return lint(path, "--config", str(models.config))


def without_names(finding: dict) -> tuple[str, str, str]:
    """A finding with its layer names taken out of the message."""
    message = finding["message"]
    names = [n for n in finding["nodes"] + [m for m in finding.get("modules") or [] if m] if n]
    for name in sorted(set(names), key=len, reverse=True):
        message = message.replace(name, "<layer>")
    return finding["code"], finding["severity"], message


def test_the_float_model_has_the_findings_the_quantized_ones_must_keep(models):
    findings = report(models, models(None))["findings"]
    assert sorted(f["code"] for f in findings) == ["PW001", "PW002", "PW002", "PW003"]
    (head,) = [f for f in findings if f["code"] == "PW001"]
    assert f"({FEATURES} -> {HIDDEN}, {human(FC1)} parameters)" in head["message"]
    assert f"it would have {human(POINTWISE)} " in head["message"]
    assert f"the head {human(POINTWISE + FC2)} instead of {human(FC1 + FC2)}" in head["message"]
    sizes = sorted(f["message"] for f in findings if f["code"] == "PW002")
    assert f"has {human(FC1)} parameters" in sizes[0] and f"has {human(FC2)} parameters" in sizes[1]


@pytest.mark.parametrize("head", ["gemm", "matmul"])
@pytest.mark.parametrize("form", FORMS)
def test_a_quantized_model_gives_the_float_models_findings(models, form, head):
    path = models(form, head)
    ops = op_types(path)
    base = form.removesuffix("-per-channel")
    assert EXPECTED_OPS[base] <= ops, ops  # the file is what its name says
    assert HEAD_OPS.get((base, head), set()) <= ops, ops
    expected = sorted(without_names(f) for f in report(models, models(None, head))["findings"])
    quantized = report(models, path)
    assert sorted(without_names(f) for f in quantized["findings"]) == expected
    (coverage,) = [f["coverage"] for f in quantized["files"]]
    assert coverage["unknown_ops"] == {} and coverage["unchecked"] == []
    assert coverage["recognised"] == coverage["layers"]


@pytest.mark.parametrize("form", ["qdq", "qoperator", "dynamic"])
def test_conv_bias_before_batchnorm_survives_quantization(models, form):
    """BatchNorm stays in every quantized form: PW004 still sees conv1's bias."""
    expected = sorted(without_names(f) for f in report(models, models(None, norm=True))["findings"])
    assert "PW004" in [code for code, _, _ in expected]
    found = report(models, models(form, norm=True))["findings"]
    assert sorted(without_names(f) for f in found) == expected


@pytest.mark.parametrize("form", ["qdq-per-channel", "qoperator-per-channel", "dynamic-per-channel"])
def test_layers_are_described_from_the_integer_weights(models, form):
    """Scales and zero points (per channel here: vectors as long as the weights' first
    dim) are not parameters; the integer weights are, with the float weights' shapes."""
    graph = load(str(models(form)))
    assert graph.total_params == CONV1 + CONV2 + FC1 + FC2
    convs = sorted(graph.layers("conv"), key=lambda layer: layer.params)
    assert [(c.attrs["in_channels"], c.attrs["out_channels"], c.attrs["kernel"], c.params) for c in convs] == [
        (3, C1, (3, 3), CONV1), (C1, C2, (3, 3), CONV2),
    ]
    denses = sorted(graph.layers("dense"), key=lambda layer: -layer.params)
    assert [(d.attrs["in_features"], d.attrs["out_features"], d.params) for d in denses] == [
        (FEATURES, HIDDEN, FC1), (HIDDEN, CLASSES, FC2),
    ]
    assert all(layer.attrs.get("quantized") for layer in (*convs, *denses))


def test_activation_quantize_dequantize_pairs_are_seen_through(models):
    """Flatten -> QuantizeLinear -> DequantizeLinear -> Gemm is still a flatten feeding a
    dense layer: the pair is one identity layer, and the weights' DequantizeLinear nodes
    are part of the layers they feed, not layers of their own."""
    graph = load(str(models("qdq")))
    pairs = [layer for layer in graph.layers("identity") if layer.op == "QuantizeLinear+DequantizeLinear"]
    assert pairs and all(len(layer.members) == 2 for layer in pairs)
    fc1 = graph.layer("fc1")
    assert graph.data_producer(fc1) in pairs
    assert graph.data_producer(graph.data_producer(fc1)).name == "flatten"
    assert {"fc1_w_DequantizeLinear", "fc1_b_DequantizeLinear"} <= set(fc1.members)
    assert not [layer for layer in graph.layers() if layer.name.endswith("_w_DequantizeLinear")]


def test_a_relu_the_quantizer_folded_into_a_quantize_pair_is_still_a_relu(models):
    """onnxruntime drops the ReLU after a Conv and lets the QuantizeLinear's zero point
    (the type's minimum) clip negatives: the pair is the float model's ReLU, so that a
    BatchNorm -> (ReLU) -> pool -> conv is not mistaken for a pre-norm conv."""
    path = models("qdq", norm=True)
    assert "Relu" not in op_types(path)
    graph = load(str(path))
    (after_norm,) = graph.consumers(graph.layer("bn1"))
    assert (after_norm.kind, after_norm.attrs.get("activation")) == ("act", "relu")
    (after_conv,) = graph.consumers(graph.layer("conv1"))
    assert after_conv.kind == "identity"  # conv1's output has negatives: a plain pair


@pytest.mark.parametrize("form", ["qoperator", "qoperator-per-channel"])
def test_shapes_are_known_past_quantized_contrib_operators(models, form):
    """ONNX's shape inference stops at onnxruntime's QLinearAdd and
    QLinearGlobalAveragePool; pwlint gives them their shapes, so the Flatten after the
    quantized global pool is known to flatten a 1x1 map (no PW001, nothing unchecked)."""
    path = models(form, "gap")
    assert {"QLinearAdd", "QLinearGlobalAveragePool", "QGemm"} <= op_types(path)
    quantized = report(models, path)
    expected = sorted(without_names(f) for f in report(models, models(None, "gap"))["findings"])
    assert sorted(without_names(f) for f in quantized["findings"]) == expected
    assert "PW001" not in [code for code, _, _ in expected]
    (coverage,) = [f["coverage"] for f in quantized["files"]]
    assert coverage["unchecked"] == [] and coverage["shapes_known"] == coverage["layers"]
    graph = load(str(path))
    (flatten,) = graph.layers("flatten")
    assert flatten.input_shape == (1, C2, 1, 1) and flatten.output_shape == (1, C2)
