"""PW005's fixes on ONNX: a KxK conv rewritten as Tucker-2 (pointwise Cin -> R1, KxK
R1 -> R2, pointwise R2 -> Cout) or as depthwise KxK + pointwise (the MobileNet block).

The tests read the written convs back, rebuild the kernel they compute together, and
check the reported error against it; they run the fixed models in onnxruntime.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pwlint.findings import Fix
from pwlint.fix.plans import ConvFactorisePlan
from tests.conftest import run_onnx, sample_inputs
from tests.formats.onnx.test_fix_pointwise import (
    attrs_of, fix_with, layer_of, nodes_of, relative, reported, text_model, weights_of,
)

CIN, COUT, SIDE = 16, 24, 10
PLACEMENT = dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[2, 1])
SIGNATURE = f"(float[1,{CIN},{SIDE},{SIDE}] x) => (float[1,{COUT},4,5] y)"
BODY = "y = Conv <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], dilations = [2, 1]> (x, w, b)"


def orthonormal(rng, rows: int, cols: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((rows, cols)))[0]


def tucker_kernel(rng, r1: int, r2: int, noise: float) -> np.ndarray:
    """A (COUT, CIN, 3, 3) kernel of Tucker ranks (r1, r2), core values falling with their
    index (as trained kernels' spectra do), plus ``noise``."""
    core = rng.standard_normal((r2, r1, 3, 3)) * np.outer(0.75 ** np.arange(r2), 0.75 ** np.arange(r1))[..., None, None]
    kernel = np.einsum("or,rs...,is->oi...", orthonormal(rng, COUT, r2), core, orthonormal(rng, CIN, r1))
    return kernel + noise * rng.standard_normal(kernel.shape) * np.abs(kernel).mean()


def conv_model(tmp_path, name: str, kernel: np.ndarray, rng):
    path = text_model(tmp_path / name, SIGNATURE, {"w": kernel, "b": rng.standard_normal(COUT)}, BODY)
    return path, shutil.copyfile(path, tmp_path / f"original-{name}")


def written_tucker(path):
    """(first (R1, CIN), core (R2, R1, 3, 3), last (COUT, R2), the three Conv nodes)."""
    convs = [n for n in nodes_of(path) if n.op_type == "Conv"]
    assert len(convs) == 3, [n.op_type for n in nodes_of(path)]
    weights = weights_of(path)
    first, core, last = (weights[c.input[1]].astype(np.float64) for c in convs)
    return first[:, :, 0, 0], core, last[:, :, 0, 0], convs


def output_error(original, fixed) -> float:
    feeds = sample_inputs(original)
    return relative(run_onnx(original, feeds)[0], run_onnx(fixed, feeds)[0])


def test_tucker2_writes_pointwise_core_pointwise_and_its_error_falls_as_the_energy_grows(tmp_path):
    rng = np.random.default_rng(11)
    kernel = tucker_kernel(rng, 10, 12, noise=0.02)
    errors, outputs, ranks = [], [], []
    for energy in (0.6, 0.8, 0.95):
        path, original = conv_model(tmp_path, f"tucker-{energy}.onnx", kernel, rng)
        report = fix_with(path, Fix("unsafe", "tucker2", "tucker2-conv",
                                    ConvFactorisePlan(layer_of(path, "y"), "tucker2", energy, multiple_of=1)))
        (outcome,) = report.outcomes
        assert outcome.applied, outcome.note
        first, core, last, convs = written_tucker(path)
        r1, r2 = first.shape[0], last.shape[1]
        assert first.shape == (r1, CIN) and core.shape == (r2, r1, 3, 3) and last.shape == (COUT, r2)
        # the window's placement is on the core; the pointwise convs read each position alone
        assert attrs_of(convs[0]) == attrs_of(convs[2]) == {"kernel_shape": [1, 1]}
        assert {k: attrs_of(convs[1])[k] for k in PLACEMENT} == PLACEMENT
        assert [len(c.input) for c in convs] == [2, 2, 3] and convs[2].output[0] == "y"
        written = np.einsum("or,rs...,si->oi...", last, core, first)
        stored = kernel.astype(np.float32).astype(np.float64)
        measured = relative(stored, written)
        assert reported(outcome.note, "kernel") == pytest.approx(measured, rel=2e-3), outcome.note
        assert f"pointwise {CIN}->{r1}, 3x3 {r1}->{r2}, pointwise {r2}->{COUT} (Tucker-2)" in outcome.note
        assert "fine-tune" in outcome.note
        errors.append(measured)
        outputs.append(output_error(original, path))
        ranks.append((r1, r2))
    assert errors[0] > errors[1] > errors[2], (ranks, errors)
    assert outputs[0] > outputs[1] > outputs[2], (ranks, outputs)
    assert ranks[0] < ranks[1] < ranks[2]


def test_a_kernel_of_low_tucker_rank_is_rewritten_with_no_output_error(tmp_path):
    rng = np.random.default_rng(12)
    path, original = conv_model(tmp_path, "exact.onnx", tucker_kernel(rng, 4, 4, noise=0.0), rng)
    report = fix_with(path, Fix("unsafe", "tucker2", "tucker2-conv",
                                ConvFactorisePlan(layer_of(path, "y"), "tucker2", 0.999, multiple_of=1)))
    (outcome,) = report.outcomes
    assert outcome.applied, outcome.note
    first, core, last, _ = written_tucker(path)
    assert (first.shape[0], last.shape[1]) == (4, 4)
    assert output_error(original, path) < 1e-5


def test_separable_writes_depthwise_then_pointwise_and_an_exactly_separable_kernel_keeps_its_outputs(tmp_path):
    rng = np.random.default_rng(13)
    pointwise, depthwise = rng.standard_normal((COUT, CIN)), rng.standard_normal((CIN, 3, 3))
    kernel = np.einsum("oi,i...->oi...", pointwise, depthwise)
    path, original = conv_model(tmp_path, "separable.onnx", kernel, rng)
    report = fix_with(path, Fix("unsafe", "separable", "separable-conv",
                                ConvFactorisePlan(layer_of(path, "y"), "separable")))
    (outcome,) = report.outcomes
    assert outcome.applied, outcome.note
    convs = [n for n in nodes_of(path) if n.op_type == "Conv"]
    assert len(convs) == 2
    weights = weights_of(path)
    dw, pw = (weights[c.input[1]] for c in convs)
    assert dw.shape == (CIN, 1, 3, 3) and attrs_of(convs[0])["group"] == CIN
    assert {k: attrs_of(convs[0])[k] for k in PLACEMENT} == PLACEMENT
    assert pw.shape == (COUT, CIN, 1, 1) and attrs_of(convs[1]) == {"kernel_shape": [1, 1]}
    assert len(convs[0].input) == 2 and len(convs[1].input) == 3 and convs[1].output[0] == "y"
    assert f"{COUT * CIN * 9} -> {CIN * 9 + COUT * CIN} weights" in outcome.note
    assert output_error(original, path) < 1e-5
    assert reported(outcome.note, "kernel") < 1e-6


def test_separable_reports_the_error_of_the_written_layers(tmp_path):
    rng = np.random.default_rng(14)
    kernel = rng.standard_normal((COUT, CIN, 3, 3))
    path, original = conv_model(tmp_path, "dense-kernel.onnx", kernel, rng)
    report = fix_with(path, Fix("unsafe", "separable", "separable-conv",
                                ConvFactorisePlan(layer_of(path, "y"), "separable")))
    (outcome,) = report.outcomes
    dw_node, pw_node = (n for n in nodes_of(path) if n.op_type == "Conv")
    weights = weights_of(path)
    dw, pw = weights[dw_node.input[1]].astype(np.float64), weights[pw_node.input[1]].astype(np.float64)
    written = np.einsum("oi,i...->oi...", pw[:, :, 0, 0], dw[:, 0])
    measured = relative(kernel.astype(np.float32), written)
    assert reported(outcome.note, "kernel") == pytest.approx(measured, rel=2e-3)
    assert 0.5 < measured < 1  # a random kernel is far from separable: the note must say so
    assert 0.5 < output_error(original, path) < 1.2


@pytest.mark.parametrize("method, shape", [("tucker2", (16, 16)), ("separable", (1, 4))])
def test_at_or_above_break_even_nothing_is_written(tmp_path, method, shape):
    """Tucker-2 of a random 16 -> 16 3x3 kernel keeping 99% of the energy needs ranks whose
    three layers outweigh the conv; a 4 -> 1 conv is smaller than its depthwise + pointwise pair."""
    rng = np.random.default_rng(15)
    cout, cin = shape
    path = text_model(tmp_path / f"{method}.onnx", f"(float[1,{cin},6,6] x) => (float[1,{cout},6,6] y)",
                      {"w": rng.standard_normal((cout, cin, 3, 3))},
                      "y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w)")
    before = path.read_bytes()
    report = fix_with(path, Fix("unsafe", method, f"{method}-conv",
                                ConvFactorisePlan(layer_of(path, "y"), method, 0.99)))
    (outcome,) = report.outcomes
    assert not outcome.applied
    assert f"no smaller than the {cout}x{cin}x3x3 conv" in outcome.note, outcome.note
    assert path.read_bytes() == before and report.written is None


def test_a_conv_exported_by_torch_dynamo_is_split_and_runs(tmp_path):
    """A torch Conv2d as the dynamo exporter writes it (generated names, initializers named
    after the module), split by Tucker-2: the model runs and its output keeps its name."""
    import io
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    path = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 16, 12, 12),), str(path), dynamo=True, external_data=False)
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    from pwlint.formats.onnx.loader import load

    graph = load(str(path))
    last = [layer for layer in graph.layers("conv")][-1]
    report = fix_with(path, Fix("unsafe", "tucker2", "tucker2-conv", ConvFactorisePlan(last.name, "tucker2", 0.7)))
    (outcome,) = report.outcomes
    assert outcome.applied, outcome.note
    assert [n.op_type for n in nodes_of(path)].count("Conv") == 4
    feeds = sample_inputs(original)
    with torch.no_grad():
        expected = model(torch.from_numpy(feeds[next(iter(feeds))])).numpy()
    fixed = run_onnx(path, feeds)[0]
    assert fixed.shape == expected.shape
    assert 0 < relative(expected, fixed) < 1
    assert report.after.params < report.before.params


