"""PW007 channel-alignment: a pointwise layer whose channel count accelerators must pad.

## What it does
Finds dense layers and pointwise (1x1, groups 1) convolutions whose input or
output channel count is not a multiple of `multiple-of` (default 8), one
finding per layer, naming the side(s) and the nearest aligned count. Widths
the model does not choose are not reported: the channels of the model's input
(a layer reading it through normalisation, activations, reshapes or pooling)
and of its final outputs (a layer whose output reaches a model output through
such layers: the 1000 classes of a classifier, softmax and all). Counts below
`multiple-of` are not reported either: such a side (an SE block squeezed to 4
channels, a 2-feature input) makes a layer too small for its padding to matter,
and widening it would cost more than it saves.

## Why is this bad
GPUs' Tensor Cores and NPUs compute matrix products in tiles of 8 channels
(fp16) or 16 (int8). A channel count between multiples is padded up to the
next one, and the padded channels are computed and thrown away; where a
library does not pad, it falls back to a slower kernel. An 84-channel layer
costs what an 88-channel one does, or more.

## Example
```
Dense(120 -> 84) -> ReLU -> Dense(84 -> 10)
Conv 1x1 (64 -> 30)
```

## Use instead
```
Dense(120 -> 88) -> ReLU -> Dense(88 -> 10)
Conv 1x1 (64 -> 32)
```
(`make_divisible(channels, 8)`, as MobileNet and EfficientNet size their
layers). For int8 inference, a multiple of 16 (`multiple-of = 16`).
"""

from __future__ import annotations

from pwlint.findings import Finding, Severity
from pwlint.ir import Layer, ModelGraph
from pwlint.rule import Rule, RuleOptions, option
from pwlint.walk import downstream, is_padding, is_unit_kernel_conv, source_of

#: layers that pass every channel on as it is (counted the same on both sides), through
#: which a layer still reads the model's input or writes its output
CHANNEL_KEEPING = frozenset(
    {"act", "norm", "dropout", "identity", "reshape", "flatten", "transpose", "pool", "global_pool"}
)


class Options(RuleOptions):
    multiple_of: int = option(
        default=8, ge=1,
        description="report channel counts that are not a multiple of this (8 for fp16, 16 for int8)",
    )


def _keeps_channels(layer: Layer) -> bool:
    return layer.kind in CHANNEL_KEEPING or is_padding(layer)


def pointwise(layer: Layer) -> bool:
    """A dense layer, or a conv that is one applied at every position (1x1, groups 1)."""
    if layer.kind == "dense":
        return True
    attrs = layer.attrs
    return is_unit_kernel_conv(layer) and not attrs.get("transposed") and (attrs.get("groups") or 1) == 1


def widths(layer: Layer) -> tuple[int | None, int | None]:
    if layer.kind == "dense":
        return layer.attrs.get("in_features"), layer.attrs.get("out_features")
    return layer.attrs.get("in_channels"), layer.attrs.get("out_channels")


def reads_model_input(graph: ModelGraph, layer: Layer) -> bool:
    """Whether ``layer`` reads a model input through channel-keeping layers (a loader that
    writes no input layers leaves the first layer without a producer)."""
    source = source_of(graph, layer, _keeps_channels)
    return source is None or source.kind == "input"


def writes_model_output(graph: ModelGraph, layer: Layer) -> bool:
    """Whether ``layer``'s output reaches a model output through channel-keeping layers (an
    output layer, or a layer nobody reads, where a loader writes no output layers)."""
    if not graph.consumers(layer):
        return True
    for reached, path in downstream(graph, layer, lambda l: _keeps_channels(l) and bool(graph.consumers(l))):
        if reached.kind == "output" or (_keeps_channels(reached) and not graph.consumers(reached)):
            return True
    return False


def _aligned(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


def _misaligned(count: int | None, multiple: int) -> bool:
    """A channel count worth padding: known, at least one ``multiple`` wide, and not a multiple."""
    return bool(count) and count > multiple and count % multiple != 0


def check(graph: ModelGraph, options: Options):
    multiple = options.multiple_of
    for layer in graph.layers():
        if not pointwise(layer):
            continue
        fan_in, fan_out = widths(layer)
        sides = []
        if _misaligned(fan_in, multiple) and not reads_model_input(graph, layer):
            sides.append(("input", fan_in))
        if _misaligned(fan_out, multiple) and not writes_model_output(graph, layer):
            sides.append(("output", fan_out))
        if not sides:
            continue
        what = "dense layer" if layer.kind == "dense" else "1x1 conv"
        counts = " and ".join(f"{count} {side} channels" for side, count in sides)
        instead = ", ".join(f"{_aligned(count, multiple)} {side}" for side, count in sides)
        yield Finding(
            message=(
                f"{what} {layer.label} ({fan_in} -> {fan_out}) has {counts}, not a multiple of {multiple}; "
                "Tensor Cores and NPUs pad channels to multiples of 8 (fp16) or 16 (int8), so the padding "
                f"is computed and wasted, or a slower kernel runs: {instead} would be aligned"
            ),
            nodes=[layer.name],
        )


RULE = Rule(
    code="PW007",
    name="channel-alignment",
    severity=Severity.INFO,
    options=Options,
    check=check,
    doc=__doc__,
)
