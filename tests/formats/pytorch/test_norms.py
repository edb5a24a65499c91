"""Normalisations written out in PyTorch code are one ``norm`` layer in ``.pt2`` and
TorchScript files: ConvNeXt's own channels-first LayerNorm, RMSNorm, torchvision's
FrozenBatchNorm2d. Without this, PW003 reports ConvNeXt's downsampling convolutions
(LayerNorm -> Conv 2x2/2), whose input is normalised by design.

Each model is written the way its source project writes it and saved in the test with
``torch.export`` (also after ``run_decompositions``) or ``torch.jit.trace``/``script``."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pwlint.formats.pytorch.loader import load
from tests.conftest import findings, lint, run_command

pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:DeprecationWarning")


# Models ---------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """facebookresearch/ConvNeXt, models/convnext.py, as written there."""

    def __init__(self, normalized_shape, eps=1e-6, data_format="channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        if self.data_format not in ["channels_last", "channels_first"]:
            raise NotImplementedError
        self.normalized_shape = (normalized_shape, )

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        elif self.data_format == "channels_first":
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + self.eps)
            x = self.weight[:, None, None] * x + self.bias[:, None, None]
            return x


class Block(nn.Module):
    """ConvNeXt's block: dwconv 7x7 -> permute -> LayerNorm -> Linear -> GELU -> Linear ->
    layer scale -> permute, residual add."""

    def __init__(self, dim, layer_scale_init_value=1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones((dim)))

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return input + x


class MiniConvNeXt(nn.Module):
    """Two ConvNeXt stages with the official stem, downsampling layer and head."""

    def __init__(self, down_norm: bool = True, dims=(16, 32)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
                          LayerNorm(dims[0], eps=1e-6, data_format="channels_first")),
            nn.Sequential(LayerNorm(dims[0], eps=1e-6, data_format="channels_first") if down_norm else nn.Identity(),
                          nn.Conv2d(dims[0], dims[1], kernel_size=2, stride=2)),
        ])
        self.stages = nn.ModuleList([nn.Sequential(Block(dims[0])), nn.Sequential(Block(dims[1]))])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], 10)

    def forward(self, x):
        for i in range(len(self.stages)):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        return self.head(self.norm(x.mean([-2, -1])))


class RMSNorm(nn.Module):
    """RMSNorm as LLaMA-style code writes it, over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ChannelsFirstRMSNorm(nn.Module):
    """RMSNorm applied to an NCHW map between two permutes."""

    def __init__(self, dim: int):
        super().__init__()
        self.inner = RMSNorm(dim)

    def forward(self, x):
        return self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d: statistics and affine as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class GroupNorm(nn.Module):
    """GroupNorm written with views: statistics over each group of channels."""

    def __init__(self, channels: int, groups: int = 2):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        y = x.view(n, self.groups, -1)
        y = (y - y.mean(-1, keepdim=True)) / (y.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        return y.view(n, c, h, w) * self.weight + self.bias


NORMS = {"frozen": FrozenBatchNorm2d, "rms": ChannelsFirstRMSNorm, "group": GroupNorm,
         "none": lambda channels: nn.Identity()}


class SmallVGG(nn.Module):
    """conv -> norm -> relu, three times, with a pooling; ``norm`` picks the normalisation."""

    def __init__(self, norm: str):
        super().__init__()
        make = NORMS[norm]
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), make(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), make(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), make(16), nn.ReLU(),
        )
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class NotNorms(nn.Module):
    """Reductions and divisions that are not normalisations: mean pooling over tokens, a
    written-out softmax and scaled dot-product attention."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # N, T, C
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5)
        e = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = e / e.sum(-1, keepdim=True)
        return self.head((weights @ v).mean(1))


class SharedStatistic(nn.Module):
    """A centred, scaled tensor whose mean is used again afterwards: the statistic leaves
    the would-be norm, so its operators cannot become one layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        u = x.mean(1, keepdim=True)
        y = (x - u) / torch.sqrt((x - u).pow(2).mean(1, keepdim=True) + 1e-6)
        return self.conv2(y + u)


