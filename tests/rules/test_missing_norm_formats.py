"""PW003 on real exports: what a missing norm means depends on what the format can hide.

Keras, ``torch.export`` (.pt2) and TorchScript keep BatchNorm as written, so a conv
without one is a warning, one per conv, even in a model with no normalisation at all.
ONNX eval exports fold Conv+BatchNorm (here DenseNet-style: the BatchNorm after each
1x1 conv goes, the pre-activation BatchNorm after each Concat stays), so where no
BatchNorm is left directly after a conv the unnormalised convs are one info finding;
an export that kept BatchNorm still warns. Pre-norm convs (ConvNeXt's LayerNorm ->
Conv 2x2/2 downsampling) are never reported.

Each model is built and exported once per module; expected findings are worked out
from the architecture, not read back from pwlint.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stderr, redirect_stdout

import onnx
import pytest
import torch
import torch.nn as nn

from tests.conftest import findings, init, lint
from tests.zoo import ConvNeXtBlock

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'


def _quiet(fn, *args, **kwargs):
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            return fn(*args, **kwargs)


def _onnx_export(model: nn.Module, shape: tuple, path, **kwargs):
    _quiet(torch.onnx.export, model, (torch.randn(*shape),), str(path), external_data=False, **kwargs)
    return path


def _pt2(model: nn.Module, shape: tuple, path):
    program = torch.export.export(model, (torch.randn(*shape),))
    torch.export.save(program, path)
    return path


def _severities(report: dict) -> list[str]:
    return [f["severity"] for f in findings(report, "PW003")]


# --- VGG-style, with and without BatchNorm: Keras, .pt2, TorchScript ---------------------------

#: (filters, then "pool" for a 2x2 max pooling): five convs on a 16x16 input
VGG_PLAN = [4, 4, "pool", 8, 8, "pool", 8, "pool"]
VGG_INPUT = 16


def _keras_vgg(norm: bool, head: str, functional: bool):
    """VGG16 in miniature, built as a user would: Conv2D(relu) or Conv2D -> BN -> ReLU,
    MaxPooling2D between blocks, then Flatten -> Dense -> Dense or GAP -> Dense."""
    import keras
    from keras import layers as L

    stack, index = [], 0
    for step in VGG_PLAN:
        if step == "pool":
            stack.append(L.MaxPooling2D(name=f"pool{index}"))
            continue
        index += 1
        if norm:
            stack += [L.Conv2D(step, 3, padding="same", use_bias=False, name=f"conv{index}"),
                      L.BatchNormalization(name=f"bn{index}"), L.ReLU(name=f"relu{index}")]
        else:
            stack.append(L.Conv2D(step, 3, padding="same", activation="relu", name=f"conv{index}"))
    if head == "flatten":
        stack += [L.Flatten(name="flatten"), L.Dense(16, activation="relu", name="fc1"), L.Dense(10, name="fc2")]
    else:
        stack += [L.GlobalAveragePooling2D(name="gap"), L.Dense(10, name="fc")]
    if not functional:
        return keras.Sequential([keras.Input((VGG_INPUT, VGG_INPUT, 3)), *stack])
    x = inputs = keras.Input((VGG_INPUT, VGG_INPUT, 3))
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x)


def _expected_pairs(names: list[str], head: str) -> list[list[str]]:
    """Each conv with the next conv or dense layer in the stack: with nothing but ReLU,
    pooling and Flatten between, each reaches it unnormalised. Before global pooling the
    last conv ends the walk (exempt by design: the NiN/ResNet head), so it has no pair."""
    compute = [n for n in names if n.startswith(("conv", "fc"))]
    pairs = [[a, b] for a, b in zip(compute, compute[1:]) if a.startswith("conv")]
    return pairs if head == "flatten" else pairs[:-1]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras_vgg")
    cache = {}

    def get(norm: bool, head: str = "flatten", functional: bool = False, suffix: str = "keras"):
        key = (norm, head, functional, suffix)
        if key not in cache:
            model = _keras_vgg(norm, head, functional)
            path = folder / f"vgg-{'bn' if norm else 'plain'}-{head}-{'functional' if functional else 'sequential'}.{suffix}"
            _quiet(model.save, path)
            cache[key] = (path, [layer.name for layer in model.layers])
        return cache[key]

    return get


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_keras_vgg_without_norm_warns_once_per_conv(keras_file, functional):
    """Five convs, no BatchNorm anywhere, Flatten -> Dense head (VGG16's shape): the last
    conv reaches fc1 through MaxPool and Flatten, so all five are reported, as warnings.
    (VGG16 itself: 13 convs, 13 warnings.)"""
    path, names = keras_file(norm=False, functional=functional)
    found = findings(lint(path), "PW003")
    assert [f["nodes"] for f in found] == _expected_pairs(names, "flatten")
    assert len(found) == 5
    assert _severities({"findings": found}) == ["warning"] * 5


def test_keras_last_conv_before_global_pooling_is_exempt(keras_file):
    path, names = keras_file(norm=False, head="gap")
    found = findings(lint(path), "PW003")
    assert [f["nodes"] for f in found] == _expected_pairs(names, "gap")
    assert len(found) == 4 and set(_severities({"findings": found})) == {"warning"}


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_keras_vgg_without_norm_fails_a_warning_gate(keras_file, pwlint, suffix):
    """What the issue was about: a CI gate with fail-on = warning must fail this model."""
    path, _ = keras_file(norm=False, suffix=suffix)
    assert pwlint("check", str(path), "--select", "PW003").code == 1


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_keras_vgg_with_norm_has_no_finding(keras_file, functional):
    path, _ = keras_file(norm=True, functional=functional)
    assert findings(lint(path), "PW003") == []


class TorchVGG(nn.Module):
    """The same miniature VGG in torch; ``features.N`` indices are the module paths."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        layers, channels = [], 3
        for step in VGG_PLAN:
            if step == "pool":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, step, 3, padding=1, bias=not norm))
            layers += [nn.BatchNorm2d(step), nn.ReLU()] if norm else [nn.ReLU()]
            channels = step
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(channels * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

    def expected_pairs(self) -> list[list[str]]:
        convs = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        return [[a, b] for a, b in zip(convs, convs[1:] + ["classifier.0"])]


@pytest.fixture(scope="module")
def torch_vgg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_vgg")
    cache = {}

    def get(norm: bool, fmt: str):
        if (norm, fmt) not in cache:
            torch.manual_seed(0)
            model = TorchVGG(norm).eval()
            path = folder / f"vgg-{'bn' if norm else 'plain'}.{fmt}"
            if fmt == "pt2":
                _pt2(model, (1, 3, VGG_INPUT, VGG_INPUT), path)
            else:  # TorchScript, as torch.jit.trace(...).save() writes it
                _quiet(torch.jit.trace, model, torch.randn(1, 3, VGG_INPUT, VGG_INPUT)).save(str(path))
            cache[(norm, fmt)] = (path, model)
        return cache[(norm, fmt)]

    return get


@pytest.mark.parametrize("fmt", ["pt2", "jit"])
def test_torch_vgg_without_norm_warns_once_per_conv(torch_vgg, fmt):
    path, model = torch_vgg(norm=False, fmt=fmt)
    found = findings(lint(path), "PW003")
    assert [f["nodes"] for f in found] == model.expected_pairs()
    assert _severities({"findings": found}) == ["warning"] * 5


@pytest.mark.parametrize("fmt", ["pt2", "jit"])
def test_torch_vgg_with_norm_has_no_finding(torch_vgg, fmt):
    path, _ = torch_vgg(norm=True, fmt=fmt)
    assert findings(lint(path), "PW003") == []


# --- DenseNet-style pre-activation block in ONNX: partial fold vs BatchNorm kept --------------


class PreActLayer(nn.Module):
    """DenseNet's bottleneck layer: BN -> ReLU -> Conv 1x1 -> BN -> ReLU -> Conv 3x3, concatenated."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(torch.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(torch.relu(self.norm2(y)))], 1)


class DenseNetBlock(nn.Module):
    """A stem whose first conv (5x5) really lacks a norm, then Conv 3x3 -> BN -> ReLU ->
    MaxPool, two pre-activation layers and the final BN -> ReLU -> GAP -> Linear."""

    shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem1 = nn.Conv2d(3, 8, 5, padding=2)
        self.stem2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.stem_norm = nn.BatchNorm2d(8)
        self.block = nn.Sequential(PreActLayer(8, 4), PreActLayer(12, 4))
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem1(x))
        x = torch.max_pool2d(torch.relu(self.stem_norm(self.stem2(x))), 2)
        x = torch.relu(self.norm(self.block(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


DENSENET_EXPORTS = {
    "dynamo": dict(dynamo=True),  # the default exporter: its optimizer folds Conv+BN
    "legacy": dict(dynamo=False),  # eval-mode constant folding fuses Conv+BN
    "legacy-keep-norm": dict(dynamo=False, training=torch.onnx.TrainingMode.PRESERVE),
}


@pytest.fixture(scope="module")
def densenet_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("densenet")
    cache = {}

    def get(exporter: str):
        if exporter not in cache:
            torch.manual_seed(0)
            model = DenseNetBlock().eval()
            cache[exporter] = _onnx_export(model, model.shape, folder / f"{exporter}.onnx", **DENSENET_EXPORTS[exporter])
        return cache[exporter]

    return get


def _convs_by_kernel(path) -> dict[str, tuple]:
    """Conv node name -> kernel shape, read from the weights (folded weights are renamed)."""
    graph = onnx.load(str(path)).graph
    dims = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            dims[node.output[0]] = tuple(node.attribute[0].t.dims)
    return {n.name: dims[n.input[1]][2:] for n in graph.node if n.op_type == "Conv"}


def _batch_norm_inputs(path) -> list[str]:
    """The op type producing each BatchNormalization's input."""
    graph = onnx.load(str(path)).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    return [producer.get(n.input[0], "input") for n in graph.node if n.op_type == "BatchNormalization"]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_densenet_eval_export_is_folded_in_part(densenet_onnx, exporter):
    """The export really has the partial fold the rule looks for: of the six BatchNorms,
    the three after a conv (stem_norm, each norm2) are folded, the three pre-activation
    ones (after MaxPool and after each Concat) are kept."""
    path = densenet_onnx(exporter)
    assert sorted(_batch_norm_inputs(path)) == ["Concat", "Concat", "MaxPool"]
    assert len(_convs_by_kernel(path)) == 6


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_densenet_eval_export_gets_one_info_not_warnings(densenet_onnx, pwlint, exporter):
    """Each 1x1 conv reads BN -> ReLU after a Concat: pre-norm, not reported, though its
    own BatchNorm was folded away. stem1 (a real missing norm) reaches stem2 through ReLU
    only, and no BatchNorm follows any conv in the file: one info naming stem1, no
    warning, and a passing run."""
    path = densenet_onnx(exporter)
    kernels = _convs_by_kernel(path)
    report = lint(path)
    (finding,) = findings(report, "PW003")
    assert finding["severity"] == "info"
    assert finding["nodes"] == [n for n, k in kernels.items() if k == (5, 5)]
    assert "folded" in finding["message"] and "TrainingMode.PRESERVE" in finding["message"]
    assert [f for f in report["findings"] if f["severity"] != "info"] == []
    assert pwlint("check", str(path)).code == 0


def test_densenet_export_keeping_norm_warns_for_the_real_missing_norm(densenet_onnx):
    """With BatchNorm kept (a BN right after stem2 and after each 1x1 conv), the only
    conv without a norm is stem1, and it is a warning."""
    path = densenet_onnx("legacy-keep-norm")
    assert sorted(_batch_norm_inputs(path)).count("Conv") == 3
    kernels = _convs_by_kernel(path)
    stem1, stem2 = list(kernels)[:2]  # graph order: stem1, stem2, then the block's convs
    assert kernels[stem1] == (5, 5) and kernels[stem2] == (3, 3)
    (finding,) = findings(lint(path), "PW003")
    assert (finding["severity"], finding["nodes"]) == ("warning", [stem1, stem2])


# --- ConvNeXt-style pre-norm downsampling -------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm: applied channels-last between two permutes."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtTiny(nn.Module):
    """Stem Conv 4x4/4 -> LayerNorm, a block, the downsampling LayerNorm -> Conv 2x2/2
    (pre-norm: its output goes straight into the next block's depthwise conv), a block,
    then mean -> LayerNorm -> Linear. ``down_norm=False`` drops the downsampling
    LayerNorm: the control in which the downsampling conv is a real finding."""

    shape = (1, 3, 32, 32)

    def __init__(self, down_norm: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), LayerNorm2d(8))
        self.stage1 = ConvNeXtBlock(8)
        self.downsample = nn.Sequential(LayerNorm2d(8) if down_norm else nn.Identity(), nn.Conv2d(8, 16, 2, stride=2))
        self.stage2 = ConvNeXtBlock(16)
        self.head_norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stage2(self.downsample(self.stage1(self.stem(x))))
        return self.head(self.head_norm(x.mean((2, 3))))


