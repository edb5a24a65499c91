"""ONNX Conv layers rewritten from smaller convs (PW002 on a conv, PW005).

- :func:`factorise_matrix` (``factorise-dense`` on a conv): the kernel read as the
  ``[Cin*K, Cout]`` matrix of a dense layer (rows in ``(Cin, *K)`` order) is split by
  :func:`pwlint.fix.lowrank.factorise`; the first factor becomes a conv ``Cin -> r`` with the
  original window, stride, padding and dilation, the second a 1x1 conv ``r -> Cout`` with
  the bias. For a 1x1 conv that is a pointwise bottleneck.
- :func:`split_conv` (``tucker2-conv`` / ``separable-conv``): the layers of
  :func:`pwlint.fix.convsplit.tucker2` or :func:`~pwlint.fix.convsplit.separable`.

Each reads and checks everything, computes the new weights, and only then edits the
model. The last conv written keeps the layer's output tensor, so its readers and the
model's outputs are untouched; the reported error is measured from the weights as
written (cast to the layer's dtype).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pwlint.fix import convsplit
from pwlint.fix.actions import ConvFactorised, Factorised
from pwlint.fix.lowrank import as_written, factorise
from pwlint.fix.plans import ConvFactorisePlan, FactorisePlan
from pwlint.formats.onnx.edit import Editor
from pwlint.formats.onnx.fix_read import conv_node, read_conv
from pwlint.ir import Layer


def _pointwise_kernel(matrix: np.ndarray, spatial: int) -> np.ndarray:
    """An ``(out, in)`` matrix as a 1x1 conv kernel ``(out, in, 1, ...)``."""
    return matrix.reshape(*matrix.shape, *([1] * spatial))


def factorise_matrix(editor: Editor, layer: Layer, plan: FactorisePlan) -> Factorised:
    """Split the conv ``layer`` in two by truncated SVD (see the module docstring)."""
    conv = read_conv(editor, layer, "factorising")
    cout, cin, *window = conv.weight.shape
    matrix = conv.weight.reshape(cout, -1).T  # [Cin*K, Cout], rows in (Cin, *K) order
    low = factorise(matrix, plan)
    rank, dtype = low.rank, conv.dtype
    # the factors as stored; the reported error is measured from these
    first, second = low.first.astype(dtype), low.second.astype(dtype)
    low = as_written(low, matrix, first, second)
    middle = editor.fresh(f"{conv.output}_low_rank")
    nodes = [
        conv_node(editor, editor.fresh(f"{layer.name}_u"), conv.data_input, middle,
                  first.T.reshape(rank, cin, *window), None, dtype, conv.placement),
        conv_node(editor, editor.fresh(f"{layer.name}_v"), middle, conv.output,
                  _pointwise_kernel(second.T, len(window)), conv.bias, dtype),
    ]
    editor.replace_nodes([conv.node], nodes)
    editor.remove_dead()
    return Factorised(cin * int(np.prod(window)), cout, low)


def split_conv(editor: Editor, layer: Layer, plan: ConvFactorisePlan) -> ConvFactorised:
    """Rewrite the KxK conv ``layer`` as Tucker-2 (pointwise, KxK core, pointwise) or as
    depthwise + pointwise, by ``plan.method``."""
    conv = read_conv(editor, layer, "a Tucker-2 or separable split")
    kernel = np.asarray(conv.weight, np.float64)
    cout, cin, *window = kernel.shape
    spatial, dtype = len(window), conv.dtype
    if plan.method == "separable":
        split = convsplit.separable(kernel)
        depthwise, pointwise = split.depthwise.astype(dtype), split.pointwise.astype(dtype)
        split = replace(split, error=convsplit.relative_error(kernel, convsplit.separable_kernel(depthwise, pointwise)))
        middle = editor.fresh(f"{conv.output}_depthwise")
        nodes = [
            conv_node(editor, editor.fresh(f"{layer.name}_dw"), conv.data_input, middle,
                      depthwise.reshape(cin, 1, *window), None, dtype, conv.placement, group=cin),
            conv_node(editor, editor.fresh(f"{layer.name}_pw"), middle, conv.output,
                      _pointwise_kernel(pointwise, spatial), conv.bias, dtype),
        ]
    else:
        split = convsplit.tucker2(kernel, plan)
        first, core, last = (a.astype(dtype) for a in (split.first, split.core, split.last))
        split = replace(split, error=convsplit.relative_error(kernel, convsplit.tucker2_kernel(first, core, last)))
        reduced, mixed = editor.fresh(f"{conv.output}_reduced"), editor.fresh(f"{conv.output}_core")
        nodes = [
            conv_node(editor, editor.fresh(f"{layer.name}_reduce"), conv.data_input, reduced,
                      _pointwise_kernel(first, spatial), None, dtype),
            conv_node(editor, editor.fresh(f"{layer.name}_core"), reduced, mixed, core, None, dtype, conv.placement),
            conv_node(editor, editor.fresh(f"{layer.name}_restore"), mixed, conv.output,
                      _pointwise_kernel(last, spatial), conv.bias, dtype),
        ]
    editor.replace_nodes([conv.node], nodes)
    editor.remove_dead()
    return ConvFactorised(cout, cin, tuple(window), split)
