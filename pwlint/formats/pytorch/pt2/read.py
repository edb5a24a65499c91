"""Reading a ``torch.export.save`` archive (``.pt2``) without torch and without unpickling.

The archive is a zip with one top folder. pwlint reads only JSON members:

- ``models/<name>.json`` (``serialized_exported_program.json`` in archives from torch
  2.7 and older): the serialized ExportedProgram. ``graph_module.graph.nodes`` are the
  operator calls (``target`` like ``torch.ops.aten.conv2d.default``, named ``inputs``,
  ``outputs``, ``metadata.nn_module_stack``), ``graph.tensor_values`` has every tensor's
  sizes and ``signature.input_specs`` says which placeholders are parameters, buffers,
  constants or user inputs;
- ``data/weights/<name>_weights_config.json``: sizes of each stored weight.

Weight payloads, ``data/sample_inputs/*.pt``, pickled constants and anything else that
is a pickle are never opened: ``torch.export.load`` unpickles such members with
``weights_only=False`` when they fail the safe load, so a linter must not call it.
That the payload members are *there* is checked (by name): an archive whose weights
were stripped gets ``meta["missing_weights"]`` naming them.

Every node's ``target`` must be an operator (``torch.ops.<namespace>.<name>``) or one
of the Python builtins torch.export writes (``_operator.getitem``, the symbolic-size
arithmetic); anything else (``os.system``) is refused: torch resolves targets by name
when it loads the file, so a program naming arbitrary functions is not one to lint.
"""

from __future__ import annotations

import json
import re

from pwlint.errors import LoadError
from pwlint.formats.pytorch.archive import MAX_METADATA, MAX_PROGRAM, Archive
from pwlint.limits import MAX_RANK
from pwlint.formats.pytorch.program import ModuleCall, OpNode, Program, TensorRef, Weight, dataflow_problem

SCALAR_KINDS = {
    "as_int", "as_float", "as_bool", "as_string", "as_ints", "as_floats", "as_bools", "as_strings",
    "as_scalar_type", "as_memory_format", "as_layout", "as_device",
}


#: ``torch.ops.<namespace>.<operator>[.<overload>]``: ATen, prims, higher-order and
#: custom operators alike (custom ones become layers pwlint does not understand)
TORCH_OPERATOR = re.compile(r"torch\.ops(\.[A-Za-z_][A-Za-z0-9_]*){2,3}")
#: the Python functions torch.export serializes by module and name: getitem and the
#: arithmetic and comparisons of symbolic sizes (torch._export.serde's _SYM_OPS)
PYTHON_BUILTINS = frozenset({
    *(f"_operator.{name}" for name in (
        "getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv",
        "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift", "not_", "abs",
    )),
    *(f"math.{name}" for name in ("trunc", "ceil", "floor", "sqrt")),
    *(f"torch.{name}" for name in (
        "sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt", "_sym_sqrt",
        "sym_sum", "sym_and", "sym_or",
    )),
})
#: members named in a missing-weights message, at most
NAMED_MEMBERS = 3


def read_pt2(archive: Archive, kind: str, root: str) -> Program:
    constants = None
    if kind == "pt2-legacy":
        member, model, config = root + "serialized_exported_program.json", "model", None
    else:
        member, model = _model_member(archive, root)
        config = _optional_json(archive, f"{root}data/weights/{model}_weights_config.json")
        constants = _optional_json(archive, f"{root}data/constants/{model}_constants_config.json")
    document = archive.json(member, MAX_PROGRAM)
    try:
        program = _parse(document, config)
        foreign = _foreign_target(document)
    except Malformed as exc:
        raise LoadError(f"{archive.path}: malformed serialized program in {member}: {exc}") from None
    if foreign:
        name, target = foreign
        raise LoadError(
            f"{archive.path}: node '{_shown(name)}' in {member} calls '{_shown(target)}', which is neither a "
            "torch.ops operator nor a Python builtin torch.export writes; pwlint does not read such a program"
        )
    problem = dataflow_problem(program)
    if problem:
        raise LoadError(f"{archive.path}: malformed serialized program in {member}: {problem}")
    program.meta.update(archive=kind, model=model)
    if kind == "pt2-legacy":
        missing = _missing_legacy_weights(archive, root, program)
    else:
        missing = _missing_weights(archive, root, model, program, config, constants)
    if missing:
        program.meta["missing_weights"] = missing
    return program


def _optional_json(archive: Archive, member: str):
    return archive.json(member, MAX_METADATA) if member in archive.infos else None


class Malformed(Exception):
    """The serialized program is not shaped as torch.export writes it; the message says
    where (read_pt2 turns it into a LoadError naming the file and member)."""


def _field(obj, key: str, kind: type, where: str):
    """``obj[key]``, checked to be a ``kind``: a hand-made document may hold anything."""
    if not isinstance(obj, dict):
        raise Malformed(f"{where} is not an object")
    value = obj.get(key)
    if not isinstance(value, kind):
        raise Malformed(f"{where}.{key} is {'missing' if value is None else 'not a ' + _KIND_NAMES[kind]}")
    return value


