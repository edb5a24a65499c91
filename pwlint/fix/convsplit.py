"""A KxK convolution rewritten from pointwise (1x1) convolutions, shared by every backend.

Format-neutral: numpy in, numpy out, kernels in ``(Cout, Cin, *K)`` order (ONNX and
torch; a Keras backend transposes its ``(*K, Cin, Cout)`` kernels). The bias is not
touched: a backend puts it on the last layer it writes.

- :func:`tucker2`: pointwise ``Cin -> R1``, ``KxK R1 -> R2``, pointwise ``R2 -> Cout``, the
  Tucker-2 decomposition of the kernel by higher-order SVD (Kim et al. 2016, "Compression
  of deep convolutional neural networks for fast and low power mobile applications").
- :func:`separable`: depthwise ``KxK`` then pointwise ``Cin -> Cout`` (the MobileNet
  block), each input channel's ``Cout x K*K`` slice split by its best rank-1 factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from pwlint.errors import FixNotApplicable
from pwlint.fix.lowrank import round_rank
from pwlint.fix.plans import ConvFactorisePlan


@dataclass
class Tucker2:
    """``kernel ~= core x_0 last x_1 first.T``: ``first`` is ``(R1, Cin)`` (the first
    pointwise conv), ``core`` ``(R2, R1, *K)``, ``last`` ``(Cout, R2)`` (float64)."""

    first: np.ndarray
    core: np.ndarray
    last: np.ndarray
    #: relative Frobenius error of the kernel the three layers compute
    error: float

    @property
    def ranks(self) -> tuple[int, int]:
        return self.first.shape[0], self.last.shape[1]


@dataclass
class Separable:
    """``kernel[o, i] ~= pointwise[o, i] * depthwise[i]``: ``depthwise`` is ``(Cin, *K)``,
    ``pointwise`` ``(Cout, Cin)`` (float64)."""

    depthwise: np.ndarray
    pointwise: np.ndarray
    error: float


def conv_params(cout: int, cin: int, window: int) -> int:
    """Weights of a ``cin -> cout`` conv whose kernel has ``window`` positions."""
    return cout * cin * window


def tucker2_params(cout: int, cin: int, window: int, r1: int, r2: int) -> int:
    """Weights of the three layers :func:`tucker2` writes at ranks ``(r1, r2)``."""
    return r1 * cin + r2 * r1 * window + cout * r2


def separable_params(cout: int, cin: int, window: int) -> int:
    """Weights of the depthwise + pointwise pair :func:`separable` writes."""
    return cin * window + cout * cin


def _energy_rank(singular: np.ndarray, energy: float) -> int:
    share = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-300)
    return int(min(np.searchsorted(share, energy - 1e-12) + 1, len(singular)))


def _leading(unfolded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left singular vectors and singular values of an unfolding."""
    u, s, _ = np.linalg.svd(unfolded, full_matrices=False)
    return u, s


def relative_error(kernel: np.ndarray, approx: np.ndarray) -> float:
    kernel = np.asarray(kernel, np.float64)
    return float(np.linalg.norm(kernel - approx) / max(np.linalg.norm(kernel), 1e-30))


