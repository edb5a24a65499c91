"""Keras convolutions rewritten from pointwise (1x1) convolutions: PW002's low-rank split
of a conv (``factorise-dense`` on a ``ConvND``) and PW005's Tucker-2 and separable
rewrites (``tucker2-conv``, ``separable-conv``). The arithmetic is shared
(:mod:`pwlint.fix.lowrank`, :mod:`pwlint.fix.convsplit`); this module maps kernels
between Keras' ``(*K, Cin, Cout)`` and the shared ``(Cout, Cin, *K)`` order, writes the
new layers' config entries where the conv was, and records their weights on the
:class:`~pwlint.formats.keras.fixes.ModelEdit`.

The layer that keeps the conv's geometry (kernel size, strides, padding, dilation, data
format) is the first factor, the Tucker-2 core or the depthwise conv; the others are
``ConvND`` with a 1x1 kernel. The last layer carries the bias and the activation. The
separable rewrite writes ``DepthwiseConv1D/2D`` (a 3-D conv becomes ``Conv3D`` with
``groups=Cin``, Keras having no ``DepthwiseConv3D``) then a 1x1 conv, not a
``SeparableConvND``, so that the error is the shared maths' own.

Every error reported is measured from the kernels as stored (in the layer's dtype,
read back into the shared order), not taken from the decomposition before writing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import ConvFactorised, Factorised
from pwlint.fix.convsplit import relative_error, separable, separable_kernel, tucker2, tucker2_kernel
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan
from pwlint.formats.keras.fix_layers import (
    BIAS_KEYS, KERNEL_KEYS, ConvSpec, called_once, entry_name, new_layer, pointwise_kernel, replace_by_chain, take_keys,
    to_keras, to_shared, weight_at,
)

if TYPE_CHECKING:
    from pwlint.formats.keras.fixes import ModelEdit


class _Conv:
    """One conv of the model, read and checked: its entry, spec, kernel and bias."""

    def __init__(self, edit: ModelEdit, lint_name: str) -> None:
        self.edit = edit
        self.container, (self.name,) = edit.locate([lint_name])
        self.entry = self.container.entry(self.name)
        self.config = self.entry["config"]
        self.spec = ConvSpec.of(lint_name, self.entry)
        if self.spec.groups != 1:
            raise FixNotApplicable(f"'{lint_name}' is a grouped conv ({self.spec.groups} groups)")
        called_once(self.container, self.name, self.entry)
        layer = edit.layer(self.container.prefix + (self.name,))
        values = layer.get_weights()
        self.kernel = values[weight_at(layer, "kernel")]  # (*K, Cin, Cout)
        self.bias = values[weight_at(layer, "bias")] if self.config.get("use_bias", True) else None
        self.shared = to_shared(self.kernel).astype(np.float64)  # (Cout, Cin, *K)
        self.cout, self.cin = self.shared.shape[:2]

    @property
    def dtype(self):
        return self.kernel.dtype

    def conv(self, name: str, filters: int, *, pointwise: bool, last: bool = False, **extra) -> dict:
        """The config entry of a new ``ConvND`` (1x1 with ``pointwise``, else with the
        conv's geometry); ``last`` takes the bias and the activation."""
        geometry = self.spec.pointwise_geometry() if pointwise else self.spec.geometry()
        use_bias = last and self.bias is not None
        layer = new_layer(self.edit, f"Conv{self.spec.rank}D", name, f"a {filters}-filter conv", filters=filters,
                          use_bias=use_bias, **geometry, **extra)
        entry = self.edit.new_entry(layer, self.entry)
        return take_keys(entry, self.config, KERNEL_KEYS + (BIAS_KEYS if last else ()))

    def write(self, entries: list[dict], weights: list[list[np.ndarray]]) -> None:
        """Put the new layers where the conv was and record their weights; the last
        layer's list gets the conv's bias."""
        if self.bias is not None:
            weights[-1] = [*weights[-1], self.bias]
        replace_by_chain(self.container, self.name, entries)
        for entry, values in zip(entries, weights):
            self.edit.weights[self.container.prefix + (entry_name(entry),)] = values

    def fresh(self, suffix: str) -> str:
        return self.edit.fresh(f"{self.name}_{suffix}")


# PW002 on a conv ---------------------------------------------------------------------------

def factorise_conv_matrix(edit: ModelEdit, plan: FactorisePlan) -> Factorised:
    """Split a conv's weight, read as the ``[Cin*K, Cout]`` matrix whose rows are in
    ``(Cin, *K)`` order, by :func:`pwlint.fix.lowrank.factorise`: a conv ``Cin -> r``
    with the original geometry, then a 1x1 conv ``r -> Cout`` with the bias (for a 1x1
    conv: a pointwise bottleneck)."""
    conv = _Conv(edit, plan.dense)
    window = conv.spec.window
    matrix = conv.shared.reshape(conv.cout, -1).T
    low = factorise(matrix, plan)
    rank = low.rank
    first = to_keras(low.first.T.reshape(rank, conv.cin, *window)).astype(conv.dtype)
    second = pointwise_kernel(low.second.T, conv.spec.rank).astype(conv.dtype)
    entries = [conv.conv(conv.fresh("u"), rank, pointwise=False),
               conv.conv(conv.fresh("v"), conv.cout, pointwise=True, last=True)]
    # the reported error is the stored factors', read back into the [Cin*K, r] @ [r, Cout] form
    low = as_written(low, matrix, to_shared(first).reshape(rank, -1).T, to_shared(second).reshape(conv.cout, rank).T)
    conv.write(entries, [[first], [second]])
    return Factorised(*matrix.shape, low)


# PW005 --------------------------------------------------------------------------------------

def split_conv(edit: ModelEdit, plan: ConvFactorisePlan) -> ConvFactorised:
    """Rewrite a KxK conv as Tucker-2 (pointwise, KxK core, pointwise) or as depthwise +
    pointwise, by ``plan.method``."""
    conv = _Conv(edit, plan.conv)
    if plan.method == "tucker2":
        split = _tucker2(conv, plan)
    else:
        split = _separable(conv)
    return ConvFactorised(conv.cout, conv.cin, conv.spec.window, split)


def _tucker2(conv: _Conv, plan: ConvFactorisePlan):
    split = tucker2(conv.shared, plan)
    r1, r2 = split.ranks
    rank = conv.spec.rank
    kernels = [pointwise_kernel(split.first, rank), to_keras(split.core), pointwise_kernel(split.last, rank)]
    kernels = [k.astype(conv.dtype) for k in kernels]
    entries = [conv.conv(conv.fresh("in"), r1, pointwise=True),
               conv.conv(conv.fresh("core"), r2, pointwise=False),
               conv.conv(conv.fresh("out"), conv.cout, pointwise=True, last=True)]
    first, core, last = (to_shared(k) for k in kernels)
    error = relative_error(conv.shared, tucker2_kernel(first.reshape(r1, conv.cin), core, last.reshape(conv.cout, r2)))
    conv.write(entries, [[k] for k in kernels])
    return replace(split, error=error)


def _separable(conv: _Conv):
    split = separable(conv.shared)
    spec, cin = conv.spec, conv.cin
    channels_axis = np.moveaxis(split.depthwise, 0, -1)  # (*K, Cin)
    if spec.rank < 3:
        layer = new_layer(conv.edit, f"DepthwiseConv{spec.rank}D", conv.fresh("dw"), "a depthwise conv",
                          depth_multiplier=1, use_bias=False, **spec.geometry())
        depthwise = conv.edit.new_entry(layer, conv.entry)
        for key in ("trainable", "dtype"):
            if key in conv.config:
                depthwise["config"][key] = conv.config[key]
        stored = channels_axis[..., None]  # (*K, Cin, depth_multiplier=1)
    else:  # no DepthwiseConv3D in Keras: a conv with one group per input channel
        depthwise = conv.conv(conv.fresh("dw"), cin, pointwise=False, groups=cin)
        stored = channels_axis[..., None, :]  # (*K, Cin / groups = 1, Cin)
    stored = stored.astype(conv.dtype)
    pointwise = pointwise_kernel(split.pointwise, spec.rank).astype(conv.dtype)
    entries = [depthwise, conv.conv(conv.fresh("pw"), conv.cout, pointwise=True, last=True)]
    written_depthwise = np.moveaxis(stored.reshape(*spec.window, cin), -1, 0)
    written_pointwise = to_shared(pointwise).reshape(conv.cout, cin)
    error = relative_error(conv.shared, separable_kernel(written_depthwise, written_pointwise))
    conv.write(entries, [[stored], [pointwise]])
    return replace(split, error=error)
