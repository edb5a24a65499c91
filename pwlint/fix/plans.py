"""Typed fix plans: what a rule asks a format's fix backend to do, in IR terms.

A rule builds a plan from the lint graph (layer names, shapes, options); a backend
carries it out (see :mod:`pwlint.fix.actions`). Plans are plain, frozen data: no
numpy, no format, so rules may import this module. Layers are named by
``Layer.name``, the name the loader gave them.

Each plan also reads like the dict plans of earlier versions (``plan["denses"]``,
``plan.get("energy")``), so a third-party backend written against those keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

#: why no fix rewrites a quantized layer: its integer weights, scales and zero points
#: would need quantizing again, which is the quantizer's job
QUANTIZED = "the model is quantized: fix the float model, then quantize again"
#: how a flatten lays out a map: NCHW reads it channels first (C, *positions), NHWC
#: channels last (*positions, C), the row order of the first dense layer's weights
Layout = Literal["NCHW", "NHWC"]


def flatten_order(spatial: int, channels_last: bool) -> tuple[int, ...]:
    """The axes of a ``(C, *positions)`` map in the order a flatten reads them: ``(1, ...,
    spatial, 0)`` channels last, ``(0, 1, ..., spatial)`` channels first."""
    return (*range(1, spatial + 1), 0) if channels_last else tuple(range(spatial + 1))


@dataclass(frozen=True)
class Plan:
    """The fields every plan shares; subclasses name their ``actions``."""

    #: the ``Fix.action`` names this plan type carries out
    actions: ClassVar[tuple[str, ...]] = ()

    def layers(self) -> tuple[str, ...]:
        """The names of the lint-graph layers the plan rewrites."""
        return ()

    # read access as a mapping, for backends written against dict plans
    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        value = getattr(self, key)
        return list(value) if isinstance(value, tuple) else value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(frozen=True)
class HeadPlan(Plan):
    """PW001: a Flatten + dense head rewritten as convolutions.

    ``kind="conv"`` (safe, ``convolutionalise-head``): the first dense layer becomes a
    conv whose kernel covers the map (``positions``, valid padding), every later dense
    layer a 1x1 conv, then a flatten. ``kind="pool"`` (unsafe, ``pool-pointwise-head``):
    global average pooling, then a 1x1 conv whose kernel is the dense weights summed
    over the positions.
    """

    actions: ClassVar[tuple[str, ...]] = ("convolutionalise-head", "pool-pointwise-head")

    flatten: str
    #: the first dense layer and the dense layers chained after it
    denses: tuple[str, ...]
    channels: int
    #: the flattened map's spatial sizes (H, W); empty when they are dynamic
    positions: tuple[int, ...]
    #: the order the flatten reads the map in (see :data:`Layout`)
    layout: Layout
    kind: Literal["conv", "pool"] = "conv"

    def __post_init__(self) -> None:
        object.__setattr__(self, "denses", tuple(self.denses))
        object.__setattr__(self, "positions", tuple(self.positions))

    @property
    def action(self) -> str:
        return self.actions[self.kind == "pool"]

    @property
    def pool(self) -> bool:
        return self.kind == "pool"

    @property
    def channels_last(self) -> bool:
        """Whether the flatten reads the map channels last (the dense rows are (*positions, C))."""
        return self.layout == "NHWC"

    @property
    def order(self) -> tuple[int, ...]:
        """The axes of the ``(C, *positions)`` map in the order the flatten reads them."""
        return flatten_order(len(self.positions), self.channels_last)

    def layers(self) -> tuple[str, ...]:
        return (self.flatten, *self.denses)


@dataclass(frozen=True)
class FoldBiasPlan(Plan):
    """PW004: drop a conv's bias that the next norm cancels; for a BatchNorm, fold it
    into the running mean (mean' = mean - bias), which keeps the outputs exact."""

    actions: ClassVar[tuple[str, ...]] = ("fold-bias-into-norm",)
    action: ClassVar[str] = "fold-bias-into-norm"

    conv: str
    norm: str
    #: ``batch`` (the mean is folded) or ``instance`` (the norm subtracts the input's mean)
    norm_type: str

    @property
    def folds_mean(self) -> bool:
        return self.norm_type == "batch"

    def layers(self) -> tuple[str, ...]:
        return (self.conv, self.norm)


@dataclass(frozen=True)
class FactorisePlan(Plan):
    """PW002: a dense layer split in two by truncated SVD (see :mod:`pwlint.fix.lowrank`),
    at the rank that fits ``target_params`` if set, else keeps ``energy`` of the
    singular-value energy."""

    actions: ClassVar[tuple[str, ...]] = ("factorise-dense",)
    action: ClassVar[str] = "factorise-dense"

    #: a dense layer, or a pointwise conv (1x1 kernel, groups 1), which splits into two
    #: 1x1 convs (a pointwise bottleneck) exactly as a dense layer splits into two
    dense: str
    energy: float = 0.9
    target_params: int | None = None
    #: the rank is rounded up to a multiple of this when that stays below break-even
    #: (accelerators pad channel counts to such multiples anyway)
    multiple_of: int = 8

    def layers(self) -> tuple[str, ...]:
        return (self.dense,)


@dataclass(frozen=True)
class ConvFactorisePlan(Plan):
    """PW005: a KxK convolution (K >= 3, groups 1) rewritten from pointwise convs
    (see :mod:`pwlint.fix.convsplit`).

    ``method="tucker2"`` (``tucker2-conv``): pointwise Cin -> R1, KxK R1 -> R2 (the conv's
    stride, padding and dilation), pointwise R2 -> Cout (the bias), ranks by ``energy``.
    ``method="separable"`` (``separable-conv``): depthwise KxK (stride, padding,
    dilation), then pointwise Cin -> Cout (the bias).
    """

    actions: ClassVar[tuple[str, ...]] = ("tucker2-conv", "separable-conv")

    conv: str
    method: Literal["tucker2", "separable"] = "tucker2"
    energy: float = 0.9
    multiple_of: int = 8

    @property
    def action(self) -> str:
        return self.actions[self.method == "separable"]

    def layers(self) -> tuple[str, ...]:
        return (self.conv,)


@dataclass(frozen=True)
class MergeChainPlan(Plan):
    """PW006: two linear layers with nothing non-linear between them merged into one
    (see :func:`pwlint.fix.merge.merge_linear`): ``first`` is a dense layer or a conv,
    ``second`` a dense layer or a pointwise conv reading it through ``between``, every
    layer between the two in order: layers that keep values as they are (Dropout,
    Identity, reshapes that keep the channel axis the second layer reads) and at most
    one BatchNorm in eval form, ``norm`` (also in ``between``), folded into ``first``
    before the merge."""

    actions: ClassVar[tuple[str, ...]] = ("merge-linear-chain",)
    action: ClassVar[str] = "merge-linear-chain"

    first: str
    second: str
    between: tuple[str, ...] = ()
    norm: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "between", tuple(self.between))

    def layers(self) -> tuple[str, ...]:
        return (self.first, *self.between, self.second)


