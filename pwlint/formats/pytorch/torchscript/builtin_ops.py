"""The operators and Python builtins a TorchScript program calls, evaluated symbolically
for :mod:`pwlint.formats.pytorch.torchscript.interp`.

Size queries (``torch.dim``, ``torch.size``), integer and list arithmetic and a few
Python builtins are computed when their arguments are known. Every other ``torch.X`` /
``ops.aten.X`` call becomes an :class:`OpNode` named like an FX node (``conv2d``,
``conv2d_1``...), with arguments named after the ATen schema where pwlint knows it
(:data:`pwlint.formats.pytorch.ops.SCHEMAS`) and its output shape worked out by
:mod:`pwlint.formats.pytorch.shapes`.
"""

from __future__ import annotations

import operator
from math import prod

from pwlint.formats.pytorch.pickle_scan import Call, Global, Persistent
from pwlint.formats.pytorch.ops import SCHEMAS
from pwlint.formats.pytorch.program import OpNode, Program, TensorRef, Weight
from pwlint.formats.pytorch.shapes import guess_input, infer
from pwlint.formats.pytorch.torchscript.parsed import plain, tensor_shape
from pwlint.formats.pytorch.torchscript.values import (
    FLOAT_STORAGES, LIST_OUTPUT, MAX_ITEMS, MULTI_OUTPUT, NOT_LAYERS, PY_BUILTINS, SCALAR, UNKNOWN,
    Operator, PyBuiltin, Raised, TensorList, TorchScriptUnsupported, affordable, is_known, small,
)

MAX_NODES = 1_000_000


