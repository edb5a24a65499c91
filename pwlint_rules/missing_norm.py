"""PW003 missing-norm: a convolution whose output reaches the next layer unnormalised.

## What it does
Follows each convolution's output forward, through activations, Add, Mul,
Concat, pooling, reshapes and layout Transposes, and reports it when it
reaches another convolution or dense layer without passing a normalisation
(BatchNorm, LayerNorm, GroupNorm, InstanceNorm, also in decomposed or frozen
Mul+Add form). Pre-activation order (norm -> act -> conv, as in DenseNet and
pre-activation ResNets) is accepted. Not reported: squeeze-excite convolutions
(feeding a sigmoid or hard-sigmoid gate), convolutions on 1x1 maps, the last
convolution before global pooling or the output, and pre-norm convolutions,
whose input comes from a normalisation through nothing but activations,
pooling, padding, reshapes, layout Transposes, Dropout or Identity, where that
normalisation is not the previous convolution's own (ConvNeXt's LayerNorm ->
Conv 2x2/2 downsampling after a residual Add, its LayerNorm applied
channels-last between two Transposes; DenseNet's BN -> ReLU -> Conv after a
Concat). In Conv -> BN -> ReLU -> Conv the BatchNorm belongs to the first
convolution, and the second is checked as usual. A convolution whose output
goes straight into other convolutions, with nothing between and a 1x1 one on
either side, is one factor of a factorised convolution (Tucker-2's 1x1 -> KxK
-> 1x1, depthwise -> pointwise, a low-rank pair, as PW002's and PW005's fixes
write): together they are one
linear map, whose normalisation belongs after the last factor, which is
checked as usual.

What a missing norm means depends on the format:

- Keras (`.keras`, `.h5`), `torch.export` (`.pt2`) and TorchScript keep
  normalisation as written: each convolution without one is a `warning`, also
  in a model with no normalisation at all (a VGG16 without BatchNorm: 13).
- ONNX eval-mode exports fold Conv+BatchNorm, fully or in part (DenseNet keeps
  the BatchNorm after each Concat and loses the one after each 1x1 conv;
  detection models keep BatchNorm only after ConvTranspose). Where the file
  shows that signature (no BatchNorm, or its frozen Mul+Add form, directly
  after a convolution), the convolutions without normalisation are reported
  together as one `info` finding that says folding was detected and how to
  export with BatchNorm kept; a model with no normalisation at all gets one
  `info` too. Where some convolution is directly followed by a BatchNorm, the
  exporter kept them, and each convolution without one is a `warning`.

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
from pwlint.walk import downstream, is_padding, is_transparent, is_unit_kernel_conv, source_of

PASS_KINDS = frozenset({"act", "add", "mul", "concat", "pool", "reshape", "flatten", "dropout", "identity"})
GATES = frozenset({"sigmoid", "hard_sigmoid"})
#: layers between a normalisation and the conv it feeds in a pre-norm design: a conv
#: whose input is normalised (norm -> act -> conv included) is not reported; a missing
#: norm after it shows up at the next conv, whose input is then not normalised
PRE_NORM_KINDS = frozenset({"pool", "reshape", "flatten", "transpose", "dropout", "identity"})
#: normalisations an exporter can fold into the convolution before them
BATCH_NORMS = frozenset({"batch", "frozen_batch"})
#: how many convolutions an info finding names in its message (all are in ``nodes``)
NAMED_IN_MESSAGE = 3
#: how to keep BatchNorm in an ONNX export from PyTorch
KEEP_NORM = (
    "torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.PRESERVE), "
    "or optimize=False with the dynamo exporter"
)


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


def _constant_affine(graph: ModelGraph, layer: Layer) -> bool:
    """A Mul or Add whose only computed input is one tensor, the other operand a
    constant: a decomposed LayerNorm's scale and shift (gamma * x + beta), a layer scale."""
    if layer.kind not in ("mul", "add"):
        return False
    # a producer with no inputs of its own is a constant too (an Identity or Constant node
    # that hands on a weight shared by several layers)
    computed = [p for p in graph.producers(layer) if p.kind == "input" or graph.producers(p)]
    return len(computed) == 1


