"""The bundled example models: reproducible from their script, small, and each
showing what the README says it shows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import lint

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _script():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_examples_are_what_the_script_writes(tmp_path):
    written = _script().write_examples(tmp_path)
    assert written
    for path in written:
        assert path.read_bytes() == (EXAMPLES / path.name).read_bytes(), path.name


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.onnx")), ids=lambda p: p.name)
def test_examples_are_small(path):
    assert path.stat().st_size < 1_000_000


def test_lenet_example_has_one_flatten_dense_head():
    report = lint(EXAMPLES / "lenet.onnx")
    heads = [f for f in report["findings"] if f["code"] == "PW001"]
    assert [f["nodes"] for f in heads] == [["flatten", "fc1"]]


def test_vgg_example_has_a_head_and_biases_before_batchnorm():
    report = lint(EXAMPLES / "vgg_bn.onnx")
    assert [f["nodes"] for f in report["findings"] if f["code"] == "PW001"] == [["flatten", "classifier.fc1"]]
    biased = sorted(f["nodes"][0] for f in report["findings"] if f["code"] == "PW004")
    assert biased == ["features.conv1", "features.conv2", "features.conv3"]


def test_resnet_example_is_clean():
    assert lint(EXAMPLES / "resnet_pointwise.onnx")["findings"] == []
