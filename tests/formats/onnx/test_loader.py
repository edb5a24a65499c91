"""The ONNX loader: what a ModelGraph says about an ONNX file.

Models are written with onnx.helper so that every expected number below can be
worked out from the model's own definition."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pwlint.formats.onnx.loader import load
from tests.conftest import CNN_CHANNELS, CNN_CLASSES, CNN_SIDE, cnn_model, codes, lint, one_line_error, run_command

C, S, K = CNN_CHANNELS, CNN_SIDE, CNN_CLASSES


def zeros(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def save(model, tmp_path, name="m.onnx", check=True):
    if check:
        onnx.checker.check_model(model, full_check=True)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def make(nodes, inputs, outputs, inits, opset=17, **graph_kwargs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits, **graph_kwargs)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def by_member(graph, node_name):
    """The layer a source node was folded into."""
    layers = [layer for layer in graph.layers() if node_name in layer.members]
    assert len(layers) == 1, (node_name, [l.name for l in graph.layers()])
    return layers[0]


# names ----------------------------------------------------------------------------------

def test_layer_names_are_the_node_names(tmp_path):
    graph = load(str(save(cnn_model(), tmp_path)))
    assert {"conv", "bn", "relu", "flatten", "fc"} <= {layer.name for layer in graph.layers()}
    assert graph.layer("conv").kind == "conv"


def test_unnamed_nodes_are_named_after_op_and_index(tmp_path):
    model = cnn_model()
    # conv, bn, relu, flatten, fc: leave relu (index 2) and flatten (index 3) unnamed
    for node in model.graph.node:
        if node.op_type in ("Relu", "Flatten"):
            node.name = ""
    path = save(model, tmp_path)
    graph = load(str(path))
    assert graph.layer("Relu_2").kind == "act"
    assert graph.layer("Flatten_3").kind == "flatten"
    # findings cite these names
    [head] = [f for f in lint(path)["findings"] if f["code"] == "PW001"]
    assert head["nodes"] == ["Flatten_3", "fc"]


def test_exported_names_are_kept(tmp_path, exported):
    path = exported("lenet", "legacy")
    model = onnx.load(str(path), load_external_data=False)
    graph = load(str(path))
    members = {m for layer in graph.layers() for m in layer.members}
    node_names = {n.name for n in model.graph.node if n.op_type != "Constant"}
    assert node_names and node_names <= members
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    assert all(graph.layer(name).kind == "dense" for name in gemms)


def test_duplicate_node_names_stay_distinct(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="same"),
        helper.make_node("Relu", ["a"], ["y"], name="same"),
    ]
    graph = load(str(save(make(nodes, [tensor("x", [1, 4])], [tensor("y", [1, 4])], []), tmp_path, check=False)))
    acts = list(graph.layers("act"))
    assert len(acts) == 2
    assert len({layer.name for layer in acts}) == 2
    assert "same" in {layer.name for layer in acts}


# kinds ----------------------------------------------------------------------------------

def test_gemm_is_a_dense_layer(tmp_path):
    graph = load(str(save(cnn_model(), tmp_path)))
    fc = graph.layer("fc")
    assert fc.kind == "dense"
    assert fc.attrs["in_features"] == C * S * S
    assert fc.attrs["out_features"] == K


def test_gemm_without_transposed_weight(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc")]
    graph = load(str(save(make(nodes, [tensor("x", [2, 6])], [tensor("y", [2, 5])], [zeros("W", (6, 5)), zeros("b", (5,))]), tmp_path)))
    fc = graph.layer("fc")
    assert (fc.attrs["in_features"], fc.attrs["out_features"]) == (6, 5)
    assert fc.params == 6 * 5 + 5


def _matmul_add_model(rank: int):
    shape = [1, 6] if rank == 2 else [1, 7, 6]
    out = [1, 5] if rank == 2 else [1, 7, 5]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="fc/MatMul"),
        helper.make_node("Add", ["h", "b"], ["y"], name="fc/Add"),
    ]
    return make(nodes, [tensor("x", shape)], [tensor("y", out)], [zeros("W", (6, 5)), zeros("b", (5,))])


def test_matmul_add_is_one_dense_layer(tmp_path):
    graph = load(str(save(_matmul_add_model(2), tmp_path)))
    dense = list(graph.layers("dense"))
    assert len(dense) == 1
    [fc] = dense
    assert fc.name == "fc/MatMul"
    assert set(fc.members) == {"fc/MatMul", "fc/Add"}
    assert (fc.attrs["in_features"], fc.attrs["out_features"]) == (6, 5)
    assert fc.params == 6 * 5 + 5
    assert fc.attrs["bias"] is True
    assert not list(graph.layers("add"))
    assert not fc.attrs["per_position"]
    assert fc.output_shape == (1, 5)


def test_matmul_on_a_sequence_is_per_position(tmp_path):
    graph = load(str(save(_matmul_add_model(3), tmp_path)))
    [fc] = list(graph.layers("dense"))
    assert fc.attrs["per_position"]


def test_matmul_of_two_activations_is_not_dense(tmp_path):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["y"], name="attn")]
    graph = load(str(save(make(nodes, [tensor("q", [1, 4, 8]), tensor("k", [1, 8, 4])], [tensor("y", [1, 4, 4])], []), tmp_path)))
    assert not list(graph.layers("dense"))


def _layernorm_model(opset: int):
    """x - mean(x), divided by sqrt(mean(squared) + eps), then scale and shift: LayerNorm over the last axis."""
    def mean(inp, out, name):
        if opset >= 18:
            return helper.make_node("ReduceMean", [inp, "axes"], [out], name=name)
        return helper.make_node("ReduceMean", [inp], [out], name=name, axes=[-1])

    nodes = [
        mean("x", "mu", "ln/mean"),
        helper.make_node("Sub", ["x", "mu"], ["xc"], name="ln/sub"),
        helper.make_node("Pow", ["xc", "two"], ["sq"], name="ln/pow"),
        mean("sq", "var", "ln/var"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="ln/add_eps"),
        helper.make_node("Sqrt", ["ve"], ["std"], name="ln/sqrt"),
        helper.make_node("Div", ["xc", "std"], ["xn"], name="ln/div"),
        helper.make_node("Mul", ["xn", "gamma"], ["xs"], name="ln/scale"),
        helper.make_node("Add", ["xs", "beta"], ["y"], name="ln/shift"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        zeros("gamma", (8,)), zeros("beta", (8,)),
    ]
    if opset >= 18:
        inits.append(const("axes", [-1]))
    return make(nodes, [tensor("x", [1, 5, 8])], [tensor("y", [1, 5, 8])], inits, opset=opset)


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_decomposed_layernorm_is_a_norm(tmp_path, opset):
    graph = load(str(save(_layernorm_model(opset), tmp_path)))
    norm = by_member(graph, "ln/div")
    assert norm.kind == "norm"
    assert {"ln/mean", "ln/sub", "ln/pow", "ln/var", "ln/sqrt", "ln/div"} <= set(norm.members)
    assert by_member(graph, "ln/mean") is norm
    # the arithmetic was folded in, not left as separate layers
    assert not [layer for layer in graph.layers() if layer.op in ("ReduceMean", "Sqrt", "Pow", "Div")]


def test_scaling_by_a_constant_is_not_a_norm(tmp_path):
    nodes = [helper.make_node("Div", ["x", "c"], ["y"], name="div")]
    model = make(nodes, [tensor("x", [1, 8])], [tensor("y", [1, 8])], [numpy_helper.from_array(np.array(2.0, np.float32), "c")])
    graph = load(str(save(model, tmp_path)))
    assert not list(graph.layers("norm"))


def test_written_out_softmax_is_not_a_norm(tmp_path):
    """exp(x - max(x)) / sum(exp(...)): a reduction divides the input, but without a square
    root it is a softmax (older exporters and attention code write it out), not a norm."""
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], name="sm/max", axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["xc"], name="sm/sub"),
        helper.make_node("Exp", ["xc"], ["e"], name="sm/exp"),
        helper.make_node("ReduceSum", ["e", "axes"], ["s"], name="sm/sum"),
        helper.make_node("Div", ["e", "s"], ["y"], name="sm/div"),
    ]
    model = make(nodes, [tensor("x", [1, 5, 8])], [tensor("y", [1, 5, 8])], [const("axes", [-1])])
    graph = load(str(save(model, tmp_path)))
    assert not list(graph.layers("norm"))


def test_rms_norm_with_reciprocal_square_root_is_a_norm(tmp_path):
    """x * (mean(x^2) + eps) ** -0.5 * gamma: RMSNorm as LLaMA-style code exports it."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"], name="rms/pow"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], name="rms/mean", axes=[-1]),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="rms/eps"),
        helper.make_node("Pow", ["mse", "minus_half"], ["inv"], name="rms/rsqrt"),
        helper.make_node("Mul", ["x", "inv"], ["xn"], name="rms/mul"),
        helper.make_node("Mul", ["xn", "gamma"], ["y"], name="rms/scale"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array(-0.5, np.float32), "minus_half"),
        zeros("gamma", (8,)),
    ]
    graph = load(str(save(make(nodes, [tensor("x", [1, 5, 8])], [tensor("y", [1, 5, 8])], inits, opset=17), tmp_path)))
    assert by_member(graph, "rms/mul").kind == "norm"