_KIND_NAMES = {dict: "JSON object", list: "list", str: "string"}


def _only_entry(spec, where: str) -> tuple[str, object]:
    """The single ``{kind: body}`` pair of an input or output spec."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise Malformed(f"{where} is not an object with one entry")
    ((kind, body),) = spec.items()
    return kind, body


def _shown(text, limit: int = 80) -> str:
    """A name from the file, safe in a one-line message."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return text if len(text) <= limit else text[:limit] + "..."


def _foreign_target(document: dict) -> tuple[str, str] | None:
    """(node name, target) of the first node, with or without tensor outputs, whose target
    is neither a torch operator nor a builtin torch.export writes."""
    for node in _nodes(document):
        target = node.get("target")
        if not isinstance(target, str):
            return str(node.get("name")), repr(target)
        if not (TORCH_OPERATOR.fullmatch(target) or target in PYTHON_BUILTINS):
            return str(node.get("name")), target
    return None


def _missing_weights(archive: Archive, root: str, model: str, program: Program, config, constants) -> str | None:
    """What is missing of the stored tensors the program reads: each parameter, buffer
    and constant must have an entry in the weights or constants config, and the member
    that entry names must be in the archive (its bytes are never read)."""
    stored: dict[str, str] = {}
    for folder, table in (("weights", config), ("constants", constants)):
        entries = table.get("config") if isinstance(table, dict) else None
        for fqn, entry in (entries if isinstance(entries, dict) else {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("path_name"), str):
                stored[fqn] = f"{root}data/{folder}/{entry['path_name']}"
    absent: dict[str, list[str]] = {}  # member (or the config that should list it) -> tensors
    for weight in {w.fqn: w for w in program.weights.values()}.values():
        member = stored.get(weight.fqn)
        if member is None:
            folder = "constants" if weight.kind == "constant" else "weights"
            absent.setdefault(f"{root}data/{folder}/{model}_{folder}_config.json", []).append(weight.fqn)
        elif member not in archive.infos:
            absent.setdefault(member, []).append(weight.fqn)
    return _describe_absent(absent)


def _missing_legacy_weights(archive: Archive, root: str, program: Program) -> str | None:
    """Archives of torch 2.7 and older keep all parameters and buffers in one member."""
    member = f"{root}serialized_state_dict.pt"
    stored = [w.fqn for w in program.weights.values() if w.kind in ("parameter", "buffer")]
    if stored and member not in archive.infos:
        return _describe_absent({member: stored})
    return None


def _describe_absent(absent: dict[str, list[str]]) -> str | None:
    if not absent:
        return None
    tensors = [fqn for fqns in absent.values() for fqn in fqns]
    members = [_shown(m) for m in absent]
    named = ", ".join(members[:NAMED_MEMBERS]) + (f" and {len(members) - NAMED_MEMBERS} more" if len(members) > NAMED_MEMBERS else "")
    plural = "s have" if len(tensors) != 1 else " has"
    return f"{len(tensors)} stored tensor{plural} no data in the archive (e.g. '{_shown(tensors[0])}'): missing {named}"


def _model_member(archive: Archive, root: str) -> tuple[str, str]:
    """The program to lint: ``models/model.json`` (what torch.export.save writes), else the first."""
    prefix = root + "models/"
    members = sorted(n for n in archive.names(prefix) if n.endswith(".json") and "/" not in n[len(prefix):])
    preferred = prefix + "model.json"
    member = preferred if preferred in members else members[0]
    return member, member[len(prefix): -len(".json")]


def sizes(meta) -> tuple | None:
    """``[{"as_int": 6}, {"as_expr": ...}]`` -> ``(6, None)``: symbolic sizes are unknown."""
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        return None
    if len(meta["sizes"]) > MAX_RANK:
        raise Malformed(f"a tensor of {len(meta['sizes'])} dimensions, over pwlint's limit of {MAX_RANK}")
    return tuple(s["as_int"] if isinstance(s, dict) and isinstance(s.get("as_int"), int) else None for s in meta["sizes"])


def decode(arg):
    """A serialized argument as a :class:`TensorRef`, a list of them, or a plain value."""
    if not isinstance(arg, dict) or len(arg) != 1:
        return None
    ((kind, value),) = arg.items()
    if kind == "as_tensor":
        return TensorRef(_field(value, "name", str, "as_tensor"))
    if kind == "as_tensors":
        if not isinstance(value, list):
            raise Malformed("as_tensors is not a list")
        return [TensorRef(_field(v, "name", str, "as_tensors[]")) for v in value]
    if kind in ("as_optional_tensors", "as_optional_tensor"):
        return [decode(v) for v in value] if isinstance(value, list) else decode(value)
    if kind in SCALAR_KINDS:
        return value
    if kind == "as_sym_int":
        return value.get("as_int") if isinstance(value, dict) else None
    if kind == "as_sym_ints":
        return [v.get("as_int") if isinstance(v, dict) else None for v in value] if isinstance(value, list) else None
    return None  # as_none, symbolic floats and bools, subgraphs, custom objects


def _outputs(node: dict) -> list[str]:
    names = []
    outputs = node.get("outputs") or []
    if not isinstance(outputs, list):
        raise Malformed(f"the outputs of node '{_shown(node.get('name'))}' are not a list")
    for out in outputs:
        value = decode(out)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, TensorRef):
                names.append(item.name)
    return names


