"""A :class:`~pwlint.formats.pytorch.program.Program` as a :class:`~pwlint.ir.ModelGraph`.

Grouping. Operators that only transform stored tensors (``permute`` of a Linear's
weight, ``add_`` on a BatchNorm's batch counter) belong to the layer that reads their
result. The operators of one call of a leaf module (a module with no submodule in the
graph) form one layer when at most one of them does real work: ``view`` + ``addmm`` +
``view`` of a Linear on a rank-4 tensor, ``conv`` + bias ``add``. Every other operator
is a layer of its own; outside modules a conv or dense operator still takes the bias
``add`` that follows it. A normalisation written out in operators (ConvNeXt's
channels-first LayerNorm, RMSNorm, a frozen BatchNorm's ``x * scale + shift``; see
:mod:`pwlint.formats.pytorch.patterns`) is one ``norm`` layer, named by its module path
when it is the whole call of a leaf module.

Names. A layer that is a whole module call is named by the module path
(``features.0``, ``classifier.3``; ``act#2`` for the second call of a module used
twice). Any other layer -- functional calls such as ``torch.flatten``, ``x.view(...)``,
``torch.relu`` or ``x + y`` -- is named by its FX node name, as ``ExportedProgram.graph``
prints it (``flatten``, ``view``, ``relu_2``), prefixed by the module whose
``forward`` made the call (``layer1/relu_1``, ``se/mul``). Graph inputs keep their
argument names (``x``); outputs are ``output``, ``output#2``...
"""

from __future__ import annotations

from pwlint.ir import Layer, ModelGraph, UniqueNames
from pwlint.formats.pytorch.ops import CONV, DENSE, bias_add, describe, is_auxiliary, is_understood
from pwlint.formats.pytorch.patterns import norm_groups
from pwlint.formats.pytorch.program import OpNode, Program, Tensors


