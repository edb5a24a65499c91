"""Model size and compute from the IR: parameters and multiply-accumulates per sample."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from pwlint.ir import Layer, ModelGraph


def layer_macs(layer: Layer) -> int | None:
    """MACs of one conv or dense layer for one sample, None if its shapes are unknown."""
    out = layer.output_shape
    if layer.kind == "conv":
        kernel, cin = layer.attrs.get("kernel"), layer.attrs.get("in_channels")
        if not out or None in out[1:] or not kernel or not cin:
            return None
        groups = layer.attrs.get("groups", 1) or 1
        return prod(out[1:]) * (cin // groups) * prod(kernel)
    if layer.kind == "dense":
        fan_in, fan_out = layer.attrs.get("in_features"), layer.attrs.get("out_features")
        if not fan_in or not fan_out:
            return None
        positions = 1
        shape = layer.input_shape
        if layer.attrs.get("per_position") and shape:
            inner = shape[1:-1]
            if None in inner:
                return None
            positions = prod(inner)
        return fan_in * fan_out * positions
    return 0


@dataclass
class ModelStats:
    params: int
    macs: int
    #: False when some conv or dense layer had unknown shapes and was left out of ``macs``
    macs_complete: bool

    def to_json(self) -> dict:
        return {"params": self.params, "macs": self.macs}


def model_stats(graph: ModelGraph) -> ModelStats:
    macs, complete = 0, True
    for layer in graph.layers():
        value = layer_macs(layer)
        if value is None:
            complete = False
        else:
            macs += value
    return ModelStats(graph.total_params, macs, complete)
