"""PW004 conv-bias-before-norm: a convolution's bias that the next BatchNorm cancels.

## What it does
Finds a convolution with a bias whose output goes only into a BatchNorm or an
InstanceNorm (Dropout, Identity and Cast in between are seen through).

## Why is this bad
BatchNorm and InstanceNorm subtract the per-channel mean of their input, and a
per-channel bias shifts that mean by exactly the bias: the bias has no effect
on the output. Its
parameters are stored, loaded and trained for nothing, and its gradient is
noise.

## Example
```
Conv(bias=True) -> BatchNorm -> ReLU
```

## Use instead
```
Conv(bias=False) -> BatchNorm -> ReLU
```
(`nn.Conv2d(..., bias=False)` in PyTorch, `Conv2D(..., use_bias=False)` in Keras).
The bias can be folded exactly into the BatchNorm's running mean.
"""

from __future__ import annotations

from pwlint.findings import Finding, Fix, Severity
from pwlint.fix.plans import FoldBiasPlan
from pwlint.ir import ModelGraph
from pwlint.rule import NoOptions, Rule
from pwlint.walk import sole_consumer

#: normalisations that subtract a per-channel mean (GroupNorm and LayerNorm mix channels)
CANCELLING_NORMS = {"batch": "BatchNorm", "instance": "InstanceNorm"}


def check(graph: ModelGraph, options: NoOptions):
    for conv in graph.layers("conv"):
        if not conv.attrs.get("bias"):
            continue
        norm = sole_consumer(graph, conv)
        if norm is None or norm.kind != "norm" or norm.attrs.get("norm_type") not in CANCELLING_NORMS:
            continue
        bias = conv.attrs.get("out_channels")
        count = f"{bias} " if bias else ""
        norm_name = CANCELLING_NORMS[norm.attrs["norm_type"]]
        fix = Fix(
            "safe",
            f"drop the bias of '{conv.label}'"
            + (" and fold it into the BatchNorm's running mean" if norm.attrs["norm_type"] == "batch" else ""),
            action=FoldBiasPlan.action,
            plan=FoldBiasPlan(conv=conv.name, norm=norm.name, norm_type=norm.attrs["norm_type"]),
            blocked="the bias is shared with another layer" if conv.attrs.get("shared_weights") else None,
        )
        yield Finding(
            message=(
                f"conv {conv.label} has a bias of {count}parameters that {norm_name} {norm.label} "
                "cancels by subtracting the mean; drop the bias"
            ),
            nodes=[conv.name, norm.name],
            fixes=[fix],
        )


RULE = Rule(
    code="PW004",
    name="conv-bias-before-norm",
    severity=Severity.WARNING,
    check=check,
    doc=__doc__,
    fixes=("safe",),
)
