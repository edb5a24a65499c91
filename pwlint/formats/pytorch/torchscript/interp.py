"""Following a TorchScript module's ``forward`` symbolically, from its parsed source.

Statements of the printed TorchScript are walked over symbolic values
(:mod:`pwlint.formats.pytorch.torchscript.values`): calls into submodules are followed with the module
path on the stack, expressions are evaluated by :mod:`pwlint.formats.pytorch.torchscript.evaluate`, and every
ATen operator reached becomes an :class:`~pwlint.formats.pytorch.program.OpNode`
(:mod:`pwlint.formats.pytorch.torchscript.builtin_ops`). A branch whose condition is unknown (a shape check
on an unknown size) is followed into its first arm, and into the other if the first
raises; a loop with an unknown trip count is accepted only if it computes no tensors.
Nothing is executed: the source is only walked as a syntax tree.
"""

from __future__ import annotations

import ast

from pwlint.formats.pytorch.pickle_scan import Obj
from pwlint.formats.pytorch.program import ModuleCall, Program, TensorRef
from pwlint.formats.pytorch.torchscript.parsed import ClassInfo, Code
from pwlint.formats.pytorch.torchscript.evaluate import Expressions
from pwlint.formats.pytorch.torchscript.values import (
    UNKNOWN, Bound, Function, Module, Namespace, Raised, TensorList, TorchScriptUnsupported,
)

MAX_STEPS = 2_000_000
MAX_DEPTH = 200
MAX_LOOP = 10_000

__all__ = ["Interpreter", "TorchScriptUnsupported"]


class _Return(Exception):
    def __init__(self, value) -> None:
        self.value = value


