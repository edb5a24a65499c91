"""PW002's unsafe fix: an oversized dense layer factorised by truncated SVD, to a target
parameter count or a share of the singular-value energy, with its error reported."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import codes, copy_model, fix_json, float_params, max_output_diff, run_inprocess, run_onnx

ROWS, COLS = 16 * 5 * 5, 120  # LeNet's first dense layer: 400 inputs, 120 units
TARGET = 20_000


def largest_rank(rows: int, cols: int, target: int) -> int:
    """The largest rank whose factors (rows x r, r x cols) and bias (cols) fit in ``target``."""
    rank = 0
    while (rank + 1) * (rows + cols) + cols <= target:
        rank += 1
    return rank


def factor_pair(path):
    """(first factor, second factor, bias) of the factorised layer in a fixed model: the
    MatMul whose weight has a dimension no other layer has, its successor and the Add."""
    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2, [n.op_type for n in model.graph.node]
    first, second = matmuls
    assert second.input[0] == first.output[0]
    add = next(n for n in model.graph.node if n.op_type == "Add" and second.output[0] in n.input)
    bias = next(weights[t] for t in add.input if t in weights)
    return weights[first.input[1]], weights[second.input[1]], bias


def relative_error(weight: np.ndarray, rank: int) -> float:
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vt[:rank]
    return float(np.linalg.norm(weight - approx) / np.linalg.norm(weight))


def lenet_fc1(path) -> np.ndarray:
    """LeNet's first dense weight as [in, out]."""
    model = onnx.load(str(path))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == gemm.input[1]))
    trans_b = any(a.name == "transB" and a.i for a in gemm.attribute)
    return weight.T if trans_b else weight


@pytest.fixture
def factorised(exported, tmp_path):
    """LeNet (legacy export) fixed with a pwlint.toml next to it asking for PW002's SVD to
    at most TARGET parameters."""
    original = exported("lenet", "legacy")
    model = copy_model(original, tmp_path)
    (tmp_path / "pwlint.toml").write_text(
        f"[rules.PW002]\nmax-params = 40000\nsvd-target-params = {TARGET}\n"
    )
    run, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW002")
    return original, model, report


def test_svd_reaches_its_target_parameter_count(factorised):
    original, model, report = factorised
    first, second, bias = factor_pair(model)
    rank = first.shape[1]
    assert first.shape == (ROWS, rank) and second.shape == (rank, COLS) and bias.shape == (COLS,)
    params = first.size + second.size + bias.size
    assert params <= TARGET
    assert rank == largest_rank(ROWS, COLS, TARGET) == 38  # 38 * 520 + 120 = 19880; 39 would be 20400
    assert float_params(original) - float_params(model) == ROWS * COLS + COLS - params
    assert codes(report) == []  # the factors are under max-params


def test_svd_reports_the_relative_weight_error_it_made(factorised):
    original, model, report = factorised
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert (outcome["code"], outcome["applicability"]) == ("PW002", "unsafe")
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))
    weight = lenet_fc1(original)
    expected = relative_error(weight, largest_rank(ROWS, COLS, TARGET))
    assert reported == pytest.approx(expected, rel=6e-3)
    # and the written factors are the truncated SVD: their product has that error
    first, second, _ = factor_pair(model)
    assert np.linalg.norm(weight - first @ second) / np.linalg.norm(weight) == pytest.approx(expected, rel=1e-3)
    assert outcome["max_abs_diff"] > 0
    assert max_output_diff(original, model) > 0


def test_svd_reports_the_error_of_the_factors_in_the_file_not_of_the_svd(exported, tmp_path, monkeypatch):
    """A slip between the SVD and the written initializers (here: the second factor halved
    on its way) must show in the reported error, which is measured from what was written."""
    import dataclasses

    import pwlint.formats.onnx.fixes as onnx_fixes

    real = onnx_fixes.factorise
    monkeypatch.setattr(onnx_fixes, "factorise", lambda w, plan: dataclasses.replace(
        real(w, plan), second=real(w, plan).second * 0.5))
    original = exported("lenet", "legacy")
    model = copy_model(original, tmp_path)
    (tmp_path / "pwlint.toml").write_text(f"[rules.PW002]\nmax-params = 40000\nsvd-target-params = {TARGET}\n")
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))
    weight = lenet_fc1(original)
    first, second, _ = factor_pair(model)
    in_file = np.linalg.norm(weight - first @ second) / np.linalg.norm(weight)
    assert reported == pytest.approx(in_file, rel=6e-3)
    assert in_file > 1.05 * relative_error(weight, largest_rank(ROWS, COLS, TARGET))  # the slip is visible


