"""PW005 heavy-conv: a standard KxK convolution that pointwise layers could mostly replace.

## What it does
Finds standard convolutions (groups 1, a kernel of 3 or more along some axis)
with more parameters than `max-params` (default 1,000,000: VGG16's 512 -> 512
3x3 convolutions have 2.36M), or doing more than `max-macs-share` of the
model's multiply-accumulates (and at least `min-macs` of them). Depthwise and
grouped convolutions (MobileNet, ResNeXt), pointwise (1x1) convolutions and
convolutions whose kernel covers their whole input (fully-connected layers,
PW002's) are not reported, nor is the core of a Tucker-2 sandwich (a KxK
convolution read straight from a 1x1 convolution and read only by 1x1
convolutions, as the `tucker2` fix writes): it is already factorised. The message gives the cost of both alternatives: a
depthwise-separable pair (exact sizes) and a Tucker-2 sandwich at illustrative
ranks (a quarter of the channels; the fix picks its ranks from the weights).
This is a suggestion (`info`), not a defect: the rewrite changes what the model
computes, and the model needs fine-tuning afterwards.

## Why is this bad
A dense KxK kernel mixes every input channel with every output channel at
every kernel position, and most of that capacity is redundant: the lesson of
NiN, SqueezeNet, MobileNet and ResNet bottlenecks is that 1x1 (pointwise)
convolutions do most of the channel mixing at a fraction of the cost. Kim et
al. (2016) rewrote VGG16's convolutions by Tucker-2 for 4.93x fewer FLOPs and
-0.5 top-5 accuracy after fine-tuning.

## Example
```
Conv 3x3 (512 -> 512)                       2.36M parameters
```

## Use instead
```
Conv 1x1 (512 -> 128) -> Conv 3x3 (128 -> 128) -> Conv 1x1 (128 -> 512)   0.28M (Tucker-2)
DepthwiseConv 3x3 (512) -> Conv 1x1 (512 -> 512)                          0.27M (separable)
```
The unsafe fix (`method`) writes either, initialised from the kernel: Tucker-2
by higher-order SVD at the smallest ranks that keep `energy` of the
singular-value energy (rounded up to `rank-multiple-of`, never at or above
break-even); separable by the best rank-1 split of each input channel's
kernel slice. The relative error is reported; fine-tune afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Literal

from pwlint.findings import Finding, Fix, Severity
from pwlint.fix.plans import QUANTIZED, ConvFactorisePlan
from pwlint.ir import Layer, ModelGraph, spatial_size
from pwlint.rule import Rule, RuleOptions, option
from pwlint.stats import layer_macs, model_stats
from pwlint.units import human, ratio
from pwlint.walk import is_unit_kernel_conv
from pwlint_rules.oversized_dense import fully_connected


class Options(RuleOptions):
    max_params: int = option(
        default=1_000_000, ge=0, description="report KxK convolutions with more parameters than this"
    )
    max_macs_share: float = option(
        default=0.5, gt=0, le=1,
        description="also report one doing more than this share of the model's MACs (see min-macs)",
    )
    min_macs: int = option(
        default=10_000_000, ge=0,
        description="the MACs share counts only for convolutions doing at least this many MACs per sample",
    )
    method: Literal["tucker2", "separable"] = option(
        default="tucker2",
        description="unsafe fix: tucker2 (1x1 -> KxK -> 1x1, ranks by energy) or separable (depthwise KxK -> 1x1)",
    )
    energy: float = option(
        default=0.9, gt=0, le=1,
        description="unsafe fix, tucker2: keep the smallest ranks whose singular values hold this share of the energy",
    )
    rank_multiple_of: int = option(
        default=8, ge=1,
        description="unsafe fix, tucker2: round the ranks up to a multiple of this while below break-even",
    )


@dataclass(frozen=True)
class ConvShape:
    """What the costs of a conv and its rewrites depend on."""

    cin: int
    cout: int
    kernel: tuple[int, ...]
    #: input and output positions per sample (None when the shapes are unknown)
    positions_in: int | None
    positions_out: int | None

    @property
    def window(self) -> int:
        return prod(self.kernel)

    def conv(self) -> tuple[int, int | None]:
        """(weights, MACs) of the conv itself."""
        weights = self.cout * self.cin * self.window
        return weights, self._macs(weights)

    def separable(self) -> tuple[int, int | None]:
        """(weights, MACs) of depthwise KxK then pointwise Cin -> Cout."""
        depthwise, pointwise = self.cin * self.window, self.cout * self.cin
        return depthwise + pointwise, self._macs(depthwise + pointwise)

    def tucker2(self, r1: int, r2: int) -> tuple[int, int | None]:
        """(weights, MACs) of pointwise Cin -> r1 (at the input's resolution), KxK r1 -> r2
        and pointwise r2 -> Cout (at the output's)."""
        first, core, last = r1 * self.cin, r2 * r1 * self.window, self.cout * r2
        macs = None
        if self.positions_in is not None and self.positions_out is not None:
            macs = first * self.positions_in + (core + last) * self.positions_out
        return first + core + last, macs

    def _macs(self, weights: int) -> int | None:
        return None if self.positions_out is None else weights * self.positions_out


def illustrative_rank(channels: int, multiple_of: int) -> int:
    """A quarter of ``channels``, rounded up to ``multiple_of``, at most ``channels``: the
    ranks the message prices a Tucker-2 rewrite at (the IR has no weights to pick them)."""
    rank = max(1, -(-channels // 4))
    rank = -(-rank // multiple_of) * multiple_of
    return min(rank, channels)


def conv_shape(layer: Layer) -> ConvShape | None:
    """The shape of a standard KxK conv this rule looks at, None for any other layer."""
    attrs = layer.attrs
    if layer.kind != "conv" or attrs.get("transposed") or (attrs.get("groups") or 1) != 1:
        return None
    kernel, cin, cout = attrs.get("kernel"), attrs.get("in_channels"), attrs.get("out_channels")
    if not kernel or not cin or not cout or max(kernel) < 3 or fully_connected(layer):
        return None
    return ConvShape(
        cin, cout, tuple(kernel),
        spatial_size(layer.input_shape, layer.layout), spatial_size(layer.output_shape, layer.layout),
    )


def _macs_text(macs: int | None) -> str:
    return f" and {human(macs)} MACs" if macs is not None else ""


def is_tucker_core(graph: ModelGraph, layer) -> bool:
    """A conv between 1x1 convs with nothing between: the middle of a Tucker-2 sandwich."""
    producer = graph.data_producer(layer)
    consumers = graph.consumers(layer)
    return (producer is not None and is_unit_kernel_conv(producer)
            and bool(consumers) and all(is_unit_kernel_conv(consumer) for consumer in consumers))


def check(graph: ModelGraph, options: Options):
    stats = None
    for layer in graph.layers("conv"):
        shape = conv_shape(layer)
        if shape is None or is_tucker_core(graph, layer):
            continue
        if stats is None:  # counted once, and only for a model with a conv to look at
            stats = model_stats(graph)
        macs = layer_macs(layer)
        # a share of an incomplete total (some layer's shapes unknown) would overstate it
        share = macs / stats.macs if macs is not None and stats.macs and stats.macs_complete else None
        heavy = layer.params > options.max_params
        dominant = share is not None and macs >= options.min_macs and share > options.max_macs_share
        if not (heavy or dominant):
            continue
        weights, _ = shape.conv()
        separable, separable_macs = shape.separable()
        r1 = illustrative_rank(shape.cin, options.rank_multiple_of)
        r2 = illustrative_rank(shape.cout, options.rank_multiple_of)
        tucker, tucker_macs = shape.tucker2(r1, r2)
        if min(separable, tucker) >= weights:
            continue  # neither rewrite would be smaller: nothing to suggest
        window = "x".join(map(str, shape.kernel))
        cost = f"{human(layer.params)} parameters"
        if macs is not None:
            cost += f" and {human(macs)} MACs per sample"
            if share is not None:
                cost += f" ({share:.0%} of the model's)"
        reason = (
            f"over the limit of {human(options.max_params)} parameters" if heavy
            else f"over {options.max_macs_share:.0%} of the model's MACs"
        )
        yield Finding(
            message=(
                f"{window} conv {layer.label} ({shape.cin} -> {shape.cout}) has {cost}, {reason}; "
                f"a depthwise {window} + pointwise pair would have {human(separable)}{_macs_text(separable_macs)} "
                f"({ratio(weights, separable)} fewer weights), a Tucker-2 sandwich (1x1 -> {window} -> 1x1) at ranks "
                f"{r1} and {r2} {human(tucker)}{_macs_text(tucker_macs)} ({ratio(weights, tucker)} fewer; "
                "illustrative ranks: the fix picks them from the weights by energy)"
            ),
            nodes=[layer.name],
            fixes=[_factorise_fix(layer, window, options)],
        )


def _factorise_fix(layer: Layer, window: str, options: Options) -> Fix:
    if options.method == "separable":
        how = f"a depthwise {window} conv then a 1x1 conv, each input channel's kernel split by its best rank-1 factors"
    else:
        how = (
            f"a 1x1 conv, a {window} conv and a 1x1 conv (Tucker-2 by higher-order SVD, ranks keeping "
            f"{options.energy:.0%} of the energy)"
        )
    return Fix(
        "unsafe",
        f"rewrite '{layer.label}' as {how}; changes outputs (the relative error is reported): "
        "the model needs fine-tuning afterwards",
        action=ConvFactorisePlan.actions[options.method == "separable"],
        plan=ConvFactorisePlan(
            conv=layer.name, method=options.method, energy=options.energy, multiple_of=options.rank_multiple_of
        ),
        blocked=(
            QUANTIZED if layer.attrs.get("quantized")
            else "its weights are shared with another layer" if layer.attrs.get("shared_weights") else None
        ),
    )


RULE = Rule(
    code="PW005",
    name="heavy-conv",
    severity=Severity.INFO,
    options=Options,
    check=check,
    doc=__doc__,
    fixes=("unsafe",),
)
