"""PW006's fix on a Keras model: two linear layers with nothing non-linear between them
merged into one (``merge-linear-chain``, safe), by :func:`pwlint.fix.merge.merge_linear`.

``first`` is a ``Dense`` or a standard ``ConvND`` (any kernel, one group, no
activation); ``second`` a ``Dense`` or a 1x1 ``ConvND`` (stride 1, one group) reading
``first``'s output through the plan's ``between`` layers: eval no-ops (Dropout and its
kin, Identity), at most one ``BatchNormalization`` (the plan's ``norm``, folded into
``first``), and ``Flatten``/``Reshape`` layers that keep each position's channel vector
whole. The merged layer is of ``first``'s kind and geometry, with ``second``'s units and
activation, and writes ``second``'s output under ``second``'s name, so what read
``second`` and the model's outputs are unchanged. A kept reshape (needed for the output
shape: a conv's ``[N, 1, 1, C]`` map flattened for a Dense) follows the merged layer,
its target resized to the new channel count, the last of them named after ``second``.

Whether a reshape keeps the channels is read from the lint graph's shapes: with the
channels on the same side (``channels_last`` Dense/conv before and after, or
``channels_first`` both) and the channel axis kept whole, each position's vector is still
contiguous; with one position (a ``[N, 1, 1, C]`` map) any reshape keeps it.
"""

from __future__ import annotations

import copy
from math import prod
from typing import TYPE_CHECKING

import numpy as np

from pwlint.errors import FixNotApplicable
from pwlint.fix.actions import Merged
from pwlint.fix.merge import merge_linear, norm_affine
from pwlint.fix.plans import MergeChainPlan
from pwlint.formats.keras.fix_layers import (
    BIAS_KEYS, ConvSpec, activation, entry_name, is_conv, named_weights, tensor_ref, to_keras, to_shared,
)

if TYPE_CHECKING:
    from pwlint.formats.keras.fixes import Container, ModelEdit

#: layers that pass values through unchanged at inference
NO_OPS = frozenset({
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
})
RESHAPES = frozenset({"Flatten", "Reshape"})


class _Linear:
    """A Dense or conv of the chain: its entry, weights in the shared ``(out, in, *K)``
    order, and which side of its output the channels are on."""

    def __init__(self, edit: ModelEdit, container: Container, lint_name: str, name: str) -> None:
        self.lint_name, self.name = lint_name, name
        self.entry = container.entry(name)
        self.config = self.entry["config"]
        cls = self.entry.get("class_name")
        if cls == "Dense":
            if self.config.get("quantization_config") or self.config.get("lora_rank"):
                raise FixNotApplicable(f"'{lint_name}' is quantised or has LoRA weights")
            self.spec, self.channels_last = None, True
        elif is_conv(self.entry):
            self.spec = ConvSpec.of(lint_name, self.entry)
            if self.spec.groups != 1:
                raise FixNotApplicable(f"'{lint_name}' is a grouped conv ({self.spec.groups} groups)")
            self.channels_last = self.spec.channels_last
        else:
            raise FixNotApplicable(f"'{lint_name}' is a {cls}, not a Dense layer or a conv")
        weights = named_weights(edit.layer(container.prefix + (name,)))
        self.values = list(weights.values())
        self.kernel = weights["kernel"]
        self.shared = to_shared(self.kernel).astype(np.float64)
        self.bias = weights.get("bias") if self.config.get("use_bias", True) else None

    @property
    def outputs(self) -> int:
        return self.shared.shape[0]

    @property
    def inputs(self) -> int:
        return self.shared.shape[1]


