"""A VGG16 exported by torch (dynamo) through ``pwlint --fix --unsafe-fixes``: the head
has VGG16's real sizes (a 512 x 7 x 7 map -> 4096 -> 4096 -> 1000, 123.6M parameters); the
conv trunk is narrowed for speed but keeps a 512 -> 512 3x3 conv and the 7 x 7 x 512 map.

Issue 16's complaint: after PW001's fix the head is global pooling + 1x1 convs, and fc2
(now a 4096 -> 4096 1x1 conv, 16.8M parameters) was still reported by PW002, whose fix was
blocked for convolutions. Now the run must end with no PW001 and no PW002 finding, and the
fixed file must run in onnxruntime.

fc2's weights are given a falling spectrum, as trained VGG16's have (that is why truncated
SVD compresses trained dense layers, Denton et al. 2014); a randomly initialised 4096 x 4096
layer has a flat spectrum, whose 90% energy rank is past break-even.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import copy_model, fix_json, fix_summary, float_params, run_onnx, sample_inputs

MAP, FEATURES, HIDDEN, CLASSES = 7, 512, 4096, 1000


def vgg16_model():
    import torch
    from torch import nn

    class VGG16(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, FEATURES, 3, padding=1), nn.ReLU(),
                nn.Conv2d(FEATURES, FEATURES, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(
                nn.Linear(FEATURES * MAP * MAP, HIDDEN), nn.ReLU(), nn.Dropout(),
                nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Dropout(),
                nn.Linear(HIDDEN, CLASSES),
            )

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    torch.manual_seed(0)
    model = VGG16().eval()
    with torch.no_grad():  # fc2 of a trained network: most of its energy in a few hundred directions
        fc2 = model.classifier[3].weight
        low = torch.randn(HIDDEN, 256) @ torch.randn(256, HIDDEN) / HIDDEN
        fc2.copy_(low + 0.0005 * torch.randn(HIDDEN, HIDDEN))
    return model


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("vgg16") / "vgg16.onnx"
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(vgg16_model(), (torch.randn(1, 3, 4 * MAP, 4 * MAP),), str(path), dynamo=True,
                          external_data=False)
    return path


def convs_by_weight(path) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    model = onnx.load(str(path))
    weights = {t.name: t for t in model.graph.initializer}
    return [(n, numpy_helper.to_array(weights[n.input[1]])) for n in model.graph.node if n.op_type == "Conv"]


def test_vgg16_fixed_with_unsafe_fixes_ends_with_no_pw001_or_pw002(vgg16, tmp_path):
    model = copy_model(vgg16, tmp_path)
    before = float_params(model)
    _, report = fix_json(model, "--fix", "--unsafe-fixes")
    after = float_params(model)
    fix = report["files"][0]["fix"]
    applied = [(o["code"], o["note"]) for o in fix["applied"]]
    summary = fix_summary(report, before, after)
    assert not [f for f in report["findings"] if f["code"] in ("PW001", "PW002")], summary
    codes = [code for code, _ in applied]
    assert "PW001" in codes and "PW002" in codes, summary
    head = FEATURES * MAP * MAP * HIDDEN + HIDDEN  # fc1 alone: 102.8M
    assert before > head + HIDDEN * HIDDEN and after < before - head, summary

    # the head is global pooling then pointwise convs, fc2 a pointwise bottleneck of rank r
    nodes = onnx.load(str(model)).graph.node
    assert "GlobalAveragePool" in [n.op_type for n in nodes] and "Gemm" not in [n.op_type for n in nodes], summary
    pointwise = [(n, w) for n, w in convs_by_weight(model) if w.shape[2:] == (1, 1)]
    # v: rank -> 4096 (fc1's 512 -> 4096 is not it: 512 is no rank below break-even here)
    (v_node, v), = [(n, w) for n, w in pointwise if w.shape[0] == HIDDEN and w.shape[1] not in (HIDDEN, FEATURES)]
    (u_node, u), = [(n, w) for n, w in pointwise if n.output[0] == v_node.input[0]]
    rank = u.shape[0]
    assert u.shape == (rank, HIDDEN, 1, 1) and v.shape == (HIDDEN, rank, 1, 1), summary
    assert rank % 8 == 0 and rank * HIDDEN <= 4_194_304, summary  # each factor under PW002's limit
    # the reported error is the one of the factors in the file
    note = next(note for code, note in applied if code == "PW002")
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", note).group(1))
    fc2 = vgg16_model().classifier[3].weight.detach().numpy().astype(np.float64).T  # [in, out]
    product = u[:, :, 0, 0].T.astype(np.float64) @ v[:, :, 0, 0].T.astype(np.float64)
    measured = np.linalg.norm(fc2 - product) / np.linalg.norm(fc2)
    assert reported == pytest.approx(measured, rel=2e-3), summary
    assert f"rank {rank}" in note

    # the fixed file runs in onnxruntime and still gives 1000 scores
    feeds = sample_inputs(model)
    (scores,) = run_onnx(model, feeds)
    assert scores.shape == (1, CLASSES) and np.isfinite(scores).all()
    assert report["files"][0]["fix"]["written"] == str(model)