def tucker2_kernel(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The ``(Cout, Cin, *K)`` kernel the three layers compute together."""
    # optimize: contracted pairwise (BLAS), not as one 5-deep loop (minutes for a 512x512x3x3 kernel)
    return np.einsum("or,rs...,si->oi...", np.asarray(last, np.float64), np.asarray(core, np.float64),
                     np.asarray(first, np.float64), optimize=True)


def tucker2(kernel: np.ndarray, plan: ConvFactorisePlan) -> Tucker2:
    """Tucker-2 of ``kernel`` by HOSVD: the smallest ranks whose output- and input-channel
    unfoldings each keep ``plan.energy`` of their singular-value energy, rounded up to
    ``plan.multiple_of`` while that stays below break-even. Raises FixNotApplicable when
    the three layers would be no smaller than the conv."""
    kernel = np.asarray(kernel, np.float64)
    cout, cin, *window = kernel.shape
    positions = prod(window)
    u_out, s_out = _leading(kernel.reshape(cout, -1))
    u_in, s_in = _leading(np.moveaxis(kernel, 1, 0).reshape(cin, -1))
    r2, r1 = _energy_rank(s_out, plan.energy), _energy_rank(s_in, plan.energy)
    whole = conv_params(cout, cin, positions)
    if tucker2_params(cout, cin, positions, r1, r2) >= whole:
        raise FixNotApplicable(
            f"ranks {r1} and {r2} are needed to keep {plan.energy:.0%} of the energy, and three layers of those "
            f"ranks are no smaller than the {cout}x{cin}x{'x'.join(map(str, window))} conv"
        )
    r1 = round_rank(r1, plan.multiple_of, len(s_in), lambda r: tucker2_params(cout, cin, positions, r, r2) < whole)
    r2 = round_rank(r2, plan.multiple_of, len(s_out), lambda r: tucker2_params(cout, cin, positions, r1, r) < whole)
    last, first = u_out[:, :r2], u_in[:, :r1].T
    core = np.einsum("or,oi...,si->rs...", last, kernel, first, optimize=True)  # kernel x_0 last.T x_1 first
    return Tucker2(first, core, last, relative_error(kernel, tucker2_kernel(first, core, last)))


def separable_kernel(depthwise: np.ndarray, pointwise: np.ndarray) -> np.ndarray:
    """The ``(Cout, Cin, *K)`` kernel depthwise then pointwise compute together."""
    return np.einsum("oi,i...->oi...", np.asarray(pointwise, np.float64), np.asarray(depthwise, np.float64))


def separable(kernel: np.ndarray) -> Separable:
    """Depthwise + pointwise from ``kernel``: for each input channel ``i`` the best rank-1
    split (leading singular pair, singular value shared evenly) of its ``Cout x K*K``
    slice. Raises FixNotApplicable when the pair would be no smaller than the conv."""
    kernel = np.asarray(kernel, np.float64)
    cout, cin, *window = kernel.shape
    positions = prod(window)
    if separable_params(cout, cin, positions) >= conv_params(cout, cin, positions):
        raise FixNotApplicable(
            f"a depthwise + pointwise pair is no smaller than the {cout}x{cin}x{'x'.join(map(str, window))} conv"
        )
    depthwise = np.empty((cin, positions))
    pointwise = np.empty((cout, cin))
    for i in range(cin):
        u, s, vt = np.linalg.svd(kernel[:, i].reshape(cout, positions), full_matrices=False)
        root = np.sqrt(s[0])
        pointwise[:, i], depthwise[i] = u[:, 0] * root, vt[0] * root
    depthwise = depthwise.reshape(cin, *window)
    return Separable(depthwise, pointwise, relative_error(kernel, separable_kernel(depthwise, pointwise)))


def conv_split_note(name: str, done) -> str:
    """The one-line note every backend gives for a factorised conv (``done`` is
    :class:`pwlint.fix.actions.ConvFactorised`)."""
    window = prod(done.window)
    before = conv_params(done.cout, done.cin, window)
    split = done.split
    if isinstance(split, Tucker2):
        r1, r2 = split.ranks
        after = tucker2_params(done.cout, done.cin, window, r1, r2)
        how = f"pointwise {done.cin}->{r1}, {'x'.join(map(str, done.window))} {r1}->{r2}, pointwise {r2}->{done.cout} (Tucker-2)"
    else:
        after = separable_params(done.cout, done.cin, window)
        how = f"depthwise {'x'.join(map(str, done.window))} + pointwise {done.cin}->{done.cout}"
    return (f"'{name}' rewritten as {how}: {before} -> {after} weights, "
            f"relative kernel error {split.error:.3g}; fine-tune the model afterwards")
