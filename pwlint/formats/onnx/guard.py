"""Refusing ONNX models that are unsafe or meaningless to walk, before anything walks them.

pwlint runs as a CI gate on files from untrusted pull requests, so a model file
is hostile until checked. After the protobuf is parsed and before shape
inference or the loader sees it, :func:`check_model` makes sure that

- external data stays inside the model's folder (no ``..``, no absolute path,
  no symlink out), even though linting never reads the payload: the fix
  backend does, and a gate that passes such a file has already let it through;
- external data that is not there (its file absent, or a Git LFS pointer in its
  place) is listed for the loader inside :func:`collecting_missing_data`, which
  turns it into ``graph.meta["missing_weights"]``;
- declared sizes are ones a real model could have: nodes, node inputs and
  outputs, list-attribute values, tensor ranks, dimensions and element counts,
  and inline data that matches its dims;
- every name is text (protobuf returns a name that is not UTF-8 as bytes);
- every graph is a graph: no node reads its own output, no cycle, no input
  that nothing produces (ONNX and onnxruntime refuse such models, so pwlint
  must not call them clean), in If/Loop/Scan bodies as in the main graph; a
  body's reads of the graphs around it count as inputs of the node holding it,
  so a branch reading its own If's output is a cycle too;
- subgraphs are not nested deeper than :data:`MAX_SUBGRAPH_DEPTH`;
- nodes of the ONNX domain have an opset to be read against, as many inputs
  as their operator needs and attributes of the types it declares.

The per-tensor checks live in :mod:`onnx_tensor_checks`. Every walk here is
iterative and linear in the size of the model. Each problem
is a :class:`~pwlint.errors.LoadError` naming the file and the first offence.
:func:`pwlint.formats.onnx.wire.read_model` calls it, so every reader of a file
(linting and fixing alike) gets a checked model; what must be refused before
protobuf parses (nesting, node and attribute counts) is checked there too.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pwlint.errors import LoadError
from pwlint.formats.onnx.tensor_checks import EXTERNAL, _external_file, check_tensor, check_value_shape, shown, text

#: nodes in all graphs together; the largest real graphs (unrolled LLMs) have a few 100k
MAX_NODES = 2_000_000
#: node inputs and outputs, and values in list attributes (``ints``, ``floats``,
#: ``strings``), in all graphs together: each becomes a Python object of some 60
#: bytes where the file spends one or two, so these bound memory, not the file size
MAX_CONNECTIONS = 8_000_000
MAX_ATTRIBUTE_VALUES = 4_000_000
#: If/Loop/Scan bodies inside bodies; protobuf's parser stops near 33, real models at 3 or 4
MAX_SUBGRAPH_DEPTH = 30


@dataclass
class MissingData:
    """External data that is not there: the tensors that read it, and whether a Git LFS
    pointer stands in its place (a checkout without LFS) or no file at all."""

    lfs_pointer: bool
    tensors: list[str] = field(default_factory=list)


#: where :func:`check_model` lists external data that is not there while a loader
#: collects it; None elsewhere (the fix backend then fails when it reads the data)
_missing_data: ContextVar[dict | None] = ContextVar("pwlint_missing_external_data", default=None)


@contextmanager
def collecting_missing_data() -> Iterator[dict[str, MissingData]]:
    """Within the block, a model read is not refused for external data that is absent
    or a Git LFS pointer: each such file is listed by location in the dict this yields
    (every other check still runs)."""
    found: dict[str, MissingData] = {}
    token = _missing_data.set(found)
    try:
        yield found
    finally:
        _missing_data.reset(token)


def describe_missing_data(missing: dict[str, MissingData]) -> str:
    """One sentence naming the data files that are not there, for ``missing_weights``."""
    parts = []
    for location, data in missing.items():
        count = len(data.tensors)
        which = f"{count} tensor{'s' if count != 1 else ''}, e.g. '{shown(data.tensors[0])}'"
        if data.lfs_pointer:
            parts.append(
                f"its external data '{shown(location)}' ({which}) is a Git LFS pointer, not the "
                "weights: run `git lfs pull` or check out with LFS"
            )
        else:
            parts.append(f"its external data file '{shown(location)}' ({which}) is missing")
    return "; ".join(parts)


def node_label(node, position: int) -> str:
    """The name pwlint reports a node by (see onnx_read.Node.display_name)."""
    return shown(node.name or f"{node.op_type}_{position}")


def subgraphs_too_deep() -> str:
    return f"If/Loop/Scan subgraphs are nested more than {MAX_SUBGRAPH_DEPTH} levels deep; pwlint reads at most {MAX_SUBGRAPH_DEPTH}"


def check_model(model, path: str | Path) -> None:
    """Raise LoadError if ``model`` (read from ``path``) must not be linted or fixed."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    operators = _Operators(model)
    budget = _Budget(path)
    wired: list[_Wiring] = []  # every graph, after the graph holding it
    # each graph comes with the names its enclosing graphs make visible to it
    pending = [(model.graph, (), 0, None, 0)]
    while pending:
        graph, outer, depth, holder, owner = pending.pop()
        if depth > MAX_SUBGRAPH_DEPTH:
            raise LoadError(f"{path}: {subgraphs_too_deep()}")
        budget.spend("nodes", len(graph.node), MAX_NODES)
        wiring, subgraphs = _check_graph(graph, outer, path, folder, operators, budget)
        wiring.holder, wiring.owner = holder, owner
        wired.append(wiring)
        for subgraph, scope, position in subgraphs:
            pending.append((subgraph, scope, depth + 1, wiring, position))
    # inner graphs first: what a subgraph reads from outside is an input of the node holding it
    for wiring in reversed(wired):
        wiring.check_order(path)
        wiring.pass_reads_outwards()


