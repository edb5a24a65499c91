"""Output shapes of common Keras layers, computed from their config and input shapes.

Used where the config does not record shapes (legacy ``.h5`` files from tf.keras
2, a Sequential saved without an input shape, the outputs of a model). Shapes
are tuples with the batch dimension first and ``None`` for unknown dimensions;
a layer this module does not know gives ``None`` (shape unknown).
"""

from __future__ import annotations

import re
from math import prod

from pwlint.formats.keras.config import as_shape
from pwlint.formats.keras.layers import CONV_CLASS, GLOBAL_POOL_CLASS, POOL_CLASS, kind_of

SAME_SHAPE_KINDS = frozenset({"act", "norm", "dropout", "identity"})
ELEMENTWISE = frozenset({"Add", "Multiply", "Subtract", "Average", "Maximum", "Minimum"})
SAME_SHAPE_CLASSES = frozenset({
    "Rescaling", "Normalization", "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom",
    "RandomTranslation", "RandomContrast", "RandomBrightness", "LayerScale", "StochasticDepth",
})


def _ints(value, rank: int) -> tuple:
    if isinstance(value, int):
        return (value,) * rank
    if isinstance(value, (list, tuple)) and len(value) == rank and all(isinstance(v, int) for v in value):
        return tuple(value)
    return ()


