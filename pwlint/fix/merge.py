"""Two linear layers merged into one, shared by every backend (PW006's fix).

Format-neutral: numpy in, numpy out. Weights in ``(out, in, *K)`` order (ONNX and torch
convs; a dense layer is ``(out, in)``: a backend transposes ``[in, out]`` matrices and
Keras ``(*K, in, out)`` kernels). ``second`` is applied to every position of what
``first`` writes, so it must be a dense layer or a pointwise (1x1) conv: then

    second(first(x)) = W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)

exactly, for any kernel size, stride, padding or dilation of ``first``. A BatchNorm in
eval form between them, ``y = scale * x + shift`` per channel, is folded into ``first``
before the merge.
"""

from __future__ import annotations

import numpy as np


def norm_affine(gamma, beta, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` of a BatchNorm in eval form: ``gamma (x - mean) / sqrt(var + eps) + beta``."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return scale, np.asarray(beta, np.float64) - scale * np.asarray(mean, np.float64)


def fold_affine(weight: np.ndarray, bias: np.ndarray | None, scale, shift) -> tuple[np.ndarray, np.ndarray]:
    """``first`` followed by ``y = scale * x + shift`` (per output channel) as one layer."""
    weight = np.asarray(weight, np.float64)
    scale = np.asarray(scale, np.float64)
    bias = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    return weight * scale.reshape(-1, *([1] * (weight.ndim - 1))), bias * scale + np.asarray(shift, np.float64)


def merge_linear(first_weight: np.ndarray, first_bias: np.ndarray | None,
                 second_weight: np.ndarray, second_bias: np.ndarray | None,
                 affine: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``(weight, bias)`` of one layer computing ``second(affine(first(x)))``:
    ``first_weight`` is ``(mid, in, *K)``, ``second_weight`` ``(out, mid)`` (a pointwise
    conv's ``(out, mid, 1, 1)`` is accepted too); the result is ``(out, in, *K)``, float64."""
    weight, bias = np.asarray(first_weight, np.float64), first_bias
    if affine is not None:
        weight, bias = fold_affine(weight, bias, *affine)
    bias = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    second = np.asarray(second_weight, np.float64)
    second = second.reshape(second.shape[0], second.shape[1])
    merged = np.tensordot(second, weight, axes=(1, 0))
    merged_bias = second @ bias
    if second_bias is not None:
        merged_bias = merged_bias + np.asarray(second_bias, np.float64)
    return merged, merged_bias


def merged_params(first_shape: tuple[int, ...], second_out: int) -> int:
    """Parameters of the merged layer (weights and a bias) for ``first``'s ``(mid, in, *K)``."""
    window = int(np.prod(first_shape[2:])) if len(first_shape) > 2 else 1
    return second_out * first_shape[1] * window + second_out
