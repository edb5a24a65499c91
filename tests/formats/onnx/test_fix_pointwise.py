"""PW002's low-rank fix on ONNX convolutions: a pointwise (1x1) conv becomes two 1x1 convs
(a pointwise bottleneck), a KxK conv a KxK conv to ``r`` channels then a 1x1 conv.

The kernel read as the ``[Cin*K, Cout]`` matrix of a dense layer is factorised; the tests
read the two convs back from the written file, check their shapes and attributes, that
the pair computes what one conv with the product kernel computes (onnxruntime), and that
the reported error is the one of the factors in the file.

Also the helpers the other ``test_fix_*`` files of this folder use: models in ONNX text
syntax with numpy weights, and the fix loop run with a local rule that offers given fixes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from pwlint.findings import Finding, Fix
from pwlint.fix.plans import FactorisePlan
from tests.conftest import run_onnx, sample_inputs


# helpers shared by this folder's fix tests ---------------------------------------------

def text_init(name: str, values: np.ndarray) -> str:
    """An initializer in ONNX text syntax with the given values (float32 or int64)."""
    values = np.asarray(values)
    kind = "int64" if values.dtype.kind == "i" else "float"
    flat = ", ".join(repr(int(v)) if kind == "int64" else repr(float(np.float32(v))) for v in values.reshape(-1))
    dims = f"[{','.join(map(str, values.shape))}]" if values.shape else ""
    return f"{kind}{dims} {name} = {{{flat}}}"


def text_model(path: Path, signature: str, inits: dict[str, np.ndarray], body: str, opset: int = 17) -> Path:
    """Write ``<signature> { body }`` with ``inits`` as initializers; checked by the ONNX checker."""
    header = f'<ir_version: 8, opset_import: ["" : {opset}]>'
    weights = ", ".join(text_init(name, values) for name, values in inits.items())
    model = onnx.parser.parse_model(f"{header}\nagraph {signature} <{weights}> {{\n{body}\n}}")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def spectrum_matrix(rng, rows: int, cols: int, decay: float = 0.7) -> np.ndarray:
    """A ``rows x cols`` matrix whose singular values fall geometrically (by ``decay``), the
    shape trained layers' spectra have (which is why truncated SVD compresses them)."""
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    k = min(rows, cols)
    return (u[:, :k] * decay ** np.arange(k)) @ v[:, :k].T


def fix_with(path: Path, *fixes: Fix, unsafe: bool = True):
    """The fix loop (verification, atomic write) on ``path`` with a local rule offering
    ``fixes``, each as long as every layer its plan names is in the model; the FixReport."""
    from pwlint.fix.rounds import FixMode, fix_file
    from pwlint.formats.onnx.backend import OnnxBackend
    from pwlint.formats.onnx.loader import load

    def check(graph):
        return [
            Finding(f"local {fix.action}", nodes=list(fix.plan.layers()), fixes=[fix], code=f"PW9{index:02d}", rule="local")
            for index, fix in enumerate(fixes) if all(name in graph for name in fix.plan.layers())
        ]

    return fix_file(str(path), OnnxBackend, check, FixMode(unsafe=unsafe), check(load(str(path))))


def layer_of(path: Path, tensor: str) -> str:
    """The name pwlint gives the layer writing ``tensor`` (text-syntax nodes have no names)."""
    from pwlint.formats.onnx.loader import load

    (name,) = [layer.name for layer in load(str(path)).layers() if tensor in layer.attrs.get("outputs", ())]
    return name


def nodes_of(path: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path)).graph.node)