class _Budget:
    """Running totals over all graphs, each refused past its limit."""

    def __init__(self, path) -> None:
        self.path = path
        self.spent: dict[str, int] = {}

    def spend(self, what: str, amount: int, limit: int) -> None:
        total = self.spent[what] = self.spent.get(what, 0) + amount
        if total > limit:
            raise LoadError(f"{self.path}: more than {limit} {what}; pwlint reads models of at most {limit}")


class _Operators:
    """What the ONNX operator schemas say about the nodes of one model: how many
    inputs an operator needs and the type of each attribute, so that the loader
    never meets a Conv without a weight or ``strides`` given as a tensor."""

    def __init__(self, model) -> None:
        self.opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
        # files before IR version 3 have no opset_import: they mean opset 1
        self.onnx_opset = self.opsets.get("", 1 if model.ir_version < 3 else None)
        self.cache: dict[tuple[str, str], tuple[int, dict[str, int]] | None] = {}

    def check(self, node, position: int, op_type: str, domain: str, inputs: int, attributes, path) -> None:
        signature = self.cache.get((domain, op_type), _UNSEEN)
        if signature is _UNSEEN:
            signature = self.cache[domain, op_type] = self._signature(node, position, op_type, domain, path)
        if signature is None:
            return  # an operator of a domain onnx does not know (com.microsoft, custom)
        least, attribute_types = signature
        if inputs < least:
            raise LoadError(
                f"{path}: node '{node_label(node, position)}' ({shown(op_type)}) has {inputs} "
                f"input{'s' if inputs != 1 else ''}; the operator takes at least {least}"
            )
        for attr in attributes:
            wanted = attribute_types.get(attr.name)
            if wanted is not None and attr.type != wanted and not attr.ref_attr_name:
                raise LoadError(
                    f"{path}: attribute '{shown(attr.name)}' of node '{node_label(node, position)}' "
                    f"({shown(op_type)}) is {_type_name(attr.type)}, not {_type_name(wanted)}"
                )

    def _signature(self, node, position: int, op_type: str, domain: str, path):
        from pwlint.formats.onnx.schemas import get_schema

        if domain == "ai.onnx":
            domain = ""
        if domain == "" and self.onnx_opset is None:
            raise LoadError(
                f"{path}: no opset is imported for the ONNX domain, which node "
                f"'{node_label(node, position)}' ({shown(op_type)}) uses"
            )
        version = self.onnx_opset if domain == "" else self.opsets.get(domain)
        if version is None:
            return None
        # onnx's schemas, tabled: reading them from onnx.defs would import onnx
        return get_schema(op_type, version, domain)


_UNSEEN = object()


def _type_name(attribute_type: int) -> str:
    from pwlint.formats.onnx.schemas import ATTRIBUTE_TYPE_NAMES

    return ATTRIBUTE_TYPE_NAMES.get(attribute_type, f"type {attribute_type}")


