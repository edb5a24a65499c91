"""PW006's safe fix on ``.pt2`` programs, through ``pwlint --fix``: two linear layers with
nothing non-linear between them (eval Dropout, an eval BatchNorm, a flatten of a 1x1
map) merged into one layer of the first one's kind, ``W = W2 W1``, ``b = W2 b1 + b2``,
the BatchNorm folded first.

The merged weights are computed here from the original model's parameters and compared
with the file's; outputs are compared by running both programs with torch at the
fix loop's safe tolerance (rtol 1e-4, atol 1e-5).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pwlint.errors import FixNotApplicable  # noqa: E402
from pwlint.fix.plans import MergeChainPlan  # noqa: E402
from tests.conftest import codes, fix_json  # noqa: E402
from tests.formats.pytorch.pt2_fix_helpers import apply_plan, convs, ops, run, save, state  # noqa: E402

nn = torch.nn


def randomised_norm(norm: nn.BatchNorm2d | nn.BatchNorm1d, seed: int = 0) -> None:
    """Running statistics and affine parameters far from the identity, so that a fold that
    gets them wrong shows."""
    generator = torch.Generator().manual_seed(seed)
    size = norm.num_features
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(size, generator=generator))
        norm.running_var.copy_(torch.rand(size, generator=generator) * 2 + 0.2)
        norm.weight.copy_(torch.randn(size, generator=generator))
        norm.bias.copy_(torch.randn(size, generator=generator))


def folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv followed by the eval BatchNorm as one conv, in float64."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    weight = conv.weight.double() * scale[:, None, None, None]
    bias = (conv.bias.double() - norm.running_mean.double()) * scale + norm.bias.double()
    return weight.detach(), bias.detach()


def assert_same_outputs(model: nn.Module, path, *shapes) -> None:
    for seed, shape in enumerate(shapes):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            torch.testing.assert_close(run(path, x), model(x), rtol=1e-4, atol=1e-5)


def merge(path) -> dict:
    run_, report = fix_json(path, "--fix", "--select", "PW006")
    assert run_.code == 0 and codes(report) == []  # merged: nothing left to report
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert outcome["code"] == "PW006" and outcome["applicability"] == "safe"
    return outcome


class DenseChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(self.drop(self.fc1(x)))


def test_dense_dropout_dense_becomes_one_dense_layer(tmp_path):
    torch.manual_seed(0)
    model = DenseChain().eval()
    path = save(model, tmp_path / "chain.pt2", torch.randn(2, 64), dynamic_batch=True)
    outcome = merge(path)
    assert outcome["note"] == f"'fc1' and 'fc2' merged into one layer: {64 * 128 + 128 + 128 * 10 + 10} -> 650 weights"

    after = state(path)
    assert sorted(after) == ["fc1.merged.bias", "fc1.merged.weight"]
    w1, b1, w2, b2 = (p.detach().double() for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight,
                                                      model.fc2.bias))
    torch.testing.assert_close(after["fc1.merged.weight"].double(), w2 @ w1, rtol=0, atol=1e-6)
    torch.testing.assert_close(after["fc1.merged.bias"].double(), w2 @ b1 + b2, rtol=0, atol=1e-6)
    assert ops(path).count("aten.linear.default") == 1
    assert_same_outputs(model, path, (1, 64), (5, 64))


class ConvChain(nn.Module):
    """A strided 3x3 conv, an eval BatchNorm and Dropout, then a pointwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.drop = nn.Dropout(0.2)
        self.c2 = nn.Conv2d(32, 16, 1)

    def forward(self, x):
        return torch.relu(self.c2(self.drop(self.bn(self.c1(x)))))


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "decomposed"])
def test_conv_batchnorm_dropout_pointwise_conv_becomes_one_conv(tmp_path, decompose):
    torch.manual_seed(1)
    model = ConvChain().eval()
    randomised_norm(model.bn, seed=1)
    path = save(model, tmp_path / "chain.pt2", torch.randn(2, 3, 9, 9), decompose=decompose)
    outcome = merge(path)
    # c1's weights and bias, the norm's scale and shift, c2's weights and bias -> one conv 3 -> 16
    before = 32 * 3 * 9 + 32 + 2 * 32 + 16 * 32 + 16
    assert f"'c1' and 'c2' merged into one layer: {before} -> {16 * 3 * 9 + 16} weights" in outcome["note"]

    after = state(path)
    assert sorted(after) == ["c1.merged.bias", "c1.merged.weight"]  # the norm's statistics too are gone
    (conv,) = convs(path)
    assert (conv.stride, conv.padding, conv.dilation, conv.groups) == ([2, 2], [1, 1], [1, 1], 1)
    weight, bias = folded(model.c1, model.bn)
    w2, b2 = model.c2.weight.detach().double().flatten(1), model.c2.bias.detach().double()
    torch.testing.assert_close(conv.weight.double(), torch.einsum("om,mi...->oi...", w2, weight), rtol=0, atol=1e-5)
    torch.testing.assert_close(conv.bias.double(), w2 @ bias + b2, rtol=0, atol=1e-5)
    assert_same_outputs(model, path, (2, 3, 9, 9))


