"""PW001 flatten-dense-head: a spatial feature map flattened into a dense layer.

## What it does
Finds a Flatten, Reshape or Squeeze that turns a convolutional feature map with
more than one spatial position (H*W > 1) into a vector feeding a fully-connected
(dense) layer. Dropout, Identity, Cast and layout Transposes in between are seen
through. A flatten after global pooling or of a 1x1 map, a dense layer applied
per position (ConvNeXt blocks, transformer MLPs) and reshapes of attention
tensors are not reported.

## Why is this bad
The dense layer gets one weight per spatial position, per channel, per unit:
its parameter count grows with H*W, it ties the model to one input size and it
learns nothing that is shared across positions. In VGG16 this single layer
(25088 -> 4096) holds 102.8M of the model's 138M parameters. Global pooling
followed by pointwise (1x1) convolutions does the same job with H*W times fewer
parameters (NiN, SqueezeNet, ResNet, MobileNet heads).

## Example
```
conv (512 x 7 x 7) -> Flatten -> Dense(25088 -> 4096) -> Dense(4096 -> 1000)
```

## Use instead
```
conv (512 x 7 x 7) -> GlobalAveragePool -> Conv 1x1 (512 -> 4096) -> Conv 1x1 (4096 -> 1000)
```
or, keeping the outputs exactly, a Conv with a 7x7 kernel in place of the
first dense layer (the head then accepts larger inputs).
"""

from __future__ import annotations

from dataclasses import replace
from math import prod

from pwlint.findings import Finding, Fix, Severity
from pwlint.fix.plans import QUANTIZED, HeadPlan
from pwlint.ir import Layer, ModelGraph
from pwlint.rule import Rule, RuleOptions, option
from pwlint.units import human, ratio
from pwlint.walk import is_transparent, sole_consumer, source_of

#: layers a feature map passes through between its conv and the flatten, channels unchanged
FEATURE_KINDS = frozenset({"act", "pool", "norm", "dropout", "identity", "add", "mul"})
#: per-feature layers that may sit between the head's dense layers and work unchanged
#: on an [N, F, 1, 1] tensor (Softmax and LayerNorm would normalise the wrong axis)
PER_FEATURE_NORMS = frozenset({"batch", "frozen_batch"})
AXIS_ACTIVATIONS = frozenset({"softmax", "log_softmax"})


def _per_feature(layer: Layer) -> bool:
    if layer.kind == "act":
        return layer.attrs.get("activation") not in AXIS_ACTIVATIONS
    if layer.kind == "norm":
        return layer.attrs.get("norm_type") in PER_FEATURE_NORMS
    return is_transparent(layer)


class Options(RuleOptions):
    min_positions: int = option(
        default=2, ge=1, description="report only flattened maps with at least this many positions (H*W)"
    )


def _feature_source(graph: ModelGraph, flat: Layer) -> tuple[Layer | None, int]:
    """The conv upstream of a flatten, and how many layout transposes lie between."""
    flips = 0
    seen = {flat.name}
    current = graph.data_producer(flat)
    while current is not None and current.name not in seen:
        seen.add(current.name)
        if current.kind == "transpose" and current.attrs.get("layout_change"):
            flips += 1
        elif current.kind not in FEATURE_KINDS:
            break
        current = graph.data_producer(current)
    return current, flips


def _positions(shape: tuple, layout: str) -> tuple[int, ...] | None:
    dims = shape[1:-1] if layout == "NHWC" else shape[2:]
    return None if any(d is None for d in dims) else tuple(dims)


def _head(graph: ModelGraph, first: Layer) -> list[Layer]:
    """The first dense layer and the dense layers chained after it."""
    head = [first]
    current = first
    while True:
        nxt = sole_consumer(graph, current, through=_per_feature)
        if nxt is None or nxt.kind != "dense" or nxt.attrs.get("per_position") or any(nxt.name == h.name for h in head):
            return head
        head.append(nxt)
        current = nxt


def _stop(graph: ModelGraph, last: Layer) -> str:
    """Why a dense layer after the head stays dense: a layer between them that works
    across the features (Softmax, LayerNorm) would see the wrong axis of a conv's
    [N, F, 1, 1] output. Empty when no dense layer follows."""
    blocker = sole_consumer(graph, last, through=_per_feature)
    if blocker is None or blocker.kind == "dense":
        return ""
    dense = sole_consumer(graph, blocker, through=lambda layer: layer.kind in ("act", "norm") or is_transparent(layer))
    if dense is None or dense.kind != "dense":
        return ""
    return f"; '{dense.label}' stays dense: the {blocker.op} '{blocker.label}' before it works across the features"


