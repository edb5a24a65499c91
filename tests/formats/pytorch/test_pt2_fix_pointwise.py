"""PW002's low-rank fix on the convolutions of ``.pt2`` programs: the kernel, read as a
``[Cin*K, Cout]`` matrix, split by truncated SVD into a conv ``Cin -> r`` that keeps the
window, stride, padding and dilation (``u``) and a 1x1 conv ``r -> Cout`` that carries the
bias (``v``); for a pointwise conv, a pointwise bottleneck of two 1x1 convs.

Each test reads the written file back with torch: the convs it holds, their parameters,
the truncated SVD computed here, and the outputs of the original program run with its
kernel replaced by the product of the written factors.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from pwlint.errors import FixNotApplicable  # noqa: E402
from pwlint.fix.plans import FactorisePlan  # noqa: E402
from tests.conftest import codes, fix_json  # noqa: E402
from tests.formats.pytorch.pt2_fix_helpers import (  # noqa: E402
    apply_plan, convs, noted_error, relative, run, save, state, with_spectrum,
)

nn = torch.nn


class PooledPointwise(nn.Module):
    """A trunk, global pooling, then a pointwise head 64 -> 256 -> 10 on a 1x1 map."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(64, 256, 1)
        self.out = nn.Conv2d(256, 10, 1)

    def forward(self, x):
        x = self.pool(torch.relu(self.trunk(x)))
        return self.out(torch.relu(self.head(x))).flatten(1)


class MapCovering(nn.Module):
    """A 5x5 conv that covers its whole 5x5 map (a convolutionalised dense layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 32, 3, padding=1)
        self.cover = nn.Conv2d(32, 64, 5)

    def forward(self, x):
        return self.cover(torch.relu(self.trunk(x))).flatten(1)


def as_kernel(matrix: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A ``[Cin*K, Cout]`` matrix (rows in (Cin, *K) order) as ``conv``'s kernel."""
    return matrix.T.reshape(conv.weight.shape).to(conv.weight.dtype)