class PooledHead(nn.Module):
    """A 4x4 conv over a 4x4 map (its output is 1x1), an eval BatchNorm, Flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(8, 64, 4)
        self.bn = nn.BatchNorm2d(64)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.flat(self.bn(self.c1(x))))


def test_a_conv_read_by_a_dense_layer_through_a_flatten_stays_a_conv_then_the_flatten(tmp_path):
    torch.manual_seed(2)
    model = PooledHead().eval()
    randomised_norm(model.bn, seed=2)
    path = save(model, tmp_path / "head.pt2", torch.randn(2, 8, 4, 4), dynamic_batch=True)
    merge(path)
    (conv,) = convs(path)
    assert conv.weight.shape == (10, 8, 4, 4)
    assert [op for op in ops(path) if "sym_size" not in op] == ["aten.conv2d.default", "aten.flatten.using_ints"]
    weight, bias = folded(model.c1, model.bn)
    w2, b2 = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    torch.testing.assert_close(conv.weight.double(), torch.einsum("om,mi...->oi...", w2, weight), rtol=0, atol=1e-5)
    torch.testing.assert_close(conv.bias.double(), w2 @ bias + b2, rtol=0, atol=1e-5)
    assert_same_outputs(model, path, (1, 8, 4, 4), (3, 8, 4, 4))


class DenseToMap(nn.Module):
    """A dense layer whose output is viewed as a (C, 1, 1) map for an eval BatchNorm and a
    pointwise conv (a decoder's first block)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 96)
        self.bn = nn.BatchNorm2d(96)
        self.conv = nn.Conv2d(96, 8, 1)

    def forward(self, x):
        return self.conv(self.bn(self.fc(x).view(-1, 96, 1, 1)))


def test_a_dense_layer_read_by_a_pointwise_conv_through_a_view_stays_dense_then_unit_axes(tmp_path):
    torch.manual_seed(3)
    model = DenseToMap().eval()
    randomised_norm(model.bn, seed=3)
    path = save(model, tmp_path / "decoder.pt2", torch.randn(2, 16), dynamic_batch=True)
    merge(path)
    after = state(path)
    assert sorted(after) == ["fc.merged.bias", "fc.merged.weight"] and after["fc.merged.weight"].shape == (8, 16)
    scale = model.bn.weight.double() / torch.sqrt(model.bn.running_var.double() + model.bn.eps)
    w1 = model.fc.weight.double() * scale[:, None]
    b1 = (model.fc.bias.double() - model.bn.running_mean.double()) * scale + model.bn.bias.double()
    w2, b2 = model.conv.weight.double().flatten(1), model.conv.bias.double()
    torch.testing.assert_close(after["fc.merged.weight"].double(), (w2 @ w1).detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(after["fc.merged.bias"].double(), (w2 @ b1 + b2).detach(), rtol=0, atol=1e-5)
    assert "aten.conv2d.default" not in ops(path)
    assert_same_outputs(model, path, (1, 16), (4, 16))


class SecondReader(nn.Module):
    """fc1's output (or the Dropout's) is also an output of the model."""

    def __init__(self, read_after_dropout: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)
        self.read_after_dropout = read_after_dropout

    def forward(self, x):
        hidden = self.fc1(x)
        dropped = self.drop(hidden)
        return self.fc2(dropped), (dropped if self.read_after_dropout else hidden) * 2


@pytest.mark.parametrize("read_after_dropout", [False, True], ids=["first-output", "between"])
def test_a_chain_whose_middle_is_read_elsewhere_is_refused_and_the_file_left(tmp_path, read_after_dropout):
    path = save(SecondReader(read_after_dropout).eval(), tmp_path / "shared.pt2", torch.randn(2, 64))
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="other readers"):
        apply_plan(path, MergeChainPlan("fc1", "fc2", ("drop",)), "safe")
    assert path.read_bytes() == before


class ReluBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_non_linear_layer_between_is_refused(tmp_path):
    path = save(ReluBetween().eval(), tmp_path / "relu.pt2", torch.randn(2, 64))
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="does not keep values as they are"):
        apply_plan(path, MergeChainPlan("fc1", "fc2"), "safe")
    assert path.read_bytes() == before