def _is_pre_norm(graph: ModelGraph, conv: Layer) -> bool:
    """The conv's input is a normalisation's output, with only activations, pooling, padding,
    reshapes, layout transposes and a constant scale or shift between, and that norm is
    not the previous conv's own (it follows an Add, a Concat, pooling or the input) (ConvNeXt's LayerNorm -> Conv 2x2/2
    downsampling, its LayerNorm applied channels-last between two Transposes)."""
    through = lambda l: (
        l.kind in PRE_NORM_KINDS or is_transparent(l) or is_padding(l) or _constant_affine(graph, l)
        or (l.kind == "act" and l.attrs.get("activation") not in GATES)
    )
    source = source_of(graph, conv, through)
    if source is None or source.kind != "norm":
        return False
    # a norm straight after another conv is that conv's own (Conv-BN-ReLU-Conv): the conv
    # after it is checked as usual, or a missing norm after it would never be reported
    upstream = lambda l: is_transparent(l) or l.kind in ("reshape", "transpose")
    before = source_of(graph, source, upstream)
    return before is None or before.kind != "conv"


def _factor_of_a_factorised_conv(graph: ModelGraph, conv: Layer) -> bool:
    """Whether ``conv`` feeds only convolutions, directly, with a pointwise one on either
    side (1x1 -> KxK, KxK -> 1x1, depthwise -> 1x1: the pieces a low-rank, Tucker-2 or
    separable rewrite writes): a norm between the factors of one linear map would change
    what the factorisation computes. ConvNeXt's strided conv -> depthwise conv is not one."""
    consumers = graph.consumers(conv)
    return (bool(consumers) and all(consumer.kind == "conv" for consumer in consumers)
            and (is_unit_kernel_conv(conv) or all(is_unit_kernel_conv(consumer) for consumer in consumers)))


def _unnormalised_successor(graph: ModelGraph, conv: Layer) -> Layer | None:
    for reached, _ in downstream(graph, conv, _passes):
        if reached.kind == "conv" and not (_feeds_gate(graph, reached) or _on_single_position(reached)):
            return reached
        if reached.kind == "dense":
            return reached
    return None


def _batch_norm_after_a_conv(graph: ModelGraph) -> bool:
    """Whether some BatchNorm (or its frozen Mul+Add form) directly follows a convolution,
    through nothing but Dropout, Identity, Cast or layout Transposes: the exporter kept
    BatchNorm, so a conv without one really has none. Only BatchNorm is ever folded, so
    a LayerNorm or GroupNorm after a conv (a GroupNorm detection head on a folded
    backbone) says nothing; nor does a BatchNorm after a transposed conv, which exporters
    that fold Conv+BatchNorm leave alone."""
    for norm in graph.layers("norm"):
        if norm.attrs.get("norm_type") not in BATCH_NORMS:
            continue
        source = source_of(graph, norm)
        if source is not None and source.kind == "conv" and not source.attrs.get("transposed"):
            return True
    return False


def _count(items, noun: str) -> str:
    n = sum(1 for _ in items)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _named(convs: list[Layer]) -> str:
    names = ", ".join(conv.label for conv in convs[:NAMED_IN_MESSAGE])
    rest = len(convs) - NAMED_IN_MESSAGE
    return f"{names} and {rest} more" if rest > 0 else names


def _folded_info(graph: ModelGraph, convs: list[Layer]) -> Finding:
    """One info finding for an ONNX file whose BatchNorms look folded into its convs."""
    norms = sum(1 for _ in graph.layers("norm"))
    if norms == 0:
        return Finding(
            severity=Severity.INFO,
            message=(
                f"the model has {_count(graph.layers('conv'), 'convolution')} and no normalisation "
                "layer, so normalisation cannot be checked here; if BatchNorm was folded into the "
                f"convolutions at export, export with it kept ({KEEP_NORM})"
            ),
            nodes=[],
        )
    return Finding(
        severity=Severity.INFO,
        message=(
            f"BatchNorm looks folded into the convolutions at export ({_count(range(norms), 'normalisation layer')} "
            f"left, no BatchNorm directly after a convolution): {_count(convs, 'convolution')} without normalisation "
            f"after {'it' if len(convs) == 1 else 'them'} ({_named(convs)}) cannot be checked; to check them, export with BatchNorm kept ({KEEP_NORM})"
        ),
        nodes=[conv.name for conv in convs],
    )


def check(graph: ModelGraph, options: NoOptions):
    unnormalised = []
    for conv in graph.layers("conv"):
        if (_on_single_position(conv) or _feeds_gate(graph, conv) or _is_pre_norm(graph, conv)
                or _factor_of_a_factorised_conv(graph, conv)):
            continue
        successor = _unnormalised_successor(graph, conv)
        if successor is not None:
            unnormalised.append((conv, successor))
    if not unnormalised:
        return
    # only where the format's exporters fold Conv+BatchNorm (ONNX) can a missing norm be
    # an artefact of the export; Keras, torch.export and TorchScript keep norms as written
    if graph.meta.get("norm_folding") == "possible" and not _batch_norm_after_a_conv(graph):
        yield _folded_info(graph, [conv for conv, _ in unnormalised])
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
