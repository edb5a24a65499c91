"""PW005's unsafe fixes on ``.pt2`` programs, through ``pwlint --fix --unsafe-fixes``:
a KxK conv rewritten as Tucker-2 (1x1 ``Cin -> R1``, KxK ``R1 -> R2`` with the original
stride, padding and dilation, 1x1 ``R2 -> Cout`` with the bias) or as a separable pair
(depthwise KxK with the original stride, padding and dilation, then 1x1 ``Cin -> Cout``
with the bias).

The written file is read back with torch: its convs, their parameters, the kernel they
compute together (composed here), and the outputs of the original program run with that
kernel; the reported kernel error is compared with the one measured from the file.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pwlint.errors import FixNotApplicable  # noqa: E402
from pwlint.fix.plans import ConvFactorisePlan  # noqa: E402
from tests.conftest import fix_json  # noqa: E402
from tests.formats.pytorch.pt2_fix_helpers import (  # noqa: E402
    apply_plan, convs, noted_error, relative, run, save, state,
)

nn = torch.nn


class Block(nn.Module):
    """A stem, then the heavy 3x3 conv ``conv`` and a ReLU."""

    def __init__(self, cin: int = 64, cout: int = 64, **conv) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, cin, 1)
        self.conv = nn.Conv2d(cin, cout, 3, **{"padding": 1, **conv})

    def forward(self, x):
        return torch.relu(self.conv(torch.relu(self.stem(x))))


def orthonormal(rows: int, cols: int, generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))[0]


def tucker_kernel(cout: int, cin: int, ranks: tuple[int, int], decay: float | None = None, seed: int = 0):
    """A ``(cout, cin, 3, 3)`` kernel whose channel unfoldings have rank ``ranks`` (R1 over
    input channels, R2 over output channels), each direction weighted by ``decay**i``."""
    generator = torch.Generator().manual_seed(seed)
    r1, r2 = ranks
    core = torch.randn(r2, r1, 3, 3, generator=generator, dtype=torch.float64)
    last, first = orthonormal(cout, r2, generator), orthonormal(cin, r1, generator)
    if decay is not None:
        last, first = last * decay ** torch.arange(r2), first * decay ** torch.arange(r1)
    return torch.einsum("or,rs...,is->oi...", last, core, first)


def written_kernel(path, method: str) -> torch.Tensor:
    """The ``(Cout, Cin, 3, 3)`` kernel the written convs compute together."""
    after = state(path)
    if method == "tucker2":
        first, core, last = (after[f"conv.{name}.weight"].double() for name in ("first", "core", "last"))
        return torch.einsum("or,rs...,si->oi...", last.flatten(1), core, first.flatten(1))
    depthwise, pointwise = after["conv.depthwise.weight"].double(), after["conv.pointwise.weight"].double()
    return torch.einsum("oi,i...->oi...", pointwise.flatten(1), depthwise[:, 0])


def fix_pw005(path, folder, **options):
    lines = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in options.items())
    (folder / "pwlint.toml").write_text(f"[rules.PW005]\nmax-params = 10000\n{lines}")
    _, report = fix_json(path, "--fix", "--unsafe-fixes", "--select", "PW005")
    return report["files"][0]["fix"]


def output_error(model, path, x) -> float:
    with torch.no_grad():
        return relative(run(path, x), model(x))


def test_tucker2_layers_keep_stride_padding_dilation_on_the_core_and_the_bias_last(tmp_path):
    torch.manual_seed(0)
    model = Block(stride=2, padding=2, dilation=2).eval()
    with torch.no_grad():
        model.conv.weight.copy_(tucker_kernel(64, 64, (64, 64), decay=0.93))
    x = torch.randn(2, 3, 11, 11)
    path = save(model, tmp_path / "block.pt2", x)
    fix = fix_pw005(path, tmp_path, energy=0.8)
    (outcome,) = fix["applied"]

    stem, first, core, last = convs(path)
    r1, r2 = first.weight.shape[0], core.weight.shape[0]
    assert r1 % 8 == 0 and r2 % 8 == 0 and r1 < 64 and r2 < 64
    assert f"pointwise 64->{r1}, 3x3 {r1}->{r2}, pointwise {r2}->64 (Tucker-2)" in outcome["note"]
    assert "fine-tune" in outcome["note"]
    assert first.weight.shape == (r1, 64, 1, 1) and first.bias is None
    assert core.weight.shape == (r2, r1, 3, 3) and core.bias is None
    assert last.weight.shape == (64, r2, 1, 1)
    torch.testing.assert_close(last.bias, model.conv.bias.detach(), rtol=0, atol=0)
    assert (core.stride, core.padding, core.dilation, core.groups) == ([2, 2], [2, 2], [2, 2], 1)
    for pointwise in (first, last):
        assert (pointwise.stride, pointwise.padding, pointwise.dilation) == ([1, 1], [0, 0], [1, 1])
    after = state(path)
    assert "conv.weight" not in after and "conv.bias" not in after

    # the program computes the original with its kernel replaced by what the layers compose
    kernel = written_kernel(path, "tucker2")
    assert noted_error(outcome["note"]) == pytest.approx(relative(kernel, model.conv.weight), rel=6e-3)
    reference = Block(stride=2, padding=2, dilation=2).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.conv.weight.copy_(kernel)
        torch.testing.assert_close(run(path, x), reference(x), rtol=1e-4, atol=1e-5)
        assert float((run(path, x) - model(x)).abs().max()) > 1e-3  # unsafe: the outputs moved


def test_tucker2_error_falls_as_the_energy_kept_grows(tmp_path):
    torch.manual_seed(1)
    model = Block().eval()
    with torch.no_grad():
        model.conv.weight.copy_(tucker_kernel(64, 64, (64, 64), decay=0.95, seed=1))
    x = torch.randn(2, 3, 8, 8)
    source = save(model, tmp_path / "source.pt2", x)
    kernel_errors, output_errors, weights = [], [], []
    for energy in (0.5, 0.8, 0.95):
        folder = tmp_path / f"energy-{energy}"
        folder.mkdir()
        path = folder / "block.pt2"
        path.write_bytes(source.read_bytes())
        (outcome,) = fix_pw005(path, folder, energy=energy)["applied"]
        measured = relative(written_kernel(path, "tucker2"), model.conv.weight)
        assert noted_error(outcome["note"]) == pytest.approx(measured, rel=6e-3)
        kernel_errors.append(measured)
        output_errors.append(output_error(model, path, x))
        weights.append(sum(v.numel() for k, v in state(path).items() if k.startswith("conv.")))
    assert kernel_errors[0] > kernel_errors[1] > kernel_errors[2]
    assert output_errors[0] > output_errors[1] > output_errors[2]
    assert weights[0] < weights[1] < weights[2] < 64 * 64 * 9


def test_an_exactly_tucker2_kernel_keeps_the_outputs(tmp_path):
    torch.manual_seed(2)
    model = Block().eval()
    with torch.no_grad():
        model.conv.weight.copy_(tucker_kernel(64, 64, (8, 16), seed=2))
    x = torch.randn(2, 3, 8, 8)
    path = save(model, tmp_path / "block.pt2", x, dynamic_batch=True)
    (outcome,) = fix_pw005(path, tmp_path, energy=0.999)["applied"]
    assert "pointwise 64->8, 3x3 8->16, pointwise 16->64" in outcome["note"]
    assert noted_error(outcome["note"]) < 1e-5
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        assert output_error(model, path, x) < 1e-5


def test_separable_is_a_depthwise_conv_with_the_stride_then_a_pointwise_conv_with_the_bias(tmp_path):
    torch.manual_seed(3)
    model = Block(stride=2, dilation=2, padding=2).eval()
    x = torch.randn(2, 3, 9, 9)
    path = save(model, tmp_path / "block.pt2", x, decompose=True)
    (outcome,) = fix_pw005(path, tmp_path, method="separable")["applied"]
    assert "depthwise 3x3 + pointwise 64->64" in outcome["note"]

    stem, depthwise, pointwise = convs(path)
    assert depthwise.weight.shape == (64, 1, 3, 3) and depthwise.bias is None
    assert (depthwise.stride, depthwise.padding, depthwise.dilation, depthwise.groups) == ([2, 2], [2, 2], [2, 2], 64)
    assert pointwise.weight.shape == (64, 64, 1, 1) and pointwise.groups == 1
    assert (pointwise.stride, pointwise.padding) == ([1, 1], [0, 0])
    torch.testing.assert_close(pointwise.bias, model.conv.bias.detach(), rtol=0, atol=0)

    kernel = written_kernel(path, "separable")
    measured = relative(kernel, model.conv.weight)
    assert 0.5 < measured < 1 and noted_error(outcome["note"]) == pytest.approx(measured, rel=6e-3)
    reference = Block(stride=2, dilation=2, padding=2).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.conv.weight.copy_(kernel)
        torch.testing.assert_close(run(path, x), reference(x), rtol=1e-4, atol=1e-5)


def test_an_exactly_separable_kernel_keeps_the_outputs(tmp_path):
    generator = torch.Generator().manual_seed(4)
    model = Block(cin=32, cout=48).eval()
    pointwise, depthwise = torch.randn(48, 32, generator=generator), torch.randn(32, 3, 3, generator=generator)
    with torch.no_grad():
        model.conv.weight.copy_(pointwise[:, :, None, None] * depthwise[None])
    x = torch.randn(2, 3, 8, 8)
    path = save(model, tmp_path / "block.pt2", x)
    (outcome,) = fix_pw005(path, tmp_path, method="separable")["applied"]
    assert noted_error(outcome["note"]) < 1e-5
    assert output_error(model, path, x) < 1e-5


def test_tucker2_at_break_even_writes_nothing(tmp_path):
    """Tucker-2 of a full-rank kernel keeping 100% of the energy would be no smaller: not
    applied, with the reason, and the file untouched."""
    torch.manual_seed(5)
    path = save(Block().eval(), tmp_path / "block.pt2", torch.randn(1, 3, 8, 8))
    before = path.read_bytes()
    fix = fix_pw005(path, tmp_path, energy=1.0)
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = fix["not_applied"]
    assert outcome["code"] == "PW005"
    assert "ranks 64 and 64 are needed to keep 100% of the energy" in outcome["note"]
    assert "no smaller than the 64x64x3x3 conv" in outcome["note"]
    assert path.read_bytes() == before


def test_separable_at_break_even_is_refused_before_any_change(tmp_path):
    """A conv with one output channel: depthwise + pointwise would be no smaller (PW005 does
    not offer it; a plan asking for it is refused by the backend, the file untouched)."""
    torch.manual_seed(6)
    path = save(Block(cout=1).eval(), tmp_path / "block.pt2", torch.randn(1, 3, 8, 8))
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="no smaller than the 1x64x3x3 conv"):
        apply_plan(path, ConvFactorisePlan("conv", "separable"))
    assert path.read_bytes() == before


def test_a_grouped_conv_is_refused(tmp_path):
    path = save(Block(groups=4).eval(), tmp_path / "block.pt2", torch.randn(1, 3, 8, 8))
    with pytest.raises(FixNotApplicable, match="grouped"):
        apply_plan(path, ConvFactorisePlan("conv", "tucker2"))