@pytest.mark.parametrize("method", ["tucker2", "separable"])
def test_the_reported_error_is_the_written_layers_not_the_decompositions(tmp_path, monkeypatch, method):
    """A slip between the decomposition and the written initializers (here: the last
    layer's weights halved on their way) must show in the reported error."""
    import dataclasses

    from pwlint.fix import convsplit

    real = getattr(convsplit, method)
    if method == "tucker2":
        slipped = lambda kernel, plan: dataclasses.replace(real(kernel, plan), last=real(kernel, plan).last * 0.5)
    else:
        slipped = lambda kernel: dataclasses.replace(real(kernel), pointwise=real(kernel).pointwise * 0.5)
    monkeypatch.setattr(convsplit, method, slipped)
    rng = np.random.default_rng(16)
    # a kernel each method splits exactly: its own error is 0, the slip's is 0.5
    exact = (tucker_kernel(rng, 4, 4, noise=0.0) if method == "tucker2"
             else np.einsum("oi,i...->oi...", rng.standard_normal((COUT, CIN)), rng.standard_normal((CIN, 3, 3))))
    path, _ = conv_model(tmp_path, f"slip-{method}.onnx", exact, rng)
    report = fix_with(path, Fix("unsafe", method, f"{method}-conv",
                                ConvFactorisePlan(layer_of(path, "y"), method, 0.999, multiple_of=1)))
    (outcome,) = report.outcomes
    assert outcome.applied, outcome.note
    assert reported(outcome.note, "kernel") == pytest.approx(0.5, rel=1e-3), outcome.note


