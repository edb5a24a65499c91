"""How much of a model pwlint understood, and where its rules could not look.

A linter's silence is worth something only if it says where it was blind. Every
loaded model gets a :class:`Coverage`: how many layers it has, how many the loader
recognised, how many have known output shapes, which operators it did not know,
and ``unchecked``: one sentence per place the rules could not judge (an unknown
operator holding weights where a conv or dense layer would be, a flatten whose
input shape is unknown, a conv or dense layer whose weight shape is not known).
Reporters never summarise a model with ``unchecked`` notes as "All checks passed".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pwlint.ir import Layer, ModelGraph
from pwlint.units import human
from pwlint.walk import is_transparent, sole_consumer

#: the IR's pseudo-layers: graph inputs and outputs are not layers of the model
PSEUDO_KINDS = frozenset({"input", "output"})
#: examples of unknown operators named in a note
NAMED = 3


@dataclass
class Coverage:
    layers: int = 0
    recognised: int = 0
    shapes_known: int = 0
    unknown_ops: dict[str, int] = field(default_factory=dict)
    #: sentences saying where the rules could not look; empty when they saw everything
    unchecked: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unchecked

    def to_json(self) -> dict:
        return {
            "layers": self.layers, "recognised": self.recognised, "shapes_known": self.shapes_known,
            "unknown_ops": dict(self.unknown_ops), "unchecked": list(self.unchecked),
        }


def _shape_known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape[1:])


def _fan_in_decides(shape, dense: Layer) -> bool:
    """PW001 still judges a flatten whose input has unknown channels (or unknown H and W)
    when the dense layer's fan-in gives the rest."""
    if shape is None or len(shape) < 3:
        return False
    return any(isinstance(d, int) for d in shape[1:]) and isinstance(dense.attrs.get("in_features"), int)


def measure(graph: ModelGraph) -> Coverage:
    coverage = Coverage()
    unknown: Counter[str] = Counter()
    weighty: list[Layer] = []
    blind_flattens: list[Layer] = []
    blind_weights: list[Layer] = []
    for layer in graph.layers():
        if layer.kind in PSEUDO_KINDS:
            continue
        coverage.layers += 1
        if layer.understood:
            coverage.recognised += 1
        else:
            unknown[layer.op] += 1
            if layer.params:
                weighty.append(layer)
        # the main output: a Dropout's unused mask or an optional second output has none
        if layer.output_shapes and _shape_known(layer.output_shape):
            coverage.shapes_known += 1
        if layer.kind in ("flatten", "reshape") and not _shape_known(layer.input_shape):
            consumer = sole_consumer(graph, layer, is_transparent)
            if consumer is not None and consumer.kind == "dense" and not consumer.attrs.get("per_position"):
                if not _fan_in_decides(layer.input_shape, consumer):
                    blind_flattens.append(layer)
        elif layer.kind == "conv" and layer.attrs.get("out_channels") is None:
            blind_weights.append(layer)
        elif layer.kind == "dense" and layer.attrs.get("in_features") is None:
            blind_weights.append(layer)
    coverage.unknown_ops = dict(unknown.most_common())
    notes = coverage.unchecked
    if coverage.layers and not coverage.recognised:
        notes.append(f"none of its {coverage.layers} layers is an operator pwlint knows ({_ops(unknown)})")
    elif unknown:
        where = ""
        if weighty:
            held = sum(layer.params for layer in weighty)
            verb = "holds" if len(weighty) == 1 else "hold"
            where = f"; {_names(weighty)} {verb} {human(held)} parameters: a conv or dense layer there goes unchecked"
        n = sum(unknown.values())
        notes.append(f"{n} layer{'s' if n != 1 else ''} of operators pwlint does not know ({_ops(unknown)}){where}")
    if blind_flattens:
        notes.append(f"the input shape of {_names(blind_flattens)} is unknown, so PW001 could not check the dense layer after it")
    if blind_weights:
        notes.append(f"the weight shape of {_names(blind_weights)} is unknown, so its size could not be checked")
    return coverage


def _ops(unknown: Counter) -> str:
    return ", ".join(f"{op} x{n}" for op, n in unknown.most_common())


def _names(layers: list[Layer]) -> str:
    shown = ", ".join(f"'{layer.label}'" for layer in layers[:NAMED])
    more = f" and {len(layers) - NAMED} more" if len(layers) > NAMED else ""
    return shown + more