def _check_graph(graph, outer: tuple, path, folder: str, operators: _Operators, budget: _Budget):
    """Check one graph; return its wiring (whose order is checked once its subgraphs are)
    and its subgraphs, each with the scope it sees and the position of the node holding it.

    Nodes are read once: touching a protobuf field from Python costs microseconds,
    and a graph may have hundreds of thousands of nodes."""
    producer: dict[str, int] = {}
    inputs_of = []
    connections = 0
    subgraphs: list = []
    holders: list[int] = []  # holders[i]: position of the node whose attribute is subgraphs[i]
    tensors = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        tensors += (sparse.values, sparse.indices)
    for position, node in enumerate(graph.node):
        op_type, domain = node.op_type, node.domain
        if type(node.name) is not str or type(op_type) is not str or type(domain) is not str:
            raise LoadError(f"{path}: the name, type or domain of node {position} of its graph is not valid UTF-8 text")
        if not op_type:
            which = f"'{shown(node.name)}'" if node.name else f"{position} of its graph"
            raise LoadError(f"{path}: node {which} has no operator type")
        outputs, inputs, attributes = node.output, node.input, node.attribute
        for out in outputs:
            if out:
                producer[text(out, path)] = position
        inputs_of.append(inputs)
        connections += len(inputs) + len(outputs)
        if attributes:
            held = len(subgraphs)
            _collect_attributes(attributes, subgraphs, tensors, budget, path)
            holders += [position] * (len(subgraphs) - held)
        operators.check(node, position, op_type, domain, len(inputs), attributes, path)
    budget.spend("node inputs and outputs", connections, MAX_CONNECTIONS)
    missing = _missing_data.get()
    for tensor in tensors:
        if missing is not None and tensor.data_location == EXTERNAL and _data_absent(tensor, path, folder, missing):
            continue
        check_tensor(tensor, path, folder)
    for value in (*graph.input, *graph.output, *graph.value_info):
        check_value_shape(value, path)
    available = {value.name for value in graph.input}
    available.update(tensor.name for tensor in graph.initializer)
    available.update(sparse.values.name for sparse in graph.sparse_initializer)
    for name in available:
        text(name, path)
    wiring = _Wiring(graph.node, inputs_of, producer, available)
    wiring.check_reads(outer, path)
    scope = (*outer, available, producer)
    return wiring, [(subgraph, scope, position) for subgraph, position in zip(subgraphs, holders)]


def _data_absent(tensor, path, folder: str, missing: dict[str, MissingData]) -> bool:
    """Whether the external data of ``tensor`` is not there (no file, or a Git LFS
    pointer in its place); if so it is listed in ``missing``, after the checks that do
    not need the data: its location (inside the model's folder), its dims, its offset
    and length."""
    from pwlint.formats.sniff import is_lfs_pointer, read_head

    location = next((text(e.value, path) for e in tensor.external_data if text(e.key, path) == "location"), "")
    target = _external_file(location, shown(text(tensor.name, path)), path, folder)
    lfs_pointer = False
    if os.path.exists(target):
        head = read_head(target)
        lfs_pointer = bool(head) and is_lfs_pointer(head)
        if not lfs_pointer:
            return False
    # the dims and the offset/length entries are checked as for any external tensor, on a
    # copy whose data points nowhere: there is no file whose size they could be held to
    check_tensor(_Shadow(tensor, os.path.join(location, ".pwlint-absent", "data")), path, folder)
    missing.setdefault(location, MissingData(lfs_pointer)).tensors.append(text(tensor.name, path))
    return True


class _Shadow:
    """What :func:`check_tensor` reads of an external tensor, its location moved."""

    def __init__(self, tensor, location: str) -> None:
        self.name, self.dims, self.data_type = tensor.name, list(tensor.dims), tensor.data_type
        self.data_location = tensor.data_location
        self.external_data = [
            _Entry(entry.key, location if entry.key == "location" else entry.value) for entry in tensor.external_data
        ]

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
        return False


@dataclass
class _Entry:
    key: str
    value: str


def _collect_attributes(attributes, subgraphs: list, tensors: list, budget: _Budget, path) -> None:
    """The subgraphs and tensors a node's attributes hold; list values counted."""
    for attr in attributes:
        text(attr.name, path)
        budget.spend("attribute values", len(attr.ints) + len(attr.floats) + len(attr.strings), MAX_ATTRIBUTE_VALUES)
        if attr.HasField("g"):
            subgraphs.append(attr.g)
        subgraphs += attr.graphs
        if attr.HasField("t"):
            tensors.append(attr.t)
        tensors += attr.tensors
        for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
            tensors += (sparse.values, sparse.indices)


