"""What the Keras conv rewrites (:mod:`~pwlint.formats.keras.fix_convs`) and the chain
merge (:mod:`~pwlint.formats.keras.fix_merge`) share: reading a conv's config, turning
Keras kernels into the shared ``(out, in, *K)`` order and back, and putting a chain of
new layers where one layer was.

Keras stores a ``ConvND`` kernel as ``(*K, Cin, Cout)`` in either data format, a
``DepthwiseConvND`` kernel as ``(*K, Cin, depth_multiplier)`` and a Dense kernel as
``[in, out]``; the shared maths (:mod:`pwlint.fix.lowrank`, :mod:`pwlint.fix.convsplit`,
:mod:`pwlint.fix.merge`) reads ``(Cout, Cin, *K)`` as ONNX and torch do.

Nothing here imports :mod:`pwlint.formats.keras.fixes` (which delegates to the modules
that use this one): the :class:`~pwlint.formats.keras.fixes.ModelEdit` and
``Container`` are passed in.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pwlint.errors import FixNotApplicable

if TYPE_CHECKING:
    from pwlint.formats.keras.fixes import Container, ModelEdit

#: the standard convolutions the fixes rewrite (not depthwise, separable or transposed)
STANDARD_CONV = re.compile(r"^Conv(?:olution)?([123])D$")
#: a new layer's kernel-side config keys taken from the layer it replaces
KERNEL_KEYS = ("trainable", "dtype", "kernel_initializer", "kernel_regularizer", "kernel_constraint")
#: the keys of the layer that carries the old bias and activation
BIAS_KEYS = ("activation", "bias_initializer", "bias_regularizer", "bias_constraint", "activity_regularizer")


def entry_name(entry: dict) -> str:
    return entry.get("name") or (entry.get("config") or {}).get("name")


def is_conv(entry: dict) -> bool:
    return bool(STANDARD_CONV.match(str(entry.get("class_name"))))


def activation(config: dict) -> str:
    """The activation's plain name (``linear`` when there is none)."""
    value = config.get("activation")
    if isinstance(value, dict):
        inner = value.get("config")
        value = inner if isinstance(inner, str) else value.get("class_name", "")
    return str(value or "linear").rpartition(".")[2].lower()


def _ints(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),) * rank


@dataclass(frozen=True)
class ConvSpec:
    """What a standard ``ConvND`` entry says about its geometry."""

    rank: int
    window: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str
    data_format: str
    groups: int

    @classmethod
    def of(cls, name: str, entry: dict) -> ConvSpec:
        """The spec of ``entry``; FixNotApplicable for anything but a plain conv."""
        match = STANDARD_CONV.match(str(entry.get("class_name")))
        if not match:
            raise FixNotApplicable(f"'{name}' is a {entry.get('class_name')}, not a standard convolution")
        config = entry.get("config") or {}
        if config.get("quantization_config") or config.get("lora_rank"):
            raise FixNotApplicable(f"'{name}' is quantised or has LoRA weights")
        rank = int(match.group(1))
        return cls(
            rank=rank, window=_ints(config.get("kernel_size", 1), rank), strides=_ints(config.get("strides", 1), rank),
            dilation=_ints(config.get("dilation_rate", 1), rank), padding=str(config.get("padding", "valid")).lower(),
            data_format=config.get("data_format") or "channels_last", groups=int(config.get("groups") or 1),
        )

    @property
    def channels_last(self) -> bool:
        return self.data_format != "channels_first"

    @property
    def pointwise(self) -> bool:
        """A 1x1 conv that reads each position on its own (stride 1)."""
        return all(k == 1 for k in self.window) and all(s == 1 for s in self.strides)

    def geometry(self) -> dict:
        """The constructor arguments that place the kernel: what a replacement keeps."""
        return {"kernel_size": self.window, "strides": self.strides, "padding": self.padding,
                "dilation_rate": self.dilation, "data_format": self.data_format}

    def pointwise_geometry(self) -> dict:
        return {"kernel_size": (1,) * self.rank, "data_format": self.data_format}


def weight_at(layer, name: str) -> int:
    """The position of the weight called ``name`` (``kernel``, ``bias``, ``moving_mean``)."""
    for position, variable in enumerate(layer.weights):
        if variable.path.rpartition("/")[2].partition(":")[0] == name:
            return position
    raise FixNotApplicable(f"'{layer.name}' has no {name}")


def named_weights(layer) -> dict[str, np.ndarray]:
    """The layer's weights by their short names (``kernel``, ``gamma``, ``moving_mean``...)."""
    return {variable.path.rpartition("/")[2].partition(":")[0]: value
            for variable, value in zip(layer.weights, layer.get_weights())}


def to_shared(kernel: np.ndarray) -> np.ndarray:
    """A Keras ``(*K, in, out)`` kernel (or ``[in, out]`` Dense matrix) as ``(out, in, *K)``."""
    kernel = np.asarray(kernel)
    return kernel.transpose(kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2))


def to_keras(kernel: np.ndarray) -> np.ndarray:
    """An ``(out, in, *K)`` kernel (or ``(out, in)`` matrix) in Keras' ``(*K, in, out)`` order."""
    kernel = np.asarray(kernel)
    return kernel.transpose(*range(2, kernel.ndim), 1, 0)


def pointwise_kernel(matrix: np.ndarray, rank: int) -> np.ndarray:
    """An ``(out, in)`` matrix as the Keras kernel ``(1, ..., in, out)`` of a 1x1 conv."""
    return to_keras(np.asarray(matrix).reshape(*matrix.shape, *(1,) * rank))


def tensor_ref(name: str, dtype: Any = None) -> dict:
    """A serialised KerasTensor reading layer ``name``'s output; its shape is a
    placeholder that Keras replaces when it rebuilds the model."""
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [None], "dtype": dtype, "keras_history": [name, 0, 0]}}


def take_keys(entry: dict, config: dict, keys: tuple[str, ...]) -> dict:
    """``entry`` with the ``keys`` of the replaced layer's ``config`` copied in."""
    for key in keys:
        if key in config:
            entry["config"][key] = copy.deepcopy(config[key])
    return entry


def new_layer(edit: ModelEdit, cls_name: str, name: str, what: str, **arguments):
    """A ``keras.layers.<cls_name>`` object; a combination Keras refuses (causal padding
    on a depthwise conv...) is a fix that cannot apply, before any change."""
    try:
        return getattr(edit.keras.layers, cls_name)(name=name, **arguments)
    except (ValueError, TypeError) as exc:
        raise FixNotApplicable(f"Keras cannot make {what}: {str(exc).strip().splitlines()[0]}") from exc


def called_once(container: Container, name: str, entry: dict) -> None:
    """In a Functional model, the layer is called once on one tensor."""
    if not container.sequential:
        container.single_input(entry)


def replace_by_chain(container: Container, name: str, entries: list[dict]) -> None:
    """Put ``entries`` (the first called like the replaced layer, see ``ModelEdit.new_entry``)
    where layer ``name`` was, each reading the one before; what read ``name``, the model
    outputs included, then reads the last."""
    position = container.index(name)
    if not container.sequential:
        for before, entry in zip(entries, entries[1:]):
            entry["inbound_nodes"] = [{"args": [tensor_ref(entry_name(before))], "kwargs": {}}]
    container.layers[position:position + 1] = entries
    if not container.sequential:
        container.rewire([name, 0, 0], [entry_name(entries[-1]), 0, 0])
