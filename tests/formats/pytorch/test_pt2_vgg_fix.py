"""A VGG16 saved by ``torch.export`` through ``pwlint --fix --unsafe-fixes``: the head has
VGG16's real sizes (a 512 x 7 x 7 map -> 4096 -> 4096 -> 1000, 123.6M parameters); the conv
trunk is narrowed for speed but keeps a 512 -> 512 3x3 conv and the 7 x 7 x 512 map.

Issue 16's complaint: after PW001's fix the head is global pooling + 1x1 convs, and
``classifier.3`` (now a 4096 -> 4096 1x1 conv, 16.8M parameters) was still reported by
PW002, whose fix was blocked for convolutions. Now the run must end with no PW001 and no
PW002 finding, and the written program must load and run in torch.

``classifier.3``'s weights are given a falling spectrum, as trained VGG16's have (that is
why truncated SVD compresses trained dense layers, Denton et al. 2014); a randomly
initialised 4096 x 4096 layer has a flat spectrum, whose 90% energy rank is past
break-even.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import fix_json, fix_summary  # noqa: E402
from tests.formats.pytorch.pt2_fix_helpers import convs, ops, relative, save, state  # noqa: E402

nn = torch.nn
MAP, FEATURES, HIDDEN, CLASSES = 7, 512, 4096, 1000


class VGG16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, FEATURES, 3, padding=1), nn.ReLU(),
            nn.Conv2d(FEATURES, FEATURES, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(MAP)  # as torchvision's: the identity on a 7x7 map
        self.classifier = nn.Sequential(
            nn.Linear(FEATURES * MAP * MAP, HIDDEN), nn.ReLU(), nn.Dropout(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Dropout(),
            nn.Linear(HIDDEN, CLASSES),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16() -> VGG16:
    torch.manual_seed(0)
    model = VGG16().eval()
    with torch.no_grad():  # fc2 of a trained network: most of its energy in a few hundred directions
        low = torch.randn(HIDDEN, 256) @ torch.randn(256, HIDDEN) / HIDDEN
        model.classifier[3].weight.copy_(low + 0.0005 * torch.randn(HIDDEN, HIDDEN))
    return model


def parameters(path) -> int:
    return sum(v.numel() for v in state(path).values())


def test_vgg16_fixed_with_unsafe_fixes_ends_with_no_pw001_or_pw002_and_runs(tmp_path):
    model = vgg16()
    fc2 = model.classifier[3].weight.detach().clone()
    x = torch.randn(1, 3, 4 * MAP, 4 * MAP)
    path = save(model, tmp_path / "vgg16.pt2", x)
    before = sum(p.numel() for p in model.parameters())
    del model  # half a gigabyte: pwlint loads its own copies

    _, report = fix_json(path, "--fix", "--unsafe-fixes")
    after = parameters(path)
    fix = report["files"][0]["fix"]
    applied = [(o["code"], o["note"]) for o in fix["applied"]]
    summary = fix_summary(report, before, after)
    assert fix["written"] == str(path), summary
    assert not [f for f in report["findings"] if f["code"] in ("PW001", "PW002")], summary
    codes = [code for code, _ in applied]
    assert "PW001" in codes and "PW002" in codes, summary
    head = FEATURES * MAP * MAP * HIDDEN + HIDDEN  # fc1 alone: 102.8M
    assert before > head + HIDDEN * HIDDEN and after < before - head, summary
    assert (fix["before"]["params"], fix["after"]["params"]) == (before, after), summary

    # the head is global pooling then pointwise convs; fc2 a pointwise bottleneck of rank r
    assert "aten.linear.default" not in ops(path) and "aten.adaptive_avg_pool2d.default" in ops(path), summary
    after_state = state(path)
    u, v = after_state["classifier.3.u.weight"], after_state["classifier.3.v.weight"]
    rank = u.shape[0]
    assert u.shape == (rank, HIDDEN, 1, 1) and v.shape == (HIDDEN, rank, 1, 1), summary
    assert rank % 8 == 0 and rank * HIDDEN <= 4_194_304, summary  # each factor under PW002's limit
    assert "classifier.3.weight" not in after_state
    pointwise = [c for c in convs(path) if c.weight.shape[2:] == (1, 1)]
    assert [c.weight.shape[:2] for c in pointwise][-3:] == [(rank, HIDDEN), (HIDDEN, rank), (CLASSES, HIDDEN)]
    # the reported error is the one of the factors in the file
    note = next(note for code, note in applied if code == "PW002")
    assert f"rank {rank}" in note
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", note).group(1))
    product = v.double().flatten(1) @ u.double().flatten(1)  # [out, in], as fc2.weight
    assert reported == pytest.approx(relative(product, fc2), rel=6e-3), summary

    # the written program loads and runs in torch, and still gives 1000 scores
    with torch.no_grad():
        scores = torch.export.load(str(path)).module()(x)
    assert scores.shape == (1, CLASSES) and torch.isfinite(scores).all()
