"""The symbolic values a TorchScript program is followed with (:mod:`pwlint.formats.pytorch.torchscript.interp`).

Tensors are :class:`~pwlint.formats.pytorch.program.TensorRef` names; numbers, strings and
lists are plain Python values; :data:`UNKNOWN` stands for anything known only at run time.
Also the operator tables of :mod:`pwlint.formats.pytorch.torchscript.builtin_ops`, and the bounds that keep a
crafted file from making pwlint build huge numbers or lists.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from pwlint.formats.pytorch.pickle_scan import Obj
from pwlint.formats.pytorch.program import OpNode, TensorRef
from pwlint.formats.pytorch.torchscript.parsed import ClassInfo


class TorchScriptUnsupported(Exception):
    """A construct pwlint cannot follow without running the program."""


class Raised(Exception):
    """The program raised (``ops.prim.RaiseException``): this path is not the one taken."""


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


def is_known(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(is_known(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str, range, slice))


@dataclass(frozen=True)
class Operator:
    namespace: str
    name: str


@dataclass(frozen=True)
class PyBuiltin:
    name: str


@dataclass(eq=False)
class TensorList:
    """The tensors of ``split``/``chunk``/``unbind``, numbered as they are used."""

    node: OpNode

    def item(self, index: int) -> TensorRef:
        while len(self.node.outputs) <= index:
            self.node.outputs.append(f"{self.node.name}#{len(self.node.outputs)}")
        return TensorRef(self.node.outputs[index])


@dataclass(frozen=True)
class Namespace:
    name: str


@dataclass(eq=False)
class Module:
    obj: Obj
    info: ClassInfo
    path: str


@dataclass(eq=False)
class Bound:
    module: Module
    name: str


@dataclass(frozen=True)
class Function:
    qualname: str


MAX_ITEMS = 100_000
FLOAT_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage"}
#: operators with several tensor outputs, and how many
MULTI_OUTPUT = {
    "max_pool1d_with_indices": 2, "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 2,
    "adaptive_max_pool1d": 2, "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 2,
    "native_batch_norm": 3, "native_layer_norm": 3, "native_group_norm": 3, "sort": 2, "topk": 2,
    "lstm": 3, "gru": 2, "rnn_tanh": 2, "rnn_relu": 2, "var_mean": 2, "std_mean": 2, "aminmax": 2,
}
LIST_OUTPUT = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_chunk", "unsafe_split"}
SCALAR = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floordiv": operator.floordiv, "remainder": operator.mod, "pow": operator.pow,
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
    "ge": operator.ge, "__and__": operator.and_, "__or__": operator.or_,
}
#: ATen functions on lists, options and flags that take tensors without computing one
NOT_LAYERS = {
    "__contains__", "append", "len", "list", "__is__", "__isnot__", "__not__", "__getitem__", "_set_item",
    "is_floating_point", "is_complex", "is_grad_enabled", "is_autocast_enabled", "item", "stride",
    "is_contiguous", "format", "warn", "get_device", "is_nested", "is_sparse", "_has_torch_function",
    "has_torch_function", "_get_tracing_state", "is_scripting", "numel", "dim", "size",
}
PY_BUILTINS = {"annotate", "unchecked_cast", "uninitialized", "getattr", "hasattr", "isinstance", "int",
               "float", "bool", "str", "len", "range", "print", "list", "tuple", "max", "min", "abs", "round"}


def small(value) -> bool:
    """Numbers and sequences of a size a model's shape arithmetic can need."""
    if isinstance(value, (list, tuple, str, range)):
        return len(value) <= MAX_ITEMS
    if isinstance(value, int):
        return abs(value) <= 2**63
    return True


def affordable(op, left, right) -> bool:
    if op is operator.pow:
        return isinstance(right, (int, float)) and abs(right) <= 64
    if op is operator.mul:
        sizes = [len(v) for v in (left, right) if isinstance(v, (list, tuple, str))]
        counts = [v for v in (left, right) if isinstance(v, int)]
        return not sizes or not counts or sizes[0] * max(counts[0], 0) <= MAX_ITEMS
    return True