CONVNEXT_EXPORTS = {
    "pt2": None,
    "onnx-legacy-opset17": dict(dynamo=False, opset_version=17),  # LayerNormalization operators
    "onnx-legacy-opset16": dict(dynamo=False, opset_version=16),  # decomposed: ReduceMean, Sub, Pow...
    "onnx-dynamo": dict(dynamo=True),
}


@pytest.fixture(scope="module")
def convnext_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convnext")
    cache = {}

    def get(fmt: str, down_norm: bool = True):
        if (fmt, down_norm) not in cache:
            torch.manual_seed(0)
            model = ConvNeXtTiny(down_norm).eval()
            stem = folder / f"{fmt}-{'prenorm' if down_norm else 'control'}"
            if fmt == "pt2":
                path = _pt2(model, model.shape, stem.with_suffix(".pt2"))
            else:
                path = _onnx_export(model, model.shape, stem.with_suffix(".onnx"), **CONVNEXT_EXPORTS[fmt])
            cache[(fmt, down_norm)] = path
        return cache[(fmt, down_norm)]

    return get


@pytest.mark.parametrize("fmt", list(CONVNEXT_EXPORTS))
def test_convnext_downsampling_conv_is_pre_norm(convnext_file, fmt):
    assert findings(lint(convnext_file(fmt)), "PW003") == []