class _Channels:
    """Where the channel vector of each position is in a tensor along the chain: on
    one side (``last``) of a known shape, or the whole tensor when it has one position."""

    def __init__(self, shape, channels: int, last: bool) -> None:
        self.channels = channels
        self.move(shape, last)

    def move(self, shape, last: bool) -> None:
        self.shape, self.last = shape, last
        dims = list(shape[1:]) if shape else []
        size = prod(dims) if dims and all(isinstance(d, int) for d in dims) else None
        #: the tensor holds one channel vector per sample: every axis but one is 1
        self.single = size == self.channels

    def axis(self) -> int:
        """The channel axis (counting the batch)."""
        if self.single:
            sized = [i for i, d in enumerate(self.shape) if i and d == self.channels]
            return sized[-1] if sized else len(self.shape) - 1
        return len(self.shape) - 1 if self.last else 1

    def reads(self, last: bool) -> bool:
        """Whether a layer reading the channels on that side sees each position's vector."""
        return self.single or self.last == last


def merge_chain(edit: ModelEdit, plan: MergeChainPlan) -> Merged:
    lint_names = [plan.first, *plan.between, plan.second]
    container, names = edit.locate(lint_names)
    if plan.norm is not None and plan.norm not in plan.between:
        raise FixNotApplicable(f"'{plan.norm}' is not between '{plan.first}' and '{plan.second}'")
    _check_chain(container, names)
    first = _Linear(edit, container, plan.first, names[0])
    second = _Linear(edit, container, plan.second, names[-1])
    if activation(first.config) != "linear":
        raise FixNotApplicable(f"'{plan.first}' has a {activation(first.config)} activation: the chain is not linear")
    if second.spec is not None and not second.spec.pointwise:
        raise FixNotApplicable(f"'{plan.second}' is not a pointwise conv (1x1 kernel, stride 1)")
    if second.inputs != first.outputs:
        raise FixNotApplicable(f"'{plan.second}' reads {second.inputs} channels, '{plan.first}' writes {first.outputs}")
    graph = edit.graph
    track = _Channels(graph.layer(plan.first).output_shape, first.outputs, first.channels_last)
    affine, norm_values, kept = None, [], []
    for lint_name, name in zip(plan.between, names[1:-1]):
        entry = container.entry(name)
        cls = entry.get("class_name")
        if cls in NO_OPS:
            continue
        if cls == "BatchNormalization" and lint_name == plan.norm:
            affine, norm_values = _norm(edit, container, lint_name, name, entry, track)
        elif cls in RESHAPES:
            kept.append(_reshape(graph.layer(lint_name), lint_name, entry, track, second.outputs))
        else:
            what = "a BatchNormalization the plan does not name" if cls == "BatchNormalization" else f"a {cls}"
            raise FixNotApplicable(f"'{lint_name}' between the two layers is {what}, which may change the values")
    if not track.reads(second.channels_last):
        raise FixNotApplicable(f"'{plan.second}' would not read '{plan.first}''s channels of each position")
    weight, bias = merge_linear(first.shared, first.bias, second.shared, second.bias, affine)
    # everything is read and checked: the edit starts here
    merged_name = names[-1] if not kept else names[0]
    merged = _merged_entry(first, second, merged_name)
    if kept:
        _rename(kept[-1], names[-1])
    _replace(container, names, [merged, *kept])
    stored = [to_keras(weight).astype(first.kernel.dtype), bias.astype(first.kernel.dtype)]
    edit.weights[container.prefix + (merged_name,)] = stored
    before = sum(np.size(v) for v in first.values + second.values + norm_values)
    return Merged(before=int(before), after=int(sum(np.size(v) for v in stored)))


def _check_chain(container: Container, names: list[str]) -> None:
    """Each layer reads the one before it, and nothing else reads the earlier ones."""
    if container.sequential:
        positions = [container.index(name) for name in names]
        if positions != list(range(positions[0], positions[0] + len(names))):
            raise FixNotApplicable(f"'{names[-1]}' does not follow '{names[0]}' through the layers named")
        return
    container.single_input(container.entry(names[0]))
    for before, name in zip(names, names[1:]):
        if container.single_input(container.entry(name))[0] != before:
            raise FixNotApplicable(f"'{name}' does not read '{before}'")
        if len(container.consumers(before)) != 1 or container.is_output(before):
            raise FixNotApplicable(f"the output of '{before}' is also read elsewhere in the model")


