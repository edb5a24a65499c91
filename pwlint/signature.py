"""What identifies a finding across versions of a model, without its layer names.

Baselines and ``pwlint diff`` match findings between two files. Names are a poor key:
exporters number nodes (``/features/features.3/Conv``, ``node_linear_1``), so adding
one unrelated layer renames the others. A flagged layer's structure is stable instead:
its kind, operator, input and output shapes and parameter count survive retraining and
renaming, and change when the layer itself changes. Identical layers share a signature;
callers match them by count.
"""

from __future__ import annotations

import hashlib

from pwlint.ir import ModelGraph


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "x".join("?" if dim is None or not isinstance(dim, int) else str(dim) for dim in shape)


def layer_signature(graph: ModelGraph, name: str) -> str:
    if name not in graph:
        return f"?{name}"  # not a layer (a tensor or a member): the name is all there is
    layer = graph.layer(name)
    inputs = ",".join(_shape(s) for s in layer.input_shapes)
    outputs = ",".join(_shape(s) for s in layer.output_shapes)
    return f"{layer.kind}:{layer.op}:{inputs}->{outputs}:{layer.params}"


def finding_signature(graph: ModelGraph, code: str, nodes) -> str:
    """A short stable hash of the rule code and the flagged layers' structure."""
    parts = [code, *(layer_signature(graph, name) for name in nodes)]
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:16]
