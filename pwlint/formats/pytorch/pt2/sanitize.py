"""A ``.pt2`` archive that ``torch.export.load`` can open without running anything
that came with the file.

``torch.export.load`` (torch 2.13) is not safe on a file one did not write:

- ``data/sample_inputs/<model>.pt`` is unpickled with ``weights_only=True`` and, when
  that fails, again with ``weights_only=False``; weights and constants marked
  ``use_pickle`` are unpickled with ``weights_only=False`` straight away, custom and
  opaque objects with ``torch._C._pickle_load_obj`` and ``pickle.loads``;
- every symbolic size (``expr_str``) goes through ``sympy.sympify``, which ``eval``s it;
- ``ExportedProgram.module()`` ``exec``s the program's ``guards_code``;
- the input/output tree specs may name a module to import (``defaultdict`` factories,
  enums);
- operator targets are looked up as attributes of ``torch``, ``operator`` or ``math``
  (``torch.load`` is one) and called when the graph runs or is traced again;
- AOTInductor members (``data/aotinductor/``) are shared libraries it loads.

So the fix backend never loads the user's file. :func:`sanitized_copy` reads the
archive as a zip (with :mod:`pwlint.formats.pytorch.archive`), checks the program's JSON
and writes a new archive holding only the program (re-serialised, its guards code
dropped), the weight and constant configs and the raw tensor payloads they name, and an
empty sample-inputs member. Anything that would need a pickle, an unknown operator, or
an expression outside a small arithmetic grammar is refused with
:class:`~pwlint.errors.FixNotApplicable`. :func:`check_graph_module` checks the loaded
graph once more before anything runs it.
"""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

from pwlint.errors import FixNotApplicable, LoadError
from pwlint.formats.pytorch.archive import MAX_METADATA, MAX_PROGRAM, classify, open_archive

#: tensor payloads: as large as the model needs
MAX_PAYLOAD = 2**40
MODEL = "model"
SAFE_MEMBER = re.compile(r"^[A-Za-z0-9_.-]+$")

#: ``_operator``, ``math`` and ``torch`` callables that exported programs use for size
#: arithmetic (as serialized targets); every other call must be an ATen operator overload
PYTHON_TARGETS = frozenset(
    [f"_operator.{name}" for name in (
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "pow", "abs",
        "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "xor",
    )]
    + [f"math.{name}" for name in ("ceil", "floor", "trunc", "sqrt")]
    + [f"torch.{name}" for name in (
        "sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum", "_sym_sqrt",
    )]
)
ATEN_TARGET = re.compile(r"^torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
#: ATen operators that touch files
DENIED_ATEN = frozenset({"from_file"})
#: argument kinds the backend can load without custom objects or subgraphs
DENIED_ARGUMENTS = frozenset({"as_custom_obj", "as_graph", "as_operator"})
#: node metadata kept in the sanitized program (the rest is dropped, not parsed)
KEPT_METADATA = ("nn_module_stack", "stack_trace", "torch_fn")
#: tree spec node types of plain inputs and outputs
TREESPEC_TYPES = frozenset({
    None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict",
    "torch.fx.immutable_collections.immutable_list", "torch.fx.immutable_collections.immutable_dict",
})

#: names a symbolic size expression may use (sympy's srepr of torch's size arithmetic)
SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Xor",
    "True", "False", "true", "false", "BooleanTrue", "BooleanFalse", "oo", "zoo", "nan",
    "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "floor", "ceiling", "sqrt",
    "positive", "negative", "integer", "nonnegative", "nonpositive", "real", "finite", "zero",
    "nonzero", "even", "odd", "precision",
    # torch.utils._sympy.functions, as ExportedProgramDeserializer passes them to sympify
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity",
})
SYMBOL_NAME = re.compile(r"^[a-z]+[0-9]+$")
EXPR_TOKEN = re.compile(
    r"\s+|'[A-Za-z][A-Za-z0-9_]*'|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|[A-Za-z][A-Za-z0-9_]*"
    r"|\*\*|//|>=|<=|==|!=|[-+*/%(),<>=]"
)
MAX_EXPR = 65_536


def _refuse(why: str) -> FixNotApplicable:
    return FixNotApplicable(f"the .pt2 file cannot be loaded safely for fixing: {why}")