def test_convnext_opset16_export_has_its_layer_norms_decomposed(convnext_file):
    """The opset-16 case really is the decomposed form the loader has to recognise."""
    ops = {n.op_type for n in onnx.load(str(convnext_file("onnx-legacy-opset16"))).graph.node}
    assert "LayerNormalization" not in ops and {"ReduceMean", "Sqrt", "Div", "Transpose"} <= ops


def test_convnext_control_without_the_downsampling_norm_is_reported(convnext_file):
    """Without the LayerNorm, the downsampling conv feeds stage2's depthwise conv unnormalised."""
    (finding,) = findings(lint(convnext_file("pt2", down_norm=False)), "PW003")
    assert (finding["severity"], finding["nodes"]) == ("warning", ["downsample.1", "stage2.dwconv"])


def test_keras_layer_norm_before_a_strided_conv_is_pre_norm(tmp_path):
    """The Keras form: LayerNormalization -> Conv2D(2, strides=2) -> DepthwiseConv2D. With
    the LayerNormalization left out, the same conv is reported (the control)."""
    import keras
    from keras import layers as L

    def build(down_norm: bool):
        x = inputs = keras.Input((16, 16, 3))
        x = L.LayerNormalization(name="stem_norm")(L.Conv2D(8, 2, strides=2, name="stem")(x))
        y = L.LayerNormalization(name="block_norm")(L.DepthwiseConv2D(7, padding="same", name="dwconv")(x))
        x = L.Add()([x, L.Dense(8, name="pwconv")(L.Dense(32, activation="gelu", name="pwconv1")(y))])
        if down_norm:
            x = L.LayerNormalization(name="down_norm")(x)
        x = L.Conv2D(16, 2, strides=2, name="down")(x)
        x = L.LayerNormalization(name="block2_norm")(L.DepthwiseConv2D(7, padding="same", name="dwconv2")(x))
        return keras.Model(inputs, L.Dense(10, name="head")(L.GlobalAveragePooling2D()(x)))

    for down_norm, expected in [(True, []), (False, [["down", "dwconv2"]])]:
        path = tmp_path / f"convnext-{down_norm}.keras"
        _quiet(build(down_norm).save, path)
        assert [f["nodes"] for f in findings(lint(path), "PW003")] == expected


