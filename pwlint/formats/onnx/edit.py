"""Small, explicit edits of an in-memory ONNX ModelProto: look up weights as numpy,
swap nodes in place (keeping topological order), drop what became unused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pwlint.errors import FixNotApplicable
from pwlint.ir import unique_name
from pwlint.formats.onnx.wire import LARGE_PAYLOAD, read_payload


class Editor:
    """Edits one model. Weights of at least ``LARGE_PAYLOAD`` bytes are never put into
    the protobuf: they stay in their file (external-data references) or, when a fix
    makes new ones, in ``pending`` as numpy arrays until the model is written."""

    def __init__(self, model: onnx.ModelProto, folder: Path, pending: dict[str, np.ndarray]) -> None:
        self.model = model
        self.graph = model.graph
        self.folder = folder
        self.pending = pending
        self._names: set[str] = set()
        for node in self.graph.node:
            self._names.update(node.output)
            self._names.add(node.name)
        self._names.update(t.name for t in self.graph.initializer)
        self._names.update(v.name for v in self.graph.input)

    # names ---------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet in the graph, derived from ``base``."""
        return unique_name(base, self._names, sep="_")

    # weights -------------------------------------------------------------
    def initializer(self, name: str) -> onnx.TensorProto | None:
        for tensor in self.graph.initializer:
            if tensor.name == name:
                return tensor
        return None

    def array(self, name: str) -> np.ndarray:
        if name in self.pending:
            return self.pending[name]
        tensor = self.initializer(name)
        if tensor is None:
            raise FixNotApplicable(f"'{name}' is not a constant weight of the graph")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return read_payload(tensor, self.folder)
        return numpy_helper.to_array(tensor)

    def add_initializer(self, base: str, values: np.ndarray) -> str:
        name = self.fresh(base)
        self._store(name, values)
        return name

    def replace_initializer(self, name: str, values: np.ndarray) -> None:
        self.drop_initializers([name], force=True)
        self._store(name, values)

    def _store(self, name: str, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values)
        if values.nbytes < LARGE_PAYLOAD:
            self.graph.initializer.append(numpy_helper.from_array(values, name))
            return
        stub = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(values.dtype))
        stub.dims.extend(values.shape)
        stub.data_location = onnx.TensorProto.EXTERNAL
        self.graph.initializer.append(stub)
        self.pending[name] = values

    def drop_initializers(self, names, force: bool = False) -> None:
        """Remove initializers that only the nodes being replaced read (any, with ``force``)."""
        names = {n for n in names if n and (force or len(self.consumers(n)) <= 1)}
        kept = [t for t in self.graph.initializer if t.name not in names]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        for name in names:
            self.pending.pop(name, None)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return [node for node in self.graph.node if tensor in node.input]

    def readers(self, tensor: str) -> int:
        """How many places read ``tensor``: node inputs (each use), graph outputs and the
        bodies of If/Loop/Scan. A rewrite that removes its producer needs this to be 1."""
        uses = sum(list(node.input).count(tensor) for node in self.graph.node)
        uses += sum(1 for value in self.graph.output if value.name == tensor)
        return uses + (tensor in _subgraph_inputs(self.graph))

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return next((node for node in self.graph.node if tensor in node.output), None)

    # nodes ---------------------------------------------------------------
    def replace_nodes(self, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
        """Put ``new`` where the first of ``old`` stood and drop ``old``."""
        nodes = list(self.graph.node)
        positions = [i for i, node in enumerate(nodes) if any(node == o for o in old)]
        if len(positions) != len(old):
            raise FixNotApplicable("the nodes to replace are not in the main graph")
        first = positions[0]
        kept = [node for i, node in enumerate(nodes) if i not in positions]
        at = first - sum(1 for p in positions if p < first)
        rebuilt = kept[:at] + new + kept[at:]
        del self.graph.node[:]
        self.graph.node.extend(rebuilt)

    def drop_value_info(self, tensors: set[str] | None) -> None:
        """Shapes recorded for rewritten tensors (all, for None) are stale; ONNX re-infers them."""
        kept = [v for v in self.graph.value_info if tensors is not None and v.name not in tensors]
        del self.graph.value_info[:]
        self.graph.value_info.extend(kept)

    def remove_dead(self) -> None:
        """Drop nodes whose outputs nobody reads, then initializers nobody reads."""
        outputs = {o.name for o in self.graph.output}
        while True:
            used = {t for node in self.graph.node for t in node.input} | outputs | _subgraph_inputs(self.graph)
            dead = [n for n in self.graph.node if n.output and not any(o in used for o in n.output if o)]
            if not dead:
                break
            kept = [n for n in self.graph.node if not any(n == d for d in dead)]
            del self.graph.node[:]
            self.graph.node.extend(kept)
        used = {t for node in self.graph.node for t in node.input} | _subgraph_inputs(self.graph)
        kept_init = [t for t in self.graph.initializer if t.name in used]
        if len(kept_init) != len(self.graph.initializer):
            graph_inputs = [i for i in self.graph.input if i.name in used or i.name not in {t.name for t in self.graph.initializer}]
            for tensor in self.graph.initializer:
                if tensor.name not in used:
                    self.pending.pop(tensor.name, None)
            del self.graph.initializer[:]
            self.graph.initializer.extend(kept_init)
            del self.graph.input[:]
            self.graph.input.extend(graph_inputs)


def attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes by name, as Python values (strings stay bytes)."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _subgraph_inputs(graph) -> set[str]:
    """Tensors of the outer scope that If/Loop/Scan bodies read."""
    names: set[str] = set()
    pending = [graph]
    while pending:
        current = pending.pop()
        for node in current.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    pending.append(attr.g)
                    names.update(t for n in attr.g.node for t in n.input)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    pending.extend(attr.graphs)
                    names.update(t for g in attr.graphs for n in g.node for t in n.input)
    return names