# through the CLI: PW005 finds the conv and offers the split ------------------------------

@pytest.mark.parametrize("method", ["tucker2", "separable"])
def test_pw005_fix_through_the_cli(tmp_path, method):
    from tests.conftest import fix_json

    rng = np.random.default_rng(17)
    kernel = tucker_kernel(rng, 6, 6, noise=0.0) if method == "tucker2" else np.einsum(
        "oi,i...->oi...", rng.standard_normal((COUT, CIN)), rng.standard_normal((CIN, 3, 3)))
    path, original = conv_model(tmp_path, f"cli-{method}.onnx", kernel, rng)
    (tmp_path / "pwlint.toml").write_text(
        f'[rules.PW005]\nmax-params = 1000\nmethod = "{method}"\nenergy = 0.999\nrank-multiple-of = 1\n')
    run, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW005")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert (outcome["code"], outcome["applicability"]) == ("PW005", "unsafe")
    assert ops_count(path) == (3 if method == "tucker2" else 2)
    assert output_error(original, path) < 1e-5  # an exactly decomposable kernel
    assert run.code == 0 and report["findings"] == []


def test_pw005_break_even_through_the_cli_leaves_the_file(tmp_path):
    from tests.conftest import fix_json

    rng = np.random.default_rng(18)
    path, _ = conv_model(tmp_path, "cli-flat.onnx", rng.standard_normal((COUT, CIN, 3, 3)), rng)
    before = path.read_bytes()
    (tmp_path / "pwlint.toml").write_text('[rules.PW005]\nmax-params = 1000\nmethod = "tucker2"\nenergy = 0.999\n')
    run, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW005")
    (outcome,) = report["files"][0]["fix"]["not_applied"]
    assert outcome["code"] == "PW005" and "no smaller than" in outcome["note"], outcome
    assert path.read_bytes() == before
    assert [f["code"] for f in report["findings"]] == ["PW005"]


def ops_count(path) -> int:
    return [n.op_type for n in nodes_of(path)].count("Conv")