def weights_of(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def reported(note: str, what: str) -> float:
    return float(re.search(rf"relative {what} error ([0-9.e+-]+)", note).group(1))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


# the models --------------------------------------------------------------------------

CIN, COUT, SIDE = 32, 48, 5


def pointwise_model(path: Path, rng) -> tuple[Path, np.ndarray, np.ndarray]:
    """x -> Conv 1x1 'proj' (32 -> 48, bias) -> Relu -> y."""
    weight = spectrum_matrix(rng, COUT, CIN).reshape(COUT, CIN, 1, 1)
    bias = rng.standard_normal(COUT)
    text_model(path, f"(float[1,{CIN},{SIDE},{SIDE}] x) => (float[1,{COUT},{SIDE},{SIDE}] y)",
               {"proj_w": weight, "proj_b": bias},
               "c = Conv <kernel_shape = [1, 1]> (x, proj_w, proj_b)\n y = Relu(c)")
    return path, weight.astype(np.float32), bias.astype(np.float32)


KIN, KOUT, KSIDE = 8, 16, 9
#: where the kernel reads: a fix that loses one of these changes the output's size or values
PLACEMENT = dict(strides=[2, 2], pads=[1, 0, 1, 0], dilations=[1, 2])


def kxk_model(path: Path, rng, weight: np.ndarray | None = None) -> tuple[Path, np.ndarray]:
    """x -> Conv 3x3 'conv' (8 -> 16, stride 2, uneven padding, dilation (1, 2), bias) -> y,
    its kernel as a matrix [8*9, 16] with a falling spectrum."""
    if weight is None:
        weight = spectrum_matrix(rng, KIN * 9, KOUT, decay=0.8).T.reshape(KOUT, KIN, 3, 3)
    bias = rng.standard_normal(KOUT)
    text_model(path, f"(float[1,{KIN},{KSIDE},{KSIDE}] x) => (float[1,{KOUT},5,3] y)",
               {"conv_w": weight, "conv_b": bias},
               "y = Conv <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 0, 1, 0], dilations = [1, 2]>"
               " (x, conv_w, conv_b)")
    return path, weight.astype(np.float32)


def same_model_with_kernel(source: Path, target: Path, name: str, kernel: np.ndarray) -> Path:
    """``source`` with initializer ``name`` replaced by ``kernel``: the one conv the factors
    should compute together."""
    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(kernel.astype(np.float32), name))
    onnx.save(model, target)
    return target


# pointwise conv -> two 1x1 convs --------------------------------------------------------

def test_a_pointwise_conv_becomes_a_pointwise_bottleneck(tmp_path):
    rng = np.random.default_rng(3)
    path, weight, bias = pointwise_model(tmp_path / "pointwise.onnx", rng)
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    report = fix_with(path, Fix("unsafe", "factorise", "factorise-dense", FactorisePlan(layer_of(path, "c"), energy=0.97)))
    (outcome,) = report.outcomes
    assert outcome.applied, outcome.note
    convs = [n for n in nodes_of(path) if n.op_type == "Conv"]
    assert len(convs) == 2, [n.op_type for n in nodes_of(path)]
    weights = weights_of(path)
    first, second = (weights[c.input[1]] for c in convs)
    rank = first.shape[0]
    # energy 0.97 of a spectrum falling by 0.7: the first 5 values hold 97.2%; rounded up to 8
    assert rank == 8 and first.shape == (rank, CIN, 1, 1) and second.shape == (COUT, rank, 1, 1)
    assert len(convs[0].input) == 2 and convs[1].input[0] == convs[0].output[0]
    np.testing.assert_array_equal(weights[convs[1].input[2]], bias)
    assert convs[1].output[0] == "c"  # the Relu still reads the layer's tensor
    assert f"rank {rank}" in outcome.note and f"{CIN * COUT} -> {rank * (CIN + COUT)} weights" in outcome.note
    # the error reported is the one of the factors written
    matrix = weight.reshape(COUT, CIN).T
    product = first.reshape(rank, CIN).T.astype(np.float64) @ second.reshape(COUT, rank).T
    assert reported(outcome.note, "weight") == pytest.approx(relative(matrix, product), rel=2e-3)
    # and the pair computes one 1x1 conv with the product kernel (checked in numpy)
    feeds = sample_inputs(original)
    x = feeds["x"][0].astype(np.float64)
    expected = np.maximum(np.einsum("oi,ihw->ohw", product.T, x) + bias[:, None, None], 0)
    np.testing.assert_allclose(run_onnx(path, feeds)[0][0], expected, rtol=1e-4, atol=1e-4)
    assert report.after.params < report.before.params


