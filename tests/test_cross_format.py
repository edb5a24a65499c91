"""The same architecture gives the same findings on the same layers in every format.

Each torch model of tests/zoo.py has a Keras twin whose layers carry the torch
module paths as names (``features.0``, ``classifier.0``). Both are saved in every
format pwlint reads (.onnx by the legacy exporter with BatchNorm kept, .pt2,
.keras, .h5), and each finding is reduced to its code and the module paths of
the layers it names: those sets must be equal across formats. Flatten layers
are functional in torch and have no module path, so the comparison keeps only
named modules.
"""

from __future__ import annotations

import os
import warnings

import pytest

from tests.conftest import lint

os.environ.setdefault("KERAS_BACKEND", "torch")

MODELS = ["lenet", "vgg_bias", "resnet", "densenet", "se", "convnext", "plain"]
FORMATS = ["onnx", "pt2", "keras", "h5"]


def _k(module_path: str) -> str:
    """Keras on the torch backend refuses dots in layer names: features.0 is features_0."""
    return module_path.replace(".", "_")


def _keras_twin(name: str):
    import keras
    from keras import layers as L

    def conv(x, n, name, k=3, stride=1, pad="same", bias=True, groups=None, act=None):
        if groups:
            return L.DepthwiseConv2D(k, strides=stride, padding=pad, use_bias=bias, name=_k(name))(x)
        return L.Conv2D(n, k, strides=stride, padding=pad, use_bias=bias, activation=act, name=_k(name))(x)

    def bn(x, name):
        return L.BatchNormalization(name=_k(name))(x)

    relu = lambda x: L.ReLU()(x)
    if name == "lenet":
        x = inp = keras.Input((32, 32, 1))
        x = L.MaxPooling2D()(relu(conv(x, 6, "features.0", 5, pad="valid")))
        x = L.MaxPooling2D()(relu(conv(x, 16, "features.3", 5, pad="valid")))
        x = L.Flatten()(x)
        x = L.Dense(120, activation="relu", name=_k("classifier.0"))(x)
        x = L.Dense(84, activation="relu", name=_k("classifier.2"))(x)
        return keras.Model(inp, L.Dense(10, name=_k("classifier.4"))(x))
    if name == "vgg_bias":
        x = inp = keras.Input((32, 32, 3))
        index = 0
        for width in (8, 16, 32):
            x = conv(x, width, f"features.{index}")
            x = L.MaxPooling2D()(relu(bn(x, f"features.{index + 1}")))
            index += 4
        x = L.Flatten()(x)
        x = L.Dense(64, activation="relu", name=_k("classifier.1"))(L.Dropout(0.5)(x))
        x = L.Dense(64, activation="relu", name=_k("classifier.4"))(L.Dropout(0.5)(x))
        return keras.Model(inp, L.Dense(10, name=_k("classifier.6"))(x))
    if name == "resnet":
        def block(x, cin, cout, stride, prefix):
            out = relu(bn(conv(x, cout, f"{prefix}.conv1", stride=stride, bias=False), f"{prefix}.bn1"))
            out = bn(conv(out, cout, f"{prefix}.conv2", bias=False), f"{prefix}.bn2")
            if stride != 1 or cin != cout:
                x = bn(conv(x, cout, f"{prefix}.shortcut.0", k=1, stride=stride, bias=False), f"{prefix}.shortcut.1")
            return relu(L.Add()([out, x]))

        x = inp = keras.Input((32, 32, 3))
        x = relu(bn(conv(x, 16, "stem.0", bias=False), "stem.1"))
        x = block(block(x, 16, 16, 1, "layer1"), 16, 32, 2, "layer2")
        return keras.Model(inp, L.Dense(10, name=_k("fc"))(L.GlobalAveragePooling2D()(x)))
    if name == "densenet":
        x = inp = keras.Input((16, 16, 3))
        x = conv(x, 8, "stem", bias=False)
        for i in range(2):
            y = conv(relu(bn(x, f"block.{i}.norm")), 4, f"block.{i}.conv", bias=False)
            x = L.Concatenate()([x, y])
        x = relu(bn(x, "norm"))
        return keras.Model(inp, L.Dense(10, name=_k("fc"))(L.GlobalAveragePooling2D()(x)))
    if name == "se":
        x = inp = keras.Input((16, 16, 3))
        x = relu(bn(conv(x, 16, "conv1.0", bias=False), "conv1.1"))
        gate = L.GlobalAveragePooling2D(keepdims=True)(x)
        gate = conv(gate, 4, "se.reduce", k=1, act="relu")
        gate = conv(gate, 16, "se.expand", k=1, act="sigmoid")
        x = L.Multiply()([x, gate])
        x = relu(bn(conv(x, 16, "conv2.0", bias=False), "conv2.1"))
        return keras.Model(inp, L.Dense(10, name=_k("fc"))(L.GlobalAveragePooling2D()(x)))
    if name == "convnext":
        x = inp = keras.Input((32, 32, 3))
        x = L.GroupNormalization(groups=1, name=_k("stem_norm"))(conv(x, 16, "stem", k=4, stride=4, pad="valid"))
        for i in range(2):
            y = conv(x, 16, f"blocks.{i}.dwconv", k=7, groups=16)
            y = L.LayerNormalization(name=_k(f"blocks.{i}.norm"))(y)
            y = L.Dense(64, activation="gelu", name=_k(f"blocks.{i}.pwconv1"))(y)
            x = L.Add()([x, L.Dense(16, name=_k(f"blocks.{i}.pwconv2"))(y)])
        x = L.LayerNormalization(name=_k("head_norm"))(L.GlobalAveragePooling2D()(x))
        return keras.Model(inp, L.Dense(10, name=_k("head"))(x))
    if name == "plain":
        x = inp = keras.Input((16, 16, 3))
        x = relu(conv(x, 8, "conv1"))
        x = relu(bn(conv(x, 8, "conv2", bias=False), "bn2"))
        return keras.Model(inp, L.Dense(10, name=_k("fc"))(L.GlobalAveragePooling2D()(x)))
    raise KeyError(name)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, exported):
    folder = tmp_path_factory.mktemp("cross")
    cache: dict = {}

    def get(name: str, fmt: str):
        key = (name, fmt)
        if key in cache:
            return cache[key]
        if fmt == "onnx":
            cache[key] = exported(name, "legacy-keep-norm")
        elif fmt == "pt2":
            import torch

            from tests import zoo

            model = zoo.build(name)
            program = torch.export.export(model, (torch.randn(*zoo.input_shape(model)),))
            cache[key] = folder / f"{name}.pt2"
            torch.export.save(program, cache[key])
        else:
            cache[key] = folder / f"{name}.{fmt}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _keras_twin(name).save(cache[key])
        return cache[key]

    return get