def _norm(edit: ModelEdit, container: Container, lint_name: str, name: str, entry: dict, track: _Channels):
    """The BatchNormalization's eval affine ``(scale, shift)`` and its weights, once
    checked to normalise the channels."""
    config = entry.get("config") or {}
    if config.get("renorm"):
        raise FixNotApplicable(f"'{lint_name}' uses batch renormalisation")
    weights = named_weights(edit.layer(container.prefix + (name,)))
    mean, var = weights["moving_mean"], weights["moving_variance"]
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    shape = track.shape
    if not isinstance(axis, int) or not shape or np.size(mean) != track.channels or axis % len(shape) != track.axis():
        raise FixNotApplicable(f"'{lint_name}' normalises axis {axis}, not the channels of each position")
    gamma = weights.get("gamma", np.ones_like(mean)) if config.get("scale", True) else np.ones_like(mean)
    beta = weights.get("beta", np.zeros_like(mean)) if config.get("center", True) else np.zeros_like(mean)
    # counted as pwlint counts parameters (and the ONNX and .pt2 notes): the trainable scale
    # and shift, not the moving statistics
    trainable = [value for key, value in weights.items() if key in ("gamma", "beta")]
    return norm_affine(gamma, beta, mean, var, float(config.get("epsilon", 1e-3))), trainable


def _reshape(layer, lint_name: str, entry: dict, track: _Channels, out_channels: int) -> dict:
    """The reshape's entry for after the merged layer (its target resized from the old
    channel count to ``out_channels``), once checked to keep each position's channels."""
    before, after = layer.input_shape, layer.output_shape
    if not after or len(after) < 2:
        raise FixNotApplicable(f"the output shape of '{lint_name}' is unknown")
    if before != track.shape and before is not None and track.shape is not None:
        raise FixNotApplicable(f"'{lint_name}' does not read the chain's tensor")
    config = (entry.get("config") or {})
    channels_first_flatten = entry.get("class_name") == "Flatten" and config.get("data_format") == "channels_first"
    if not track.single:
        side = len(after) - 1 if track.last else 1
        if channels_first_flatten or after[side] != track.channels:
            raise FixNotApplicable(f"'{lint_name}' mixes the channels of different positions")
    track.move(after, track.last)
    entry = copy.deepcopy(entry)
    entry.pop("build_config", None)
    if entry.get("class_name") == "Reshape":
        target = list(config["target_shape"])
        at = track.axis() - 1
        if target[at] != -1:
            if target[at] != track.channels:
                raise FixNotApplicable(f"'{lint_name}' has a target shape pwlint cannot resize")
            target[at] = out_channels
        entry["config"]["target_shape"] = target
    return entry


def _merged_entry(first: _Linear, second: _Linear, name: str) -> dict:
    """``first``'s entry with ``second``'s output count, bias and activation."""
    entry = copy.deepcopy(first.entry)
    config = entry["config"]
    config["units" if first.spec is None else "filters"] = second.outputs
    config["use_bias"] = True
    config.pop("activation", None)
    for key in BIAS_KEYS:
        if key in second.config:
            config[key] = copy.deepcopy(second.config[key])
    entry.pop("build_config", None)
    _rename(entry, name)
    return entry


def _rename(entry: dict, name: str) -> None:
    if "name" in entry:
        entry["name"] = name
    entry["config"]["name"] = name


def _replace(container: Container, names: list[str], new: list[dict]) -> None:
    """The chain's entries replaced by ``new``: the first called as the chain's first
    layer was, each later one reading the one before, at the place of the last (after
    everything the chain reads, before everything that reads it)."""
    if container.sequential:
        position = container.index(names[0])
        container.layers[position:position + len(names)] = new
        return
    new[0]["inbound_nodes"] = copy.deepcopy(container.entry(names[0])["inbound_nodes"])
    for before, entry in zip(new, new[1:]):
        entry["inbound_nodes"] = [{"args": [tensor_ref(entry_name(before))], "kwargs": {}}]
    position = container.index(names[-1])
    gone = set(names)
    container.layers[position:position + 1] = new
    container.config["layers"] = [e for e in container.layers
                                  if any(e is n for n in new) or entry_name(e) not in gone]
