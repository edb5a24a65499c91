"""The shared KxK-conv split maths (pwlint/fix/convsplit.py) every backend uses for PW005:
Tucker-2 by higher-order SVD and depthwise-separable by rank-1 splits, checked against
kernels whose structure is known, and against the rule's cost figures."""

from __future__ import annotations

import numpy as np
import pytest

from pwlint.errors import FixNotApplicable
from pwlint.fix import convsplit
from pwlint.fix.plans import ConvFactorisePlan
from pwlint_rules.heavy_conv import ConvShape


def tucker_kernel(cout, cin, k, r1, r2, seed=0) -> np.ndarray:
    """A ``(cout, cin, k, k)`` kernel of exact multilinear ranks ``r2`` (output channels)
    and ``r1`` (input channels)."""
    rng = np.random.default_rng(seed)
    return np.einsum("or,rs...,si->oi...", rng.standard_normal((cout, r2)),
                     rng.standard_normal((r2, r1, k, k)), rng.standard_normal((r1, cin)))


def random_kernel(cout, cin, k, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((cout, cin, k, k))


def test_costs_by_hand():
    """VGG16's 512 -> 512 3x3: 2,359,296 weights; depthwise + pointwise 4,608 + 262,144;
    Tucker-2 at ranks 128: 65,536 + 147,456 + 65,536."""
    assert convsplit.conv_params(512, 512, 9) == 2_359_296
    assert convsplit.separable_params(512, 512, 9) == 266_752
    assert convsplit.tucker2_params(512, 512, 9, 128, 128) == 278_528


@pytest.mark.parametrize("cout, cin, k, r1, r2", [(512, 512, 3, 128, 128), (200, 300, 5, 80, 56), (64, 3, 7, 8, 16)])
def test_rule_prices_the_rewrites_as_the_fix_writes_them(cout, cin, k, r1, r2):
    """PW005's message (no numpy at lint time) and the shared maths agree on weights."""
    shape = ConvShape(cin, cout, (k, k), positions_in=None, positions_out=None)
    assert shape.conv()[0] == convsplit.conv_params(cout, cin, k * k)
    assert shape.separable()[0] == convsplit.separable_params(cout, cin, k * k)
    assert shape.tucker2(r1, r2)[0] == convsplit.tucker2_params(cout, cin, k * k, r1, r2)


def test_tucker2_of_an_exactly_low_rank_kernel_is_exact():
    kernel = tucker_kernel(64, 48, 3, r1=8, r2=8)
    split = convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.999))
    assert split.ranks == (8, 8)
    assert split.error < 1e-10
    assert split.first.shape == (8, 48) and split.core.shape == (8, 8, 3, 3) and split.last.shape == (64, 8)
    rebuilt = convsplit.tucker2_kernel(split.first, split.core, split.last)
    np.testing.assert_allclose(rebuilt, kernel, atol=1e-9 * np.abs(kernel).max())


def test_tucker2_ranks_are_rounded_up_to_the_multiple():
    """Exact ranks 5 and 6: rounded up to 8 by default, kept with multiple_of=1."""
    kernel = tucker_kernel(64, 48, 3, r1=5, r2=6)
    assert convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.999)).ranks == (8, 8)
    assert convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.999, multiple_of=1)).ranks == (5, 6)
    assert convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.999, multiple_of=16)).ranks == (16, 16)


def test_tucker2_error_falls_as_energy_grows():
    kernel = random_kernel(64, 64, 3)
    errors, ranks = [], []
    for energy in (0.3, 0.5, 0.7):
        split = convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=energy, multiple_of=1))
        errors.append(split.error)
        ranks.append(split.ranks)
        # the error reported is the kernel's, recomputed from the three factors
        rebuilt = convsplit.tucker2_kernel(split.first, split.core, split.last)
        assert split.error == pytest.approx(np.linalg.norm(kernel - rebuilt) / np.linalg.norm(kernel))
    assert errors[0] > errors[1] > errors[2] > 0
    assert ranks[0] < ranks[1] < ranks[2]


def test_tucker2_at_or_above_break_even_is_refused():
    """A random 32 -> 32 3x3 kernel needs nearly full ranks for 99% of the energy: three
    layers of those ranks would not be smaller than the conv."""
    kernel = random_kernel(32, 32, 3)
    with pytest.raises(FixNotApplicable, match="no smaller"):
        convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.99))


def test_tucker2_rounding_never_reaches_break_even():
    """64 -> 64 3x3: 36,864 weights. Exact ranks 50 cost 128 * 50 + 9 * 50^2 = 28,900;
    rounding both to 64 would cost 45,056, over break-even, so at most one is rounded."""
    kernel = tucker_kernel(64, 64, 3, r1=50, r2=50)
    split = convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.9999, multiple_of=16))
    r1, r2 = split.ranks
    assert {r1, r2} <= {50, 64} and (r1, r2) != (64, 64)
    assert convsplit.tucker2_params(64, 64, 9, r1, r2) < convsplit.conv_params(64, 64, 9)
    assert split.error < 1e-9


def test_separable_of_a_separable_kernel_is_exact():
    rng = np.random.default_rng(3)
    depthwise, pointwise = rng.standard_normal((16, 3, 3)), rng.standard_normal((32, 16))
    kernel = np.einsum("oi,ikl->oikl", pointwise, depthwise)
    split = convsplit.separable(kernel)
    assert split.depthwise.shape == (16, 3, 3) and split.pointwise.shape == (32, 16)
    assert split.error < 1e-10
    np.testing.assert_allclose(convsplit.separable_kernel(split.depthwise, split.pointwise), kernel, atol=1e-9)


def test_separable_is_the_best_rank_one_split_per_input_channel():
    """The error of each input channel's slice is what its singular values beyond the
    first hold: the split cannot do better."""
    kernel = random_kernel(24, 8, 3, seed=5)
    split = convsplit.separable(kernel)
    rest = sum(np.sum(np.linalg.svd(kernel[:, i].reshape(24, 9), compute_uv=False)[1:] ** 2) for i in range(8))
    assert split.error == pytest.approx(np.sqrt(rest / np.sum(kernel**2)))


def test_separable_no_smaller_is_refused():
    """One output channel: depthwise (Cin x 9) + pointwise (1 x Cin) > the 1 x Cin x 9 kernel."""
    with pytest.raises(FixNotApplicable, match="no smaller"):
        convsplit.separable(random_kernel(1, 16, 3))


def test_note_gives_both_sizes_and_asks_for_fine_tuning():
    from pwlint.fix.actions import ConvFactorised

    kernel = tucker_kernel(64, 48, 3, r1=8, r2=8)
    split = convsplit.tucker2(kernel, ConvFactorisePlan(conv="c", energy=0.999))
    note = convsplit.conv_split_note("conv5", ConvFactorised(64, 48, (3, 3), split))
    assert f"{64 * 48 * 9} -> {8 * 48 + 8 * 8 * 9 + 64 * 8} weights" in note
    assert "pointwise 48->8, 3x3 8->8, pointwise 8->64" in note and "fine-tune" in note
