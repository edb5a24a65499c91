"""Reading a TorchScript archive (``torch.jit.save``) without torch and without running it.

A TorchScript archive holds ``code/__torch__/**.py`` (the compiled program printed as
Python-like source: one class per module type with its ``forward``), ``data.pkl`` (the
module tree: attribute values, and parameters as ``_rebuild_tensor_v2(storage, offset,
size, ...)`` calls) and ``constants.pkl``.

``torch.jit.load`` is not used: loading runs TorchScript code from the file (a class's
``__setstate__``), and TorchScript reaches operators with side effects. Instead the
source is parsed with :mod:`ast` (never compiled or executed), the pickles are
disassembled by :mod:`pwlint.formats.pytorch.pickle_scan` (never unpickled), and
:mod:`pwlint.formats.pytorch.torchscript.interp` follows ``forward`` symbolically, recording each ATen
operator with the module path it runs in.
"""

from __future__ import annotations

import ast
import warnings

from pwlint.errors import LoadError
from pwlint.formats.pytorch.pickle_scan import Obj, PickleScanError, scan
from pwlint.formats.pytorch.archive import MAX_METADATA, Archive
from pwlint.formats.pytorch.program import Program, Weight
from pwlint.formats.pytorch.torchscript.interp import Interpreter
from pwlint.formats.pytorch.torchscript.parsed import ClassInfo, Code, module_class, tensor_shape
from pwlint.formats.pytorch.torchscript.values import TorchScriptUnsupported


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


def parse_code(archive: Archive, root: str) -> Code:
    code = Code()
    prefix = root + "code/"
    budget = MAX_METADATA
    for member in sorted(archive.names(prefix)):
        if not member.endswith(".py"):
            continue
        text = archive.text(member, budget)
        budget -= len(text)
        module = member[len(prefix): -len(".py")].replace("/", ".")
        try:
            with warnings.catch_warnings():  # odd literals in a damaged file must not print warnings
                warnings.simplefilter("ignore")
                tree = ast.parse(text, filename=member)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise LoadError(f"{archive.path}: cannot parse TorchScript code {member} ({type(exc).__name__})") from exc
        for item in tree.body:
            if isinstance(item, ast.FunctionDef):
                code.functions[f"{module}.{item.name}"] = item
            elif isinstance(item, ast.ClassDef):
                code.classes[f"{module}.{item.name}"] = _class(f"{module}.{item.name}", item)
    return code


def _class(qualname: str, node: ast.ClassDef) -> ClassInfo:
    info = ClassInfo(qualname)
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            info.methods[item.name] = item
        elif isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
            if item.targets[0].id in ("__parameters__", "__buffers__"):
                names = _literal(item.value) or []
                target = info.parameters if item.targets[0].id == "__parameters__" else info.buffers
                target.extend(n for n in names if isinstance(n, str))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
            info.constants[item.target.id] = _literal(item.value)
    return info


def _pickle(archive: Archive, member: str):
    try:
        return scan(archive.read(member, MAX_METADATA))
    except PickleScanError as exc:
        raise LoadError(f"{archive.path}: cannot read {member} ({exc})") from exc


def register_parameters(program: Program, code: Code, root: Obj) -> dict[int, str]:
    """Every parameter and buffer of the module tree, by first path; returns id(tensor) -> name."""
    names: dict[int, str] = {}
    queue, seen = [(root, "")], {id(root)}
    while queue:
        obj, path = queue.pop(0)
        info = module_class(code, obj)
        state = obj.state if isinstance(obj.state, dict) else {}
        for attr, value in state.items():
            if not isinstance(attr, str):
                continue
            child = f"{path}.{attr}" if path else attr
            shape = tensor_shape(value)
            if shape is not None and info is not None and id(value) not in names:
                kind = "parameter" if attr in info.parameters else "buffer" if attr in info.buffers else "constant"
                names[id(value)] = child
                program.weights[child] = Weight(child, shape, kind)
                if kind == "parameter":
                    program.parameters[child] = program.weights[child].numel
            elif module_class(code, value) is not None and id(value) not in seen:
                seen.add(id(value))
                queue.append((value, child))
    return names


def read_torchscript(archive: Archive, root: str) -> Program:
    code = parse_code(archive, root)
    tree = _pickle(archive, root + "data.pkl")
    constants = _pickle(archive, root + "constants.pkl") if root + "constants.pkl" in archive.infos else ()
    info = module_class(code, tree)
    if info is None or "forward" not in info.methods:
        raise LoadError(f"{archive.path}: TorchScript archive without a module with a forward method")
    program = Program()
    names = register_parameters(program, code, tree)
    try:
        Interpreter(code, program, names, constants if isinstance(constants, tuple) else ()).run(tree, info)
    except TorchScriptUnsupported as exc:
        raise LoadError(
            f"{archive.path}: cannot follow this TorchScript program statically ({exc}); "
            "export the model with torch.export.save() to a .pt2 file"
        ) from exc
    except RecursionError as exc:
        raise LoadError(f"{archive.path}: TorchScript program nested too deeply to read") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise LoadError(
            f"{archive.path}: unexpected content in the TorchScript program ({type(exc).__name__}: {exc})"
        ) from exc
    program.meta.update(archive="torchscript", model_class=info.display)
    return program
