"""PW006's fix on ONNX: two linear layers with nothing non-linear between them merged into
one (W = W2 W1, b = W2 b1 + b2, an eval BatchNorm folded first), a safe fix the fix loop
verifies within its tolerance; chains it cannot merge exactly are refused before any change.
"""

from __future__ import annotations

import io
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from pwlint.findings import Fix
from pwlint.fix.plans import MergeChainPlan
from tests.conftest import assert_same_outputs, run_onnx, sample_inputs
from tests.formats.onnx.test_fix_pointwise import attrs_of, fix_with, layer_of, nodes_of, text_model, weights_of


def merge(path, first: str, second: str, between=(), norm=None):
    """The fix loop with a safe merge of ``first`` and ``second``; (report, the one outcome)."""
    report = fix_with(path, Fix("safe", "merge", "merge-linear-chain", MergeChainPlan(first, second, between, norm)),
                      unsafe=False)
    (outcome,) = report.outcomes
    return report, outcome


def export(model, example, path, **kwargs):
    import torch

    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=True, external_data=False, **kwargs)
    return path


def ops(path) -> list[str]:
    return [n.op_type for n in nodes_of(path)]


def test_linear_dropout_linear_exported_by_torch_merges_into_one_gemm(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.Dropout(), nn.Linear(64, 10))
    path = export(model, torch.randn(2, 32), tmp_path / "linear.onnx")
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    first, second = (layer.name for layer in __import__("pwlint.formats.onnx.loader", fromlist=["load"]).load(str(path)).layers("dense"))
    report, outcome = merge(path, first, second)
    assert outcome.applied, outcome.note
    assert ops(path) == ["Gemm"]
    before, after = 32 * 64 + 64 + 64 * 10 + 10, 32 * 10 + 10
    assert f"{before} -> {after} weights" in outcome.note
    assert report.before.params - report.after.params == before - after
    assert outcome.max_abs_diff is not None and outcome.max_abs_diff < 1e-4
    feeds = sample_inputs(original, symbolic=2)
    with torch.no_grad():
        expected = model(torch.from_numpy(feeds[next(iter(feeds))])).numpy()
    np.testing.assert_allclose(run_onnx(path, feeds)[0], expected, rtol=1e-4, atol=1e-5)
    assert nodes_of(path)[0].output[0] == nodes_of(original)[-1].output[0]  # the output keeps its name


