"""The arithmetic of PW001's head rewrites, shared by every fix backend.

Format-neutral: numpy in, numpy out. A dense layer is ``y = x @ weight + bias`` with
``weight`` of shape ``[in, out]``; conv kernels come back as ``[out, in, *kernel]``
(ONNX and torch order; Keras moves the axes to ``[*kernel, in, out]`` itself).

- **convolutionalise** (exact): row ``i`` of the first dense layer's weights reads
  element ``i`` of the flattened map, so reshaping the rows to the map's shape in the
  flatten's order, ``(C, *positions)`` channels first or ``(*positions, C)`` channels
  last, gives a conv kernel covering the whole map; the later dense layers are 1x1 convs.
- **global pool + pointwise** (exact only on a spatially constant map): for a map that
  is the same at every position, ``sum_p W[c, p] * x[c] = (sum_p W[c, p]) * x[c]`` and
  the mean over positions is ``x[c]``, so a 1x1 conv after global average pooling with
  the kernel summed over the positions gives the same outputs.
"""

from __future__ import annotations

from math import prod

import numpy as np

from pwlint.errors import FixNotApplicable


def dense_terms(weight: np.ndarray, bias: np.ndarray | None, name: str, alpha: float = 1.0,
                beta: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """``alpha * (x @ weight) + beta * bias`` (a Gemm, an addmm) as plain ``x @ weight' +
    bias'``, the bias broadcast to one value per unit. ``weight`` is ``[in, out]``."""
    if alpha != 1.0:
        weight = weight * alpha
    if bias is None:
        return weight, None
    bias = np.asarray(bias)
    if beta != 1.0:
        bias = bias * beta
    units = weight.shape[1]
    if bias.size not in (1, units):
        raise FixNotApplicable(f"the bias of '{name}' does not broadcast per unit")
    return weight, np.broadcast_to(bias.reshape(-1), (units,)).copy()


def conv_kernel(weight: np.ndarray, channels: int, positions, order) -> np.ndarray:
    """The first dense layer's ``[in, out]`` weights as a conv kernel ``[out, C,
    *positions]`` over the map it reads, for a flatten that reads the ``(C, *positions)``
    map's axes in ``order`` (see :func:`pwlint.fix.plans.flatten_order`: channels last, the rows are
    ``(*positions, C)``; channels first, ``(C, *positions)``). A view of ``weight``: a
    100M-parameter layer is not copied."""
    shape = (channels, *positions)
    if weight.shape[0] != prod(shape):
        raise FixNotApplicable("the dense layer's inputs do not match the flattened map")
    order = tuple(order)
    read = weight.T.reshape(weight.shape[1], *(shape[axis] for axis in order))
    return read.transpose(0, *(1 + order.index(axis) for axis in range(len(shape))))


def pooled_kernel(kernel: np.ndarray) -> np.ndarray:
    """A ``[out, C, *positions]`` kernel summed over the positions, ``[out, C, 1, ...]``:
    the 1x1 conv that, after global average pooling, matches the full kernel on a
    spatially constant map. Summed in float64, returned in the kernel's dtype."""
    spatial = tuple(range(2, kernel.ndim))
    return kernel.sum(axis=spatial, keepdims=True, dtype=np.float64).astype(kernel.dtype)


def pointwise_kernel(weight: np.ndarray, spatial: int) -> np.ndarray:
    """A later dense layer's ``[in, out]`` weights as a 1x1 conv kernel ``[out, in, 1, ...]``."""
    return weight.T.reshape(*weight.T.shape, *[1] * spatial)


def head_kernels(weights: list[np.ndarray], channels: int, positions, order, pool: bool) -> list[np.ndarray]:
    """The conv kernels ``[out, in, *kernel]`` that replace a head's dense layers
    (``weights``, each ``[in, out]``, first to last): the first covers the map read in
    ``order`` (summed to 1x1 with ``pool``), the others are 1x1."""
    first = conv_kernel(weights[0], channels, positions, order)
    if pool:
        first = pooled_kernel(first)
    return [first, *(pointwise_kernel(w, len(tuple(positions))) for w in weights[1:])]
