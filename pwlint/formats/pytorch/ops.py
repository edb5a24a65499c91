"""ATen operators as layer kinds, with the attributes rules read.

Shared by the ``.pt2`` and TorchScript readers: both describe operators by their ATen
name (``conv2d``, ``addmm``, ``relu_`` is ``relu``) and their schema argument names.
"""

from __future__ import annotations

from typing import Callable

from pwlint.formats.pytorch.program import OpNode, Tensors
from pwlint.walk import is_layout_perm

CONV = frozenset({
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "_convolution_mode",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "cudnn_convolution",
    "cudnn_convolution_transpose", "mkldnn_convolution", "convolution_overrideable",
})
DENSE = frozenset({"linear", "addmm", "mm", "matmul"})
RESHAPE = frozenset({
    "view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "unflatten", "view_copy",
    "_reshape_alias", "view_as", "reshape_as",
})
NORMS = {
    "batch_norm": "batch", "native_batch_norm": "batch", "_native_batch_norm_legit": "batch",
    "_native_batch_norm_legit_no_training": "batch", "_native_batch_norm_legit_functional": "batch",
    "cudnn_batch_norm": "batch", "miopen_batch_norm": "batch", "_batch_norm_impl_index": "batch",
    "_batch_norm_with_update": "batch", "_batch_norm_no_update": "batch",
    "layer_norm": "layer", "native_layer_norm": "layer", "group_norm": "group",
    "native_group_norm": "group", "instance_norm": "instance", "rms_norm": "rms", "_fused_rms_norm": "rms",
}
#: activation names normalised like the ONNX loader's
ACTIVATIONS = {
    "relu": "relu", "relu6": "clip", "hardtanh": "clip", "clamp": "clip", "clip": "clip",
    "leaky_relu": "leaky_relu", "prelu": "prelu", "_prelu_kernel": "prelu", "rrelu": "rrelu",
    "sigmoid": "sigmoid", "hardsigmoid": "hard_sigmoid", "tanh": "tanh", "elu": "elu",
    "selu": "selu", "celu": "celu", "gelu": "gelu", "hardswish": "hard_swish", "silu": "swish",
    "mish": "mish", "softplus": "softplus", "softmax": "softmax", "_softmax": "softmax",
    "log_softmax": "log_softmax", "_log_softmax": "log_softmax", "threshold": "threshold",
    "log_sigmoid": "log_sigmoid", "glu": "glu", "erf": "erf",
}
POOLS = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "lp_pool1d", "lp_pool2d", "fractional_max_pool2d",
})
ADAPTIVE_POOLS = frozenset({
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
})
REDUCTIONS = frozenset({"mean", "amax"})
TRANSPOSES = frozenset({"permute", "transpose", "t", "numpy_T", "swapaxes", "swapdims"})
SIMPLE = {
    "add": "add", "mul": "mul", "cat": "concat", "concat": "concat", "concatenate": "concat",
    "dropout": "dropout", "native_dropout": "dropout", "feature_dropout": "dropout",
    "alpha_dropout": "dropout", "feature_alpha_dropout": "dropout",
    "clone": "identity", "alias": "identity", "detach": "identity", "_to_copy": "identity",
    "to": "identity", "contiguous": "identity", "lift_fresh_copy": "identity", "type_as": "identity",
}
#: operators that may sit around a module's main operator and fold into its layer
#: (the views of a Linear applied to a rank-3 tensor, the copy of a Dropout)
AUXILIARY = frozenset({
    "view", "reshape", "_unsafe_view", "clone", "contiguous", "alias", "detach", "_to_copy",
    "expand", "getitem", "lift_fresh_copy",
})

