"""PW006 linear-chain: two linear layers with nothing non-linear between them.

## What it does
Finds a dense layer or convolution (groups 1, any kernel) whose output goes,
through nothing but Dropout, Identity, reshapes that keep the channels and at
most one BatchNorm (eval form, a per-channel scale and shift), into a dense
layer or a pointwise (1x1, stride 1, unpadded) convolution, when one merged
layer would have fewer parameters than the two: dense -> dense, 1x1 conv ->
1x1 conv, KxK conv -> 1x1 conv. Not reported: a deliberate bottleneck, where
the merged layer would be bigger (MobileNetV2's linear 1x1 projection before
the next block's 1x1 expansion); a chain whose middle output has another
reader (a residual Add, a second branch, a model output); an activation, a
pooling or any other layer between the two; and a quantized first layer, whose
output range can clip negatives as a ReLU would (onnxruntime's quantizer fuses
a ReLU into QLinearConv/QLinearMatMul that way, so the file no longer shows it).

## Why is this bad
Two linear maps in a row are one linear map: `W2 (W1 x + b1) + b2` is
`(W2 W1) x + (W2 b1 + b2)`. Without a non-linearity between them the second
layer adds no expressive power, only parameters, compute and latency; usually
an activation was forgotten, or a layer was left over from a refactoring.

## Example
```
Dense(512 -> 1024) -> Dropout -> Dense(1024 -> 256)        788k parameters
```

## Use instead
```
Dense(512 -> 256)                                           131k parameters
```
or put the activation back between the two layers. The safe fix merges them
(a BatchNorm between is folded in first) and checks that the outputs are
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from pwlint.findings import Finding, Fix, Severity
from pwlint.fix.plans import QUANTIZED, MergeChainPlan
from pwlint.ir import Layer, ModelGraph
from pwlint.rule import NoOptions, Rule
from pwlint.stats import layer_macs
from pwlint.units import human, ratio
from pwlint.walk import is_unit_kernel_conv

#: layers that pass every value on unchanged
VALUE_KEEPING = frozenset({"dropout", "identity"})
#: layers that change a tensor's shape only
RESHAPES = frozenset({"reshape", "flatten"})


@dataclass
class Chain:
    first: Layer
    between: list[Layer]
    second: Layer

    @property
    def norm(self) -> Layer | None:
        return next((layer for layer in self.between if layer.kind == "norm"), None)


def width_out(layer: Layer) -> int | None:
    """The channels a dense layer or conv writes."""
    return layer.attrs.get("out_features" if layer.kind == "dense" else "out_channels")


def width_in(layer: Layer) -> int | None:
    return layer.attrs.get("in_features" if layer.kind == "dense" else "in_channels")


def _mixed_axis(layer: Layer, rank: int) -> int | None:
    """The axis of a rank-``rank`` tensor a dense layer, conv or norm works along."""
    if layer.kind == "norm" and layer.layout == "NHWC":  # Keras: the norm's own axis
        axis = layer.attrs.get("axis")
        axis = -1 if axis is None else axis
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        return axis % rank if isinstance(axis, int) else None
    if layer.kind == "dense" or layer.layout == "NHWC":
        return rank - 1
    return 1


def _same_axis(first: Layer, layer: Layer, shape) -> bool:
    """Whether ``layer`` works along the axis ``first`` writes its channels to, in the
    tensor of ``shape`` it reads. Where every other axis has size 1 (a flattened or 1x1
    map) the axis does not matter: a size check rules out a layer on a unit axis."""
    if shape is None or len(shape) <= 2 or sum(1 for d in shape[1:] if d != 1) <= 1:
        return shape is not None
    return _mixed_axis(layer, len(shape)) == _mixed_axis(first, len(shape))


def _linear_first(layer: Layer) -> bool:
    """A dense layer, or a conv with groups 1 (any kernel), with known sizes, computing in
    float (a quantized layer's output range may be a fused ReLU)."""
    if layer.attrs.get("quantized"):
        return False
    if layer.kind == "dense":
        return bool(width_in(layer) and width_out(layer))
    return (
        layer.kind == "conv" and not layer.attrs.get("transposed") and (layer.attrs.get("groups") or 1) == 1
        and bool(width_in(layer) and width_out(layer) and layer.attrs.get("kernel"))
    )


def _unpadded(conv: Layer) -> bool:
    padding = conv.attrs.get("padding")
    if isinstance(padding, str):
        return padding.lower() in ("valid", "same")  # "same" pads a 1x1 kernel by nothing
    if padding is not None:
        return all(p == 0 for p in padding)
    # ONNX records no padding: an unpadded 1x1 stride-1 conv keeps the map's size
    before, after = conv.input_shape, conv.output_shape
    return before is not None and after is not None and before[2:] == after[2:] and None not in before[2:]


def _linear_second(layer: Layer) -> bool:
    """A dense layer, or a conv that is one applied at every position (1x1, groups 1,
    stride 1, no padding)."""
    if layer.kind == "dense":
        return bool(width_in(layer) and width_out(layer))
    attrs = layer.attrs
    return (
        is_unit_kernel_conv(layer) and not attrs.get("transposed") and (attrs.get("groups") or 1) == 1
        and all(s == 1 for s in attrs.get("stride") or ()) and _unpadded(layer)
        and bool(width_in(layer) and width_out(layer))
    )


def _keeps_channels(layer: Layer, width: int) -> bool:
    """A reshape or flatten of a tensor whose only axis of size other than 1 holds the
    ``width`` channels (a 1x1 map to a vector, or back): each channel stays itself."""
    for shape in (layer.input_shape, layer.output_shape):
        if shape is None or None in shape[1:] or prod(shape[1:]) != width or width not in shape[1:]:
            return False
    return True


def _passes(first: Layer, layer: Layer, width: int, norms: int) -> bool:
    if layer.kind in VALUE_KEEPING:
        return True
    if layer.kind in RESHAPES:
        return _keeps_channels(layer, width)
    if layer.kind == "norm":
        return (
            norms == 0 and layer.attrs.get("norm_type") == "batch" and not layer.attrs.get("quantized")
            and _same_axis(first, layer, layer.input_shape)
        )
    return False


def chain_after(graph: ModelGraph, first: Layer) -> Chain | None:
    """The linear layer ``first`` feeds through value-keeping layers and at most one
    BatchNorm, each the only reader of what the previous one writes; None if there is none."""
    width = width_out(first)
    between: list[Layer] = []
    current = first
    while True:
        readers = graph.consumers(current)
        if len(readers) != 1:  # another reader (a residual, a branch, a model output) needs the middle
            return None
        layer = readers[0]
        if layer is first or any(layer is seen for seen in between):
            return None
        if _passes(first, layer, width, sum(1 for b in between if b.kind == "norm")):
            between.append(layer)
            current = layer
            continue
        if _linear_second(layer) and width_in(layer) == width and _same_axis(first, layer, layer.input_shape):
            return Chain(first, between, layer)
        return None


def merged_params(chain: Chain) -> int:
    """Weights and bias of the one layer computing the chain (as
    :func:`pwlint.fix.merge.merged_params`, without numpy: linting imports none)."""
    first, out = chain.first, width_out(chain.second)
    window = prod(first.attrs.get("kernel") or ()) if first.kind == "conv" else 1
    return out * width_in(first) * window + out


def check(graph: ModelGraph, options: NoOptions):
    for first in graph.layers():
        if not _linear_first(first):
            continue
        chain = chain_after(graph, first)
        if chain is None:
            continue
        second = chain.second
        pair = first.params + second.params
        merged = merged_params(chain)
        if merged >= pair:
            continue  # a bottleneck: the two layers are smaller than one
        yield Finding(
            message=_message(chain, pair, merged),
            nodes=[first.name, *(layer.name for layer in chain.between), second.name],
            fixes=[_merge_fix(chain)],
        )


def _describe(layer: Layer) -> str:
    if layer.kind == "dense":
        return f"dense {layer.label} ({width_in(layer)} -> {width_out(layer)})"
    kernel = "x".join(map(str, layer.attrs["kernel"]))
    return f"{kernel} conv {layer.label} ({width_in(layer)} -> {width_out(layer)})"


def _message(chain: Chain, pair: int, merged: int) -> str:
    first, second = chain.first, chain.second
    through = ""
    if chain.between:
        through = " (only " + ", ".join(f"{_kind_name(layer)} {layer.label}" for layer in chain.between) + " between)"
    macs = ""
    first_macs, second_macs = layer_macs(first), layer_macs(second)
    if first_macs and second_macs is not None:
        merged_macs = first_macs // width_out(first) * width_out(second)
        macs = f" and {_count(merged_macs, first_macs + second_macs)} MACs per sample instead of {_count(first_macs + second_macs, merged_macs)}"
    return (
        f"{_describe(first)} feeds {_describe(second)} with nothing non-linear between them{through}: "
        f"together they compute one linear map, which one layer ({width_in(first)} -> {width_out(second)}) "
        f"computes with {_count(merged, pair)} parameters instead of {_count(pair, merged)} ({ratio(pair, merged)} fewer){macs}; "
        "an activation may be missing"
    )


def _count(count: int, other: int) -> str:
    """``count`` as people read it, or in full where rounding would make it look like ``other``."""
    return str(count) if human(count) == human(other) else human(count)


def _kind_name(layer: Layer) -> str:
    return {"norm": "BatchNorm", "dropout": "Dropout", "identity": "Identity"}.get(layer.kind, layer.kind)


def _merge_fix(chain: Chain) -> Fix:
    first, second, norm = chain.first, chain.second, chain.norm
    folded = f", folding BatchNorm '{norm.label}' in first" if norm else ""
    layers = (first, second, *chain.between)
    return Fix(
        "safe",
        f"merge '{first.label}' and '{second.label}' into one layer (W = W2 W1, b = W2 b1 + b2){folded}; "
        "the outputs stay the same",
        action=MergeChainPlan.action,
        plan=MergeChainPlan(
            first=first.name, second=second.name, between=tuple(layer.name for layer in chain.between),
            norm=norm.name if norm else None,
        ),
        blocked=(
            QUANTIZED if any(layer.attrs.get("quantized") for layer in layers)
            else "its weights are shared with another layer"
            if any(layer.attrs.get("shared_weights") for layer in (first, second)) else None
        ),
    )


RULE = Rule(
    code="PW006",
    name="linear-chain",
    severity=Severity.WARNING,
    check=check,
    doc=__doc__,
    fixes=("safe",),
)