def test_svd_text_report_says_to_fine_tune(exported, tmp_path):
    model = copy_model(exported("lenet", "legacy"), tmp_path)
    config = tmp_path / "elsewhere" / "pwlint.toml"
    config.parent.mkdir()
    config.write_text(f"[rules.PW002]\nmax-params = 40000\nsvd-target-params = {TARGET}\n")
    run = run_inprocess(str(model), "--fix", "--unsafe-fixes", "--select", "PW002", "--config", str(config))
    assert run.code == 0, (run.out, run.err)
    assert "relative weight error" in run.out
    assert "fine-tune" in run.out


# rank from the energy kept, on a matrix with a known spectrum ---------------------------

SPECTRUM = np.array([6.0, 4.0, 2.0, 1.0, 0.5] + [0.05] * 43)  # 48 singular values
# energy (s^2): 36, 16, 4, 1, 0.25 and 43 * 0.0025 = 0.1075, in all 57.3575; kept by rank
# 1: 62.8%, 2: 90.66%, 3: 97.63%, 4: 99.37%, 5: 99.81%
HAND_RANKS = {0.6: 1, 0.9: 2, 0.95: 3, 0.99: 4, 0.995: 5}


def _known_spectrum_model(path, rows=64, cols=48, spectrum=SPECTRUM):
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    weight = (u[:, :cols] * spectrum) @ v.T  # [rows, cols] with exactly these singular values
    bias = rng.standard_normal(cols)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="dense")], "known_spectrum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return weight, bias


def test_hand_computed_ranks_match_the_spectrum():
    energy = np.cumsum(SPECTRUM**2) / np.sum(SPECTRUM**2)
    for share, rank in HAND_RANKS.items():
        assert energy[rank - 1] >= share > (energy[rank - 2] if rank > 1 else 0)


@pytest.mark.parametrize("share", sorted(HAND_RANKS))
def test_svd_energy_picks_the_hand_computed_rank(tmp_path, share):
    path = tmp_path / "dense.onnx"
    weight, bias = _known_spectrum_model(path)
    # the hand-computed rank itself: no rounding up to a multiple (the default is 8)
    (tmp_path / "pwlint.toml").write_text(
        f"[rules.PW002]\nmax-params = 1000\nsvd-energy = {share}\nrank-multiple-of = 1\n"
    )
    _, report = fix_json(path, "--fix", "--unsafe-fixes")
    (outcome,) = report["files"][0]["fix"]["applied"]
    rank = HAND_RANKS[share]
    assert f"rank {rank}:" in outcome["note"]
    first, second, written_bias = factor_pair(path)
    assert first.shape == (64, rank) and second.shape == (rank, 48)
    # the model now computes x @ W_r + b, W_r the rank-r truncation of W
    expected_error = float(np.sqrt(np.sum(SPECTRUM[rank:] ** 2) / np.sum(SPECTRUM**2)))
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))
    assert reported == pytest.approx(expected_error, rel=6e-3)
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vt[:rank]
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    (y,) = run_onnx(path, {"x": x})
    np.testing.assert_allclose(y, x.astype(np.float64) @ truncated + bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(written_bias, bias, rtol=1e-6)


def test_svd_that_would_not_shrink_the_layer_says_why(tmp_path):
    path = tmp_path / "dense.onnx"
    _known_spectrum_model(path)
    original = path.read_bytes()
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 1000\nsvd-energy = 1.0\n")
    _, report = fix_json(path, "--fix", "--unsafe-fixes")
    fix = report["files"][0]["fix"]
    assert fix["applied"] == []
    (outcome,) = fix["not_applied"]
    assert outcome["code"] == "PW002" and "no smaller" in outcome["note"]
    assert path.read_bytes() == original
    assert codes(report) == ["PW002"]


# the rank rounded up to a hardware-friendly multiple --------------------------------------

# the 64 x 48 layer of _known_spectrum_model: two factors of rank r cost r * (64 + 48)
# weights, fewer than its 64 * 48 = 3072 up to r = 27 (27 * 112 = 3024; 28 * 112 = 3136)
BREAK_EVEN_RANK = 27


def _written_rank(tmp_path, config: str, spectrum=SPECTRUM) -> tuple[int, dict]:
    """The rank of the factors written for the 64 x 48 layer, and the fix's outcome."""
    path = tmp_path / "dense.onnx"
    _known_spectrum_model(path, spectrum=spectrum)
    # the layer has 3120 parameters; its factors (at most 64 x 24) stay under 3000
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 3000\n" + config)
    _, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    first, second, _ = factor_pair(path)
    assert first.shape[1] == second.shape[0]
    return first.shape[1], outcome


@pytest.mark.parametrize("config, rank", [
    ("svd-energy = 0.9\n", 8),  # rank 2 keeps 90% of the energy; rounded up to 8 by default
    ("svd-energy = 0.995\n", 8),  # rank 5
    ("svd-energy = 0.995\nrank-multiple-of = 16\n", 16),
    ("svd-energy = 0.995\nrank-multiple-of = 1\n", 5),
], ids=["default-8", "rank-5-to-8", "to-16", "exact"])
def test_rank_is_rounded_up_to_the_multiple(tmp_path, config, rank):
    written, outcome = _written_rank(tmp_path, config)
    assert written == rank
    assert f"rank {rank}:" in outcome["note"]
    # the extra rank keeps more of the spectrum: the error is that of the rounded rank
    expected_error = float(np.sqrt(np.sum(SPECTRUM[rank:] ** 2) / np.sum(SPECTRUM**2)))
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))
    assert reported == pytest.approx(expected_error, rel=6e-3)


