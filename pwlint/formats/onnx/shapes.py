"""Tensor shapes without onnx: the file's own, then propagated through the nodes.

:func:`propagate` starts from what :mod:`pwlint.formats.onnx.read` recorded (graph
inputs and outputs, ``value_info``, initializer and Constant dims) and walks the
nodes in file order, twice at most (a file whose nodes are out of order), giving
each operator below its output shapes where its inputs' shapes allow. It also
tracks the values of small integer tensors (``Shape`` -> ``Gather`` ->
``Unsqueeze`` -> ``Concat`` -> ``Reshape``, as dynamo exports write a flatten), so
a Reshape's target is known when it is computed from shapes. A shape the file
states is never replaced; an unknown dim is ``None``.

Operators: Conv, ConvTranspose, ConvInteger, QLinearConv; MaxPool, AveragePool,
LpPool (pads, auto_pad, strides, dilations, ceil_mode), the global pools; Gemm,
MatMul, MatMulInteger, QLinearMatMul; Flatten, Reshape, Squeeze, Unsqueeze,
Transpose, Concat, Split, Slice, Pad, Resize, Upsample, Expand, Tile,
ConstantOfShape, Shape, Size, Gather; elementwise operators with broadcasting,
activations, normalisations, Dropout, Cast, Identity, (De)QuantizeLinear; the
reductions and ArgMax/ArgMin; onnxruntime's quantized contrib operators
(:mod:`pwlint.formats.onnx.contrib_shapes`).

When onnx's inference runs (:func:`missing_shapes`): only when a shape the rules
read is still unknown after propagation, i.e. for a node that makes a layer the
rules judge by its shapes (Conv/ConvTranspose and their quantized forms,
Gemm/MatMul and theirs, pooling, Flatten/Reshape/Squeeze) in the main graph,
its data input or first output

- has no known rank at all, or
- has an unknown dim after the first (batch) one while every graph input of the
  main graph has all its dims but the first known (the model is static, so
  onnx could know that dim).

Then ``onnx.shape_inference`` (which imports onnx) runs on the whole model and
fills in only the shapes and dims still unknown.
"""

from __future__ import annotations

from math import ceil, floor, prod

from pwlint.limits import MAX_DIM, MAX_RANK
from pwlint.formats.onnx.contrib_shapes import CONTRIB
from pwlint.formats.onnx.contrib_shapes import _output as contrib_output

Shape = tuple  # of int | None

SAME_AS_INPUT = frozenset({
    "Identity", "Cast", "CastLike", "Dropout", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid",
    "HardSwish", "Gelu", "Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Round", "Not",
    "Sign", "Elu", "Selu", "Celu", "Mish", "Softplus", "Softsign", "ThresholdedRelu", "Clip", "Softmax",
    "LogSoftmax", "Hardmax", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "LpNormalization", "LRN", "MeanVarianceNormalization", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "IsNaN", "IsInf", "Trilu", "CumSum", "Sin", "Cos", "Tan",
    "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Shrink", "BitwiseNot",
    "QuickGelu", "FastGelu", "BiasGelu", "SkipLayerNormalization", "SimplifiedLayerNormalization",
})
BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Xor", "Where", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
})
REDUCTIONS = frozenset({
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
})
POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
#: operators whose data input and first output the rules read (see the module docstring)
RULE_SHAPES = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul",
    "Flatten", "Reshape", "Squeeze", *POOLS, *GLOBAL_POOLS,
})
#: shape-passing operators whose integer values are tracked through them too
TRACKED = frozenset({"Identity", "Cast", "CastLike"})
#: integer tensors whose values are tracked: no more elements than this
MAX_VALUES = 64


def propagate(model) -> None:
    """Give ``model.shapes`` (an :class:`~pwlint.formats.onnx.read.OnnxModel`) the
    shapes its nodes make."""
    walker = _Walker(model)
    pending = model.nodes
    for _ in range(2):
        left = [node for node in pending if not walker.visit(node)]
        if not left or len(left) == len(pending):
            break
        pending = left


def missing_shapes(model) -> bool:
    """Whether a shape the rules read is still unknown and onnx might know it."""
    shapes = model.shapes
    static = all(
        (shape := shapes.get(name)) is not None and None not in shape[1:] for name in model.inputs
    )
    for node in model.nodes:
        if node.op not in RULE_SHAPES or node.graph_depth or not node.inputs or not node.outputs:
            continue
        for name in (node.inputs[0], node.outputs[0]):
            shape = shapes.get(name)
            if shape is None or (static and None in shape[1:]):
                return True
    return False