class Builtins:
    def __init__(self, program: Program, constants: tuple) -> None:
        self.program = program
        self.constants = constants
        self.counts: dict[str, int] = {}
        self.line: int | None = None
        self.function: str | None = None
        self.stack: list = []

    # values -----------------------------------------------------------------------
    def operator_ref(self, namespace: str, name: str) -> Operator:
        return Operator(namespace, name)

    def python_builtin(self, name: str):
        return PyBuiltin(name) if name in PY_BUILTINS else UNKNOWN

    def truth(self, value) -> bool | None:
        return bool(value) if is_known(value) else None

    def tensors_in(self, value) -> list[TensorRef]:
        if isinstance(value, TensorRef):
            return [value]
        if isinstance(value, TensorList):
            return [TensorRef(name) for name in value.node.outputs]
        if isinstance(value, (list, tuple)):
            return [t for item in value for t in self.tensors_in(item)]
        return []

    def shape(self, tensor: str | None) -> tuple | None:
        if tensor is None:
            return None
        shape = self.program.shapes.get(tensor)
        if shape is None and tensor in self.program.weights:
            return self.program.weights[tensor].shape
        return shape

    def constant(self, attr: str):
        index = int(attr[1:]) if attr[:1] == "c" and attr[1:].isdigit() else -1
        if not 0 <= index < len(self.constants):
            return UNKNOWN
        value = self.constants[index]
        shape = tensor_shape(value)
        if shape is None:
            value = plain(value)
            return UNKNOWN if isinstance(value, (Call, Global, Persistent)) else value
        name = f"CONSTANTS.{attr}"
        if name not in self.program.weights:
            storage = value.args[0].pid if value.args and isinstance(value.args[0], Persistent) else ()
            floating = len(storage) > 1 and isinstance(storage[1], Global) and storage[1].name in FLOAT_STORAGES
            # frozen TorchScript keeps the model's weights as constants; a 0-d one is a
            # Python number the tracer turned into a tensor (a norm's eps), not a weight
            weight = floating and shape != ()
            self.program.weights[name] = Weight(name, shape, "parameter" if weight else "constant")
            if weight:
                self.program.parameters[name] = self.program.weights[name].numel
        return TensorRef(name)

    def subscript(self, value, key):
        if isinstance(value, TensorList) and isinstance(key, int) and key >= 0:
            return value.item(key)
        if isinstance(value, (list, tuple, str)) and isinstance(key, (int, slice)):
            try:
                return value[key]
            except IndexError:
                raise Raised() from None
        return UNKNOWN

    def arithmetic(self, op, left, right):
        if op is operator.add and isinstance(left, list) and isinstance(right, list):
            # list concatenation works on unknown elements too
            return left + right if len(left) + len(right) <= MAX_ITEMS else UNKNOWN
        if op is None or not (is_known(left) and is_known(right)) or left is None or right is None:
            return UNKNOWN
        if not (small(left) and small(right)) or not affordable(op, left, right):
            return UNKNOWN  # a crafted file must not make pwlint build huge numbers or lists
        try:
            result = op(left, right)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return UNKNOWN
        if not small(result):
            return UNKNOWN
        return list(result) if isinstance(result, tuple) and isinstance(left, list) else result

    # calls ------------------------------------------------------------------------
    def builtin(self, func, args: list, kwargs: dict):
        if isinstance(func, PyBuiltin):
            return self.call_python(func.name, args)
        if not isinstance(func, Operator):
            return UNKNOWN
        name, tensors = func.name, self.tensors_in(list(args) + list(kwargs.values()))
        if func.namespace == "prim":  # interpreter primitives: dtype, device, raise... not layers
            if name == "RaiseException":
                raise Raised()
            if name in ("NumToTensor", "unchecked_unwrap_optional", "data"):
                return args[0] if args else UNKNOWN
            return UNKNOWN
        if func.namespace == "aten" and name in ("dim", "size", "numel", "len") and args and isinstance(args[0], TensorRef):
            return self.size_query(name, args)
        if func.namespace == "aten" and (not tensors or name in NOT_LAYERS):
            return self.scalar(name, args)
        return self.emit(func, args, kwargs)

    def size_query(self, name: str, args: list):
        shape = self.shape(args[0].name)
        if shape is None:
            return UNKNOWN
        if name == "dim":
            return len(shape)
        if name == "numel":
            return UNKNOWN if None in shape else prod(shape)
        if name == "len":
            return UNKNOWN if not shape or shape[0] is None else shape[0]
        if len(args) > 1 and isinstance(args[1], int):
            size = shape[args[1]] if -len(shape) <= args[1] < len(shape) else None
            return UNKNOWN if size is None else size
        return [UNKNOWN if s is None else s for s in shape]

    def scalar(self, name: str, args: list):
        if name in SCALAR and len(args) == 2:
            return self.arithmetic(SCALAR[name], args[0], args[1])
        if name in ("__is__", "__isnot__") and len(args) == 2:
            if args[0] is UNKNOWN or args[1] is UNKNOWN:
                return UNKNOWN
            return (args[0] is args[1]) == (name == "__is__")
        if name == "__not__" and args:
            truth = self.truth(args[0])
            return UNKNOWN if truth is None else not truth
        if name == "len" and args and isinstance(args[0], (list, tuple, str)):
            return len(args[0])
        if name == "list" and args and isinstance(args[0], (list, tuple)):
            return list(args[0])
        if name == "slice" and args and isinstance(args[0], list):
            bounds = [a if isinstance(a, int) else None for a in (list(args[1:]) + [None, None, None])[:3]]
            return args[0][slice(*bounds)]
        if name == "append" and len(args) == 2 and isinstance(args[0], list):
            args[0].append(args[1])
            return args[0]
        if name == "__getitem__" and len(args) == 2:
            return self.subscript(args[0], args[1])
        if name in NOT_LAYERS:
            return UNKNOWN
        if name in ("format", "warn", "str"):
            return ""
        if name in ("Int", "Float", "Bool", "neg", "floor", "ceil", "min", "max") or name.startswith("__"):
            return UNKNOWN
        return self.emit(Operator("aten", name), args, {})  # factories: zeros, ones, arange...

    def call_python(self, name: str, args: list):
        first = args[0] if args else UNKNOWN
        if name in ("annotate", "unchecked_cast"):
            return args[1] if len(args) > 1 else UNKNOWN
        if name == "getattr" and len(args) >= 2 and isinstance(args[1], str):
            return self.attribute(first, args[1])
        if name in ("int", "float", "bool", "str", "abs", "round", "list", "tuple", "len", "max", "min", "range"):
            if not is_known(args) or not args or not all(small(a) for a in args):
                return UNKNOWN
            try:
                return {"int": int, "float": float, "bool": bool, "str": str, "abs": abs, "round": round,
                        "list": list, "tuple": tuple, "len": len, "max": max, "min": min, "range": range}[name](*args)
            except (TypeError, ValueError, OverflowError):
                return UNKNOWN
        return None if name == "print" else UNKNOWN

    # operators --------------------------------------------------------------------
    def _convert(self, value):
        if isinstance(value, TensorList):
            return self.tensors_in(value)
        if isinstance(value, (list, tuple)):
            return [self._convert(v) for v in value]
        if isinstance(value, TensorRef) or is_known(value):
            return value
        return None

    def emit(self, func: Operator, args: list, kwargs: dict):
        if len(self.program.nodes) >= MAX_NODES:
            raise TorchScriptUnsupported("too many operators")
        name = func.name
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        schema = SCHEMAS.get(base, ())
        named = {(schema[i] if i < len(schema) else "self" if i == 0 else f"arg{i}"): self._convert(v)
                 for i, v in enumerate(args)}
        named.update({k: self._convert(v) for k, v in kwargs.items()})
        count = self.counts.get(name, 0)
        node_name = name if count == 0 else f"{name}_{count}"
        while node_name in self.program.shapes:
            count += 1
            node_name = f"{name}_{count}"
        self.counts[name] = count + 1
        count = 2 if base in ("max", "min") and len(args) > 1 and isinstance(args[1], int) else MULTI_OUTPUT.get(base, 1)
        outputs = [node_name] + [f"{node_name}#{i}" for i in range(1, count)]
        node = OpNode(node_name, f"{func.namespace}.{name}", named, outputs, tuple(self.stack),
                      source={"op": f"{func.namespace}::{name}", "function": self.function, "line": self.line})
        for _, tensor in node.tensor_args():
            if tensor in self.program.inputs and self.program.shapes.get(tensor) is None:
                self.program.shapes[tensor] = guess_input(node, self.shape(node.tensor("weight")))
        shape = infer(node, self.shape)
        for index, out in enumerate(outputs):
            self.program.shapes[out] = shape if index == 0 or base.startswith("max_pool") else None
        self.program.nodes.append(node)
        if base in LIST_OUTPUT:
            return TensorList(node)
        return TensorRef(node_name) if len(outputs) == 1 else tuple(TensorRef(o) for o in outputs)

    def rollback(self, mark: int) -> None:
        for node in self.program.nodes[mark:]:
            for out in node.outputs:
                self.program.shapes.pop(out, None)
        del self.program.nodes[mark:]
