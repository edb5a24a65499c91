"""A VGG16-style Keras model through ``pwlint --fix --unsafe-fixes``: the real VGG16 head
(a 7x7x512 map, Flatten, Dense 4096, Dense 4096, Dense 1000: 123.6M parameters) on a
narrowed trunk that keeps a 512 -> 512 3x3 conv. The head fix turns fc2 into a 4096 ->
4096 1x1 conv (16.8M parameters); PW002 must now factorise it into a pointwise
bottleneck, so the run ends with no PW001 and no PW002 finding. The fixed file is loaded
and run with Keras; the parameter counts are Keras' own."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.conftest import codes, lint, mentions, run_inprocess
from tests.formats.keras.fix_helpers import load, run, sample, save

keras = pytest.importorskip("keras")
layers = keras.layers
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def vgg16_style():
    """VGG16's block 5 width and head on a two-block trunk (14x14 input, pooled to 7x7)."""
    return keras.Sequential([
        keras.Input((14, 14, 3), name="image"),
        layers.Conv2D(64, 3, padding="same", activation="relu", name="block1_conv1"),
        layers.MaxPooling2D(name="block1_pool"),
        layers.Conv2D(512, 3, padding="same", activation="relu", name="block5_conv2"),
        layers.Conv2D(512, 3, padding="same", activation="relu", name="block5_conv3"),
        layers.Flatten(name="flatten"),
        layers.Dense(4096, activation="relu", name="fc1"),
        layers.Dropout(0.5, name="drop1"),
        layers.Dense(4096, activation="relu", name="fc2"),
        layers.Dropout(0.5, name="drop2"),
        layers.Dense(1000, activation="softmax", name="predictions"),
    ], name="vgg16")


def trained_like(model):
    """fc2 with the decaying spectrum trained layers have (a random matrix needs nearly its
    full rank for 90% of its energy, which no factorisation beats): a rank-256 product
    plus small noise."""
    rng = np.random.default_rng(0)
    layer = model.get_layer("fc2")
    left = rng.standard_normal((4096, 256), dtype=np.float32)
    right = rng.standard_normal((256, 4096), dtype=np.float32)
    kernel = left @ right / 4096 + rng.standard_normal((4096, 4096), dtype=np.float32) * 1e-3
    layer.set_weights([kernel.astype("float32"), layer.get_weights()[1]])
    return model


@pytest.fixture(scope="module")
def fixed_vgg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg16")
    model = trained_like(vgg16_style())
    source = save(model, folder / "vgg16.keras")
    x = sample(model, batch=1)
    expected = run(model, x)[0]
    params_before = model.count_params()
    del model
    target = folder / "fixed.keras"
    result = run_inprocess("check", str(source), "--fix", "--unsafe-fixes", "-o", str(target))
    return source, target, result, x, expected, params_before


def test_the_fix_ends_with_no_head_or_oversized_dense_finding(fixed_vgg):
    source, target, result, *_ = fixed_vgg
    assert result.code in (0, 1), result.err
    assert {"PW001", "PW002"} <= set(codes(lint(source)))
    remaining = codes(lint(target))
    assert "PW001" not in remaining and "PW002" not in remaining, remaining
    # fc2, now a 1x1 conv, was factorised into two 1x1 convs (a pointwise bottleneck)
    assert re.search(r"applied: PW002 \(unsafe\) fc2: 'fc2' factorised at rank \d+", result.out), result.out


def test_the_fixed_model_runs_and_the_parameter_counts_are_printed(fixed_vgg):
    _, target, result, x, expected, params_before = fixed_vgg
    fixed = load(target)
    got = run(fixed, x)[0]
    assert got.shape == expected.shape == (1, 1000)
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)  # still a softmax over 1000 classes
    first, second = fixed.get_layer("fc2_u"), fixed.get_layer("fc2_v")
    assert tuple(first.kernel_size) == tuple(second.kernel_size) == (1, 1)
    assert first.kernel.shape[-2] == 4096 and second.kernel.shape[-1] == 4096
    assert first.filters % 8 == 0 and first.filters * 2 * 4096 < 4096 * 4096
    params_after = fixed.count_params()
    assert params_after < params_before / 4
    (line,) = [line for line in result.out.splitlines() if line.strip().startswith("parameters ")]
    before, after = line.split(",")[0].split("->")
    assert mentions(before, params_before) and mentions(after, params_after), line
