"""Reading the layers a fix rewrites out of an ONNX ModelProto: a dense layer (Gemm, or
MatMul + Add) as ``y = x @ weight + bias``, a Conv as its kernel, bias and attributes.

Shared by :mod:`pwlint.formats.onnx.fixes`, :mod:`~pwlint.formats.onnx.fix_convs` and
:mod:`~pwlint.formats.onnx.fix_merge`; every reader raises FixNotApplicable for a form
it does not know, before any change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from pwlint.errors import FixNotApplicable
from pwlint.fix.head import dense_terms
from pwlint.formats.onnx.edit import Editor, attributes
from pwlint.ir import Layer

#: the Conv attributes that place the kernel on the input; a factor that takes the
#: conv's place keeps them, a pointwise factor gets none of them
PLACEMENT = ("strides", "pads", "dilations", "auto_pad")


@dataclass
class DenseWeights:
    """A dense layer as ``y = x @ weight + bias`` whatever its ONNX form."""

    nodes: list  # NodeProtos of the layer
    data_input: str
    output: str
    weight: np.ndarray  # [in, out]
    bias: np.ndarray | None  # [out]
    #: the initializers holding weight and bias, dropped once read
    constants: tuple[str, ...] = ()


def read_dense(editor: Editor, layer: Layer) -> DenseWeights:
    first = layer.source[0].proto
    # the layer may also hold the nodes that make its weights (a Cast, an Identity): those
    # go when nothing reads them any more (Editor.remove_dead)
    add = next((m.proto for m in layer.source[1:] if m.op == "Add" and first.output[0] in m.proto.input), None)
    nodes = [first] if add is None else [first, add]
    if first.op_type == "Gemm":
        attrs = attributes(first)
        if attrs.get("transA", 0):
            raise FixNotApplicable(f"'{layer.name}' is a Gemm with transA=1")
        weight = editor.array(constant_source(editor, first.input[1]))
        weight = weight.T if attrs.get("transB", 0) else weight  # a view: no copy of a big matrix
        raw = None
        if len(first.input) > 2 and first.input[2]:
            raw = editor.array(constant_source(editor, first.input[2]))
        weight, bias = dense_terms(weight, raw, layer.name, attrs.get("alpha", 1.0), attrs.get("beta", 1.0))
        return DenseWeights(nodes, first.input[0], first.output[0], weight, bias, tuple(first.input[1:3]))
    if first.op_type == "MatMul":
        weight = editor.array(constant_source(editor, first.input[1]))
        raw = None
        if add is not None:
            bias_name = next(t for t in add.input if t != first.output[0])
            raw = editor.array(constant_source(editor, bias_name))
        weight, bias = dense_terms(weight, raw, layer.name)
        constants = (first.input[1], bias_name) if add is not None else (first.input[1],)
        return DenseWeights(nodes, first.input[0], nodes[-1].output[0], weight, bias, constants)
    raise FixNotApplicable(f"'{layer.name}' is a {first.op_type}, not a Gemm or MatMul")


def weight_dtype(editor: Editor, layer: Layer) -> np.dtype:
    """The dtype of the layer's weight (its second input), which new weights take."""
    proto = layer.source[0].proto
    tensor = editor.initializer(constant_source(editor, proto.input[1]))
    if tensor is None:
        raise FixNotApplicable(f"the weights of '{layer.name}' are not constant")
    return numpy_dtype(tensor)


def numpy_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))


def constant_source(editor: Editor, name: str) -> str:
    """The initializer behind ``name``, seen through Identity nodes: the legacy torch
    exporter stores equal weights once (a BatchNorm's zero running mean and zero bias)
    and gives the other name by an Identity."""
    seen = set()
    while editor.initializer(name) is None and name not in seen:
        seen.add(name)
        node = editor.producer(name)
        if node is None or node.op_type != "Identity":
            break
        name = node.input[0]
    return name


@dataclass
class ConvWeights:
    """A standard ONNX Conv: ``weight`` is ``(Cout, Cin / group, *K)`` as stored."""

    node: onnx.NodeProto
    data_input: str
    output: str
    weight: np.ndarray
    bias: np.ndarray | None
    #: the node's attributes by name (kernel_shape, strides, pads, dilations, group, auto_pad)
    attrs: dict
    dtype: np.dtype
    constants: tuple[str, ...] = ()

    @property
    def groups(self) -> int:
        return int(self.attrs.get("group", 1))

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def placement(self) -> dict:
        """The attributes that place the kernel (stride, padding, dilation), as stored."""
        return {key: self.attrs[key] for key in PLACEMENT if key in self.attrs}

    @property
    def pointwise(self) -> bool:
        """A 1x1 conv that reads each position alone: stride 1, no padding."""
        window = self.window
        strides = self.attrs.get("strides") or [1] * len(window)
        pads = self.attrs.get("pads") or [0] * 2 * len(window)
        auto_pad = self.attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        return (all(k == 1 for k in window) and all(s == 1 for s in strides) and not any(pads)
                and auto_pad in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))


def read_conv(editor: Editor, layer: Layer, what: str = "this fix") -> ConvWeights:
    """The layer's Conv, refused unless it is a standard one (groups 1) with constant weights."""
    node = layer.source[0].proto
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        raise FixNotApplicable(f"'{layer.name}' is a {node.op_type}, not a standard Conv")
    attrs = attributes(node)
    if int(attrs.get("group", 1)) != 1:
        raise FixNotApplicable(f"'{layer.name}' is a grouped conv ({attrs['group']} groups); {what} needs groups 1")
    weight_name = constant_source(editor, node.input[1])
    tensor = editor.initializer(weight_name)
    if tensor is None:
        raise FixNotApplicable(f"the weights of '{layer.name}' are not constant")
    weight = editor.array(weight_name)
    if weight.ndim < 3:
        raise FixNotApplicable(f"the kernel of '{layer.name}' has {weight.ndim} dimensions")
    bias, constants = None, (node.input[1],)
    if len(node.input) > 2 and node.input[2]:
        bias = np.asarray(editor.array(constant_source(editor, node.input[2]))).reshape(-1)
        constants = (node.input[1], node.input[2])
    return ConvWeights(node, node.input[0], node.output[0], weight, bias, attrs, numpy_dtype(tensor), constants)


def conv_node(editor: Editor, name: str, data: str, output: str, weight: np.ndarray, bias: np.ndarray | None,
              dtype: np.dtype, placement: dict | None = None, group: int = 1) -> onnx.NodeProto:
    """A Conv node named ``name`` (a fresh name is the caller's business) whose weight
    (``(Cout, Cin / group, *K)``, cast to ``dtype``) and bias become new initializers.
    ``placement`` (strides, pads, dilations, auto_pad) is copied; without it the conv
    reads each position alone, as a pointwise factor must."""
    inputs = [data, editor.add_initializer(f"{name}.weight", np.asarray(weight).astype(dtype))]
    if bias is not None:
        inputs.append(editor.add_initializer(f"{name}.bias", np.asarray(bias).astype(dtype)))
    extra = dict(placement or {})
    if group != 1:
        extra["group"] = group
    return helper.make_node("Conv", inputs, [output], name=name, kernel_shape=list(weight.shape[2:]), **extra)
