"""PW002 oversized-dense: a fully-connected layer that dominates the parameter budget.

## What it does
Finds fully-connected layers with more parameters than `max-params` (default
4,194,304, i.e. 4M): dense layers, and convolutions whose kernel covers their
whole input (a Flatten + Dense head rewritten as convolutions is still as big). Dense layers applied per position of a sequence
or feature map (transformer MLPs, ConvNeXt pointwise layers) are not reported:
their cost is shared across positions. Ordinary classifiers on pooled features
(a 1000-class layer on 512 to 2048 features) stay below the default.

## Why is this bad
One such layer often holds most of a model's parameters while doing little of
its work: VGG16's fc1 (25088 -> 4096) holds 102.8M of 138M parameters and fc2
another 16.8M; AlexNet's fc6 and fc7 hold 37.7M and 16.8M. They make the file
large, slow to load and easy to overfit.

## Example
```
Flatten -> Dense(25088 -> 4096) -> Dense(4096 -> 4096) -> Dense(4096 -> 1000)
```

## Use instead
```
GlobalAveragePool -> Dense(512 -> 1000)
```
or a pointwise (1x1 conv) head, or a low-rank factorisation
Dense(in -> r) -> Dense(r -> out) with r much smaller than in and out (the
unsafe fix; r rounded up to a multiple of `rank-multiple-of`, which
accelerators pad channel counts to anyway). A fully-connected convolution
factorises the same way: a 1x1 conv into two 1x1 convs (a pointwise
bottleneck), a KxK conv into a KxK conv to r channels then a 1x1 conv.
"""

from __future__ import annotations

from math import prod

from pwlint.findings import Finding, Fix, Severity
from pwlint.fix.plans import QUANTIZED, FactorisePlan
from pwlint.ir import Layer, ModelGraph, spatial_size
from pwlint.rule import Rule, RuleOptions, option
from pwlint.units import human


class Options(RuleOptions):
    max_params: int = option(
        default=4_194_304, ge=0, description="report dense layers with more parameters than this"
    )
    svd_energy: float = option(
        default=0.9, gt=0, le=1,
        description="unsafe fix: keep the smallest rank whose singular values hold this share of the energy",
    )
    svd_target_params: int | None = option(
        default=None, gt=0,
        description="unsafe fix: choose the rank so that the two factors have at most this many parameters",
    )
    rank_multiple_of: int = option(
        default=8, ge=1,
        description="unsafe fix: round the rank up to a multiple of this while it stays below break-even "
        "(never past svd-target-params); 1 keeps the exact rank",
    )


def fully_connected(layer: Layer) -> tuple[int | None, int | None, str] | None:
    """(fan-in, fan-out, what to call it) for a layer that connects every input to every
    output: a dense layer applied once per sample, or a conv whose kernel covers its
    whole input (a convolutionalised head: PW001's safe fix makes these)."""
    if layer.kind == "dense" and not layer.attrs.get("per_position"):
        return layer.attrs.get("in_features"), layer.attrs.get("out_features"), "dense layer"
    if layer.kind == "conv" and spatial_size(layer.output_shape, layer.layout) == 1:
        kernel, cin = layer.attrs.get("kernel"), layer.attrs.get("in_channels")
        positions = spatial_size(layer.input_shape, layer.layout)
        if kernel and cin and positions is not None and prod(kernel) == positions:
            fan_in = cin // (layer.attrs.get("groups") or 1) * positions
            return fan_in, layer.attrs.get("out_channels"), "fully-connected conv"
    return None


def check(graph: ModelGraph, options: Options):
    for layer in graph.layers():
        described = fully_connected(layer)
        if described is None or layer.params <= options.max_params:
            continue
        fan_in, fan_out, what = described
        shape = f" ({fan_in} -> {fan_out})" if fan_in and fan_out else ""
        share = f", {layer.params / graph.total_params:.0%} of the model" if graph.total_params else ""
        macs = f" and {human(fan_in * fan_out)} MACs per sample" if fan_in and fan_out else ""
        yield Finding(
            message=(
                f"{what} {layer.label}{shape} has {human(layer.params)} parameters{share}{macs}, "
                f"over the limit of {human(options.max_params)}"
            ),
            nodes=[layer.name],
            fixes=[_svd_fix(layer, options)],
        )


def _svd_fix(layer: Layer, options: Options) -> Fix:
    target = (
        f"at most {human(options.svd_target_params)} parameters" if options.svd_target_params
        else f"{options.svd_energy:.0%} of the singular-value energy"
    )
    return Fix(
        "unsafe",
        f"factorise '{layer.label}' into {_factors(layer)} by truncated SVD, keeping {target}; "
        "changes outputs (the relative error is reported): fine-tune afterwards",
        action=FactorisePlan.action,
        plan=FactorisePlan(
            dense=layer.name, energy=options.svd_energy, target_params=options.svd_target_params,
            multiple_of=options.rank_multiple_of,
        ),
        blocked=_blocked(layer),
    )


def _factors(layer: Layer) -> str:
    """What the two factors of ``layer`` are: dense layers, two 1x1 convs, or a KxK conv
    to the rank then a 1x1 conv (the first factor keeps the kernel, stride and padding)."""
    if layer.kind != "conv":
        return "two dense layers"
    kernel = layer.attrs.get("kernel") or ()
    if all(k == 1 for k in kernel):
        return "two 1x1 convs (a pointwise bottleneck)"
    return f"a {'x'.join(map(str, kernel))} conv to rank r then a 1x1 conv"


def _blocked(layer: Layer) -> str | None:
    if layer.attrs.get("quantized"):
        return QUANTIZED
    if layer.attrs.get("shared_weights"):
        return "its weights are shared with another layer"
    if layer.kind == "conv" and layer.attrs.get("transposed"):
        return "factorising a transposed convolution is not supported"
    if layer.kind == "conv" and (layer.attrs.get("groups") or 1) != 1:
        return "factorising a grouped convolution is not supported"
    return None


RULE = Rule(
    code="PW002",
    name="oversized-dense",
    severity=Severity.WARNING,
    options=Options,
    check=check,
    doc=__doc__,
    fixes=("unsafe",),
)