def test_norm_operators(tmp_path):
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["a"], name="bn"),
        helper.make_node("InstanceNormalization", ["a", "s", "b"], ["c"], name="in"),
        helper.make_node("LayerNormalization", ["c", "g", "lb"], ["y"], name="ln", axis=-1),
    ]
    inits = [zeros(n, (4,)) for n in ("s", "b", "m", "v")] + [zeros("g", (6,)), zeros("lb", (6,))]
    graph = load(str(save(make(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [1, 4, 6, 6])], inits), tmp_path)))
    assert [graph.layer(n).kind for n in ("bn", "in", "ln")] == ["norm"] * 3
    assert [graph.layer(n).attrs["norm_type"] for n in ("bn", "in", "ln")] == ["batch", "instance", "layer"]


def test_cast_identity_dropout(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["c"], ["c1"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Identity", ["c1"], ["c2"], name="identity"),
        helper.make_node("Dropout", ["c2"], ["c3"], name="dropout"),
        helper.make_node("Flatten", ["c3"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fcW", "fcB"], ["y"], name="fc", transB=1),
    ]
    inits = [zeros("W", (C, 3, 3, 3)), zeros("fcW", (K, C * S * S)), zeros("fcB", (K,))]
    path = save(make(nodes, [tensor("x", [1, 3, S, S])], [tensor("y", [1, K])], inits), tmp_path)
    graph = load(str(path))
    assert graph.layer("cast").kind == "identity"
    assert graph.layer("identity").kind == "identity"
    assert graph.layer("dropout").kind == "dropout"
    # the flatten-dense head is still found through them
    [head] = [f for f in lint(path)["findings"] if f["code"] == "PW001"]
    assert head["nodes"] == ["flatten", "fc"]


def test_edges_follow_the_tensors(tmp_path):
    graph = load(str(save(cnn_model(), tmp_path)))
    chain = ["x", "conv", "bn", "relu", "flatten", "fc", "y"]
    for producer, consumer in zip(chain, chain[1:]):
        assert [layer.name for layer in graph.consumers(graph.layer(producer))] == [consumer]
    assert graph.data_producer(graph.layer("fc")).name == "flatten"


# parameters -----------------------------------------------------------------------------

def test_parameter_counts_from_initializer_dims(tmp_path):
    graph = load(str(save(cnn_model(), tmp_path)))
    conv = C * 3 * 3 * 3 + C
    bn = 2 * C  # scale and bias; the running mean and variance are statistics, not parameters
    fc = K * C * S * S + K
    assert graph.layer("conv").params == conv
    assert graph.layer("bn").params == bn
    assert graph.layer("fc").params == fc
    assert graph.layer("relu").params == 0
    assert graph.layer("flatten").params == 0
    assert graph.total_params == conv + bn + fc


def test_conv_without_bias(tmp_path):
    graph = load(str(save(cnn_model(conv_bias=False), tmp_path)))
    assert graph.layer("conv").params == C * 3 * 3 * 3
    assert graph.layer("conv").attrs["bias"] is False


def test_integer_constants_are_not_parameters(tmp_path):
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Gemm", ["r", "W", "b"], ["y"], name="fc"),
    ]
    inits = [const("shape", [1, -1]), zeros("W", (12, 2)), zeros("b", (2,))]
    graph = load(str(save(make(nodes, [tensor("x", [1, 3, 4])], [tensor("y", [1, 2])], inits), tmp_path)))
    assert graph.layer("reshape").params == 0
    assert graph.total_params == 12 * 2 + 2


def test_shared_weights_are_counted_once_in_the_total(tmp_path):
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Gemm", ["a", "W", "b2"], ["y"], name="fc2"),
    ]
    inits = [zeros("W", (16, 16)), zeros("b1", (16,)), zeros("b2", (16,))]
    graph = load(str(save(make(nodes, [tensor("x", [1, 16])], [tensor("y", [1, 16])], inits), tmp_path)))
    assert graph.layer("fc1").params == graph.layer("fc2").params == 16 * 16 + 16
    assert graph.total_params == 16 * 16 + 16 + 16


def test_exported_parameter_count_matches_torch(exported):
    from tests import zoo

    model = zoo.build("lenet")
    expected = sum(p.numel() for p in model.parameters())
    assert load(str(exported("lenet", "legacy"))).total_params == expected


# shapes ---------------------------------------------------------------------------------

def test_shapes_from_shape_inference(tmp_path):
    # the file types only the graph's inputs and outputs: no value_info
    model = cnn_model()
    assert not model.graph.value_info
    graph = load(str(save(model, tmp_path)))
    assert graph.layer("conv").input_shape == (1, 3, S, S)
    assert graph.layer("conv").output_shape == (1, C, S, S)
    assert graph.layer("flatten").output_shape == (1, C * S * S)
    assert graph.layer("fc").output_shape == (1, K)


def test_symbolic_dims_are_none(tmp_path):
    graph = load(str(save(cnn_model(batch="N"), tmp_path)))
    assert graph.layer("x").output_shape == (None, 3, S, S)
    assert graph.layer("conv").output_shape == (None, C, S, S)
    assert graph.layer("flatten").output_shape == (None, C * S * S)
    assert graph.layer("fc").output_shape == (None, K)


# opsets ---------------------------------------------------------------------------------

OPSETS = list(range(9, 22))


@pytest.mark.parametrize("opset", OPSETS)
def test_flatten_head_at_every_opset(tmp_path, opset):
    path = save(cnn_model("flatten", opset=opset), tmp_path)
    graph = load(str(path))
    assert graph.meta["opset"] == opset
    assert graph.layer("fc").kind == "dense"
    assert "PW001" in codes(lint(path))


@pytest.mark.parametrize("opset", OPSETS)
def test_pooled_heads_at_every_opset(tmp_path, opset):
    """ReduceMean (axes an attribute before opset 18, an input from 18) and Squeeze
    (axes an attribute before 13, an input from 13) pool and drop the spatial axes."""
    reduce_path = save(cnn_model("reducemean", opset=opset), tmp_path, "reduce.onnx")
    graph = load(str(reduce_path))
    assert graph.layer("mean").kind == "global_pool"
    assert graph.layer("mean").output_shape == (1, C)
    assert "PW001" not in codes(lint(reduce_path))

    squeeze_path = save(cnn_model("squeeze", opset=opset), tmp_path, "squeeze.onnx")
    graph = load(str(squeeze_path))
    assert graph.layer("squeeze").kind == "reshape"
    assert graph.layer("squeeze").output_shape == (1, C)
    assert "PW001" not in codes(lint(squeeze_path))


@pytest.mark.parametrize("opset", [11, 17, 18])
def test_reducemean_over_channels_is_not_global_pooling(tmp_path, opset):
    if opset >= 18:
        nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)]
        inits = [const("axes", [1])]
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=[1], keepdims=1)]
        inits = []
    model = make(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", [1, 1, 6, 6])], inits, opset=opset)
    graph = load(str(save(model, tmp_path)))
    assert graph.layer("mean").kind != "global_pool"


# subgraphs ------------------------------------------------------------------------------

def _features():
    """x -> conv -> relu: the 4x8x8 feature map "feat" that the subgraph heads read from outer scope."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["feat"], name="relu"),
    ]
    return nodes, [zeros("W", (C, 3, 3, 3))]


def _flatten_head(prefix, out):
    """Flatten + Gemm reading "feat", with the weights as the subgraph's own initializers."""
    nodes = [
        helper.make_node("Flatten", ["feat"], [f"{prefix}/flat"], name=f"{prefix}/Flatten"),
        helper.make_node("Gemm", [f"{prefix}/flat", f"{prefix}/W", f"{prefix}/b"], [out], name=f"{prefix}/Gemm", transB=1),
    ]
    return nodes, [zeros(f"{prefix}/W", (K, C * S * S)), zeros(f"{prefix}/b", (K,))]


def _pooled_head(prefix, out):
    nodes = [
        helper.make_node("GlobalAveragePool", ["feat"], [f"{prefix}/pool"], name=f"{prefix}/Pool"),
        helper.make_node("Flatten", [f"{prefix}/pool"], [f"{prefix}/flat"], name=f"{prefix}/Flatten"),
        helper.make_node("Gemm", [f"{prefix}/flat", f"{prefix}/W", f"{prefix}/b"], [out], name=f"{prefix}/Gemm", transB=1),
    ]
    return nodes, [zeros(f"{prefix}/W", (K, C)), zeros(f"{prefix}/b", (K,))]


def test_head_inside_an_if_branch(tmp_path):
    then_nodes, then_inits = _flatten_head("then", "then_y")
    else_nodes, else_inits = _pooled_head("else", "else_y")
    then_branch = helper.make_graph(then_nodes, "then", [], [tensor("then_y", [1, K])], then_inits)
    else_branch = helper.make_graph(else_nodes, "else", [], [tensor("else_y", [1, K])], else_inits)
    nodes, inits = _features()
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch))
    model = make(nodes, [tensor("x", [1, 3, S, S]), tensor("cond", [], TensorProto.BOOL)], [tensor("y", [1, K])], inits)
    path = save(model, tmp_path)

    graph = load(str(path))
    head = graph.layer("then/Gemm")
    assert head.kind == "dense"
    assert head.params == K * C * S * S + K
    assert graph.layer("then/Flatten").input_shape == (1, C, S, S)
    assert graph.data_producer(graph.layer("then/Flatten")).name == "relu"
    assert graph.total_params == C * 3 * 3 * 3 + (K * C * S * S + K) + (K * C + K)

    findings = [f for f in lint(path)["findings"] if f["code"] == "PW001"]
    assert [f["nodes"] for f in findings] == [["then/Flatten", "then/Gemm"]]