class Interpreter(Expressions):
    def __init__(self, code: Code, program: Program, names: dict[int, str], constants: tuple) -> None:
        super().__init__(program, constants)
        self.code = code
        self.names = names
        self.stack: list[ModuleCall] = []
        self.selves: list[Obj] = []
        self.calls: dict[str, int] = {}
        self.steps = 0
        self.depth = 0

    def run(self, root: Obj, info: ClassInfo) -> None:
        forward = info.methods["forward"]
        args = []
        for arg in forward.args.args[1:]:
            if isinstance(arg.annotation, ast.Name) and arg.annotation.id == "Tensor":
                self.program.inputs.append(arg.arg)
                self.program.shapes[arg.arg] = None
                args.append(TensorRef(arg.arg))
            else:
                args.append(UNKNOWN)
        result = self.invoke(Module(root, info, ""), forward, args, {})
        self.program.outputs = [t.name for t in self.tensors_in(result)]

    # calls ------------------------------------------------------------------------
    def invoke(self, module: Module | None, fn: ast.FunctionDef, args: list, kwargs: dict):
        if self.depth > MAX_DEPTH:
            raise TorchScriptUnsupported("calls nested too deeply")
        params = fn.args.args[1:] if module is not None else fn.args.args
        defaults = dict(zip([p.arg for p in fn.args.args[len(fn.args.args) - len(fn.args.defaults):]], fn.args.defaults))
        env: dict = {fn.args.args[0].arg: module} if module is not None and fn.args.args else {}
        for index, param in enumerate(params):
            if index < len(args):
                env[param.arg] = args[index]
            elif param.arg in kwargs:
                env[param.arg] = kwargs[param.arg]
            else:
                env[param.arg] = self.eval(defaults[param.arg], {}) if param.arg in defaults else UNKNOWN
        push = module is not None and module.path and (not self.selves or self.selves[-1] is not module.obj)
        if push:
            count = self.calls.get(module.path, 0)
            self.calls[module.path] = count + 1
            key = module.path if count == 0 else f"{module.path}@{count}"
            self.stack.append(ModuleCall(key, module.path, module.info.display))
        if module is not None:
            self.selves.append(module.obj)
        caller, self.function, line = self.function, fn.name, self.line
        self.depth += 1
        try:
            self.block(fn.body, env)
            return None
        except _Return as ret:
            return ret.value
        finally:
            self.depth -= 1
            self.function, self.line = caller, line
            if module is not None:
                self.selves.pop()
            if push:
                self.stack.pop()

    def call(self, func, args: list, kwargs: dict):
        if isinstance(func, Bound):
            return self.invoke(func.module, func.module.info.methods[func.name], args, kwargs)
        if isinstance(func, Function):
            return self.invoke(None, self.code.functions[func.qualname], args, kwargs)
        if isinstance(func, Namespace) or func is UNKNOWN:
            if any(self.tensors_in(args)):
                raise TorchScriptUnsupported("a call of a function that is not in the archive")
            return UNKNOWN
        return self.builtin(func, args, kwargs)

    # statements -------------------------------------------------------------------
    def block(self, statements: list, env: dict) -> None:
        for statement in statements:
            self.statement(statement, env)

    def statement(self, node: ast.stmt, env: dict) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TorchScriptUnsupported("program too large to follow")
        self.line = getattr(node, "lineno", None)
        if isinstance(node, ast.Assign):
            value = self.eval(node.value, env)
            for target in node.targets:
                self.assign(target, value, env)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.assign(node.target, self.eval(node.value, env), env)
        elif isinstance(node, ast.Expr):
            self.eval(node.value, env)
        elif isinstance(node, ast.Return):
            raise _Return(self.eval(node.value, env) if node.value is not None else None)
        elif isinstance(node, ast.If):
            self.branch(node, env)
        elif isinstance(node, ast.For):
            self.loop(node, env)
        elif isinstance(node, ast.Raise):
            raise Raised()
        elif isinstance(node, ast.Assert):
            if self.truth(self.eval(node.test, env)) is False:
                raise Raised()
        elif not isinstance(node, (ast.Pass, ast.Delete)):
            raise TorchScriptUnsupported(f"'{type(node).__name__}' statement")

    def assign(self, target: ast.expr, value, env: dict) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for item, part in zip(target.elts, self.unpack(value, len(target.elts))):
                self.assign(item, part, env)
        elif isinstance(target, ast.Subscript):
            container, key = self.eval(target.value, env), self.eval(target.slice, env)
            if isinstance(container, list) and isinstance(key, int) and -len(container) <= key < len(container):
                container[key] = value
        elif not isinstance(target, ast.Attribute):
            raise TorchScriptUnsupported(f"assignment to {type(target).__name__}")

    def unpack(self, value, count: int) -> list:
        if isinstance(value, (list, tuple)) and len(value) == count:
            return list(value)
        if isinstance(value, TensorList):
            return [value.item(i) for i in range(count)]
        if value is UNKNOWN:
            return [UNKNOWN] * count
        raise TorchScriptUnsupported("unpacking a value of unknown length")

    def branch(self, node: ast.If, env: dict) -> None:
        condition = self.truth(self.eval(node.test, env))
        if condition is not None:
            self.block(node.body if condition else node.orelse, env)
            return
        mark, saved = len(self.program.nodes), dict(env)
        try:
            self.block(node.body, env)
            return
        except (Raised, TorchScriptUnsupported):
            self.rollback(mark)
            env.clear()
            env.update(saved)
        self.block(node.orelse, env)

    def loop(self, node: ast.For, env: dict) -> None:
        items = self.eval(node.iter, env)
        if not isinstance(items, (list, tuple, range)) or len(items) > MAX_LOOP:
            self.opaque_loop(node, env)
            return
        for item in items:
            self.assign(node.target, item, env)
            self.block(node.body, env)
        self.block(node.orelse, env)

    def opaque_loop(self, node: ast.For, env: dict) -> None:
        """A loop whose trip count is only known at run time: accepted when it computes
        no tensors (size checks); every variable it changes becomes unknown."""
        mark, before = len(self.program.nodes), dict(env)
        self.assign(node.target, UNKNOWN, env)
        try:
            self.block(node.body, env)
        except Raised:
            pass
        if len(self.program.nodes) > mark:
            raise TorchScriptUnsupported("a loop over tensors whose trip count is only known at run time")
        for name, value in list(env.items()):
            if name not in before or before[name] is not value:
                env[name] = UNKNOWN