# --- ONNX text: the folding signature and pre-norm through padding and transposes -------------

#: conv1 -> ReLU -> conv2 -> ReLU -> Add(conv1's ReLU) -> {after_add} -> ReLU -> conv3 -> ReLU -> GAP -> Gemm.
#: conv1 reaches conv2 unnormalised; conv3 is the last conv before global pooling.
SIGNATURE = """
{opset}
signature (float[1,3,8,8] x) => (float[1,10] y)
<{w1}, {w2}, {w3}, {bn}, {fc_w}, {fc_b}{extra}>
{{
    [conv1] c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
    [relu1] r1 = Relu (c1)
    [conv2] c2 = {conv2}
    {after_conv2}
    [relu2] r2 = Relu (n2)
    [add] s = Add (r1, r2)
    [bn_add] n = BatchNormalization (s, bn, bn, bn, bn)
    [relu3] r3 = Relu (n)
    [conv3] c3 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r3, w3)
    [relu4] r4 = Relu (c3)
    [gap] p = GlobalAveragePool (r4)
    [flatten] f = Flatten (p)
    [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)
}}
"""
CONV2 = "Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, w2)"
#: a transposed conv of the same shape (stride 1, padding 1 keeps 8x8)
CONV2_TRANSPOSED = "ConvTranspose <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, w2)"
NO_BN = "[keep] n2 = Identity (c2)"
BN = "[bn2] n2 = BatchNormalization (c2, bn, bn, bn, bn)"
FROZEN_BN = "[bn2_scale] sc = Mul (c2, scale)\n    [bn2_shift] n2 = Add (sc, shift)"
LAYER_NORM = "[ln2] n2 = LayerNormalization <axis = 1> (c2, ln_scale, ln_bias)"


