"""PW003 missing-norm: a convolution whose output reaches the next layer unnormalised.

## What it does
Follows each convolution's output forward, through activations, Add, Mul,
Concat, pooling, reshapes and layout Transposes, and reports it when it
reaches another convolution or dense layer without passing a normalisation
(BatchNorm, LayerNorm, GroupNorm, InstanceNorm, also in decomposed or frozen
Mul+Add form). Pre-activation order (norm -> act -> conv, as in DenseNet and
pre-activation ResNets) is accepted. Squeeze-excite convolutions (feeding a
sigmoid or hard-sigmoid gate), convolutions on 1x1 maps and the last
convolution before global pooling or the output are not reported.

A model with convolutions and no normalisation at all is usually an export
with BatchNorm folded into the convolutions (ONNX in eval mode): it gets one
`info` finding saying normalisation cannot be checked, instead of a warning per
convolution.

## Why is this bad
Without normalisation, the scale of activations drifts from layer to layer:
deep stacks train slowly, need careful initialisation and small learning rates,
and are sensitive to the input's scale.

## Example
```
Conv 3x3 -> ReLU -> Conv 3x3 -> ReLU
```

## Use instead
```
Conv 3x3 -> BatchNorm -> ReLU -> Conv 3x3 -> BatchNorm -> ReLU
```
To keep BatchNorm visible in an ONNX export from PyTorch, export with
`torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)`
or, with the dynamo exporter, `optimize=False`.
"""

from __future__ import annotations

from pwlint.findings import Finding, Severity
from pwlint.ir import Layer, ModelGraph, spatial_size
from pwlint.rule import NoOptions, Rule
from pwlint.walk import downstream, is_transparent

PASS_KINDS = frozenset({"act", "add", "mul", "concat", "pool", "reshape", "flatten", "dropout", "identity"})
GATES = frozenset({"sigmoid", "hard_sigmoid"})


def _passes(layer: Layer) -> bool:
    if layer.kind == "act" and layer.attrs.get("activation") in GATES:
        return False
    if layer.kind == "pool" and spatial_size(layer.output_shape, layer.layout) == 1:
        return False  # a pool over the whole map (GoogLeNet's head) is global pooling
    return layer.kind in PASS_KINDS or is_transparent(layer) or layer.kind == "transpose"


def _on_single_position(conv: Layer) -> bool:
    return 1 in (spatial_size(conv.output_shape, conv.layout), spatial_size(conv.input_shape, conv.layout))


def _feeds_gate(graph: ModelGraph, conv: Layer) -> bool:
    """Squeeze-excite: the conv's output goes (through activations) into a sigmoid
    that scales another tensor. ``x * hard_sigmoid(x)`` (a written-out HardSwish)
    scales the conv's own output, so it is an activation, not a gate."""
    through = lambda l: (l.kind == "act" and l.attrs.get("activation") not in GATES) or is_transparent(l)
    for layer, path in downstream(graph, conv, through):
        if layer.kind != "act" or layer.attrs.get("activation") not in GATES:
            continue
        own = set(path[:-1])
        for consumer in graph.consumers(layer):
            if consumer.kind == "mul" and not any(p.name in own for p in graph.producers(consumer)):
                return True
    return False


def _unnormalised_successor(graph: ModelGraph, conv: Layer) -> Layer | None:
    for reached, _ in downstream(graph, conv, _passes):
        if reached.kind == "conv" and not (_feeds_gate(graph, reached) or _on_single_position(reached)):
            return reached
        if reached.kind == "dense":
            return reached
    return None


def _count(items, noun: str) -> str:
    n = sum(1 for _ in items)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check(graph: ModelGraph, options: NoOptions):
    unnormalised = []
    for conv in graph.layers("conv"):
        if _on_single_position(conv) or _feeds_gate(graph, conv):
            continue
        successor = _unnormalised_successor(graph, conv)
        if successor is not None:
            unnormalised.append((conv, successor))
    if not unnormalised:
        return
    if next(graph.layers("norm"), None) is None:
        hint = (
            "if BatchNorm was folded into the convolutions at export, export with it kept "
            "(torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.PRESERVE), "
            "or optimize=False with the dynamo exporter)"
            if graph.format == "onnx" else
            "the architecture has none (as LeNet), so no convolution is reported on its own"
        )
        yield Finding(
            severity=Severity.INFO,
            message=(
                f"the model has {_count(graph.layers('conv'), 'convolution')} and no normalisation "
                f"layer, so normalisation cannot be checked here; {hint}"
            ),
            nodes=[],
        )
        return
    for conv, successor in unnormalised:
        yield Finding(
            message=(
                f"conv {conv.label} feeds {successor.kind} {successor.label} without normalisation "
                "in between; unnormalised activations make deep stacks slow and unstable to train"
            ),
            nodes=[conv.name, successor.name],
        )


RULE = Rule(
    code="PW003",
    name="missing-norm",
    severity=Severity.WARNING,
    check=check,
    doc=__doc__,
)