class NormThenAdd(nn.Module):
    """A written-out RMSNorm whose output is added to a position embedding and to its own
    input: the adds are the model's next steps, not the norm's shift."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = RMSNorm(8)
        self.position = nn.Parameter(torch.zeros(1, 64, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        y = self.norm(tokens) + self.position
        y = tokens + self.norm(y)
        return self.head(y.mean(1))


class FunctionalNorms(nn.Module):
    """``F.batch_norm``, ``F.group_norm``, ``F.instance_norm`` and ``F.layer_norm`` calls."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8, 8, 8))
        self.weight = nn.Parameter(torch.ones(8))
        self.bias = nn.Parameter(torch.zeros(8))
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))

    def forward(self, x):
        x = F.relu(F.batch_norm(self.convs[0](x), self.mean, self.var, self.weight, self.bias))
        x = F.relu(F.group_norm(self.convs[1](x), 2, self.weight, self.bias))
        x = F.relu(F.instance_norm(self.convs[2](x)))
        x = self.convs[3](x).permute(0, 2, 3, 1)
        x = F.relu(F.layer_norm(x, (8,), self.weight, self.bias).permute(0, 3, 1, 2))
        return self.convs[4](x)


# Saving ---------------------------------------------------------------------------------

FORMATS = ("pt2", "pt2-decomposed", "trace")


