"""PW002's low-rank fix on Keras convolutions: a conv whose weight, read as the
``[Cin*K, Cout]`` matrix, is split by truncated SVD into a conv ``Cin -> r`` with the
original kernel size, strides, padding, dilation and data format, then a 1x1 conv
``r -> Cout`` with the bias and the activation. For a 1x1 conv that is a pointwise
bottleneck. Each written file is loaded back with Keras; the structure, the outputs and
the error are read from it and compared with figures computed here."""

from __future__ import annotations

import numpy as np
import pytest

from pwlint.errors import FixNotApplicable
from pwlint.fix.plans import FactorisePlan
from tests.conftest import codes, lint
from tests.formats.keras.fix_helpers import (
    apply_plan, configure, fix_report, kernel, load, oihw, outcomes, randomise, relative, reported_error, reports, run,
    sample, save,
)

keras = pytest.importorskip("keras")
layers = keras.layers
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def low_rank_kernel(cout: int, cin: int, window: tuple[int, ...], rank: int, seed: int = 0) -> np.ndarray:
    """A Keras ``(*K, Cin, Cout)`` kernel whose ``[Cin*K, Cout]`` matrix (rows in (Cin, *K)
    order) has exactly ``rank``."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((cin * int(np.prod(window)), rank)) @ rng.standard_normal((rank, cout)) * 0.1
    shared = matrix.T.reshape(cout, cin, *window)
    return np.moveaxis(np.moveaxis(shared, 0, -1), 0, -2).astype("float32")  # (*K, Cin, Cout)


def set_kernel(model, name: str, value: np.ndarray) -> None:
    layer = model.get_layer(name)
    weights = layer.get_weights()
    weights[0] = value
    layer.set_weights(weights)


def conv_model(conv, input_shape, sequential: bool, name: str = "m"):
    """Input -> ``conv`` -> ReLU, Sequential or Functional."""
    if sequential:
        return keras.Sequential([keras.Input(input_shape, name="image"), conv, layers.ReLU(name="relu")], name=name)
    inputs = keras.Input(input_shape, name="image")
    return keras.Model(inputs, layers.ReLU(name="relu")(conv(inputs)), name=name)


def geometry(layer) -> tuple:
    return (tuple(layer.kernel_size), tuple(layer.strides), layer.padding, tuple(layer.dilation_rate), layer.data_format)


#: (id, conv layer, input shape, file suffix, Sequential?)
CONVS = [
    ("pointwise-functional", lambda: layers.Conv2D(40, 1, activation="relu", name="conv"), (5, 6, 48), ".keras", False),
    ("pointwise-sequential-h5", lambda: layers.Conv2D(40, 1, name="conv"), (5, 6, 48), ".h5", True),
    ("pointwise-channels-first", lambda: layers.Conv2D(40, 1, data_format="channels_first", name="conv"),
     (48, 5, 6), ".keras", False),
    ("3x3-stride2-same", lambda: layers.Conv2D(24, 3, strides=2, padding="same", activation="relu", name="conv"),
     (9, 9, 16), ".keras", True),
    ("3x3-dilated-channels-first", lambda: layers.Conv2D(24, 3, dilation_rate=2, data_format="channels_first",
                                                         name="conv"), (16, 9, 9), ".h5", False),
    ("conv1d-causal", lambda: layers.Conv1D(24, 5, padding="causal", name="conv"), (12, 16), ".keras", False),
    ("conv3d", lambda: layers.Conv3D(24, 3, padding="same", name="conv"), (5, 5, 5, 8), ".keras", True),
]


@pytest.mark.parametrize("make, input_shape, suffix, sequential", [c[1:] for c in CONVS], ids=[c[0] for c in CONVS])
def test_an_exactly_low_rank_conv_is_split_into_its_geometry_then_pointwise(tmp_path, make, input_shape, suffix,
                                                                            sequential):
    """Rank 6 kept exactly: the two convs compute what the one did (so the geometry and the
    kernel layouts are right), the first keeps the conv's placement, the second is 1x1."""
    model = randomise(conv_model(make(), input_shape, sequential))
    conv = model.get_layer("conv")
    cin, cout, window = conv.kernel.shape[-2], conv.filters, tuple(conv.kernel_size)
    set_kernel(model, "conv", low_rank_kernel(cout, cin, window, rank=6))
    path = save(model, tmp_path / f"model{suffix}")
    x = sample(model)
    expected = run(model, x)[0]

    note = apply_plan(path, "factorise-dense", FactorisePlan("conv", energy=0.9999, multiple_of=1))

    fixed = load(path)
    assert "rank 6" in note
    convs = [layer for layer in fixed.layers if isinstance(layer, layers.Layer) and "Conv" in type(layer).__name__]
    assert [layer.name for layer in convs] == ["conv_u", "conv_v"]
    first, second = convs
    assert type(first) is type(conv) is type(second)
    assert geometry(first) == geometry(conv)
    assert tuple(second.kernel_size) == (1,) * len(window) and tuple(second.strides) == (1,) * len(window)
    assert second.data_format == conv.data_format
    assert (first.filters, first.use_bias, first.activation.__name__) == (6, False, "linear")
    assert (second.filters, second.use_bias) == (cout, True)
    assert second.activation.__name__ == conv.activation.__name__
    assert tuple(first.kernel.shape) == (*window, cin, 6) and tuple(second.kernel.shape) == (*(1,) * len(window), 6, cout)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(second.bias), keras.ops.convert_to_numpy(conv.bias))
    got = run(fixed, x)[0]
    assert got.shape == expected.shape
    assert relative(got, expected) < 1e-5
    assert reported_error(note) < 1e-5


