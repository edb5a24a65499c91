"""The pure-Python ONNX reader (pwlint.formats.onnx.proto) reads what onnx reads, and
the tabled operator schemas (pwlint.formats.onnx.schemas) are onnx's."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, defs, helper, numpy_helper

from pwlint.formats.onnx import schemas
from pwlint.formats.onnx.proto import Undecoded, attribute_value, parse_bytes, tensor_values

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def _same_messages(light, real, path="model") -> None:
    """Every field the light reader reads holds what onnx's own class holds."""
    for spec in type(light).FIELDS.values():
        name, repeated, sub = spec[0], spec[2], spec[3]
        ours, theirs = getattr(light, name), getattr(real, name)
        where = f"{path}.{name}"
        if isinstance(ours, Undecoded):
            assert len(ours) == len(theirs), where
        elif isinstance(sub, type):
            if repeated:
                assert len(ours) == len(theirs), where
                for i, (a, b) in enumerate(zip(ours, theirs)):
                    _same_messages(a, b, f"{where}[{i}]")
            elif ours is None:
                assert not real.HasField(name), where
            else:
                _same_messages(ours, theirs, where)
        elif repeated:
            assert list(ours) == list(theirs), where
        elif name in ("raw_data",) and ours is None:
            assert not real.HasField(name), where
        else:
            assert ours == theirs, where


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(DATA, "**", "*.onnx"), recursive=True))[::7])
def test_backend_models_read_as_onnx_reads_them(path):
    data = open(path, "rb").read()
    _same_messages(parse_bytes(data), onnx.ModelProto.FromString(data))


def test_a_model_with_subgraphs_functions_and_metadata_reads_as_onnx_reads_it():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, "n"])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, "n"])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'block']"
    graph = helper.make_graph(
        [node, helper.make_node("Constant", [], ["k"], value_floats=[1.5, -2.0, 3e38])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "n"]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "n"])],
        [numpy_helper.from_array(np.arange(-3, 3, dtype=np.int64), "small"),
         numpy_helper.from_array(np.ones((40, 40), np.float32), "large")],
    )
    function = helper.make_function("custom", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[function], producer_name="test")
    light = parse_bytes(model.SerializeToString())
    _same_messages(light, model)
    tensors = {t.name: t for t in light.graph.initializer}
    assert tensor_values(tensors["small"]) == [-3, -2, -1, 0, 1, 2]
    assert isinstance(tensors["large"].raw_data, Undecoded) and len(tensors["large"].raw_data) == 6400
    assert tensor_values(tensors["large"]) is None  # more than 64 values: never read
    constant = light.graph.node[1].attribute[0]
    assert attribute_value(constant) == pytest.approx([1.5, -2.0, 3e38], rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_])
@pytest.mark.parametrize("raw", [True, False])
def test_small_tensor_values_are_those_numpy_helper_reads(dtype, raw):
    values = np.array([[0, 1, 3], [5, 0, 1]]).astype(dtype)
    tensor = numpy_helper.from_array(values, "t")
    if not raw:  # the typed fields instead of raw_data, as older exporters wrote them
        tensor = helper.make_tensor("t", tensor.data_type, values.shape, values.reshape(-1).tolist())
    light = parse_bytes(helper.make_model(helper.make_graph([], "g", [], [], [tensor])).SerializeToString())
    assert tensor_values(light.graph.initializer[0]) == numpy_helper.to_array(tensor).reshape(-1).tolist()


def test_schema_table_is_onnx_own():
    """Regenerate with ``python -m pwlint.formats.onnx.schemas`` after an onnx upgrade."""
    seen = 0
    for schema in defs.get_all_schemas_with_history():
        for version in (schema.since_version, schema.since_version + 1):
            try:
                real = defs.get_schema(schema.name, version, schema.domain)
            except defs.SchemaError:
                continue
            expected = (real.min_input, {n: int(a.type.value) for n, a in real.attributes.items()})
            assert schemas.get_schema(schema.name, version, schema.domain) == expected, (schema.name, version)
            seen += 1
    assert seen > 1000
    assert schemas.get_schema("NoSuchOp", 17) is None


def test_schema_table_renders_as_written():
    assert schemas.render() == schemas.TABLE


def _length_delimited(number: int, payload: bytes) -> bytes:
    from pwlint.formats.onnx.wire import _field_header

    return _field_header(number, len(payload)) + payload


def test_types_nested_thousands_deep_are_one_line_error(tmp_path, pwlint):
    """A graph input whose type is a sequence of a sequence of ... : protobuf refused it
    past 100 levels; the reader refuses it past its own limit, without recursing deeper."""
    inner = _length_delimited(1, b"\x08\x01")  # TypeProto.tensor_type {elem_type: FLOAT}
    for _ in range(2_000):
        inner = _length_delimited(4, _length_delimited(1, inner))  # sequence_type { elem_type: ... }
    value = _length_delimited(1, b"x") + _length_delimited(2, inner)
    node = helper.make_node("Relu", ["x"], ["y"]).SerializeToString()
    graph = _length_delimited(1, node) + _length_delimited(11, value)
    model = b"\x08\x08" + _length_delimited(7, graph) + _length_delimited(8, b"\x10\x11")
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    run = pwlint("check", str(path))
    assert run.code == 2 and run.err.count("\n") == 1, run.err
    assert run.err.startswith(f"pwlint: error: {path}: not a valid ONNX model") and "nested too deep" in run.err


def test_a_name_that_is_not_utf8_is_refused_naming_it(tmp_path, pwlint):
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    data = helper.make_model(
        helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 17)],
    ).SerializeToString().replace(b"relu", b"r\xffl\xfe")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    run = pwlint("check", str(path))
    assert run.code == 2 and "is not valid UTF-8" in run.err and run.err.count("\n") == 1, run.err