def test_conv_batchnorm_then_pointwise_conv_from_torch_merges_into_one_conv(tmp_path):
    """Conv 3x3 -> BatchNorm (eval, running statistics not 0/1) -> Dropout -> Conv 1x1, as the
    dynamo exporter writes it without optimisation (the BatchNorm stays, Dropout becomes an
    Identity): one conv with the 3x3 window and padding remains, outputs equal."""
    import torch
    from torch import nn

    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.Dropout(0.3), nn.Conv2d(32, 6, 1))
    norm = model[1]
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.2, 3)
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    path = export(model, torch.randn(1, 8, 10, 10), tmp_path / "conv.onnx", optimize=False)
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    assert ops(original) == ["Conv", "BatchNormalization", "Identity", "Conv"]
    from pwlint.formats.onnx.loader import load

    names = [layer.name for layer in load(str(path)).layers() if layer.kind not in ("input", "output")]
    report, outcome = merge(path, names[0], names[-1], between=names[1:-1], norm=names[1])
    assert outcome.applied, outcome.note
    assert ops(path) == ["Conv"]
    (conv,) = nodes_of(path)
    assert weights_of(path)[conv.input[1]].shape == (6, 8, 3, 3)
    assert attrs_of(conv)["pads"] == [1, 1, 1, 1] and attrs_of(conv)["strides"] == [2, 2]
    assert_same_outputs(original, path)
    feeds = sample_inputs(original)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(feeds[next(iter(feeds))])).numpy()
    np.testing.assert_allclose(run_onnx(path, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    # parameters as pwlint counts them: a BatchNorm's trainable scale and shift (2 x 32)
    assert f"{8 * 32 * 9 + 32 + 2 * 32 + 32 * 6 + 6} -> {6 * 8 * 9 + 6} weights" in outcome.note


def test_a_scaled_gemm_then_dropout_then_matmul_add_merge_exactly(tmp_path):
    """Gemm with alpha 0.5, beta 2 (weights stored [in, out]), a Dropout with its ratio
    given, then MatMul + Add: the merged Gemm folds the scales in."""
    rng = np.random.default_rng(3)
    path = text_model(
        tmp_path / "gemm.onnx", "(float[2,12] x) => (float[2,5] y)",
        {"w1": rng.standard_normal((12, 20)), "b1": rng.standard_normal(20), "ratio": np.array(0.4),
         "w2": rng.standard_normal((20, 5)), "b2": rng.standard_normal(5)},
        "h = Gemm <alpha = 0.5, beta = 2.0> (x, w1, b1)\n d = Dropout(h, ratio)\n p = MatMul(d, w2)\n y = Add(p, b2)")
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    report, outcome = merge(path, layer_of(path, "h"), layer_of(path, "y"), between=(layer_of(path, "d"),))
    assert outcome.applied, outcome.note
    assert ops(path) == ["Gemm"]
    assert_same_outputs(original, path, symbolic=2)
    assert report.after.params == 12 * 5 + 5


def test_a_conv_over_the_whole_map_then_flatten_then_dense_keeps_the_flatten(tmp_path):
    """Conv 4x4 on a 4x4 map (a 1x1 output) -> Flatten -> Gemm (transB=1): the merged conv
    writes a 1x1 map and the Flatten, kept, writes the model's output."""
    rng = np.random.default_rng(4)
    path = text_model(
        tmp_path / "flatten.onnx", "(float[1,3,4,4] x) => (float[1,7] y)",
        {"cw": rng.standard_normal((16, 3, 4, 4)), "cb": rng.standard_normal(16),
         "fw": rng.standard_normal((7, 16)), "fb": rng.standard_normal(7)},
        "c = Conv <kernel_shape = [4, 4]> (x, cw, cb)\n f = Flatten <axis = 1> (c)\n y = Gemm <transB = 1> (f, fw, fb)")
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    report, outcome = merge(path, layer_of(path, "c"), layer_of(path, "y"), between=(layer_of(path, "f"),))
    assert outcome.applied, outcome.note
    assert ops(path) == ["Conv", "Flatten"]
    conv, flatten = nodes_of(path)
    assert weights_of(path)[conv.input[1]].shape == (7, 3, 4, 4) and flatten.output[0] == "y"
    assert_same_outputs(original, path)


def test_a_dense_layer_reshaped_for_a_pointwise_conv_gets_the_new_channel_count(tmp_path):
    """Gemm (10 -> 24) -> Reshape to [1, 24, 1, 1] -> Conv 1x1 (24 -> 6): the merged Gemm
    writes 6 values, so the Reshape's shape becomes [1, 6, 1, 1]."""
    rng = np.random.default_rng(5)
    path = text_model(
        tmp_path / "reshape.onnx", "(float[1,10] x) => (float[1,6,1,1] y)",
        {"w1": rng.standard_normal((24, 10)), "b1": rng.standard_normal(24), "shape": np.array([1, 24, 1, 1]),
         "w2": rng.standard_normal((6, 24, 1, 1)), "b2": rng.standard_normal(6)},
        "h = Gemm <transB = 1> (x, w1, b1)\n r = Reshape(h, shape)\n y = Conv <kernel_shape = [1, 1]> (r, w2, b2)")
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    report, outcome = merge(path, layer_of(path, "h"), layer_of(path, "y"), between=(layer_of(path, "r"),))
    assert outcome.applied, outcome.note
    assert ops(path) == ["Gemm", "Reshape"]
    gemm, reshape = nodes_of(path)
    assert list(weights_of(path)[reshape.input[1]]) == [1, 6, 1, 1] and reshape.output[0] == "y"
    assert_same_outputs(original, path)


CHAIN = ("c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, cw, cb)\n"
         " n = BatchNormalization (c, scale, bias, mean, var)\n{extra}"
         " y = Conv <kernel_shape = [1, 1]> ({middle}, pw, pb)")


def _chain_model(tmp_path, name, outputs, middle="n", extra=""):
    rng = np.random.default_rng(6)
    return text_model(
        tmp_path / name, f"(float[1,4,5,5] x) => ({outputs})",
        {"cw": rng.standard_normal((8, 4, 3, 3)), "cb": rng.standard_normal(8), "scale": rng.uniform(0.5, 2, 8),
         "bias": rng.standard_normal(8), "mean": rng.standard_normal(8), "var": rng.uniform(0.5, 2, 8),
         "pw": rng.standard_normal((3, 8, 1, 1)), "pb": rng.standard_normal(3)},
        CHAIN.format(middle=middle, extra=extra))


@pytest.mark.parametrize("shared", ["c", "n"])
def test_a_chain_whose_middle_output_has_another_reader_is_refused(tmp_path, shared):
    """The conv's output, or the norm's, is also a model output: merging would lose it."""
    path = _chain_model(tmp_path, f"shared-{shared}.onnx", f"float[1,3,5,5] y, float[1,8,5,5] {shared}")
    before = path.read_bytes()
    report, outcome = merge(path, layer_of(path, "c"), layer_of(path, "y"), between=(layer_of(path, "n"),),
                            norm=layer_of(path, "n"))
    assert not outcome.applied
    assert "has other readers" in outcome.note, outcome.note
    assert path.read_bytes() == before and report.written is None


def test_a_nonlinear_layer_between_is_refused(tmp_path):
    path = _chain_model(tmp_path, "relu.onnx", "float[1,3,5,5] y", middle="a", extra=" a = Relu(n)\n")
    before = path.read_bytes()
    n, a = layer_of(path, "n"), layer_of(path, "a")
    report, outcome = merge(path, layer_of(path, "c"), layer_of(path, "y"), between=(n, a), norm=n)
    assert not outcome.applied
    assert "is not linear" in outcome.note, outcome.note
    assert path.read_bytes() == before


def test_merged_conv_batchnorm_pointwise_matches_within_the_safe_tolerance(tmp_path):
    path = _chain_model(tmp_path, "chain.onnx", "float[1,3,5,5] y")
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    n = layer_of(path, "n")
    report, outcome = merge(path, layer_of(path, "c"), layer_of(path, "y"), between=(n,), norm=n)
    assert outcome.applied, outcome.note
    assert ops(path) == ["Conv"] and nodes_of(path)[0].output[0] == "y"
    assert_same_outputs(original, path)
    assert report.verified and report.written == str(path)


def test_pw006_merges_linear_linear_through_the_cli(tmp_path):
    """``pwlint --fix`` (safe fixes only): PW006 finds the chain and merges it, verified."""
    import torch
    from torch import nn

    from tests.conftest import fix_json

    torch.manual_seed(3)
    path = export(nn.Sequential(nn.Linear(32, 64), nn.Dropout(), nn.Linear(64, 10)), torch.randn(2, 32),
                  tmp_path / "cli.onnx")
    original = shutil.copyfile(path, tmp_path / "original.onnx")
    run, report = fix_json(path, "--fix", "--select", "PW006")
    fix = report["files"][0]["fix"]
    assert [(o["code"], o["applicability"]) for o in fix["applied"]] == [("PW006", "safe")], fix
    assert fix["verified"] and ops(path) == ["Gemm"]
    assert_same_outputs(original, path, symbolic=2)
    assert run.code == 0 and report["findings"] == []