def check(graph: ModelGraph, options: Options):
    for dense in graph.layers("dense"):
        if dense.attrs.get("per_position"):
            continue
        flat = source_of(graph, dense)
        if flat is None or flat.kind not in ("flatten", "reshape"):
            continue
        shape = flat.input_shape
        conv, flips = _feature_source(graph, flat)
        from_conv = conv is not None and conv.kind in ("conv", "concat")
        if shape is None and (from_conv or (conv is not None and conv.kind == "other")):
            yield _undecided(flat, dense)
            continue
        if shape is None or len(shape) < 3 or (flat.output_shape is not None and len(flat.output_shape) != 2):
            continue
        if not from_conv:
            continue
        layout = conv.layout or "NCHW"
        if flips % 2:
            layout = "NHWC" if layout == "NCHW" else "NCHW"
        positions = _positions(shape, layout)
        chans = shape[-1] if layout == "NHWC" else shape[1]
        if positions is None:
            # dynamic H and W: the dense layer's fan-in still tells how many positions there are
            fan_in = dense.attrs.get("in_features")
            if not chans or not fan_in or fan_in % chans:
                continue
            count = fan_in // chans
        else:
            count = prod(positions)
            if not chans:
                # the channel count is unknown but H and W are not: the fan-in gives it
                fan_in = dense.attrs.get("in_features")
                if not isinstance(fan_in, int) or not count or fan_in % count:
                    continue
                chans = fan_in // count
        if count < options.min_positions:
            continue
        yield _finding(graph, flat, dense, chans, layout, positions, count, shown_layout=conv.layout or "NCHW")


def _undecided(flat: Layer, dense: Layer) -> Finding:
    """The file does not say the shape a conv's output has when it is flattened (a
    legacy Keras file after a Lambda layer, say): say so rather than guess."""
    return Finding(
        severity=Severity.INFO,
        message=(
            f"could not decide whether {flat.op} '{flat.label}' feeding dense layer '{dense.label}' "
            "flattens a spatial feature map: the shape of its input is not known from the file"
        ),
        nodes=[flat.name, dense.name],
    )


def _finding(
    graph: ModelGraph, flat: Layer, dense: Layer, chans: int, layout: str, positions: tuple | None, count: int,
    shown_layout: str = "NCHW",
) -> Finding:
    head = _head(graph, dense)
    head_params = sum(layer.params for layer in head)
    units = dense.attrs.get("out_features")
    features = chans * count
    size = "x".join(map(str, positions)) if positions else f"HxW (H*W = {count}, H and W dynamic)"
    # printed in the model's own layout: 512x7x7 for channels-first, 7x7x512 for channels-last
    feature_map = f"{size}x{chans}" if shown_layout == "NHWC" else f"{chans}x{size}"
    message = f"{flat.op} '{flat.label}' turns a {feature_map} feature map into dense layer '{dense.label}'"
    fixes = []
    if units and chans:
        pointwise_first = chans * units + (units if dense.attrs.get("bias") else 0)
        pointwise = head_params - dense.params + pointwise_first
        message += (
            f" ({features} -> {units}, {human(dense.params)} parameters); after global pooling, as a "
            f"pointwise (1x1) conv it would have {human(pointwise_first)} "
            f"({ratio(dense.params, pointwise_first)} fewer)"
        )
        if len(head) > 1:
            message += f", and the head {human(pointwise)} instead of {human(head_params)}"
        fixes = _fixes(flat, head, chans, positions, layout, dense.params, pointwise_first, _stop(graph, head[-1]))
    return Finding(message=message, nodes=[flat.name, dense.name], fixes=fixes)


def _fixes(
    flat: Layer, head: list[Layer], chans: int, positions: tuple | None, layout: str, before: int, after: int,
    stop: str = "",
) -> list[Fix]:
    blocked = None
    if any(layer.attrs.get("quantized") for layer in head):
        blocked = QUANTIZED
    elif positions is None:
        blocked = "the feature map's height and width are dynamic, so the conv kernel size is unknown"
    elif any(layer.attrs.get("shared_weights") for layer in head):
        blocked = "a dense layer of the head shares its weights with another layer"
    elif any(layer.params == 0 for layer in head):
        blocked = "a dense layer of the head takes its weights as a graph input"
    plan = HeadPlan(
        flatten=flat.name, denses=tuple(layer.name for layer in head), channels=chans,
        positions=tuple(positions or ()), layout=layout,
    )
    pooled = replace(plan, kind="pool")
    kernel = "x".join(map(str, positions)) if positions else "HxW"
    rest = f", and the {len(head) - 1} dense layer(s) after it by 1x1 convs" if len(head) > 1 else ""
    rest += stop
    return [
        Fix(
            "safe",
            f"convolutionalise: replace '{head[0].label}' by a {kernel} conv{rest}; same parameters and "
            "outputs at this input size, and the head accepts larger inputs",
            action=plan.action, plan=plan, blocked=blocked,
        ),
        Fix(
            "unsafe",
            f"global average pooling + pointwise (1x1) conv in place of '{head[0].label}': "
            f"{human(before)} -> {human(after)} parameters ({ratio(before, after)} fewer), weights summed "
            "over positions (exact only for spatially constant features): fine-tune the model afterwards",
            action=pooled.action, plan=pooled, blocked=blocked,
        ),
    ]


RULE = Rule(
    code="PW001",
    name="flatten-dense-head",
    severity=Severity.WARNING,
    options=Options,
    check=check,
    doc=__doc__,
    fixes=("safe", "unsafe"),
)