class _Walker:
    def __init__(self, model) -> None:
        self.shapes = model.shapes
        self.opset = model.opset or 1
        self.constants = model.constants
        #: values of small integer tensors (shape vectors), flat, None for unknown entries
        self.values: dict[str, list] = {
            name: list(t.values) for name, t in model.constants.items()
            if t.values is not None and t.dtype in (6, 7) and len(t.values) <= MAX_VALUES
        }

    def shape(self, node, position: int):
        if position >= len(node.inputs) or not node.inputs[position]:
            return None
        return self.shapes.get(node.inputs[position])

    def value(self, node, position: int):
        if position >= len(node.inputs) or not node.inputs[position]:
            return None
        return self.values.get(node.inputs[position])

    def visit(self, node) -> bool:
        """Record the node's output shapes; False when its first input is not known yet."""
        outputs = node.outputs
        if not outputs:
            return True
        if len(outputs) == 1 and node.op in SAME_AS_INPUT and node.domain == "" and node.op not in TRACKED:
            # the common case of a large graph (activations, norms, casts): the shape passes
            shape = self.shapes.get(node.inputs[0]) if node.inputs else None
            if shape is None:
                return not node.inputs
            if self.shapes.get(outputs[0]) is None:
                self.shapes[outputs[0]] = shape
                return True
        try:
            found = self._outputs(node)
        except (ArithmeticError, IndexError, TypeError, ValueError):
            found = None  # a malformed node: its shapes stay unknown
        if found is None:
            return not node.inputs or self.shape(node, 0) is not None
        shapes, values = found if isinstance(found, tuple) and len(found) == 2 and isinstance(found[1], dict) else (found, {})
        for name, shape in zip(node.outputs, shapes):
            shape = _plausible(shape)
            if name and shape is not None:
                known = self.shapes.get(name)
                if known is None:
                    self.shapes[name] = tuple(shape)
                elif len(known) == len(shape) and None in known:  # the file's dim_params: fill in
                    self.shapes[name] = tuple(k if k is not None else s for k, s in zip(known, shape))
        for name, value in values.items():
            if len(value) <= MAX_VALUES:
                self.values[name] = value
        return True

    # the operators ---------------------------------------------------------------

    def _outputs(self, node):
        op, attrs = node.op, node.attrs
        if node.domain == CONTRIB:
            return self._contrib(node)
        if node.domain not in ("", "ai.onnx"):
            return None
        x = self.shape(node, 0)
        if op in SAME_AS_INPUT:
            if x is None:
                return None
            shapes = [x]
            if op == "Dropout" or op == "DynamicQuantizeLinear":
                shapes = [x, x if op == "Dropout" else (), ()]
            value = self.value(node, 0)
            values = {node.outputs[0]: value} if value is not None and op in ("Identity", "Cast", "CastLike") else {}
            return shapes, values
        if op in BROADCAST:
            return self._broadcast_op(node)
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            return self._conv(node, 3 if op == "QLinearConv" else 1)
        if op == "ConvTranspose":
            return self._conv_transpose(node)
        if op in POOLS:
            return self._pool(node)
        if op in GLOBAL_POOLS:
            return None if x is None or len(x) < 3 else [(*x[:2], *[1] * (len(x) - 2))]
        if op == "Gemm":
            b = self.shape(node, 1)
            if x is None or b is None or len(x) != 2 or len(b) != 2:
                return None
            return [(x[1] if attrs.get("transA") else x[0], b[0] if attrs.get("transB") else b[1])]
        if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            return self._matmul(x, self.shape(node, 3 if op == "QLinearMatMul" else 1))
        if op == "Flatten":
            if x is None:
                return None
            axis = attrs.get("axis", 1)
            axis = axis + len(x) if axis < 0 else axis
            return [(_product(x[:axis]), _product(x[axis:]))]
        if op == "Reshape":
            return self._reshape(node, x)
        if op in ("Squeeze", "Unsqueeze"):
            return self._squeeze(node, x, op == "Unsqueeze")
        if op == "Transpose":
            if x is None:
                return None
            perm = attrs.get("perm") or list(range(len(x)))[::-1]
            return [tuple(x[p] for p in perm)]
        if op == "Concat":
            return self._concat(node)
        if op == "Split":
            return self._split(node, x)
        if op == "Slice":
            return self._slice(node, x)
        if op == "Pad":
            return self._pad(node, x)
        if op in ("Resize", "Upsample"):
            return self._resize(node, x)
        if op == "Shape":
            if x is None:
                return None
            start, end = attrs.get("start", 0), attrs.get("end")
            dims = list(x)[slice(start, end)]
            return [(len(dims),)], {node.outputs[0]: dims}
        if op == "Size":
            return [()], ({node.outputs[0]: [prod(x)]} if x is not None and None not in x else {})
        if op == "Gather":
            return self._gather(node, x)
        if op in REDUCTIONS:
            return self._reduce(node, x)
        if op in ("ArgMax", "ArgMin"):
            if x is None:
                return None
            axis = attrs.get("axis", 0) % len(x)
            return [_reduced(x, [axis], attrs.get("keepdims", 1))]
        if op == "Expand":
            target = self.value(node, 1)
            return None if x is None or target is None else [_broadcast(x, tuple(target))]
        if op == "Tile":
            repeats = self.value(node, 1)
            if x is None or repeats is None or len(repeats) != len(x):
                return None
            return [tuple(None if d is None or r is None else d * r for d, r in zip(x, repeats))]
        if op == "ConstantOfShape":
            target = self.value(node, 0)
            return None if target is None else [tuple(target)]
        return None

    def _contrib(self, node):
        known = {}
        for name in node.inputs:
            if name and name in self.shapes and self.shapes[name] is not None:
                known[name] = (1, list(self.shapes[name]))
        found = contrib_output(node.proto, known)
        if found is None:
            return None
        return [tuple(found[1])]

    def _broadcast_op(self, node):
        shapes = [self.shape(node, i) for i in range(len(node.inputs))]
        if not shapes or any(s is None for s in shapes):
            return None
        out = shapes[0]
        for other in shapes[1:]:
            out = _broadcast(out, other)
        values = {}
        if node.op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
            a, b = self.value(node, 0), self.value(node, 1)
            if a is not None and b is not None and (len(a) == len(b) or len(a) == 1 or len(b) == 1):
                n = max(len(a), len(b))
                a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
                values[node.outputs[0]] = [_arith(node.op, p, q) for p, q in zip(a, b)]
        return [out], values

    def _conv(self, node, weight_position: int):
        x, w = self.shape(node, 0), self.shape(node, weight_position)
        if x is None or len(x) < 3:
            return None
        spatial = len(x) - 2
        attrs = node.attrs
        kernel = list(attrs.get("kernel_shape") or (w[2:] if w is not None else ()))
        if len(kernel) != spatial:
            return None
        channels = w[0] if w is not None and w else None
        sizes = _windowed(x[2:], kernel, attrs, ceil_mode=False)
        return [(x[0], channels, *sizes)]

    def _conv_transpose(self, node):
        x, w = self.shape(node, 0), self.shape(node, 1)
        if x is None or w is None or len(x) < 3 or len(w) != len(x):
            return None
        attrs = node.attrs
        spatial = len(x) - 2
        channels = None if w[1] is None else w[1] * attrs.get("group", 1)
        if attrs.get("output_shape"):
            return [(x[0], channels, *list(attrs["output_shape"])[-spatial:])]
        kernel = list(attrs.get("kernel_shape") or w[2:])
        strides = list(attrs.get("strides") or [1] * spatial)
        dilations = list(attrs.get("dilations") or [1] * spatial)
        pads = list(attrs.get("pads") or [0] * 2 * spatial)
        extra = list(attrs.get("output_padding") or [0] * spatial)
        auto_pad = attrs.get("auto_pad", "NOTSET")
        sizes = []
        for i, size in enumerate(x[2:]):
            if size is None or kernel[i] is None:
                sizes.append(None)
            elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                sizes.append(size * strides[i])
            else:
                pad = 0 if auto_pad == "VALID" else pads[i] + pads[i + spatial]
                sizes.append(strides[i] * (size - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1 - pad)
        return [(x[0], channels, *sizes)]

    def _pool(self, node):
        x = self.shape(node, 0)
        kernel = list(node.attrs.get("kernel_shape") or ())
        if x is None or len(x) != len(kernel) + 2:
            return None
        out = (x[0], x[1], *_windowed(x[2:], kernel, node.attrs, ceil_mode=bool(node.attrs.get("ceil_mode"))))
        return [out, out]

    @staticmethod
    def _matmul(a, b):
        if a is None or b is None or not a or not b:
            return None
        a1, b1 = len(a) == 1, len(b) == 1
        a = (1, *a) if a1 else a
        b = (*b, 1) if b1 else b
        batch = _broadcast(a[:-2], b[:-2])
        out = (*batch, a[-2], b[-1])
        if a1:
            out = (*out[:-2], out[-1])
        if b1:
            out = out[:-1]
        return [out]

    def _reshape(self, node, x):
        target = self.value(node, 1)
        if target is None:
            return None
        allow_zero = node.attrs.get("allowzero", 0)
        out = []
        for i, d in enumerate(target):
            if d == 0 and not allow_zero:
                out.append(x[i] if x is not None and i < len(x) else None)
            else:
                out.append(d)
        if -1 in out:
            at = out.index(-1)
            others = [d for j, d in enumerate(out) if j != at]
            total = _product(x) if x is not None else None
            rest = _product(others)
            out[at] = total // rest if total is not None and rest and total % rest == 0 else None
        elif x is not None and None not in out and _product(x) not in (None, prod(out)):
            return None  # a target of another size: the model is wrong, the shape unknown
        return [tuple(out)]

    def _axes(self, node, attr_until: int, position: int = 1):
        """An operator's axes: an attribute before opset ``attr_until``, an input after."""
        if self.opset < attr_until or "axes" in node.attrs:
            axes = node.attrs.get("axes")
            return list(axes) if axes is not None else None
        if position < len(node.inputs) and node.inputs[position]:
            return self.value(node, position) or _UNKNOWN
        return None

    def _squeeze(self, node, x, unsqueeze: bool):
        axes = self._axes(node, 13)
        if axes is _UNKNOWN or x is None:
            return None
        value = self.value(node, 0)
        values = {node.outputs[0]: value} if value is not None else {}
        if unsqueeze:
            if axes is None:
                return None
            rank = len(x) + len(axes)
            axes = sorted(a % rank for a in axes)
            out = list(x)
            for a in axes:
                out.insert(a, 1)
            return [tuple(out)], values
        if axes is None:
            if None in x:
                return None
            return [tuple(d for d in x if d != 1)], values
        drop = {a % len(x) for a in axes}
        return [tuple(d for i, d in enumerate(x) if i not in drop)], values

    def _concat(self, node):
        parts = [self.shape(node, i) for i in range(len(node.inputs))]
        if not parts or any(p is None for p in parts) or len({len(p) for p in parts}) != 1:
            return None
        rank = len(parts[0])
        if not rank:
            return None
        axis = node.attrs.get("axis", 0) % rank
        out = list(parts[0])
        for i in range(rank):
            column = [p[i] for p in parts]
            if i == axis:
                out[i] = None if None in column else sum(column)
            else:
                out[i] = next((d for d in column if d is not None), None)
        values = {}
        pieces = [self.value(node, i) for i in range(len(node.inputs))]
        if rank == 1 and all(v is not None for v in pieces):
            values[node.outputs[0]] = [v for piece in pieces for v in piece]
        return [tuple(out)], values

    def _split(self, node, x):
        if x is None:
            return None
        axis = node.attrs.get("axis", 0) % len(x)
        count = len(node.outputs)
        sizes = node.attrs.get("split")
        if sizes is None and self.opset >= 13 and len(node.inputs) > 1 and node.inputs[1]:
            sizes = self.value(node, 1)
            if sizes is None:
                return None
        if sizes is None:
            size = x[axis]
            if size is None:
                sizes = [None] * count
            elif size % count == 0:
                sizes = [size // count] * count
            else:  # opset 18's num_outputs: the last part is smaller
                part = -(-size // count)
                sizes = [part] * (count - 1) + [size - part * (count - 1)]
        return [tuple(s if i == axis else d for i, d in enumerate(x)) for s in sizes]

    def _slice(self, node, x):
        if x is None:
            return None
        if self.opset < 10:
            starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
            axes, steps = node.attrs.get("axes"), None
        else:
            starts, ends = self.value(node, 1), self.value(node, 2)
            axes = self.value(node, 3) if len(node.inputs) > 3 and node.inputs[3] else None
            steps = self.value(node, 4) if len(node.inputs) > 4 and node.inputs[4] else None
            if (len(node.inputs) > 3 and node.inputs[3] and axes is None) or (
                len(node.inputs) > 4 and node.inputs[4] and steps is None
            ):
                return None
        if starts is None or ends is None:
            return None
        axes = list(axes) if axes is not None else list(range(len(starts)))
        steps = list(steps) if steps is not None else [1] * len(starts)
        out = list(x)
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis %= len(x)
            size = x[axis]
            if size is None or start is None or end is None or step is None or step == 0:
                out[axis] = None
                continue
            out[axis] = len(range(*slice(start, end, step).indices(size)))
        values = {}
        value = self.value(node, 0)
        if value is not None and len(x) == 1 and out[0] is not None and None not in (starts[0], ends[0], steps[0]):
            values[node.outputs[0]] = value[slice(starts[0], ends[0], steps[0])]
        return [tuple(out)], values

    def _pad(self, node, x):
        if x is None:
            return None
        pads = node.attrs.get("pads") if self.opset < 11 else self.value(node, 1)
        if pads is None:
            return None
        axes = self.value(node, 3) if len(node.inputs) > 3 and node.inputs[3] else None
        if len(node.inputs) > 3 and node.inputs[3] and axes is None:
            return None
        axes = [a % len(x) for a in axes] if axes is not None else list(range(len(x)))
        if len(pads) != 2 * len(axes):
            return None
        out = list(x)
        for i, axis in enumerate(axes):
            before, after = pads[i], pads[i + len(axes)]
            out[axis] = None if out[axis] is None or before is None or after is None else out[axis] + before + after
        return [tuple(out)]

    def _resize(self, node, x):
        if x is None or "axes" in node.attrs:
            return None
        if node.op == "Upsample" and self.opset < 9:
            scales = node.attrs.get("scales")
            sizes = None
        elif node.op == "Upsample" or self.opset < 11:
            scales, sizes = self._float_values(node, 1), None
        else:
            scales, sizes = self._float_values(node, 2), self.value(node, 3)
        if sizes:
            return [tuple(sizes)] if len(sizes) == len(x) else None
        if not scales or len(scales) != len(x):
            return None
        return [tuple(None if d is None else floor(d * s) for d, s in zip(x, scales))]

    def _float_values(self, node, position: int):
        if position >= len(node.inputs) or not node.inputs[position]:
            return None
        tensor = self.constants.get(node.inputs[position])
        return tensor.values if tensor is not None else None

    def _gather(self, node, x):
        indices = self.shape(node, 1)
        if x is None or indices is None or not x:
            return None
        axis = node.attrs.get("axis", 0) % len(x)
        out = (*x[:axis], *indices, *x[axis + 1:])
        values = {}
        data, picks = self.value(node, 0), self.value(node, 1)
        if data is not None and picks is not None and len(x) == 1:
            values[node.outputs[0]] = [data[p] for p in picks]
        return [out], values

    def _reduce(self, node, x):
        if x is None:
            return None
        since = 13 if node.op == "ReduceSum" else 18
        axes = self._axes(node, since)
        if axes is _UNKNOWN:
            return None
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(len(x)))
        return [_reduced(x, [a % len(x) for a in axes], node.attrs.get("keepdims", 1))]


_UNKNOWN = object()


def _plausible(shape):
    """``shape`` with dims no model has (negative, past MAX_DIM) unknown. (A shape of
    too many elements is kept: the IR refuses it, naming the layer.)"""
    if shape is None or len(shape) > MAX_RANK:
        return None
    return tuple(d if type(d) is int and 0 <= d <= MAX_DIM else None for d in shape)


def _product(dims) -> int | None:
    if None in dims:
        return None
    return prod(dims)


def _broadcast(a: Shape, b: Shape) -> Shape:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out = []
    for p, q in zip(a, b):
        if p == 1:
            out.append(q)
        elif q == 1:
            out.append(p)
        elif p is None:
            out.append(q)
        else:
            out.append(p)
    return tuple(out)


def _arith(op: str, p, q):
    if p is None or q is None:
        return None
    if op == "Add":
        return p + q
    if op == "Sub":
        return p - q
    if op == "Mul":
        return p * q
    return p // q if q else None


def _reduced(x: Shape, axes: list[int], keepdims) -> Shape:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in axes)


def _windowed(sizes, kernel: list, attrs: dict, ceil_mode: bool) -> list:
    """Output sizes of a sliding window (convolution or pooling) over ``sizes``."""
    spatial = len(kernel)
    strides = list(attrs.get("strides") or [1] * spatial)
    dilations = list(attrs.get("dilations") or [1] * spatial)
    pads = list(attrs.get("pads") or [0] * 2 * spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    out = []
    for i, size in enumerate(sizes):
        if size is None or kernel[i] is None:
            out.append(None)
            continue
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(ceil(size / strides[i]))
            continue
        pad = 0 if auto_pad == "VALID" else pads[i] + pads[i + spatial]
        reach = dilations[i] * (kernel[i] - 1) + 1
        steps = (size + pad - reach) / strides[i]
        # as onnx infers it: no dropping of a last window that starts in the end padding
        out.append((ceil(steps) if ceil_mode else floor(steps)) + 1)
    return out