def module_stack(text) -> tuple[ModuleCall, ...]:
    """``"key,path,class;key,path,class"`` -> module calls, outermost first."""
    if not isinstance(text, str) or not text:
        return ()
    calls = []
    for entry in text.split(";"):
        parts = entry.split(",", 2)
        if len(parts) != 3 or parts[0].startswith("_empty_nn_module_stack"):
            continue
        calls.append(ModuleCall(*parts))
    return tuple(calls)


def _stored(config: dict | None, fqn: str, fallback) -> tuple[tuple | None, tuple]:
    """A weight's shape, and what identifies its storage: tied parameters (``b.weight =
    a.weight``) have two names but one payload file in the archive."""
    table = config.get("config") if isinstance(config, dict) else None
    entry = table.get(fqn) if isinstance(table, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("tensor_meta"), dict):
        shape = sizes(entry["tensor_meta"])
        if shape is not None:
            offset = entry["tensor_meta"].get("storage_offset")
            return shape, (entry.get("path_name"), json.dumps(offset), shape)
    return fallback, (fqn,)


def _nodes(document) -> list[dict]:
    """The program's nodes, checked to be objects."""
    graph = _field(_field(document, "graph_module", dict, "the program"), "graph", dict, "graph_module")
    nodes = _field(graph, "nodes", list, "graph_module.graph")
    for node in nodes:
        if not isinstance(node, dict):
            raise Malformed("graph_module.graph.nodes holds a node that is not an object")
    return nodes


def _parse(document: dict, config: dict | None) -> Program:
    module = _field(document, "graph_module", dict, "the program")
    graph = _field(module, "graph", dict, "graph_module")
    signature = _field(module, "signature", dict, "graph_module")
    program = Program()
    tensor_values = graph.get("tensor_values") or {}
    if not isinstance(tensor_values, dict):
        raise Malformed("graph_module.graph.tensor_values is not a JSON object")
    program.shapes = {name: sizes(meta) for name, meta in tensor_values.items()}
    program.meta.update(
        torch_version=document.get("torch_version"), schema_version=document.get("schema_version"),
    )
    stored = {"parameter": "parameter_name", "buffer": "buffer_name", "tensor_constant": "tensor_constant_name"}
    storages: set[tuple] = set()
    for spec in _field(signature, "input_specs", list, "graph_module.signature"):
        kind, body = _only_entry(spec, "an input spec")
        if kind in stored:
            where = f"the {kind} input spec"
            name = _field(_field(body, "arg", dict, where), "name", str, f"{where}.arg")
            fqn = _field(body, stored[kind], str, where)
            shape, storage = _stored(config, fqn, program.shapes.get(name))
            weight = Weight(fqn, shape, kind.replace("tensor_", ""))
            program.weights[name] = weight
            if kind == "parameter" and storage not in storages:
                storages.add(storage)
                program.parameters[fqn] = weight.numel
        elif kind == "user_input" and isinstance(body, dict) and isinstance(body.get("arg"), dict):
            value = decode(body["arg"]) if "as_tensor" in body["arg"] else None
            if isinstance(value, TensorRef):
                program.inputs.append(value.name)
    for spec in _field(signature, "output_specs", list, "graph_module.signature"):
        kind, body = _only_entry(spec, "an output spec")
        value = decode(body.get("arg")) if kind == "user_output" and isinstance(body, dict) else None
        if isinstance(value, TensorRef):
            program.outputs.append(value.name)
    for node in _nodes(document):
        outputs = _outputs(node)
        if not outputs:
            continue  # symbolic sizes, assertions: no tensor comes out
        name = node.get("name") or outputs[0]
        target = _field(node, "target", str, f"node '{_shown(name)}'")
        inputs = _field(node, "inputs", list, f"node '{_shown(name)}'")
        metadata = node.get("metadata")
        program.nodes.append(OpNode(
            name=name if isinstance(name, str) else outputs[0],
            op=target.removeprefix("torch.ops."),
            args={
                _field(inp, "name", str, f"an input of node '{_shown(name)}'"): decode(inp.get("arg"))
                for inp in inputs
            },
            outputs=outputs,
            stack=module_stack(metadata.get("nn_module_stack") if isinstance(metadata, dict) else None),
            source=node,
        ))
    return program