class _Wiring:
    """Who produces and who reads each name in one graph, to check that every node input
    is made by something visible and that the nodes form no cycle. Nodes need not be in
    order (onnxruntime sorts them); they need to be sortable.

    A subgraph's reads of its enclosing graphs' names are inputs of the node holding it
    (onnxruntime sorts by them too): an If whose branch reads the If's own output, or the
    output of a node that needs the If's result, closes a cycle in the graph holding it.
    So the order of a graph is checked after its subgraphs have said what they read."""

    def __init__(self, nodes, inputs_of: list, producer: dict[str, int], available: set[str]) -> None:
        self.nodes, self.inputs_of, self.producer, self.available = nodes, inputs_of, producer, available
        #: names read by this graph or its subgraphs that an enclosing graph makes
        self.reads_outside: set[str] = set()
        #: position -> names its subgraphs read that a node of this graph makes
        self.held_reads: dict[int, set[str]] = {}
        self.in_order = True
        self.holder: _Wiring | None = None
        self.owner = 0  # position of the node holding this graph in ``holder``

    def label(self, position: int) -> str:
        return node_label(self.nodes[position], position)

    def check_reads(self, outer: tuple, path) -> None:
        """Every input is made here or in an enclosing graph; no node reads its own output."""
        producer, available = self.producer, self.available
        for position, inputs in enumerate(self.inputs_of):
            for inp in inputs:
                if not inp:
                    continue  # an optional input left out
                source = producer.get(inp)
                if source is None:
                    if inp in available:
                        continue
                    if not any(inp in names for names in outer):
                        text(inp, path)  # bytes match no name: every name that could was checked
                        raise LoadError(
                            f"{path}: node '{self.label(position)}' reads '{shown(inp)}', "
                            "which no node, graph input or initializer produces"
                        )
                    self.reads_outside.add(inp)
                elif source >= position:
                    if source == position:
                        raise LoadError(f"{path}: node '{self.label(position)}' reads its own output '{shown(inp)}'")
                    self.in_order = False

    def check_order(self, path) -> None:
        """After every subgraph has passed its reads out: no node needs its own output
        through a subgraph, and the nodes are sortable."""
        for position, names in self.held_reads.items():
            for name in sorted(names):
                source = self.producer[name]
                if source == position:
                    raise LoadError(
                        f"{path}: node '{self.label(position)}' reads its own output '{shown(name)}' from within its subgraph"
                    )
                if source > position:
                    self.in_order = False
            self.inputs_of[position] = [*self.inputs_of[position], *sorted(names)]
        if not self.in_order:  # exporters write nodes in order; only a graph that is not needs sorting
            _check_sortable(self.nodes, self.inputs_of, self.producer, path)

    def pass_reads_outwards(self) -> None:
        """Hand what this graph reads from outside to the graph holding it: there each
        name is an input of the holding node, or read from further out."""
        holder = self.holder
        if holder is None:
            return
        for name in self.reads_outside:
            if name in holder.producer:
                holder.held_reads.setdefault(self.owner, set()).add(name)
            elif name not in holder.available:
                holder.reads_outside.add(name)


def _check_sortable(nodes, inputs_of: list, producer: dict[str, int], path) -> None:
    """Kahn's topological sort; the nodes it cannot reach lie on or after a cycle."""
    waiting: list[list[int]] = [[] for _ in inputs_of]  # waiting[p]: nodes reading an output of p
    unmet = [0] * len(inputs_of)
    for position, inputs in enumerate(inputs_of):
        for inp in inputs:
            source = producer.get(inp) if inp else None
            if source is not None:
                waiting[source].append(position)
                unmet[position] += 1
    ready = [p for p, count in enumerate(unmet) if count == 0]
    done = 0
    while ready:
        position = ready.pop()
        done += 1
        for consumer in waiting[position]:
            unmet[consumer] -= 1
            if unmet[consumer] == 0:
                ready.append(consumer)
    if done < len(inputs_of):
        raise LoadError(f"{path}: nodes form a cycle: {_describe_cycle(nodes, inputs_of, producer, unmet)}")


def _describe_cycle(nodes, inputs_of: list, producer: dict[str, int], unmet: list[int]) -> str:
    """``a -> b -> a`` for one cycle among the nodes left unsorted. Each of them reads
    an output of another one left, so walking back from any of them must repeat."""
    start = next(p for p, count in enumerate(unmet) if count)
    order: list[int] = []
    seen: dict[int, int] = {}
    current = start
    while current not in seen:
        seen[current] = len(order)
        order.append(current)
        current = next(
            producer[inp] for inp in inputs_of[current] if inp in producer and unmet[producer[inp]]
        )
    loop = order[seen[current]:][::-1]  # walked backwards: reverse to the data's direction
    names = [node_label(nodes[p], p) for p in loop]
    if len(names) > 6:
        names = names[:3] + [f"... ({len(names) - 5} more)"] + names[-2:]
    return " -> ".join(names + [names[0]])