def _signature(conv2: str, after_conv2: str) -> str:
    text = SIGNATURE.format(
        opset=OPSET, conv2=conv2, after_conv2=after_conv2,
        w1=init("w1", 8, 3, 3, 3), w2=init("w2", 8, 8, 3, 3), w3=init("w3", 8, 8, 3, 3),
        bn=init("bn", 8, value=1.0), fc_w=init("fc_w", 10, 8), fc_b=init("fc_b", 10),
        extra=(f", {init('scale', 8, 1, 1, value=0.5)}, {init('shift', 8, 1, 1, value=0.1)}" if after_conv2 == FROZEN_BN
               else f", {init('ln_scale', 8, 8, 8, value=1.0)}, {init('ln_bias', 8, 8, 8, value=0.0)}" if after_conv2 == LAYER_NORM
               else ""),
    )
    return text


@pytest.mark.parametrize(
    "conv2, after_conv2, expected",
    [
        (CONV2, NO_BN, ("info", ["conv1"])),
        (CONV2_TRANSPOSED, BN, ("info", ["conv1"])),
        (CONV2, BN, ("warning", ["conv1", "conv2"])),
        (CONV2, FROZEN_BN, ("warning", ["conv1", "conv2"])),
        (CONV2, LAYER_NORM, ("info", ["conv1"])),
    ],
    ids=["norm-only-after-add", "bn-only-after-conv-transpose", "bn-after-a-conv", "frozen-bn-after-a-conv",
         "layer-norm-after-a-conv"],
)
def test_folding_signature(onnx_text, conv2, after_conv2, expected):
    """A BatchNorm remains (after the Add) but none directly after a conv: BatchNorm was
    folded, conv1's missing norm cannot be told from a folded one (info). A BatchNorm after
    a ConvTranspose does not change that (exporters do not fold those). A BatchNorm, or
    its frozen Mul+Add form, right after conv2 shows the exporter kept BatchNorm: conv1's
    missing norm is real (warning). A LayerNorm there does not (only BatchNorm is folded:
    a GroupNorm detection head on a folded backbone looks like this)."""
    (finding,) = findings(lint(onnx_text(_signature(conv2, after_conv2))), "PW003")
    assert (finding["severity"], finding["nodes"]) == expected


