"""Graph walks that rules share: seeing through layers that do not change what a
tensor means (Dropout, Identity, Cast, layout Transposes).

Every walk keeps a visited set, so cyclic or very large graphs cannot loop or
recurse without end.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

from pwlint.ir import Layer, ModelGraph

TRANSPARENT_KINDS = frozenset({"dropout", "identity"})


def is_layout_perm(perm) -> bool:
    """True for a transpose that only moves the channel axis between second and last
    (NCHW <-> NHWC, ``[0, 2, 1]``): loaders record it as ``layout_change``, which every
    format spells as a permutation, so that walks see through it."""
    if not perm or len(perm) < 3 or perm[0] != 0:
        return False
    rest = list(perm[1:])
    n = len(rest)
    to_last = rest == list(range(2, n + 1)) + [1]
    to_first = rest == [n] + list(range(1, n))
    return to_last or to_first


def is_transparent(layer: Layer) -> bool:
    """Layers that pass a tensor on unchanged in meaning."""
    if layer.kind in TRANSPARENT_KINDS:
        return True
    return layer.kind == "transpose" and bool(layer.attrs.get("layout_change"))


def source_of(graph: ModelGraph, layer: Layer, through: Callable[[Layer], bool] = is_transparent) -> Layer | None:
    """The first layer upstream of ``layer``'s data input that ``through`` does not see through."""
    seen = {layer.name}
    current = graph.data_producer(layer)
    while current is not None and through(current) and current.name not in seen:
        seen.add(current.name)
        current = graph.data_producer(current)
    return current


def downstream(
    graph: ModelGraph, start: Layer, through: Callable[[Layer], bool]
) -> Iterator[tuple[Layer, list[str]]]:
    """Breadth-first over the consumers of ``start``; yields each layer reached with
    the path of names from ``start``. Only layers for which ``through`` is true are
    walked past; the others are yielded and end that path.

    The walk keeps one parent link per layer and spells a path out only for a layer it
    yields: copying the path at every step would make a walk down a long chain (a conv
    followed by thousands of activations) quadratic in its length."""
    parent: dict[str, str | None] = {start.name: None}
    queue = deque([start])
    while queue:
        layer = queue.popleft()
        for consumer in graph.consumers(layer):
            if consumer.name in parent:
                continue
            parent[consumer.name] = layer.name
            if through(consumer):
                queue.append(consumer)
            else:
                yield consumer, _path_to(parent, consumer.name)


def _path_to(parent: dict[str, str | None], name: str) -> list[str]:
    path: list[str] = []
    current: str | None = name
    while current is not None:
        path.append(current)
        current = parent[current]
    path.reverse()
    return path


def sole_consumer(graph: ModelGraph, layer: Layer, through: Callable[[Layer], bool] = is_transparent) -> Layer | None:
    """The only consumer of ``layer``'s output (seeing through ``through``), if there is exactly one."""
    seen = {layer.name}
    current = layer
    while True:
        consumers = graph.consumers(current)
        if len(consumers) != 1 or consumers[0].name in seen:
            return None
        nxt = consumers[0]
        if not through(nxt):
            return nxt
        seen.add(nxt.name)
        current = nxt


#: padding operators by their base name: ONNX ``Pad``, Keras ``ZeroPadding2D``, ATen
#: ``pad``/``constant_pad_nd``/``reflection_pad2d``/``replication_pad2d``/``circular_pad2d``
_PADDING_OPS = frozenset({"pad", "constant_pad_nd", "zeropadding1d", "zeropadding2d", "zeropadding3d"})
_PADDING_PREFIXES = ("reflection_pad", "replication_pad", "circular_pad", "_pad_")


def is_padding(layer: Layer) -> bool:
    """A layer that only pads its input (loaders give padding no kind of its own)."""
    if layer.kind != "other":
        return False
    parts = layer.op.lower().split(".")
    base = parts[1] if len(parts) >= 2 and parts[0] == "aten" else parts[0]
    return base in _PADDING_OPS or base.startswith(_PADDING_PREFIXES)


def is_unit_kernel_conv(layer: Layer) -> bool:
    """A conv whose kernel is 1 along every axis (a 1x1 conv; groups and stride not judged)."""
    kernel = layer.attrs.get("kernel")
    return layer.kind == "conv" and bool(kernel) and all(k == 1 for k in kernel)