#: positional argument names of the operators pwlint reads (TorchScript calls are positional)
SCHEMAS = {
    "conv1d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "_convolution": ("input", "weight", "bias", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups"),
    "conv_transpose2d": ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    "linear": ("input", "weight", "bias"),
    "addmm": ("self", "mat1", "mat2", "beta", "alpha"),
    "mm": ("self", "mat2"),
    "matmul": ("self", "other"),
    "batch_norm": ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"),
    "instance_norm": ("input", "weight", "bias", "running_mean", "running_var", "use_input_stats"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "max_pool2d": ("self", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "avg_pool2d": ("self", "kernel_size", "stride", "padding", "ceil_mode"),
    "adaptive_avg_pool2d": ("self", "output_size"),
    "mean": ("self", "dim", "keepdim"),
    "flatten": ("self", "start_dim", "end_dim"),
    "permute": ("self", "dims"),
    "transpose": ("self", "dim0", "dim1"),
    "cat": ("tensors", "dim"),
    "add": ("self", "other", "alpha"),
    "mul": ("self", "other"),
    "view": ("self", "size"),
    "reshape": ("self", "shape"),
}
for _alias, _same in (("conv2d", "conv1d"), ("conv3d", "conv1d"), ("convolution", "_convolution"),
                      ("conv_transpose1d", "conv_transpose2d"), ("conv_transpose3d", "conv_transpose2d"),
                      ("max_pool1d", "max_pool2d"), ("max_pool3d", "max_pool2d"), ("avg_pool1d", "avg_pool2d"),
                      ("avg_pool3d", "avg_pool2d"), ("adaptive_avg_pool1d", "adaptive_avg_pool2d"),
                      ("adaptive_avg_pool3d", "adaptive_avg_pool2d"), ("adaptive_max_pool2d", "adaptive_avg_pool2d"),
                      ("amax", "mean"), ("sub", "add")):
    SCHEMAS[_alias] = SCHEMAS[_same]


#: operator namespaces pwlint knows: ATen, its primitives and Python's operator module
#: (getitem). Anything else (``torch.ops.mylib.foo``, ``quantized.conv2d``) is an
#: operator pwlint cannot see into: its layer is ``understood=False``, so coverage names it
KNOWN_NAMESPACES = frozenset({"aten", "prims", "_operator"})


def is_understood(node: OpNode) -> bool:
    return node.namespace in KNOWN_NAMESPACES


def is_auxiliary(node: OpNode) -> bool:
    return node.base in AUXILIARY and node.namespace in ("aten", "_operator")


def bias_add(node: OpNode, tensors: Tensors) -> bool:
    """``add(x, b)`` with ``b`` a stored parameter: the bias of a conv or dense layer."""
    if node.base != "add" or node.namespace != "aten":
        return False
    args = node.tensor_args()
    return len(args) == 2 and sum(tensors.has_param(t) for _, t in args) == 1


def describe(node: OpNode, group: list[OpNode], tensors: Tensors, data_shape: tuple | None) -> tuple[str, dict]:
    """The kind and attributes of a layer whose main operator is ``node``."""
    base = node.base
    if node.namespace == "_operator" and base == "getitem":
        return "identity", {}
    if node.namespace != "aten":
        return "other", {}
    for names, handler in HANDLERS:
        if base in names:
            return handler(node, group, tensors, data_shape)
    if base in SIMPLE:
        kind = SIMPLE[base]
        return kind, ({"axis": node.args.get("dim", 0)} if kind == "concat" else {})
    return "other", {}


def _folded_bias(group: list[OpNode], tensors: Tensors) -> str | None:
    for member in group:
        if bias_add(member, tensors):
            return next(t for _, t in member.tensor_args() if tensors.has_param(t))
    return None


def _conv(node, group, tensors, data_shape):
    dims = tensors.shape(node.tensor("weight"))
    groups = node.args.get("groups") if isinstance(node.args.get("groups"), int) else 1
    transposed = node.base.startswith("conv_transpose") or "transpose" in node.base or node.args.get("transposed") is True
    bias = node.tensor("bias")
    real_bias = bias if tensors.has_param(bias) else _folded_bias(group, tensors)
    spatial = len(dims) - 2 if dims and len(dims) >= 3 else 0
    attrs = {
        "groups": groups, "stride": _per_dim(node.args.get("stride"), spatial, 1),
        "dilation": _per_dim(node.args.get("dilation"), spatial, 1),
        "padding": _per_dim(node.args.get("padding"), spatial, 0),
        "transposed": transposed, "bias": real_bias is not None, "bias_input": real_bias,
    }
    if spatial and None not in dims:
        if transposed:
            attrs.update(in_channels=dims[0], out_channels=dims[1] * groups)
        else:
            attrs.update(out_channels=dims[0], in_channels=dims[1] * groups)
        attrs["kernel"] = tuple(dims[2:])
    return "conv", attrs


def _per_dim(value, spatial: int, default: int):
    """A stride, dilation or padding argument as one value per spatial dimension
    (omitted arguments take their default; ``"same"`` padding stays a string)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        value = [value]
    value = list(value or [])
    if not value:
        value = [default]
    if len(value) == 1 and spatial > 1:
        value = value * spatial
    return tuple(value)


def _dense(node, group, tensors, data_shape):
    base = node.base
    weight = node.tensor({"linear": "weight", "matmul": "other"}.get(base, "mat2"))
    if not tensors.is_const(weight) and base != "linear":
        return "other", {}  # a product of two activations (attention), not a layer with weights
    dims = tensors.shape(weight)
    bias = node.tensor("bias" if base == "linear" else "self") if base in ("linear", "addmm") else None
    real_bias = bias if tensors.has_param(bias) else _folded_bias(group, tensors)
    attrs = {"bias": real_bias is not None, "per_position": data_shape is not None and len(data_shape) > 2}
    if dims and len(dims) >= 2 and None not in dims[-2:]:
        fan_in, fan_out = (dims[-1], dims[0]) if base == "linear" else (dims[-2], dims[-1])
        attrs.update(in_features=fan_in, out_features=fan_out)
    if not tensors.is_const(weight):
        attrs["weight_is_input"] = True
    return "dense", attrs


def _pool(node, group, tensors, data_shape):
    kernel = tuple(node.args.get("kernel_size") or ())
    return "pool", {"kernel": kernel, "stride": tuple(node.args.get("stride") or kernel)}


def _adaptive_pool(node, group, tensors, data_shape):
    size = node.args.get("output_size")
    size = [size] if isinstance(size, int) else list(size or [])
    if size and all(s == 1 for s in size):
        return "global_pool", {}
    return "pool", {"output_size": tuple(size)}


def _reduction(node, group, tensors, data_shape):
    shape = tensors.shape(node.tensor("self"))
    dims = node.args.get("dim")
    dims = [dims] if isinstance(dims, int) else dims
    if shape and len(shape) >= 3 and dims and all(isinstance(d, int) for d in dims):
        if sorted(d % len(shape) for d in dims) == list(range(2, len(shape))):
            return "global_pool", {}
    return "other", {}


def _transpose(node, group, tensors, data_shape):
    shape = tensors.shape(node.tensor("self"))
    rank = len(shape) if shape is not None else None
    perm = None
    if node.base == "permute" and node.args.get("dims") is not None:
        perm = list(node.args["dims"])
    elif node.base == "t" or (node.base == "numpy_T" and rank == 2):
        perm = [1, 0]
    elif rank is not None:
        first = node.args.get("dim0", node.args.get("axis0"))
        second = node.args.get("dim1", node.args.get("axis1"))
        if isinstance(first, int) and isinstance(second, int):
            perm = list(range(rank))
            perm[first % rank], perm[second % rank] = perm[second % rank], perm[first % rank]
    if perm is not None and rank:
        perm = [p % rank for p in perm]
    return "transpose", {"perm": tuple(perm) if perm else None, "layout_change": is_layout_perm(perm)}


HANDLERS: tuple[tuple[frozenset, Callable], ...] = (
    (CONV, _conv), (DENSE, _dense), (POOLS, _pool), (ADAPTIVE_POOLS, _adaptive_pool),
    (REDUCTIONS, _reduction), (TRANSPOSES, _transpose),
    (frozenset({"flatten"}), lambda *a: ("flatten", {})), (RESHAPE, lambda *a: ("reshape", {})),
    (frozenset(NORMS), lambda node, *a: ("norm", {"norm_type": NORMS[node.base]})),
    (frozenset(ACTIVATIONS), lambda node, *a: ("act", {"activation": ACTIVATIONS[node.base]})),
)
