"""Evaluating TorchScript expressions over symbolic values, for :mod:`pwlint.formats.pytorch.torchscript.interp`.

Names resolve to local variables, to ``torch``/``ops``/``__torch__``/``CONSTANTS``, or to
the few Python builtins TorchScript prints; ``self.x`` reads the module's attribute from
the disassembled ``data.pkl`` (a submodule, a parameter as a tensor name, a number or a
list) or its class constants; arithmetic and comparisons are computed on known values.
"""

from __future__ import annotations

import ast
import operator

from pwlint.formats.pytorch.pickle_scan import Call, Global, Obj, Persistent
from pwlint.formats.pytorch.program import TensorRef
from pwlint.formats.pytorch.torchscript.parsed import module_class, plain
from pwlint.formats.pytorch.torchscript.builtin_ops import Builtins
from pwlint.formats.pytorch.torchscript.values import UNKNOWN, Bound, Function, Module, Namespace, TorchScriptUnsupported, is_known

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}


class Expressions(Builtins):
    """Expression evaluation; the interpreter provides ``call``, ``code`` and ``names``."""

    def eval(self, node: ast.expr, env: dict):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id] if node.id in env else self.global_name(node.id)
        if isinstance(node, ast.Attribute):
            return self.attribute(self.eval(node.value, env), node.attr)
        if isinstance(node, ast.Call):
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                raise TorchScriptUnsupported("a call with * or ** arguments")
            func = self.eval(node.func, env)
            args = [self.eval(a, env) for a in node.args]
            return self.call(func, args, {k.arg: self.eval(k.value, env) for k in node.keywords})
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.eval(e, env) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            return UNKNOWN
        if isinstance(node, ast.Subscript):
            return self.subscript(self.eval(node.value, env), self.eval(node.slice, env))
        if isinstance(node, ast.Slice):
            parts = [self.eval(p, env) if p is not None else None for p in (node.lower, node.upper, node.step)]
            return slice(*parts) if all(p is None or isinstance(p, int) for p in parts) else UNKNOWN
        if isinstance(node, ast.UnaryOp):
            value = self.eval(node.operand, env)
            if isinstance(node.op, ast.Not):
                truth = self.truth(value)
                return UNKNOWN if truth is None else not truth
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value if isinstance(node.op, ast.USub) else value
            return UNKNOWN
        if isinstance(node, ast.BinOp):
            return self.arithmetic(BINARY.get(type(node.op)), self.eval(node.left, env), self.eval(node.right, env))
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self.eval(node.left, env), self.eval(node.comparators[0], env)
            if isinstance(node.ops[0], (ast.Is, ast.IsNot)):
                same = self.identical(left, right)
                return same if same is UNKNOWN or isinstance(node.ops[0], ast.Is) else not same
            return self.arithmetic(COMPARE.get(type(node.ops[0])), left, right)
        if isinstance(node, ast.BoolOp):
            values = [self.truth(self.eval(v, env)) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in values else UNKNOWN if None in values else True
            return True if True in values else UNKNOWN if None in values else False
        if isinstance(node, ast.IfExp):
            condition = self.truth(self.eval(node.test, env))
            return UNKNOWN if condition is None else self.eval(node.body if condition else node.orelse, env)
        raise TorchScriptUnsupported(f"'{type(node).__name__}' expression")

    def global_name(self, name: str):
        if name in ("torch", "ops", "__torch__", "CONSTANTS"):
            return Namespace(name)
        if name in ("inf", "nan"):
            return float(name)
        return self.python_builtin(name)

    def attribute(self, base, attr: str):
        if isinstance(base, Namespace):
            if base.name == "torch":
                return Namespace("ops") if attr == "ops" else self.operator_ref("aten", attr)
            if base.name == "ops":
                return Namespace(f"ops.{attr}")
            if base.name.startswith("ops."):
                return self.operator_ref(base.name[4:], attr)
            if base.name == "CONSTANTS":
                return self.constant(attr)
            qualname = f"{base.name}.{attr}"
            return Function(qualname) if qualname in self.code.functions else Namespace(qualname)
        if isinstance(base, Module):
            return self.module_attribute(base, attr)
        return UNKNOWN

    def module_attribute(self, module: Module, attr: str):
        state = module.obj.state if isinstance(module.obj.state, dict) else {}
        if attr in state:
            value = state[attr]
            if id(value) in self.names:
                return TensorRef(self.names[id(value)])
            info = module_class(self.code, value)
            if info is not None:
                return Module(value, info, f"{module.path}.{attr}" if module.path else attr)
            value = plain(value)
            if isinstance(value, (list, tuple)):  # e.g. an LSTM's _flat_weights
                items = [TensorRef(self.names[id(v)]) if id(v) in self.names else
                         UNKNOWN if isinstance(v, (Call, Obj, Persistent, Global)) else v for v in value]
                return items if isinstance(value, list) else tuple(items)
            return UNKNOWN if isinstance(value, (Call, Obj, Persistent, Global)) else value
        if attr in module.info.methods:
            return Bound(module, attr)
        return module.info.constants.get(attr, UNKNOWN)

    def identical(self, left, right):
        if left is None or right is None:
            if left is UNKNOWN or right is UNKNOWN:
                return UNKNOWN
            return left is right
        return UNKNOWN if not (is_known(left) and is_known(right)) else left == right