def test_a_kxk_conv_keeps_its_window_stride_padding_and_dilation_on_the_first_factor(tmp_path):
    rng = np.random.default_rng(5)
    path, weight = kxk_model(tmp_path / "kxk.onnx", rng)
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    report = fix_with(path, Fix("unsafe", "factorise", "factorise-dense", FactorisePlan(layer_of(path, "y"), energy=0.9, multiple_of=1)))
    (outcome,) = report.outcomes
    assert outcome.applied, outcome.note
    first_node, second_node = (n for n in nodes_of(path) if n.op_type == "Conv")
    weights = weights_of(path)
    first, second = weights[first_node.input[1]], weights[second_node.input[1]]
    rank = first.shape[0]
    # energy 0.9 of a spectrum falling by 0.8: 1 - 0.64^r >= 0.9 at r = 6
    assert rank == 6 and first.shape == (rank, KIN, 3, 3) and second.shape == (KOUT, rank, 1, 1)
    placed = attrs_of(first_node)
    assert {k: placed[k] for k in PLACEMENT} == PLACEMENT and placed["kernel_shape"] == [3, 3]
    assert attrs_of(second_node) == {"kernel_shape": [1, 1]}  # stride 1, no padding: it reads each position
    assert len(first_node.input) == 2 and len(second_node.input) == 3 and second_node.output[0] == "y"
    # the two convs compute the conv whose kernel is the product of the factors
    product = (first.reshape(rank, -1).T.astype(np.float64) @ second.reshape(KOUT, rank).T).T.reshape(weight.shape)
    reference = same_model_with_kernel(original, tmp_path / "reference.onnx", "conv_w", product)
    feeds = sample_inputs(original)
    np.testing.assert_allclose(run_onnx(path, feeds)[0], run_onnx(reference, feeds)[0], rtol=1e-4, atol=1e-4)
    matrix = weight.reshape(KOUT, -1).T
    assert reported(outcome.note, "weight") == pytest.approx(relative(matrix, product.reshape(KOUT, -1).T), rel=2e-3)
    assert 0.2 < reported(outcome.note, "weight") < 0.4  # sqrt(0.64^6) = 0.26 of a whole spectrum
    assert outcome.max_abs_diff > 0  # unsafe: the outputs moved, and the loop says by how much


def test_float16_factors_report_the_error_of_the_stored_halves(tmp_path):
    """The factors are cast to the layer's dtype before the error is measured."""
    rng = np.random.default_rng(9)
    # a spectrum falling by 0.3: at rank 10 the truncation leaves 0.3^10 = 6e-6, and the
    # halves' rounding (~3e-4) decides the error
    weight = spectrum_matrix(rng, KIN * 9, KOUT, decay=0.3).T.reshape(KOUT, KIN, 3, 3)
    path, _ = kxk_model(tmp_path / "half.onnx", rng, weight)
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(model, path)
    from pwlint.formats.onnx.backend import OnnxFixSession

    session = OnnxFixSession(str(path))
    note = session.apply(Fix("unsafe", "factorise", "factorise-dense", FactorisePlan(layer_of(path, "y"), target_params=10 * (KIN * 9 + KOUT) + KOUT)))
    candidate = session.checkpoint()
    first_node, second_node = (n for n in nodes_of(candidate) if n.op_type == "Conv")
    weights = weights_of(candidate)
    first, second = weights[first_node.input[1]], weights[second_node.input[1]]
    assert first.dtype == second.dtype == np.float16
    rank = first.shape[0]
    matrix = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "conv_w")).reshape(KOUT, -1).T
    written = relative(matrix, first.reshape(rank, -1).T.astype(np.float64) @ second.reshape(KOUT, rank).T.astype(np.float64))
    assert rank == 10
    assert reported(note, "weight") == pytest.approx(written, rel=2e-3)
    # the SVD's own error (float64 factors of the stored matrix) is another figure
    u, sv, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    truncated = relative(matrix, (u[:, :rank] * sv[:rank]) @ vt[:rank])
    assert abs(written - truncated) > 0.05 * written
    session.close()


def test_a_rank_past_break_even_leaves_the_file_untouched(tmp_path):
    rng = np.random.default_rng(7)
    path, _ = kxk_model(tmp_path / "flat.onnx", rng, rng.standard_normal((KOUT, KIN, 3, 3)))
    before = path.read_bytes()
    report = fix_with(path, Fix("unsafe", "factorise", "factorise-dense", FactorisePlan(layer_of(path, "y"), energy=0.999)))
    (outcome,) = report.outcomes
    assert not outcome.applied
    assert "no smaller than the 72x16 layer" in outcome.note, outcome.note
    assert path.read_bytes() == before and report.written is None


def test_a_grouped_conv_is_refused_before_any_change(tmp_path):
    rng = np.random.default_rng(1)
    path = text_model(tmp_path / "grouped.onnx", "(float[1,8,6,6] x) => (float[1,16,6,6] y)",
                      {"w": rng.standard_normal((16, 4, 1, 1))},
                      "y = Conv <kernel_shape = [1, 1], group = 2> (x, w)")
    before = path.read_bytes()
    report = fix_with(path, Fix("unsafe", "factorise", "factorise-dense", FactorisePlan(layer_of(path, "y"))))
    (outcome,) = report.outcomes
    assert not outcome.applied and "grouped conv (2 groups)" in outcome.note, outcome.note
    assert path.read_bytes() == before


