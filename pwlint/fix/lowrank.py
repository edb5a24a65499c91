"""Truncated-SVD factorisation of a dense layer's weights, shared by every fix backend.

Format-neutral: numpy in, numpy out. A backend reads the layer's ``[in, out]``
weight matrix, calls :func:`factorise` and writes the two factors as layers of its
own format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from pwlint.errors import FixNotApplicable
from pwlint.fix.plans import FactorisePlan


def choose_rank(singular: np.ndarray, rows: int, cols: int, plan: FactorisePlan) -> int:
    """The rank a ``factorise-dense`` plan asks for: the largest whose two factors
    (plus the kept bias) fit ``plan.target_params``, else the smallest whose
    singular values hold ``plan.energy`` of the total energy."""
    if plan.target_params:
        rank = (plan.target_params - cols) // (rows + cols)  # the bias stays
        if rank < 1:
            raise FixNotApplicable(f"a target of {plan.target_params} parameters leaves no rank")
        return int(min(rank, len(singular)))
    energy = np.cumsum(singular**2) / np.sum(singular**2)
    return int(np.searchsorted(energy, plan.energy - 1e-12) + 1)


#: from this many rows and columns on, singular values come from the Gram matrix
GRAM_FROM = 512


def singular(weight: np.ndarray) -> tuple[np.ndarray, Callable[[int], tuple[np.ndarray, np.ndarray]]]:
    """All singular values of ``weight`` (descending), and a function giving the leading
    ``r`` left and right singular vectors (``[rows, r]``, ``[r, cols]``).

    From :data:`GRAM_FROM` rows and columns on, by the eigen-decomposition of the smaller
    Gram matrix (``W^T W`` or ``W W^T``): 2.5x faster than an SVD on a 4096x4096 layer and
    more on VGG16's 25088x4096 fc1. Singular values below ~1e-8 of the largest lose their
    precision that way, which changes neither the energy a rank keeps nor the leading
    vectors a low-rank fix writes."""
    rows, cols = weight.shape
    if min(rows, cols) < GRAM_FROM:
        u, s, vt = np.linalg.svd(weight, full_matrices=False)
        return s, lambda r: (u[:, :r], vt[:r])
    tall = rows >= cols
    values, vectors = np.linalg.eigh(weight.T @ weight if tall else weight @ weight.T)
    order = values.argsort()[::-1]
    s = np.sqrt(np.clip(values[order], 0.0, None))
    vectors = vectors[:, order]

    def leading(r: int) -> tuple[np.ndarray, np.ndarray]:
        scale = np.maximum(s[:r], np.finfo(np.float64).tiny)
        if tall:
            return (weight @ vectors[:, :r]) / scale, vectors[:, :r].T
        return vectors[:, :r], (vectors[:, :r].T @ weight) / scale[:, None]

    return s, leading


def round_rank(rank: int, multiple_of: int, most: int, below_break_even: Callable[[int], bool]) -> int:
    """``rank`` rounded up to a multiple of ``multiple_of`` (accelerators pad channel
    counts to such multiples, so the extra rank costs little and buys accuracy), when that
    stays at most ``most`` and ``below_break_even``; else ``rank`` as it is."""
    if multiple_of <= 1:
        return rank
    rounded = -(-rank // multiple_of) * multiple_of
    return rounded if rounded <= most and below_break_even(rounded) else rank


@dataclass
class LowRank:
    """``weight ~= first @ second``: ``first`` is [in, rank], ``second`` [rank, out]
    (float64; the caller casts to the layer's dtype)."""

    first: np.ndarray
    second: np.ndarray
    rank: int
    #: ||W - first @ second|| / ||W|| (Frobenius)
    error: float


def factorise(weight: np.ndarray, plan: FactorisePlan) -> LowRank:
    """Split an ``[in, out]`` weight matrix by truncated SVD at the plan's rank, the
    singular values shared evenly between the factors. Raises FixNotApplicable when
    two factors of that rank would be no smaller than the matrix."""
    rows, cols = weight.shape
    s, leading = singular(np.asarray(weight, np.float64))
    rank = choose_rank(s, rows, cols, plan)
    if rank * (rows + cols) >= rows * cols:
        raise FixNotApplicable(
            f"rank {rank} is needed for the requested accuracy, and two factors of that rank "
            f"are no smaller than the {rows}x{cols} layer"
        )
    if not plan.target_params:  # a parameter budget is a ceiling: never round past it
        rank = round_rank(rank, plan.multiple_of, len(s), lambda r: r * (rows + cols) < rows * cols)
    root = np.sqrt(s[:rank])
    u, vt = leading(rank)
    first = u * root
    second = root[:, None] * vt
    return LowRank(first, second, rank, relative_error(weight, first, second))


def relative_error(weight: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """``||weight - first @ second|| / ||weight||`` (Frobenius), in float64."""
    weight = np.asarray(weight, np.float64)
    product = np.asarray(first, np.float64) @ np.asarray(second, np.float64)
    return float(np.linalg.norm(weight - product) / max(np.linalg.norm(weight), 1e-30))


def as_written(low: LowRank, weight: np.ndarray, first: np.ndarray, second: np.ndarray) -> LowRank:
    """``low`` with its error measured from the factors a backend actually stored (cast to
    the layer's dtype, in the format's layout turned back to ``[in, rank] @ [rank, out]``),
    so that the reported error is the model's, not the SVD's before writing."""
    return replace(low, error=relative_error(weight, first, second))


def factorised_note(name: str, rows: int, cols: int, low: LowRank) -> str:
    """The one-line note every backend gives for a factorised layer."""
    return (
        f"'{name}' factorised at rank {low.rank}: {rows * cols} -> {low.rank * (rows + cols)} weights, "
        f"relative weight error {low.error:.3g}"
    )