def test_info_names_the_convs_by_label_and_says_how_to_keep_norm(onnx_text):
    (finding,) = findings(lint(onnx_text(_signature(CONV2, NO_BN))), "PW003")
    message = finding["message"]
    assert "folded" in message and "conv1" in message and "conv2" not in message
    assert "training=torch.onnx.TrainingMode.PRESERVE" in message


#: {norm} on x's features -> {between} -> Conv 2x2 stride 2 -> ReLU -> Conv 3x3 -> BN
PRE_NORM = """
{opset}
pre_norm (float[1,3,8,8] x) => (float[1,8,4,4] y)
<{w0}, {bn}, {wd}, {w2}, float[8] ln_scale = {ones}, float[8] ln_bias = {zeros}, int64[8] pads = {{0, 0, 1, 1, 0, 0, 1, 1}}>
{{
    [stem] c0 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w0)
    [stem_bn] n0 = BatchNormalization (c0, bn, bn, bn, bn)
    [stem_relu] r0 = Relu (n0)
    [residual] s = Add (r0, c0)
    {norm}
    {between}
    [down] d = Conv <kernel_shape = [2, 2], strides = [2, 2]> (h, wd)
    [relu] r = Relu (d)
    [conv2] c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r, w2)
    [bn2] y = BatchNormalization (c2, bn, bn, bn, bn)
}}
"""
CHANNELS_LAST_LN = """
    [to_nhwc] t = Transpose <perm = [0, 2, 3, 1]> (s)
    [ln] l = LayerNormalization <axis = -1> (t, ln_scale, ln_bias)
    [to_nchw] ln_out = Transpose <perm = [0, 3, 1, 2]> (l)
"""
BATCH_NORM = "[pre_bn] ln_out = BatchNormalization (s, bn, bn, bn, bn)"


@pytest.mark.parametrize(
    "norm, between, pad, reported",
    [
        (CHANNELS_LAST_LN, "[keep] h = Identity (ln_out)", False, []),
        (BATCH_NORM, "[pad] h = Pad (ln_out, pads)", True, []),
        (BATCH_NORM, "[pool] h = MaxPool <kernel_shape = [1, 1]> (ln_out)", False, []),
        (BATCH_NORM, "[act] h = Relu (ln_out)", False, []),
        # the BatchNorm right after the stem conv is the stem's own: `down` is checked
        ("[pre_bn] ln_out = BatchNormalization (c0, bn, bn, bn, bn)", "[act] h = Relu (ln_out)", False,
         [["down", "conv2"]]),
        # the stem's own output also reaches `down` through the residual Add, unnormalised
        ("[no_norm] ln_out = Identity (s)", "[keep] h = Identity (ln_out)", False, [["stem", "down"], ["down", "conv2"]]),
    ],
    ids=["channels-last-layer-norm", "through-padding", "through-pooling", "through-activation",
         "previous-conv-own-norm-is-checked", "no-norm-control"],
)
def test_pre_norm_conv(onnx_text, norm, between, pad, reported):
    """The downsampling conv's input is the output of a norm after the residual Add
    (through layout Transposes, padding, pooling or an activation): pre-norm, not
    reported. When the norm is the stem conv's own (Conv -> BN -> ReLU -> Conv), the
    downsampling conv is checked as usual: it reaches conv2 through ReLU only (a
    BatchNorm follows the stem conv, so a warning). Without the norm, likewise, and the
    stem conv's output reaches it through the Add."""
    text = PRE_NORM.format(
        opset=OPSET, norm=norm, between=between, w0=init("w0", 8, 3, 3, 3), bn=init("bn", 8, value=1.0),
        wd=init("wd", 8, 8, 2, 2) if not pad else init("wd", 8, 8, 4, 4), w2=init("w2", 8, 8, 3, 3),
        ones="{" + ", ".join(["1.0"] * 8) + "}", zeros="{" + ", ".join(["0.0"] * 8) + "}",
    )
    if pad:  # 8x8 padded to 10x10, then a 4x4 kernel with stride 2 gives 4x4 again
        text = text.replace("kernel_shape = [2, 2], strides", "kernel_shape = [4, 4], strides")
    found = findings(lint(onnx_text(text)), "PW003")
    assert [(f["severity"], f["nodes"]) for f in found] == [("warning", pair) for pair in reported]
