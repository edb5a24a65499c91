"""Write the example models the README's quick start lints.

    python examples/make_examples.py [FOLDER]

Built with onnx.helper and seeded numpy (no torch needed), so the files are
small (< 1 MB) and byte-for-byte reproducible; tests/test_examples.py checks
that the committed files are what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """A small NCHW model builder: each method adds one layer and returns its output name."""

    def __init__(self, name: str, input_shape: list[int], seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self.inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)]
        self.shape = list(input_shape)

    def _weight(self, name: str, shape: list[int], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = self.rng.standard_normal(shape).astype(np.float32) * (scale or (2.0 / fan_in) ** 0.5)
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def conv(self, x: str, name: str, out_channels: int, kernel: int, pad: int = 0, bias: bool = True) -> str:
        cin = self.shape[1]
        inputs = [x, self._weight(f"{name}.weight", [out_channels, cin, kernel, kernel])]
        if bias:
            inputs.append(self._weight(f"{name}.bias", [out_channels], scale=0.1))
        self.nodes.append(helper.make_node(
            "Conv", inputs, [f"{name}_out"], name=name, kernel_shape=[kernel, kernel], pads=[pad] * 4,
        ))
        h = self.shape[2] + 2 * pad - kernel + 1
        self.shape = [self.shape[0], out_channels, h, self.shape[3] + 2 * pad - kernel + 1]
        return f"{name}_out"

    def batchnorm(self, x: str, name: str) -> str:
        c = self.shape[1]
        scale = numpy_helper.from_array(np.ones(c, np.float32), f"{name}.weight")
        shift = numpy_helper.from_array(np.zeros(c, np.float32), f"{name}.bias")
        mean = numpy_helper.from_array(self.rng.standard_normal(c).astype(np.float32) * 0.1, f"{name}.running_mean")
        var = numpy_helper.from_array(np.ones(c, np.float32), f"{name}.running_var")
        self.initializers += [scale, shift, mean, var]
        self.nodes.append(helper.make_node(
            "BatchNormalization", [x, scale.name, shift.name, mean.name, var.name], [f"{name}_out"], name=name,
        ))
        return f"{name}_out"

    def unary(self, op: str, x: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, [x], [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def maxpool(self, x: str, name: str) -> str:
        self.shape = [self.shape[0], self.shape[1], self.shape[2] // 2, self.shape[3] // 2]
        return self.unary("MaxPool", x, name, kernel_shape=[2, 2], strides=[2, 2])

    def global_pool(self, x: str, name: str) -> str:
        self.shape = [self.shape[0], self.shape[1], 1, 1]
        return self.unary("GlobalAveragePool", x, name)

    def flatten(self, x: str, name: str) -> str:
        self.shape = [self.shape[0], int(np.prod(self.shape[1:]))]
        return self.unary("Flatten", x, name, axis=1)

    def gemm(self, x: str, name: str, units: int) -> str:
        weight = self._weight(f"{name}.weight", [units, self.shape[1]])
        bias = self._weight(f"{name}.bias", [units], scale=0.1)
        self.nodes.append(helper.make_node("Gemm", [x, weight, bias], [f"{name}_out"], name=name, transB=1))
        self.shape = [self.shape[0], units]
        return f"{name}_out"

    def add(self, a: str, b: str, name: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}_out"], name=name))
        return f"{name}_out"

    def model(self, output: str) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, self.shape)
        graph = helper.make_graph(self.nodes, self.name, self.inputs, [out], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pwlint-examples")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def lenet() -> onnx.ModelProto:
    """LeNet-5 as exported in eval mode: a Flatten + three dense layers head (PW001)."""
    b = GraphBuilder("lenet", [1, 1, 32, 32], seed=1)
    x = b.maxpool(b.unary("Relu", b.conv("input", "conv1", 6, 5), "relu1"), "pool1")
    x = b.maxpool(b.unary("Relu", b.conv(x, "conv2", 16, 5), "relu2"), "pool2")
    x = b.flatten(x, "flatten")
    x = b.unary("Relu", b.gemm(x, "fc1", 120), "relu3")
    x = b.unary("Relu", b.gemm(x, "fc2", 84), "relu4")
    return b.model(b.gemm(x, "fc3", 10))


def vgg_bn() -> onnx.ModelProto:
    """A small VGG with BatchNorm kept and biased convs: PW001 and PW004."""
    b = GraphBuilder("vgg_bn", [1, 3, 32, 32], seed=2)
    x = "input"
    for i, width in enumerate((16, 32, 64), start=1):
        x = b.conv(x, f"features.conv{i}", width, 3, pad=1, bias=True)
        x = b.unary("Relu", b.batchnorm(x, f"features.bn{i}"), f"features.relu{i}")
        x = b.maxpool(x, f"features.pool{i}")
    x = b.flatten(x, "flatten")
    x = b.unary("Relu", b.gemm(x, "classifier.fc1", 128), "classifier.relu1")
    return b.model(b.gemm(x, "classifier.fc2", 10))


def resnet_pointwise() -> onnx.ModelProto:
    """A ResNet-style model with BatchNorm and a global-pool head: no findings."""
    b = GraphBuilder("resnet_pointwise", [1, 3, 32, 32], seed=3)
    stem = b.unary("Relu", b.batchnorm(b.conv("input", "stem.conv", 16, 3, pad=1, bias=False), "stem.bn"), "stem.relu")
    x = b.unary("Relu", b.batchnorm(b.conv(stem, "block.conv1", 16, 3, pad=1, bias=False), "block.bn1"), "block.relu1")
    x = b.batchnorm(b.conv(x, "block.conv2", 16, 3, pad=1, bias=False), "block.bn2")
    x = b.unary("Relu", b.add(x, stem, "block.add"), "block.relu2")
    x = b.flatten(b.global_pool(x, "pool"), "flatten")
    return b.model(b.gemm(x, "fc", 10))


EXAMPLES = {"lenet.onnx": lenet, "vgg_bn.onnx": vgg_bn, "resnet_pointwise.onnx": resnet_pointwise}


def write_examples(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, build in EXAMPLES.items():
        path = folder / filename
        onnx.save(build(), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for written in write_examples(target):
        print(f"wrote {written} ({written.stat().st_size / 1024:.0f} KiB)")