PLAN_TYPES: tuple[type[Plan], ...] = (HeadPlan, FoldBiasPlan, FactorisePlan, ConvFactorisePlan, MergeChainPlan)


def plan_for(action: str, plan: Plan | dict) -> Plan:
    """``plan`` as the typed plan of ``action``; a dict plan (from a third-party rule
    written before typed plans) is converted. Raises ValueError when it does not fit."""
    for kind in PLAN_TYPES:
        if action not in kind.actions:
            continue
        if isinstance(plan, kind):
            if plan.action != action:
                raise ValueError(f"the plan is for '{plan.action}', not '{action}'")
            return plan
        if isinstance(plan, dict):
            names = {f.name for f in fields(kind)}
            values = {k: v for k, v in plan.items() if k in names}
            if kind is HeadPlan:
                values["kind"] = "pool" if action == "pool-pointwise-head" else "conv"
            if kind is ConvFactorisePlan:
                values["method"] = "separable" if action == "separable-conv" else "tucker2"
            try:
                return kind(**values)
            except TypeError as exc:
                raise ValueError(f"the plan of '{action}' is incomplete: {exc}") from None
        raise ValueError(f"'{action}' takes a {kind.__name__}, not a {type(plan).__name__}")
    raise ValueError(f"no plan type carries out '{action}'")