def _modules(name: str) -> set[str]:
    from tests import zoo

    return {path for path, _ in zoo.build(name).named_modules() if path}


def _module_of(node: str, modules: set[str]) -> str | None:
    """A layer name reduced to the torch module path it stands for, if any:
    ``features.0`` (torch), ``features_0`` (Keras), ``/features/features.0/Conv`` (ONNX)."""
    for candidate in (node, node.replace("_", ".")):
        if candidate in modules:
            return candidate
    parts = [p for p in node.replace("/", " ").split() if p in modules]
    return parts[-1] if parts else None


def canonical(report: dict, name: str) -> set[tuple]:
    modules = _modules(name)
    found = set()
    for finding in report["findings"]:
        nodes = tuple(m for m in (_module_of(n, modules) for n in finding["nodes"]) if m)
        found.add((finding["code"], finding["severity"], nodes))
    return found


@pytest.mark.parametrize("name", MODELS)
def test_same_findings_on_the_same_layers_in_every_format(saved, name):
    results = {fmt: canonical(lint(saved(name, fmt)), name) for fmt in FORMATS}
    reference = results["pt2"]
    # ONNX exporters may fold BatchNorm away: where an ONNX file shows that (LeNet has no
    # normalisation at all), PW003 says so once, as info, instead of the warning per conv
    # that the formats keeping norms as written give
    folded = ("PW003", "info", ())
    if folded in results["onnx"]:
        assert any(f[:2] == ("PW003", "warning") for f in reference)
        results["onnx"] = (results["onnx"] - {folded}) | {f for f in reference if f[0] == "PW003"}
    for fmt, found in results.items():
        assert found == reference, (fmt, sorted(found), "pt2", sorted(reference))


def test_the_comparison_sees_real_findings(saved):
    """Guard against a vacuous pass: the models that must have findings have them,
    naming modules, in the reference format."""
    lenet = canonical(lint(saved("lenet", "pt2")), "lenet")
    assert ("PW001", "warning", ("classifier.0",)) in lenet
    assert {f for f in lenet if f[0] == "PW003"} == {
        ("PW003", "warning", ("features.0", "features.3")), ("PW003", "warning", ("features.3", "classifier.0"))
    }
    assert ("PW003", "info", ()) in canonical(lint(saved("lenet", "onnx")), "lenet")
    vgg = canonical(lint(saved("vgg_bias", "pt2")), "vgg_bias")
    assert {f for f in vgg if f[0] == "PW004"} == {
        ("PW004", "warning", (f"features.{i}", f"features.{i + 1}")) for i in (0, 4, 8)
    }
    assert ("PW003", "warning", ("conv1", "conv2")) in canonical(lint(saved("plain", "pt2")), "plain")