FLAT = np.ones(48)  # every rank keeps k/48 of the energy: 41% needs rank 20


@pytest.mark.parametrize("multiple, rank", [(8, 24), (16, 20), (32, 20)])
def test_rank_is_never_rounded_past_break_even(tmp_path, multiple, rank):
    """Rank 20 rounds to 24 with a multiple of 8; to 32 with 16 or 32, which would cost
    more than the layer (32 > 27), so the rank stays 20."""
    written, _ = _written_rank(tmp_path, f"svd-energy = 0.41\nrank-multiple-of = {multiple}\n", FLAT)
    assert written == rank <= BREAK_EVEN_RANK


def test_target_params_is_never_rounded_past(tmp_path):
    """svd-target-params is a ceiling: 608 = 5 * 112 + 48 (the bias) fits rank 5, and
    rounding up to 8 would cost 944."""
    written, _ = _written_rank(tmp_path, "svd-target-params = 608\n")
    assert written == 5


def test_a_factor_is_not_factorised_again_in_the_same_run(tmp_path):
    """PW002's second factor (8 x 256 = 2048 weights) is itself over a max-params of 2000,
    and its own spectrum could be cut again: one run applies the fix once, leaves the
    factor's finding, and says why; factorising factors compounds the approximation."""
    rng = np.random.default_rng(3)
    rows, cols = 96, 256
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, rows)))
    weight = (u * 0.85 ** np.arange(rows)) @ v.T  # a decaying spectrum, as trained layers have
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="dense")], "decaying",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    path = tmp_path / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 2000\n")
    _, report = fix_json(path, "--fix", "--unsafe-fixes")
    fix = report["files"][0]["fix"]
    assert [o["code"] for o in fix["applied"]] == ["PW002"]
    assert "rank 8:" in fix["applied"][0]["note"]
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["MatMul", "MatMul"]
    (again,) = [o for o in fix["not_applied"] if o["code"] == "PW002"]
    assert "written by this rule's own fix in this run" in again["note"]


@pytest.mark.parametrize("shape", [(600, 800), (800, 600)])
def test_large_layers_take_the_gram_route_to_the_same_truncation(shape):
    """From GRAM_FROM rows and columns on, singular values come from the Gram matrix: the
    spectrum and the rank-r truncation are those of an SVD (a known spectrum, both shapes)."""
    from pwlint.fix.lowrank import GRAM_FROM, singular

    assert min(shape) >= GRAM_FROM
    rng = np.random.default_rng(5)
    k = min(shape)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], k)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], k)))
    spectrum = 0.97 ** np.arange(k)
    weight = (u * spectrum) @ v.T
    values, leading = singular(weight)
    assert np.allclose(values, spectrum, atol=1e-7)
    left, right = leading(40)
    truncated = (u[:, :40] * spectrum[:40]) @ v[:, :40].T
    assert np.allclose((left * values[:40]) @ right, truncated, atol=1e-7)