def check_expression(text) -> None:
    """Symbolic sizes are parsed by ``sympy.sympify`` (an ``eval``): only let through
    arithmetic on size symbols, written with sympy's own names."""
    if not isinstance(text, str) or len(text) > MAX_EXPR:
        raise _refuse("a symbolic size expression is not a short string")
    position = 0
    while position < len(text):
        match = EXPR_TOKEN.match(text, position)
        if match is None:
            raise _refuse(f"unexpected character {text[position]!r} in symbolic size expression {text[:80]!r}")
        token = match.group()
        if token[0].isalpha() and token not in SYMPY_NAMES and not SYMBOL_NAME.match(token):
            raise _refuse(f"unknown name {token!r} in symbolic size expression {text[:80]!r}")
        position = match.end()


def _check_target(target) -> None:
    if not isinstance(target, str):
        raise _refuse("an operator target is not a string")
    if target in PYTHON_TARGETS:
        return
    match = ATEN_TARGET.match(target)
    if match is None or match.group(1).startswith("__") or match.group(2).startswith("__"):
        raise _refuse(f"operator {target!r} is not an ATen operator")
    if match.group(1) in DENIED_ATEN:
        raise _refuse(f"operator {target!r} reads files")


def _walk(value, visit) -> None:
    """Call ``visit(key, value)`` for every key of every dict inside ``value`` (iteratively)."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, item in current.items():
                visit(key, item)
                stack.append(item)
        elif isinstance(current, list):
            stack.extend(current)


def _check_treespec(text) -> None:
    if text is None:
        return
    try:
        spec = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _refuse("the program's input/output structure is not valid JSON") from exc

    def visit(key, value):
        if key == "type" and value not in TREESPEC_TYPES:
            raise _refuse(f"the program's inputs or outputs use the container type {value!r}")
        if key in ("__enum__", "default_factory_module", "default_factory_name"):
            raise _refuse("the program's input/output structure names a module to import")
        if key == "context" and isinstance(value, str):
            try:  # torch parses the context as JSON again, with a hook that imports enums
                inner = json.loads(value)
            except (ValueError, RecursionError):
                return
            _walk(inner, visit)

    _walk(spec, visit)


def check_program(document: dict) -> dict:
    """Check a serialized ExportedProgram and return the copy to load: guards code dropped,
    node metadata cut to what the backend reads."""
    if not isinstance(document, dict) or not isinstance(document.get("graph_module"), dict):
        raise _refuse("the serialized program is malformed")

    def visit(key, value):
        if key == "expr_str":
            check_expression(value)
        elif key in DENIED_ARGUMENTS:
            raise _refuse("the program uses custom objects or subgraphs (higher-order operators)")
        elif key in ("in_spec", "out_spec"):
            _check_treespec(value)

    _walk(document, visit)
    module = document["graph_module"]
    graph = module.get("graph") or {}
    for node in graph.get("nodes") or []:
        _check_target(node.get("target"))
        metadata = node.get("metadata") or {}
        node["metadata"] = {k: v for k, v in metadata.items() if k in KEPT_METADATA and isinstance(v, str)}
    for spec in (module.get("signature") or {}).get("input_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in ("user_input", "parameter", "buffer", "tensor_constant", "constant_input"):
            raise _refuse(f"the program takes a {kind} input")
    for symbol in document.get("range_constraints") or {}:
        if not SYMBOL_NAME.match(symbol):
            raise _refuse(f"unexpected symbol name {symbol[:40]!r}")
    document["guards_code"] = []  # Python source that ExportedProgram.module() exec()s
    return document


def _check_payloads(config: dict, prefixes: tuple[str, ...], what: str) -> list[str]:
    """The payload files a weights/constants config names; refuses pickled entries."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(f"the {what} config is malformed")
    files = []
    for fqn, entry in entries.items():
        if not isinstance(entry, dict):
            raise _refuse(f"the {what} config is malformed")
        name = entry.get("path_name")
        if entry.get("use_pickle"):
            raise _refuse(f"the program needs the {what[:-1]} '{fqn}', which is stored as a pickle")
        if not isinstance(name, str) or not SAFE_MEMBER.match(name) or not name.startswith(prefixes):
            raise _refuse(f"the {what[:-1]} '{fqn}' is stored as {name!r}, not as a tensor payload")
        meta = entry.get("tensor_meta")
        if not isinstance(meta, dict):
            raise _refuse(f"the {what[:-1]} '{fqn}' has no tensor metadata")
        device = (meta.get("device") or {}).get("type")
        if device != "cpu":
            raise _refuse(f"the {what[:-1]} '{fqn}' is stored for device {device!r}; only CPU models can be fixed")
        files.append(name)
    return sorted(set(files))