def test_head_inside_a_loop_body(tmp_path):
    head_nodes, head_inits = _flatten_head("body", "step_y")
    body_nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body/keep_going")] + head_nodes
    body = helper.make_graph(
        body_nodes, "body",
        [tensor("iter", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL)],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("step_y", [1, K])],
        head_inits,
    )
    nodes, inits = _features()
    nodes.append(helper.make_node("Loop", ["trips", "go"], ["ys"], name="loop", body=body))
    inits += [const("trips", 2), numpy_helper.from_array(np.array(True), "go")]
    model = make(nodes, [tensor("x", [1, 3, S, S])], [tensor("ys", [None, 1, K])], inits)
    path = save(model, tmp_path)

    graph = load(str(path))
    assert graph.layer("body/Gemm").kind == "dense"
    findings = [f for f in lint(path)["findings"] if f["code"] == "PW001"]
    assert [f["nodes"] for f in findings] == [["body/Flatten", "body/Gemm"]]


def test_nested_subgraphs(tmp_path):
    inner_nodes, inner_inits = _flatten_head("inner", "inner_y")
    inner = helper.make_graph(inner_nodes, "inner", [], [tensor("inner_y", [1, K])], inner_inits)
    other_nodes, other_inits = _pooled_head("other", "other_y")
    other = helper.make_graph(other_nodes, "other", [], [tensor("other_y", [1, K])], other_inits)
    outer_then = helper.make_graph(
        [helper.make_node("If", ["cond"], ["mid_y"], name="inner_if", then_branch=inner, else_branch=other)],
        "outer_then", [], [tensor("mid_y", [1, K])],
    )
    last_nodes, last_inits = _pooled_head("last", "last_y")
    outer_else = helper.make_graph(last_nodes, "outer_else", [], [tensor("last_y", [1, K])], last_inits)
    nodes, inits = _features()
    nodes.append(helper.make_node("If", ["cond"], ["y"], name="outer_if", then_branch=outer_then, else_branch=outer_else))
    model = make(nodes, [tensor("x", [1, 3, S, S]), tensor("cond", [], TensorProto.BOOL)], [tensor("y", [1, K])], inits)
    path = save(model, tmp_path)
    findings = [f for f in lint(path)["findings"] if f["code"] == "PW001"]
    assert [f["nodes"] for f in findings] == [["inner/Flatten", "inner/Gemm"]]