def conv_length(size, kernel: int, stride: int, padding: str, dilation: int = 1):
    """Keras' conv_output_length: 'valid', 'same' and 'causal' padding, and Keras 1's
    'full' (Theano's: every position the kernel overlaps)."""
    if size is None:
        return None
    span = dilation * (kernel - 1) + 1
    if padding in ("same", "causal"):
        return (size + stride - 1) // stride
    if padding == "full":
        return (size + span - 1 + stride - 1) // stride
    return max(0, (size - span) // stride + 1)


def transpose_length(size, kernel: int, stride: int, padding: str, output_padding, dilation: int = 1):
    """Keras' compute_conv_transpose_output_length."""
    if size is None:
        return None
    span = kernel + (kernel - 1) * (dilation - 1)
    if output_padding is None:
        return size * stride + max(span - stride, 0) if padding == "valid" else size * stride
    pad = span // 2 if padding == "same" else 0
    return (size - 1) * stride + span - 2 * pad + output_padding


def _split(shape: tuple, channels_first: bool) -> tuple[tuple, object]:
    return (shape[2:], shape[1]) if channels_first else (shape[1:-1], shape[-1])


def _join(batch, spatial: tuple, chans, channels_first: bool) -> tuple:
    return (batch, chans, *spatial) if channels_first else (batch, *spatial, chans)


def output_shape(class_name: str, config: dict, in_shapes: list):
    """The output shape of a layer called on tensors of ``in_shapes``, or None."""
    shape = in_shapes[0] if in_shapes else None
    kind = kind_of(class_name, config)
    if shape is None:
        return None
    try:
        computed = _compute(class_name, config, kind, shape, in_shapes)
    except (TypeError, ValueError, IndexError, ZeroDivisionError, KeyError, AttributeError):
        return None  # a config this module does not understand
    return as_shape(computed)  # a size the config wrote as a string or a list is unknown


def _compute(class_name: str, config: dict, kind: str, shape: tuple, in_shapes: list):
    first = config.get("data_format") == "channels_first"
    if kind in SAME_SHAPE_KINDS or class_name in SAME_SHAPE_CLASSES:
        return shape
    if kind == "conv":
        return _conv(class_name, config, shape, first)
    if kind == "pool":
        rank = int(POOL_CLASS.match(class_name).group(3))
        size = _ints(config.get("pool_size", 2), rank)
        stride = _ints(config.get("strides") or size, rank)
        spatial, chans = _split(shape, first)
        padding = config.get("padding", "valid")
        out = tuple(conv_length(d, k, s, padding) for d, k, s in zip(spatial, size, stride))
        return _join(shape[0], out, chans, first)
    if kind == "global_pool":
        rank = int(GLOBAL_POOL_CLASS.match(class_name).group(3))
        spatial, chans = _split(shape, first)
        if config.get("keepdims"):
            return _join(shape[0], (1,) * rank, chans, first)
        return (shape[0], chans)
    if kind == "flatten":
        rest = shape[1:]
        return (shape[0], None if any(d is None for d in rest) else prod(rest))
    if kind == "dense":
        return (*shape[:-1], config["units"])
    if kind == "reshape":
        return _reshape(shape, tuple(config["target_shape"]))
    if kind == "transpose":
        return (shape[0], *(shape[d] for d in config["dims"]))
    if kind == "concat":
        return _concat(config.get("axis", -1), in_shapes)
    if class_name in ELEMENTWISE:
        return _broadcast(in_shapes)
    if class_name == "PReLU":
        return shape
    if class_name == "Embedding":
        return (*shape, config["output_dim"])
    if class_name == "Lambda" and isinstance(config.get("output_shape"), list):
        return (shape[0], *config["output_shape"])  # declared by the user, without the batch
    if class_name == "RepeatVector":
        return (shape[0], config["n"], shape[-1])
    match = re.match(r"^(ZeroPadding|Cropping|UpSampling)([123])D$", class_name)
    if match:
        return _resize(match.group(1), int(match.group(2)), config, shape, first)
    return None


def _conv(class_name: str, config: dict, shape: tuple, first: bool):
    match = CONV_CLASS.match(class_name)
    family, rank, transposed = match.group(1), int(match.group(2)), bool(match.group(3))
    kernel = _ints(config["kernel_size"], rank)
    stride = _ints(config.get("strides", 1), rank)
    dilation = _ints(config.get("dilation_rate", 1), rank) or (1,) * rank
    padding = config.get("padding", "valid")
    spatial, chans = _split(shape, first)
    if transposed:
        output_padding = config.get("output_padding")
        pads = _ints(output_padding, rank) if output_padding is not None else (None,) * rank
        out = tuple(transpose_length(d, k, s, padding, p, r) for d, k, s, p, r in zip(spatial, kernel, stride, pads, dilation))
    else:
        out = tuple(conv_length(d, k, s, padding, r) for d, k, s, r in zip(spatial, kernel, stride, dilation))
    if family == "DepthwiseConv":
        filters = chans * int(config.get("depth_multiplier") or 1) if chans is not None else None
    else:
        filters = config["filters"]
    return _join(shape[0], out, filters, first)


def _reshape(shape: tuple, target: tuple):
    if -1 in target:
        known = prod(d for d in target if d != -1)
        rest = shape[1:]
        if any(d is None for d in rest) or known == 0:
            return (shape[0], *(None if d == -1 else d for d in target))
        target = tuple(prod(rest) // known if d == -1 else d for d in target)
    return (shape[0], *target)


def _concat(axis: int, in_shapes: list):
    if any(s is None for s in in_shapes) or len({len(s) for s in in_shapes}) != 1:
        return None
    rank = len(in_shapes[0])
    axis %= rank
    out = list(in_shapes[0])
    sizes = [s[axis] for s in in_shapes]
    out[axis] = None if any(d is None for d in sizes) else sum(sizes)
    for position in range(rank):
        if position != axis and out[position] is None:
            out[position] = next((s[position] for s in in_shapes if s[position] is not None), None)
    return tuple(out)


def _broadcast(in_shapes: list):
    known = [s for s in in_shapes if s is not None]
    if not known:
        return None
    rank = max(len(s) for s in known)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in known]
    out = []
    for dims in zip(*padded):
        fixed = [d for d in dims if d is not None and d != 1]
        out.append(fixed[0] if fixed else (1 if all(d == 1 for d in dims) else None))
    out[0] = None if known[0][0] is None else out[0]
    return tuple(out)


def _resize(family: str, rank: int, config: dict, shape: tuple, first: bool):
    spatial, chans = _split(shape, first)
    if family == "UpSampling":
        size = _ints(config.get("size", 2), rank)
        out = tuple(None if d is None else d * s for d, s in zip(spatial, size))
        return _join(shape[0], out, chans, first)
    key = "padding" if family == "ZeroPadding" else "cropping"
    value = config.get(key, 1 if family == "ZeroPadding" else 0)
    if isinstance(value, int):
        pairs = [(value, value)] * rank
    else:
        pairs = [(v, v) if isinstance(v, int) else tuple(v) for v in value]
    sign = 1 if family == "ZeroPadding" else -1
    out = tuple(None if d is None else d + sign * (a + b) for d, (a, b) in zip(spatial, pairs))
    return _join(shape[0], out, chans, first)