def truncated(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def config(folder, **options) -> None:
    lines = "".join(f"{key} = {value}\n" for key, value in options.items())
    (folder / "pwlint.toml").write_text(f"[rules.PW002]\n{lines}")


def test_a_pointwise_conv_becomes_a_pointwise_bottleneck(tmp_path):
    torch.manual_seed(0)
    model = PooledPointwise().eval()
    # a decaying spectrum, as a trained layer's: 0.9 of the energy needs rank 7, rounded to 8
    matrix = with_spectrum(64, 256, [0.85**i for i in range(64)])
    with torch.no_grad():
        model.head.weight.copy_(as_kernel(matrix, model.head))
    x = torch.randn(2, 3, 8, 8)
    path = save(model, tmp_path / "pointwise.pt2", x)
    config(tmp_path, **{"max-params": 10_000})

    run_, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert "'head' factorised at rank 8" in outcome["note"]
    assert run_.code == 0 and codes(report) == []  # the bottleneck's convs are under the limit

    after = state(path)
    assert "head.weight" not in after and "head.bias" not in after
    first, second, bias = after["head.u.weight"], after["head.v.weight"], after["head.v.bias"]
    assert first.shape == (8, 64, 1, 1) and second.shape == (256, 8, 1, 1)
    torch.testing.assert_close(bias, model.head.bias.detach(), rtol=0, atol=0)
    written = convs(path)
    assert len(written) == 4  # trunk, u, v, out
    u, v = written[1], written[2]
    assert u.bias is None and v.bias is not None
    for conv in (u, v):
        assert (conv.stride, conv.padding, conv.dilation, conv.groups) == ([1, 1], [0, 0], [1, 1], 1)

    product = (second.reshape(256, 8).double() @ first.reshape(8, 64).double()).T  # [in, out]
    expected = truncated(matrix, 8)
    torch.testing.assert_close(product, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    measured = relative(product, matrix)
    assert measured == pytest.approx(math.sqrt(sum(0.85 ** (2 * i) for i in range(8, 64))
                                               / sum(0.85 ** (2 * i) for i in range(64))), rel=1e-3)
    assert noted_error(outcome["note"]) == pytest.approx(measured, rel=6e-3)

    # the program computes the original with its kernel replaced by the factors' product
    reference = PooledPointwise().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.head.weight.copy_(as_kernel(product, reference.head))
        want, before = reference(x), model(x)
    got = run(path, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert float((got - before).abs().max()) > 1e-3  # an unsafe fix: the outputs moved


def test_a_conv_covering_its_map_keeps_its_window_and_an_exactly_low_rank_kernel_keeps_the_outputs(tmp_path):
    torch.manual_seed(1)
    model = MapCovering().eval()
    matrix = with_spectrum(32 * 25, 64, [4.0, 3.0, 2.0, 1.5, 1.0], seed=1)  # rank 5: 0.9 needs 4, rounded to 8
    with torch.no_grad():
        model.cover.weight.copy_(as_kernel(matrix, model.cover))
    x = torch.randn(3, 3, 5, 5)
    path = save(model, tmp_path / "cover.pt2", x, dynamic_batch=True)
    config(tmp_path, **{"max-params": 40_000})

    _, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert "'cover' factorised at rank 8: 51200 -> 6912 weights" in outcome["note"]
    u, v = convs(path)[1:]
    assert u.weight.shape == (8, 32, 5, 5) and u.bias is None
    assert v.weight.shape == (64, 8, 1, 1) and v.bias is not None
    assert noted_error(outcome["note"]) < 1e-6
    # the factors hold the whole kernel: the outputs are the original's, at any batch size
    for batch in (1, 4):
        x = torch.randn(batch, 3, 5, 5)
        with torch.no_grad():
            torch.testing.assert_close(run(path, x), model(x), rtol=1e-4, atol=1e-5)


CONVS = {
    "2d-stride-padding-dilation": (lambda: nn.Conv2d(16, 48, 3, stride=2, padding=2, dilation=2), (16, 12, 12)),
    "2d-same-padding": (lambda: nn.Conv2d(16, 48, 3, padding="same", dilation=2), (16, 9, 9)),
    "2d-rectangular": (lambda: nn.Conv2d(16, 48, (1, 5), stride=(2, 1), padding=(0, 2)), (16, 8, 8)),
    "1d": (lambda: nn.Conv1d(16, 48, 5, stride=2, padding=1), (16, 20)),
    "3d": (lambda: nn.Conv3d(8, 40, 3, padding=1), (8, 5, 5, 5)),
}


class Wrapped(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.parametrize("decompose", [False, True], ids=["export", "decomposed"])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_the_first_factor_keeps_stride_padding_and_dilation(tmp_path, name, decompose):
    """Any conv (a plan, not PW002's finding: this conv does not cover its map): the written
    program computes the original with the kernel replaced by the product of the factors."""
    make, shape = CONVS[name]
    torch.manual_seed(2)
    model = Wrapped(make()).eval()
    conv = model.conv
    x = torch.randn(2, *shape)
    path = save(model, tmp_path / "conv.pt2", x, decompose=decompose)
    (source,) = convs(path)  # a decomposed program holds a 'same' padding as numbers
    note = apply_plan(path, FactorisePlan("conv", energy=0.6, multiple_of=1))

    u, v = convs(path)
    window = tuple(conv.weight.shape[2:])
    rank = u.weight.shape[0]
    assert u.weight.shape == (rank, conv.in_channels, *window) and u.bias is None
    assert v.weight.shape == (conv.out_channels, rank, *[1] * len(window))
    assert (u.stride, u.padding, u.dilation) == (source.stride, source.padding, source.dilation)
    assert source.stride == list(conv.stride) and source.dilation == list(conv.dilation)
    assert (v.stride, v.dilation, v.groups) == ([1] * len(window), [1] * len(window), 1)
    assert v.padding in ([0] * len(window), "valid")

    matrix = conv.weight.detach().double().reshape(conv.out_channels, -1).T
    product = (v.weight.double().reshape(conv.out_channels, rank) @ u.weight.double().reshape(rank, -1)).T
    torch.testing.assert_close(product, truncated(matrix, rank), rtol=0, atol=1e-5)
    assert noted_error(note) == pytest.approx(relative(product, matrix), rel=6e-3)
    assert f"factorised at rank {rank}:" in note

    with torch.no_grad():
        conv.weight.copy_(as_kernel(product, conv))
        want = model(x)
    torch.testing.assert_close(run(path, x), want, rtol=1e-4, atol=1e-5)


def test_a_grouped_conv_is_refused_and_the_file_left_as_it_was(tmp_path):
    model = Wrapped(nn.Conv2d(16, 32, 3, groups=4)).eval()
    path = save(model, tmp_path / "grouped.pt2", torch.randn(1, 16, 6, 6))
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="grouped"):
        apply_plan(path, FactorisePlan("conv", energy=0.5))
    assert path.read_bytes() == before