# external data --------------------------------------------------------------------------

def _with_external_weight(location: str):
    model = cnn_model()
    for init in model.graph.initializer:
        if init.name == "fc.weight":
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", location), ("offset", "0"), ("length", str(4 * K * C * S * S))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
    return model


def _write(model, path):
    # bytes written as they are: onnx.save would try to handle the external data itself
    path.write_bytes(model.SerializeToString())
    return path


def test_missing_external_data_is_not_needed_to_lint_when_allowed(tmp_path):
    """Shapes come from the model file alone: the graph is complete without the data, and
    with --allow-missing-weights the findings are the usual ones (without it, the absent
    file is an error: tests/formats/test_missing_weights.py)."""
    path = _write(_with_external_weight("fc_weights.bin"), tmp_path / "m.onnx")
    graph = load(str(path))
    assert graph.layer("fc").params == K * C * S * S + K
    from pwlint.formats.onnx.loader import OnnxLoader

    assert "fc_weights.bin" in OnnxLoader.load(str(path)).meta["missing_weights"]
    assert "PW001" in codes(lint(path, "--allow-missing-weights"))
    assert not (tmp_path / "fc_weights.bin").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("where", ["inside", "outside"])
def test_external_data_is_never_opened(tmp_path, where):
    """The weight's file is a named pipe: reading it would block (plain ``open``) or be
    refused (onnx's loader accepts only regular files), so a run that finishes shows that
    it was never read. Inside the model's folder the model lints; outside, the location
    itself is refused (issue 6), still without touching the pipe."""
    folder = tmp_path / "model"
    folder.mkdir()
    pipe = (folder if where == "inside" else tmp_path) / "weights.bin"
    os.mkfifo(pipe)
    location = "weights.bin" if where == "inside" else "../weights.bin"
    path = _write(_with_external_weight(location), folder / "m.onnx")
    run = run_command(str(path), "--select", "PW001,PW002", "--format", "json", timeout=60)
    if where == "outside":
        assert "outside the model's folder" in one_line_error(run)
        return
    assert run.code == 1, run.err
    assert "PW001" in run.out