class _Builder:
    def __init__(self, program: Program, path: str, fmt: str) -> None:
        self.program = program
        self.nodes = program.nodes
        self.tensors = Tensors(program)
        self.graph = ModelGraph(path, fmt)
        self._unique = UniqueNames()
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for _, tensor in node.tensor_args():
                self.consumers.setdefault(tensor, []).append(index)

    # grouping ---------------------------------------------------------------------
    def _is_prep(self, node: OpNode) -> bool:
        return all(self.tensors.is_const(t) for t in node.outputs)

    def _main(self, group: list[int]) -> list[int]:
        """Members that do the work, not views, copies or the bias add of a conv/dense."""
        work = [i for i in group if not is_auxiliary(self.nodes[i]) and not self._is_prep(self.nodes[i])]
        if any(self.nodes[i].base in CONV | DENSE for i in work):
            work = [i for i in work if not bias_add(self.nodes[i], self.tensors)]
        return work

    def groups(self) -> list[tuple[list[int], bool, str | None]]:
        """Groups of node indices in graph order, each with whether it is a whole module
        call and, for a written-out normalisation, its ``norm_type``."""
        inner = {c.key for node in self.nodes for c in node.stack[:-1]}
        by_call: dict[str, list[int]] = {}
        order: list[tuple[list[int], bool]] = []
        group_of: dict[int, int] = {}
        norms = norm_groups(self.nodes, self.tensors, self.consumers, self.program.outputs)
        norm_at = {norm.members[0]: norm for norm in norms}
        in_norm = {index for norm in norms for index in norm.members}
        norm_type: dict[int, str] = {}
        for index, node in enumerate(self.nodes):
            if self._is_prep(node):
                continue
            call = node.module
            if call is not None and call.key not in inner:
                by_call.setdefault(call.key, []).append(index)
        for index, node in enumerate(self.nodes):
            if index in group_of or self._is_prep(node):
                continue
            call = node.module
            members = by_call.get(call.key) if call is not None else None
            if index in norm_at:
                group = list(norm_at[index].members)
                # a normalisation module written out (ConvNeXt's LayerNorm) is named by its path
                whole = members is not None and set(members) == set(group)
                norm_type[len(order)] = norm_at[index].norm_type
            elif members and len(self._main(members)) <= 1 and not in_norm.intersection(members):
                group, whole = list(members), True
            else:
                group, whole = [index], False
            for member in group:
                group_of[member] = len(order)
            order.append((group, whole))
        self._fold_patterns(order, group_of)
        self._attach_prep(order, group_of)
        return [(sorted(g), whole, norm_type.get(number)) for number, (g, whole) in enumerate(order) if g]

    def _fold_patterns(self, order, group_of) -> None:
        """Outside leaf modules: a conv/dense takes its bias add, a getitem its producer."""
        for index, node in enumerate(self.nodes):
            gid = group_of.get(index)
            if gid is None or order[gid][1] or len(order[gid][0]) != 1:
                continue
            if node.namespace == "_operator" and node.base == "getitem":
                source = self.tensors.producer.get(next((t for _, t in node.tensor_args()), ""))
            elif bias_add(node, self.tensors):
                data = next(t for _, t in node.tensor_args() if not self.tensors.has_param(t))
                source = self.tensors.producer.get(data)
                if source is None or self.nodes[source].base not in CONV | DENSE or self.consumers.get(data) != [index]:
                    continue
            else:
                continue
            if source is None or source not in group_of:
                continue
            target = group_of[source]
            order[target][0].append(index)
            order[gid][0].remove(index)
            group_of[index] = target

    def _attach_prep(self, order, group_of) -> None:
        for index in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[index]
            if not self._is_prep(node):
                continue
            users = sorted(u for out in node.outputs for u in self.consumers.get(out, []) if u in group_of)
            if users:
                target = group_of[users[0]]
            else:
                call = node.module
                owner = next((g for g, (members, whole) in enumerate(order)
                              if whole and members and self.nodes[members[0]].module == call), None)
                if call is None or owner is None:
                    continue
                target = owner
            order[target][0].append(index)
            group_of[index] = target

    # layers -----------------------------------------------------------------------
    def build(self) -> ModelGraph:
        producer_layer: dict[str, str] = {}
        for tensor in self.program.inputs:
            layer = Layer(self._unique(tensor), "input", "input", output_shapes=[self.tensors.shape(tensor)], layout="NCHW")
            self.graph.add_layer(layer)
            producer_layer[tensor] = layer.name
        layers = []
        groups = self.groups()
        shared = self._shared_params([group for group, _, _ in groups])
        for group, whole, norm_type in groups:
            layer = self._layer(group, whole, shared, norm_type)
            self.graph.add_layer(layer)
            layers.append(layer)
            for index in group:
                for out in self.nodes[index].outputs:
                    producer_layer[out] = layer.name
        for layer in layers:
            data = layer.attrs["data_inputs"]
            for tensor in data:
                if tensor in producer_layer:
                    self.graph.connect(producer_layer[tensor], layer.name, tensor, self.tensors.shape(tensor), data=tensor == data[0])
        for tensor in self.program.outputs:
            shape = self.tensors.shape(tensor)
            out = Layer(self._unique("output"), "output", "output", input_shapes=[shape], layout="NCHW")
            self.graph.add_layer(out)
            if tensor in producer_layer:
                self.graph.connect(producer_layer[tensor], out.name, tensor, shape, data=True)
        self.graph.total_params = sum(self.program.parameters.values())
        self.graph.meta.update({k: v for k, v in self.program.meta.items() if v is not None})
        return self.graph

    def _shared_params(self, groups: list[list[int]]) -> set[str]:
        """Parameters read by more than one layer (tied weights, a module called twice)."""
        readers: dict[str, set[int]] = {}
        for number, group in enumerate(groups):
            for index in group:
                for _, tensor in self.nodes[index].tensor_args():
                    for param in self.tensors.params(tensor):
                        readers.setdefault(param, set()).add(number)
        return {p for p, users in readers.items() if len(users) > 1}

    def _primary(self, group: list[int]) -> OpNode:
        main = self._main(group)
        if main:
            return self.nodes[main[0]]
        return self.nodes[next((i for i in group if not self._is_prep(self.nodes[i])), group[0])]

    def _layer(self, group: list[int], whole: bool, shared: set[str], norm_type: str | None = None) -> Layer:
        nodes = [self.nodes[i] for i in group]
        primary = self._primary(group)
        call = primary.module
        if whole and call is not None:
            name = self._unique(call.path)
        else:
            name = self._unique(f"{call.path}/{primary.name}" if call else primary.name)
        internal = {out for node in nodes for out in node.outputs}
        inputs = list(dict.fromkeys(t for node in nodes for _, t in node.tensor_args() if t not in internal))
        data_inputs = [t for t in inputs if not self.tensors.is_const(t)]
        members = set(group)
        outputs = [out for node in nodes for out in node.outputs
                   if out in self.program.outputs or any(u not in members for u in self.consumers.get(out, []))]
        if not outputs:
            outputs = primary.outputs[:1]
        params = set().union(*(self.tensors.params(t) for t in inputs if self.tensors.is_const(t)))
        data_shape = self.tensors.shape(data_inputs[0]) if data_inputs else None
        if norm_type is not None:
            kind, attrs = "norm", {"norm_type": norm_type}
        else:
            kind, attrs = describe(primary, nodes, self.tensors, data_shape)
        attrs.update(inputs=inputs, data_inputs=data_inputs, outputs=outputs)
        if call is not None:
            attrs.update(module=call.path, module_class=call.cls)
        if len(nodes) > 1:
            attrs["ops"] = [node.op for node in nodes]
        if params & shared:
            attrs["shared_weights"] = True
        return Layer(
            name=name, kind=kind, op=primary.op, attrs=attrs,
            params=sum(self.program.weights[p].numel for p in params),
            input_shapes=[self.tensors.shape(t) for t in data_inputs],
            output_shapes=[self.tensors.shape(t) for t in outputs],
            layout="NCHW", members=(name, *(node.name for node in nodes)),
            source=[node.source for node in nodes], understood=is_understood(primary),
        )


def build_graph(program: Program, path: str, fmt: str = "torch") -> ModelGraph:
    return _Builder(program, path, fmt).build()