def pw_functional_with_two_readers():
    """A 1x1 conv that is a model output and is also read by pooling + Dense (a second output)."""
    inputs = keras.Input((4, 4, 64), name="image")
    features = layers.Conv2D(48, 1, name="conv")(inputs)
    pooled = layers.GlobalAveragePooling2D(name="gap")(features)
    logits = layers.Dense(5, name="fc")(pooled)
    return keras.Model(inputs, [features, logits], name="two_readers")


def test_the_readers_and_the_model_output_of_a_factorised_conv_read_the_second_factor(tmp_path):
    model = randomise(pw_functional_with_two_readers())
    set_kernel(model, "conv", low_rank_kernel(48, 64, (1, 1), rank=8, seed=3))
    path = save(model, tmp_path / "model.keras")
    x = sample(model)
    expected = run(model, x)

    apply_plan(path, "factorise-dense", FactorisePlan("conv", energy=0.9999))

    fixed = load(path)
    assert fixed.get_layer("gap").input.name == fixed.get_layer("conv_v").output.name
    assert fixed.outputs[0].name == fixed.get_layer("conv_v").output.name
    got = run(fixed, x)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert relative(g, e) < 1e-5


def test_the_rank_keeps_the_energy_is_rounded_to_the_multiple_and_the_error_is_the_files(tmp_path):
    """A random 3x3 conv at 70% energy: the rank is the smallest keeping it, rounded up to
    8; the error in the note is the one of the two kernels in the file (measured here),
    and the model's outputs move by about that much, not more."""
    model = randomise(conv_model(layers.Conv2D(48, 3, padding="same", name="conv"), (8, 8, 32), False), seed=1)
    path = save(model, tmp_path / "model.keras")
    weight = kernel(model, "conv")
    matrix = oihw(weight).reshape(48, -1).T  # [Cin*K, Cout], rows in (Cin, kh, kw) order
    rows, cols = matrix.shape
    s = np.linalg.svd(matrix, compute_uv=False)
    rank = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.7 - 1e-12) + 1)
    rounded = -(-rank // 8) * 8
    assert rounded != rank and rounded * (rows + cols) < rows * cols  # the rounding is what is tested

    note = apply_plan(path, "factorise-dense", FactorisePlan("conv", energy=0.7, multiple_of=8))

    fixed = load(path)
    first, second = kernel(fixed, "conv_u"), kernel(fixed, "conv_v")
    assert first.shape == (3, 3, 32, rounded) and second.shape == (1, 1, rounded, 48)
    product = oihw(first).reshape(rounded, -1).T @ oihw(second).reshape(48, rounded).T
    measured = relative(product, matrix)
    assert reports(note, measured)
    expected_error = np.sqrt(np.sum(s[rounded:] ** 2) / np.sum(s**2))
    assert measured == pytest.approx(expected_error, rel=1e-3)
    assert f"{rows * cols} -> {rounded * (rows + cols)} weights" in note
    x = sample(model)
    output_error = relative(run(fixed, x)[0], run(model, x)[0])
    assert 0 < output_error < 2 * measured


def test_a_grouped_conv_is_refused_and_the_file_is_untouched(tmp_path):
    model = randomise(conv_model(layers.Conv2D(32, 3, groups=4, name="conv"), (6, 6, 32), False))
    path = save(model, tmp_path / "model.keras")
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="grouped"):
        apply_plan(path, "factorise-dense", FactorisePlan("conv"))
    assert path.read_bytes() == before


def test_a_conv_that_needs_its_full_rank_is_refused_at_break_even(tmp_path):
    model = randomise(conv_model(layers.Conv2D(16, 1, name="conv"), (4, 4, 16), True))
    path = save(model, tmp_path / "model.keras")
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="no smaller than the 16x16 layer"):
        apply_plan(path, "factorise-dense", FactorisePlan("conv", energy=0.999))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


# through the command line ------------------------------------------------------------------

def pooled_pointwise():
    """Global pooling (kept as a 1x1 map), then a 128 -> 96 1x1 conv: fully connected, PW002's."""
    inputs = keras.Input((6, 6, 128), name="image")
    x = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(inputs)
    x = layers.Conv2D(96, 1, activation="relu", name="conv")(x)
    return keras.Model(inputs, layers.Flatten(name="flat")(x), name="pooled_pointwise")


def test_pw002_factorises_a_fully_connected_pointwise_conv_with_fix_unsafe_fixes(tmp_path):
    model = randomise(pooled_pointwise())
    set_kernel(model, "conv", low_rank_kernel(96, 128, (1, 1), rank=5, seed=7))
    path = save(model, tmp_path / "model.keras")
    configure(tmp_path, "PW002", **{"max-params": 5000, "svd-energy": 0.9999})
    assert "PW002" in codes(lint(path))
    x = sample(model)

    report = fix_report(path, "--unsafe-fixes", "--select", "PW002")

    (outcome,) = outcomes(report, "PW002")
    assert "'conv' factorised at rank 8" in outcome["note"]  # 5, rounded up to the default multiple of 8
    fixed = load(path)
    assert [tuple(kernel(fixed, name).shape) for name in ("conv_u", "conv_v")] == [(1, 1, 128, 8), (1, 1, 8, 96)]
    assert relative(run(fixed, x)[0], run(model, x)[0]) < 1e-5
    assert "PW002" not in codes(lint(path))
