"""The IR's building API: the bulk forms build the graph the one-by-one forms build,
layers stay small, and walks stay linear on long chains."""

from __future__ import annotations

import pickle
import time

import pytest

from pwlint.ir import Layer, ModelGraph
from pwlint.walk import downstream


def _relu(name: str) -> Layer:
    return Layer(name, "act", "Relu", attrs={"activation": "relu"}, output_shapes=[(1, 8)])


def _edges(graph: ModelGraph) -> list:
    return sorted((p, c, tuple(d["tensors"]), d["shape"], d["data"]) for p, c, d in graph.graph.edges(data=True))


def test_bulk_building_gives_the_graph_that_one_by_one_building_gives():
    names = ["a", "b", "c"]
    # b reads two tensors made by a (a second tensor joins the first edge), c reads b
    wires = [("a", "b", "t1", (1, 8), False), ("a", "b", "t2", None, True), ("b", "c", "t3", (1, 8), True)]
    one, bulk = ModelGraph(), ModelGraph()
    for name in names:
        one.add_layer(_relu(name))
    for wire in wires:
        one.connect(*wire)
    bulk.add_layers(_relu(name) for name in names)
    bulk.connect_many(iter(wires[:1]))
    bulk.connect_many(wires[1:])  # joins the edge made by the earlier batch
    assert [layer.name for layer in bulk.layers()] == names
    assert _edges(bulk) == _edges(one) == [
        ("a", "b", ("t1", "t2"), (1, 8), True), ("b", "c", ("t3",), (1, 8), True)]
    assert bulk.data_producer(bulk.layer("c")).name == "b"


@pytest.mark.parametrize("existing", [[], ["a"]])
def test_add_layers_refuses_a_duplicate_name_and_adds_nothing(existing):
    graph = ModelGraph()
    graph.add_layers(_relu(name) for name in existing)
    with pytest.raises(ValueError, match="duplicate layer name 'a'"):
        graph.add_layers([_relu("x"), _relu("a"), *([] if existing else [_relu("a")])])
    assert [layer.name for layer in graph.layers()] == existing


def test_a_layer_has_no_per_instance_dict_and_survives_pickling():
    layer = Layer("fc", "dense", "Gemm", attrs={"in_features": 4}, module="classifier.1")
    assert not hasattr(layer, "__dict__")
    with pytest.raises(AttributeError):
        layer.anything_else = 1
    copy = pickle.loads(pickle.dumps(layer))
    assert (copy.name, copy.attrs, copy.members, copy.label) == ("fc", {"in_features": 4}, ("fc",), "classifier.1 (fc)")


def _chain(length: int) -> ModelGraph:
    graph = ModelGraph()
    graph.add_layers([Layer("conv", "conv", "Conv"), *(_relu(f"r{i}") for i in range(length))])
    names = ["conv", *(f"r{i}" for i in range(length))]
    graph.connect_many((a, b, a, None, True) for a, b in zip(names, names[1:]))
    return graph


def test_a_walk_down_a_long_chain_is_linear_and_spells_out_the_path():
    graph = _chain(40_000)
    reached = list(downstream(graph, graph.layer("conv"), lambda layer: layer.name != "r1999"))
    assert [(layer.name, len(path), path[:2]) for layer, path in reached] == [("r1999", 2001, ["conv", "r0"])]
    started = time.perf_counter()
    assert list(downstream(graph, graph.layer("conv"), lambda layer: True)) == []
    # linear: about 0.1 s; a path copied at every step takes many seconds (40k^2 / 2 names)
    assert time.perf_counter() - started < 1.5
