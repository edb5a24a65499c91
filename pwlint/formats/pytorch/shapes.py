"""Output shapes of common ATen operators, for TorchScript archives (which, unlike
``.pt2`` programs, record no tensor shapes).

TorchScript does not record the input size either, so spatial sizes usually stay
unknown (``None``); ranks and channel counts are still worked out, from the first layer
that reads the input (a conv gives ``(N, C, H, W)`` with C from its weight). That is
enough for the rules: a flatten of a ``C x H x W`` map with H and W unknown is still
recognised from the dense layer's fan-in, and a global pool gives a known ``1 x 1``.
"""

from __future__ import annotations

from math import prod
from typing import Callable

from pwlint.formats.pytorch.ops import ACTIVATIONS, ADAPTIVE_POOLS, CONV, NORMS, POOLS, SIMPLE
from pwlint.formats.pytorch.program import OpNode

Shape = tuple
#: elementwise operators whose output has their input's shape (the arithmetic of a
#: written-out normalisation: ``sqrt``, ``rsqrt``, ``pow`` by a number)
UNARY = frozenset({"sqrt", "rsqrt", "reciprocal", "neg", "abs", "exp", "log", "square", "pow", "clamp_min", "clamp_max"})


def _ints(value, rank: int) -> list:
    if isinstance(value, int):
        return [value] * rank
    value = list(value or [])
    return value * rank if len(value) == 1 else value


def _window(size, kernel, stride, padding, dilation, ceil=False, transposed=False, out_pad=0):
    if size is None or not isinstance(kernel, int):
        return None
    if transposed:
        return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + out_pad + 1
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


def guess_input(node: OpNode, weight_shape: Shape | None) -> Shape | None:
    """The shape of a tensor whose size is unknown, from the first layer that reads it."""
    if node.base in CONV and weight_shape and len(weight_shape) >= 3:
        groups = node.args.get("groups") if isinstance(node.args.get("groups"), int) else 1
        transposed = "transpose" in node.base or node.args.get("transposed") is True
        channels = weight_shape[0] if transposed else weight_shape[1] * groups
        return (None, channels) + (None,) * (len(weight_shape) - 2)
    if node.base == "linear" and weight_shape and len(weight_shape) == 2:
        return (None, weight_shape[1])
    return None


def infer(node: OpNode, shape_of: Callable[[str | None], Shape | None]) -> Shape | None:
    """The shape of ``node``'s first output, None when it cannot be worked out."""
    base, args = node.base, node.args
    data = node.tensor("input", "self") or next((t for _, t in node.tensor_args()), None)
    x = shape_of(data)
    try:
        if base in CONV:
            return _conv(node, x, shape_of(node.tensor("weight")))
        if base in ("linear", "matmul", "mm", "addmm"):
            weight = shape_of(node.tensor({"linear": "weight", "matmul": "other"}.get(base, "mat2")))
            source = shape_of(node.tensor("mat1")) if base == "addmm" else x
            if source is None or not weight:
                return None
            return tuple(source[:-1]) + ((weight[0],) if base == "linear" else (weight[-1],))
        if base in NORMS or base in ACTIVATIONS or base in UNARY or SIMPLE.get(base) in ("dropout", "identity"):
            return x
        if base in ("add", "sub", "mul", "div"):
            other = node.tensor("other")
            return x if other is None else _broadcast(x, shape_of(other))
        if x is None:
            return None
        if base in POOLS:
            return _pool(args, x)
        if base in ADAPTIVE_POOLS:
            size = args.get("output_size")
            size = _ints(size, len(x) - 2) if size is not None else []
            return tuple(x[: len(x) - len(size)]) + tuple(size)
        return _layout(node, base, args, x, shape_of)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return None