def sanitized_copy(path: str | Path, folder: Path) -> Path:
    """Write the safe-to-load copy of the ``.pt2`` file ``path`` into ``folder``."""
    try:
        archive = open_archive(str(path))
    except LoadError as exc:
        raise FixNotApplicable(str(exc)) from exc
    if archive is None:
        raise FixNotApplicable(f"{path}: not a .pt2 archive")
    try:
        try:
            kind, root = classify(archive)
        except LoadError as exc:
            raise FixNotApplicable(str(exc)) from exc
        if kind == "pt2-legacy":
            raise _refuse("an archive from torch 2.7 or older keeps its weights in pickles; "
                                "save the program again with torch.export.save()")
        if kind != "pt2":
            raise FixNotApplicable(f"only .pt2 archives from torch.export.save() can be fixed, not a {kind} file")
        prefix = root + "models/"
        programs = sorted(n for n in archive.names(prefix) if n.endswith(".json") and "/" not in n[len(prefix):])
        member = prefix + "model.json" if prefix + "model.json" in programs else programs[0]
        model = member[len(prefix): -len(".json")]
        try:
            document = check_program(archive.json(member, MAX_PROGRAM))
            weights_member = f"{root}data/weights/{model}_weights_config.json"
            if weights_member not in archive.infos:
                raise _refuse("the archive has no weights config (weights in a legacy pickle)")
            weights = archive.json(weights_member, MAX_METADATA)
            constants_member = f"{root}data/constants/{model}_constants_config.json"
            constants = (archive.json(constants_member, MAX_METADATA) if constants_member in archive.infos
                         else {"config": {}})
            weight_files = _check_payloads(weights, ("weight_",), "weights")
            constant_files = _check_payloads(constants, ("tensor_",), "constants")
            target = folder / f"{MODEL}.pt2"
            _write(target, archive, root, document, weights, constants, weight_files, constant_files)
        except LoadError as exc:
            raise FixNotApplicable(str(exc)) from exc
    finally:
        archive.close()
    return target


def _write(target: Path, archive, root: str, document, weights, constants, weight_files, constant_files) -> None:
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    with PT2ArchiveWriter(str(target)) as writer:
        writer.write_string(f"models/{MODEL}.json", json.dumps(document))
        writer.write_string(f"data/weights/{MODEL}_weights_config.json", json.dumps(weights))
        writer.write_string(f"data/constants/{MODEL}_constants_config.json", json.dumps(constants))
        writer.write_bytes(f"data/sample_inputs/{MODEL}.pt", b"")  # no example inputs: nothing to unpickle
        for folder, names in (("weights", weight_files), ("constants", constant_files)):
            for name in names:
                member = f"{root}data/{folder}/{name}"
                if member not in archive.infos:
                    raise FixNotApplicable(f"damaged archive: {member} is missing")
                writer.write_bytes(f"data/{folder}/{name}", archive.read(member, MAX_PAYLOAD))


def _python_callables() -> set:
    import math

    import torch

    modules = {"_operator": operator, "math": math, "torch": torch}
    found = set()
    for target in PYTHON_TARGETS:
        module, _, name = target.partition(".")
        if hasattr(modules[module], name):
            found.add(getattr(modules[module], name))
    return found


def check_graph_module(gm) -> None:
    """Every call in a loaded graph is an ATen operator or size arithmetic: nothing else
    from the file gets called when the graph runs or is traced again."""
    import torch

    allowed = _python_callables()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op != "call_function":
            raise _refuse(f"the graph has a {node.op} node '{node.name}'")
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            if target.namespace != "aten" or target._opname in DENIED_ATEN:
                raise _refuse(f"operator {target} is not allowed")
        elif target not in allowed:
            raise _refuse(f"the graph calls {getattr(target, '__name__', target)!r}")