def save(model: nn.Module, fmt: str, path: Path, size: int = 32) -> Path:
    """``model`` saved as ``fmt``: a .pt2 (optionally after ``run_decompositions``), or
    TorchScript from ``torch.jit.trace`` or ``torch.jit.script``."""
    torch.manual_seed(0)
    model.eval()
    example = torch.randn(1, 3, size, size)
    with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if fmt.startswith("pt2"):
            program = torch.export.export(model, (example,))
            if fmt == "pt2-decomposed":
                program = program.run_decompositions()
            torch.export.save(program, str(path))
        else:
            compiled = torch.jit.trace(model, example) if fmt == "trace" else torch.jit.script(model)
            torch.jit.save(compiled, str(path))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(name, fmt, **options)``: a model of this file saved as ``fmt``, cached."""
    folder = tmp_path_factory.mktemp("norms")
    cache: dict = {}
    builders = {"convnext": MiniConvNeXt, "vgg": SmallVGG, "not_norms": NotNorms,
                "shared": SharedStatistic, "functional": FunctionalNorms, "norm_then_add": NormThenAdd}

    def get(name: str, fmt: str, **options) -> Path:
        key = (name, fmt, tuple(sorted(options.items())))
        if key not in cache:
            suffix = ".pt2" if fmt.startswith("pt2") else ".pt"
            stem = "-".join([name, fmt, *(f"{k}{v}" for k, v in sorted(options.items()))])
            cache[key] = save(builders[name](**options), fmt, folder / f"{stem}{suffix}")
        return cache[key]

    return get


def operator(layer) -> str:
    """``aten.mean.dim`` -> ``mean`` (TorchScript: ``aten.mean`` -> ``mean``)."""
    return layer.op.split(".")[1] if "." in layer.op else layer.op


def norm_layers(path: Path) -> dict[str, str]:
    return {layer.name: layer.attrs.get("norm_type") for layer in load(str(path)).layers("norm")}


# ConvNeXt -------------------------------------------------------------------------------


def test_convnext_pt2_has_no_missing_norm_finding_on_the_command_line(saved):
    run = run_command(str(saved("convnext", "pt2")), "--select", "PW003")
    assert run.code == 0, run.out + run.err
    assert "PW003" not in run.out


@pytest.mark.parametrize("fmt", FORMATS)
def test_convnext_layer_norms_are_norm_layers_named_by_module_path(saved, fmt):
    graph = load(str(saved("convnext", fmt)))
    norms = {layer.name: layer for layer in graph.layers("norm")}
    assert {name: layer.attrs["norm_type"] for name, layer in norms.items()} == {
        "downsample_layers.0.1": "decomposed", "downsample_layers.1.0": "decomposed",
        "stages.0.0.norm": "layer", "stages.1.0.norm": "layer", "norm": "layer",
    }
    # weight and bias of 16 channels each; eps is no parameter
    assert norms["downsample_layers.1.0"].params == 2 * 16
    # nothing of the LayerNorm is left over as a layer of its own
    assert not [layer.name for layer in graph.layers() if layer.name.startswith("downsample_layers.1.0/")]
    # the data edges run through the norm: residual add -> norm -> downsampling conv
    down = norms["downsample_layers.1.0"]
    assert [p.kind for p in graph.producers(down)] == ["add"]
    assert [c.name for c in graph.consumers(down)] == ["downsample_layers.1.1"]
    assert [c.name for c in graph.consumers(graph.layer("downsample_layers.0.0"))] == ["downsample_layers.0.1"]
    assert graph.total_params == sum(p.numel() for p in MiniConvNeXt().parameters())


@pytest.mark.parametrize("fmt", FORMATS)
def test_convnext_downsampling_conv_is_not_reported(saved, fmt):
    assert findings(lint(saved("convnext", fmt)), "PW003") == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_convnext_without_the_downsampling_norm_reports_the_downsampling_conv(saved, fmt):
    (finding,) = findings(lint(saved("convnext", fmt, down_norm=False)), "PW003")
    assert finding["nodes"] == ["downsample_layers.1.1", "stages.1.0.dwconv"]
    assert finding["severity"] == "warning"


# RMSNorm and FrozenBatchNorm2d ----------------------------------------------------------


@pytest.mark.parametrize("fmt", (*FORMATS, "script"))
@pytest.mark.parametrize("norm, norm_type", [("frozen", "frozen_batch"), ("rms", "decomposed"), ("group", "decomposed")])
def test_vgg_with_written_out_norms_has_no_missing_norm(saved, fmt, norm, norm_type):
    path = saved("vgg", fmt, norm=norm)
    module = "features.{}.inner" if norm == "rms" else "features.{}"
    assert norm_layers(path) == {module.format(i): norm_type for i in (1, 4, 8)}
    assert findings(lint(path), "PW003") == []


@pytest.mark.parametrize("fmt", (*FORMATS, "script"))
@pytest.mark.parametrize("norm", ["frozen", "rms", "group", "none"])
def test_written_out_norms_leave_the_parameter_count_alone(saved, fmt, norm):
    """FrozenBatchNorm2d holds buffers, not parameters; RMSNorm one weight per channel,
    GroupNorm a weight and a bias; eps is no parameter."""
    graph = load(str(saved("vgg", fmt, norm=norm)))
    convs = 3 * 8 * 9 + 8 * 16 * 9 + 16 * 16 * 9
    per_channel = {"rms": 1, "group": 2}.get(norm, 0)
    expected = convs + 16 * 10 + 10 + per_channel * (8 + 16 + 16)
    assert graph.total_params == expected == sum(p.numel() for p in SmallVGG(norm).parameters())
    assert sum(layer.params for layer in graph.layers()) == expected


@pytest.mark.parametrize("fmt", ("pt2", "trace"))
def test_vgg_without_norms_reports_each_conv(saved, fmt):
    found = findings(lint(saved("vgg", fmt, norm="none")), "PW003")
    assert [f["nodes"] for f in found] == [["features.0", "features.3"], ["features.3", "features.7"]]


@pytest.mark.parametrize("fmt", ("pt2", "pt2-decomposed"))
def test_functional_norm_calls_are_norm_layers(saved, fmt):
    path = saved("functional", fmt)
    types = sorted(norm_layers(path).values())
    # a decomposed program runs instance_norm as a batch norm over a reshaped tensor
    assert types == sorted(["batch", "group", "instance" if fmt == "pt2" else "batch", "layer"])
    assert findings(lint(path), "PW003") == []


# No false norms -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", (*FORMATS, "script"))
def test_pooling_softmax_and_attention_are_not_norms(saved, fmt):
    graph = load(str(saved("not_norms", fmt)))
    assert list(graph.layers("norm")) == []
    assert {"exp", "amax", "sum"} <= {operator(layer) for layer in graph.layers()}
    assert graph.total_params == sum(p.numel() for p in NotNorms().parameters())


@pytest.mark.parametrize("fmt", ("pt2", "trace"))
def test_a_statistic_used_outside_stays_separate_layers(saved, fmt):
    graph = load(str(saved("shared", fmt)))
    assert list(graph.layers("norm")) == []
    # the mean feeds both the centring and the final add, edges intact
    (mean,) = [layer for layer in graph.layers() if operator(layer) == "mean"
               and [p.name for p in graph.producers(layer)] == ["conv1"]]
    assert sorted(operator(c) for c in graph.consumers(mean)) == ["add", "sub", "sub"]


@pytest.mark.parametrize("fmt", ("pt2", "trace"))
def test_an_add_after_a_norm_that_is_not_its_shift_stays_outside(saved, fmt):
    graph = load(str(saved("norm_then_add", fmt)))
    norms = list(graph.layers("norm"))
    assert [layer.name for layer in norms] == ["norm", "norm#2"]
    for norm in norms:
        assert norm.params == 8  # its weight only, not the 64 x 8 position embedding
        assert [c.kind for c in graph.consumers(norm)] == ["add"]
    residual = graph.consumers(graph.layer("norm#2"))[0]
    assert sorted(p.kind for p in graph.producers(residual)) == ["norm", "transpose"]