def _conv(node: OpNode, x, w):
    if not w or len(w) < 3:
        return None
    rank = len(w) - 2
    transposed = "transpose" in node.base or node.args.get("transposed") is True
    groups = node.args.get("groups") if isinstance(node.args.get("groups"), int) else 1
    channels = w[1] * groups if transposed else w[0]
    spatial = list(x[2:]) if x is not None and len(x) == rank + 2 else [None] * rank
    stride = _ints(node.args.get("stride") or 1, rank)
    dilation = _ints(node.args.get("dilation") or 1, rank)
    padding = node.args.get("padding") or 0
    if isinstance(padding, str):
        out = spatial if padding == "same" else [None] * rank
    else:
        padding, out_pad = _ints(padding, rank), _ints(node.args.get("output_padding") or 0, rank)
        out = [_window(s, k, st, p, d, transposed=transposed, out_pad=o)
               for s, k, st, p, d, o in zip(spatial, w[2:], stride, padding, dilation, out_pad)]
    batch = x[0] if x else None
    return (batch, channels, *out)


def _broadcast(a, b):
    if a is None or b is None:
        return None
    rank = max(len(a), len(b))
    # missing leading dimensions broadcast like dimensions of size 1
    a, b = (1,) * (rank - len(a)) + tuple(a), (1,) * (rank - len(b)) + tuple(b)
    return tuple(p if p == q else (q if p == 1 else p if q == 1 else None) for p, q in zip(a, b))


def _pool(args, x):
    rank = len(x) - 2
    kernel = _ints(args.get("kernel_size"), rank)
    stride = _ints(args.get("stride") or kernel, rank)
    padding, dilation = _ints(args.get("padding") or 0, rank), _ints(args.get("dilation") or 1, rank)
    ceil = bool(args.get("ceil_mode"))
    return tuple(x[:2]) + tuple(_window(s, k, st, p, d, ceil) for s, k, st, p, d in zip(x[2:], kernel, stride, padding, dilation))


def _layout(node, base, args, x, shape_of):
    rank = len(x)
    if base == "flatten":
        start, end = args.get("start_dim", 0) % rank, args.get("end_dim", -1) % rank
        middle = x[start: end + 1]
        size = prod(middle) if None not in middle else None
        return tuple(x[:start]) + (size,) + tuple(x[end + 1:])
    if base in ("view", "reshape"):
        size = list(args.get("size", args.get("shape")) or [])
        if -1 in size and None not in x and all(isinstance(s, int) for s in size):
            known = prod(s for s in size if s != -1)
            size[size.index(-1)] = prod(x) // known if known else None
        return tuple(s if isinstance(s, int) and s >= 0 else None for s in size)
    if base == "permute":
        return tuple(x[d % rank] for d in args["dims"])
    if base in ("transpose", "t"):
        first, second = (args.get("dim0", 0), args.get("dim1", 1)) if base == "transpose" else (0, 1)
        out = list(x)
        out[first % rank], out[second % rank] = out[second % rank], out[first % rank]
        return tuple(out)
    if base in ("mean", "amax", "sum"):
        dims = args.get("dim")
        dims = {d % rank for d in ([dims] if isinstance(dims, int) else dims or range(rank))}
        keep = bool(args.get("keepdim"))
        return tuple(1 if i in dims else s for i, s in enumerate(x) if keep or i not in dims)
    if base == "cat":
        shapes = [shape_of(t.name) for t in args.get("tensors") or []]
        dim = args.get("dim", 0) % rank
        if any(s is None or len(s) != rank for s in shapes):
            return None
        total = sum(s[dim] for s in shapes) if all(s[dim] is not None for s in shapes) else None
        return tuple(total if i == dim else x[i] for i in range(rank))
    if base == "unsqueeze":
        dim = args.get("dim", 0) % (rank + 1)
        return tuple(x[:dim]) + (1,) + tuple(x[dim:])
    if base == "squeeze":
        dims = args.get("dim")
        dims = {d % rank for d in ([dims] if isinstance(dims, int) else dims)} if dims is not None else None
        return tuple(s for i, s in enumerate(x) if not (s == 1 and (dims is None or i in dims)))
    return None
