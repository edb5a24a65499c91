"""The format-neutral model graph that every rule reads.

Loaders turn ONNX, Keras or torch files into a :class:`ModelGraph`; rules only
ever see this class, never a format's own objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Iterable, Iterator

#: The normalised layer vocabulary shared by every format.
KINDS = frozenset(
    {
        "conv", "dense", "flatten", "reshape", "norm", "act", "pool", "global_pool",
        "add", "mul", "concat", "transpose", "dropout", "identity", "input", "output",
        "other",
    }
)

Shape = tuple  # a tuple of ints, with None for a dimension that is not known


@dataclass(slots=True)
class Layer:
    """One layer of a model, as a rule sees it.

    Slotted: a model can have hundreds of thousands of layers, and a per-instance
    ``__dict__`` would cost about 300 bytes each (no attribute outside these fields
    can be set on a layer).

    ``name`` is the name a user recognises in the source file; ``members`` lists
    every source node folded into this layer (MatMul+Add become one dense layer).
    ``source`` is a handle for the format's fix backend only; rules must not use it.

    ``understood`` is False for an operator the loader does not know at all (a custom
    ONNX domain, a custom Keras class, a non-ATen torch target): coverage counts these,
    and a model where nothing was understood is never called clean. ``module`` is the
    source-code path the file records for a node whose own name is generated
    (``classifier.1`` for dynamo's ``node_linear``); messages show :attr:`label`.

    ``attrs`` keys rules rely on: ``kernel``, ``stride``, ``groups``, ``in_channels``,
    ``out_channels`` (conv); ``in_features``, ``out_features``, ``bias``,
    ``per_position`` (dense); ``norm_type`` (norm); ``activation`` (act);
    ``layout_change`` (transpose); ``shared_weights``; ``quantized`` (the layer computes
    on integer weights: fix backends do not rewrite it).
    """

    name: str
    kind: str
    op: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: int = 0
    input_shapes: list[Shape | None] = field(default_factory=list)
    output_shapes: list[Shape | None] = field(default_factory=list)
    layout: str | None = None
    members: tuple[str, ...] = ()
    source: Any = None
    understood: bool = True
    module: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}")
        if not self.members:
            self.members = (self.name,)

    @property
    def label(self) -> str:
        """How messages name the layer: ``classifier.1 (node_linear)`` where the file
        records a module path for a generated node name, else the name itself."""
        if self.module and self.module != self.name:
            return f"{self.module} ({self.name})"
        return self.name

    @property
    def output_shape(self) -> Shape | None:
        return self.output_shapes[0] if self.output_shapes else None

    @property
    def input_shape(self) -> Shape | None:
        return self.input_shapes[0] if self.input_shapes else None


def unique_name(name: str, used: set[str], sep: str = "#") -> str:
    """``name``, or ``name#2``, ``name#3``... if taken; the result is added to ``used``.
    Every loader names a repeated source name this way; fix backends, which write
    names into model files, use ``sep="_"``."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}{sep}{n}"
    used.add(candidate)
    return candidate


class UniqueNames:
    """:func:`unique_name` over a whole model: the same names, but a repeated name
    resumes its numbering where its last search stopped, so a model with thousands of
    nodes of one name is named in linear time, not quadratic."""

    def __init__(self, sep: str = "#") -> None:
        self.used: set[str] = set()
        self.sep = sep
        self._next: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        n = self._next.get(name, 1)
        candidate = name if n == 1 else f"{name}{self.sep}{n}"
        while candidate in self.used:
            n += 1
            candidate = f"{name}{self.sep}{n}"
        self._next[name] = n
        self.used.add(candidate)
        return candidate


def spatial_size(shape: Shape | None, layout: str | None) -> int | None:
    """H*W (or the product of all spatial dims) of a feature map, None if unknown."""
    if shape is None or len(shape) < 3:
        return None
    dims = shape[1:-1] if layout == "NHWC" else shape[2:]
    if any(d is None for d in dims):
        return None
    return prod(dims)


def channels(shape: Shape | None, layout: str | None) -> int | None:
    if shape is None or len(shape) < 2:
        return None
    return shape[-1] if layout == "NHWC" else shape[1]


class ModelGraph:
    """A directed graph of :class:`Layer` objects; an edge is a tensor.

    Edges run from the producing layer to each consuming layer and carry the
    tensor names (``tensors``), the shape of the first of them (``shape``) and
    whether one of them is the consumer's data input (``data``).
    """

    def __init__(self, path: str = "", fmt: str = "") -> None:
        # imported here, not at the top: `pwlint rules` and `--version` need no graph
        import networkx as nx

        self.path = path
        self.format = fmt
        self.graph = nx.DiGraph()
        #: trainable parameters of the whole model, counting shared weights once
        self.total_params = 0
        #: facts a loader passes on. Keys with a meaning beyond the loader:
        #: ``norm_folding``: "possible" where the format's exporters fold BatchNorm into
        #: convolutions (ONNX eval exports); absent means normalisation stays as written.
        #: ``missing_weights``: what is missing (an absent external data file, removed
        #: weight members); the engine refuses the model unless told to lint from shapes.
        #: ``producer``: the tool that wrote the file, when it says ("pytorch 2.13").
        self.meta: dict[str, Any] = {}

    # building -----------------------------------------------------------
    def add_layer(self, layer: Layer) -> Layer:
        if layer.name in self.graph:
            raise ValueError(f"duplicate layer name {layer.name!r}")
        self.graph.add_node(layer.name, layer=layer)
        return layer

    def add_layers(self, layers: Iterable[Layer]) -> None:
        """:meth:`add_layer` for many layers at once, with the same checks; a duplicate
        name adds none of them. (networkx's ``add_nodes_from`` is slower than a loop of
        ``add_node`` here: it copies every attribute dict twice; measured, 200k layers.)"""
        layers = list(layers)
        names: set[str] = set()
        nodes = self.graph
        for layer in layers:
            if layer.name in names or layer.name in nodes:
                raise ValueError(f"duplicate layer name {layer.name!r}")
            names.add(layer.name)
        add = nodes.add_node
        for layer in layers:
            add(layer.name, layer=layer)

    def connect(self, producer: str, consumer: str, tensor: str, shape: Shape | None, data: bool = False) -> None:
        """Record that ``consumer`` reads ``tensor`` made by ``producer``; ``data`` marks the
        consumer's first non-constant input, the one walks follow upstream."""
        edge = self.graph.get_edge_data(producer, consumer)
        if edge is not None:
            edge["tensors"].append(tensor)
            edge["data"] = edge["data"] or data
        else:
            self.graph.add_edge(producer, consumer, tensors=[tensor], shape=shape, data=data)

    def connect_many(self, edges: Iterable[tuple[str, str, str, Shape | None, bool]]) -> None:
        """:meth:`connect` for many ``(producer, consumer, tensor, shape, data)``, in order:
        a second tensor between the same two layers joins the first edge."""
        connect = self.connect
        for producer, consumer, tensor, shape, data in edges:
            connect(producer, consumer, tensor, shape, data)

    # reading ------------------------------------------------------------
    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def __contains__(self, name: str) -> bool:
        return name in self.graph

    def layer(self, name: str) -> Layer:
        return self.graph.nodes[name]["layer"]

    def layers(self, kind: str | None = None) -> Iterator[Layer]:
        for _, layer in self.graph.nodes(data="layer"):
            if kind is None or layer.kind == kind:
                yield layer

    def consumers(self, layer: Layer) -> list[Layer]:
        return [self.layer(n) for n in self.graph.successors(layer.name)]

    def producers(self, layer: Layer) -> list[Layer]:
        return [self.layer(n) for n in self.graph.predecessors(layer.name)]

    def data_producer(self, layer: Layer) -> Layer | None:
        """The layer that feeds this layer's first (data) input, if any."""
        incoming = self.graph.pred[layer.name]
        for pred, edge in incoming.items():
            if edge["data"]:
                return self.layer(pred)
        return self.layer(next(iter(incoming))) if len(incoming) == 1 else None
