"""PW005's rewrites of a Keras KxK conv from pointwise convs: Tucker-2 (1x1 ``Cin -> R1``,
KxK core ``R1 -> R2`` with the conv's strides, padding, dilation and data format, 1x1
``R2 -> Cout`` with the bias and activation) and separable (depthwise KxK, then 1x1
``Cin -> Cout``). Each written file is loaded back with Keras; kernels, outputs and
errors are measured here."""

from __future__ import annotations

import numpy as np
import pytest

from pwlint.errors import FixNotApplicable
from pwlint.fix.plans import ConvFactorisePlan
from tests.formats.keras.fix_helpers import (
    apply_plan, configure, fix_report, kernel, load, oihw, outcomes, randomise, relative, reported_error, reports, run,
    sample, save,
)

keras = pytest.importorskip("keras")
layers = keras.layers
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def to_keras(shared: np.ndarray) -> np.ndarray:
    """``(Cout, Cin, *K)`` as Keras' ``(*K, Cin, Cout)``."""
    return np.moveaxis(np.moveaxis(shared, 0, -1), 0, -2).astype("float32")


def one_conv(conv, input_shape, sequential: bool = False):
    if sequential:
        return keras.Sequential([keras.Input(input_shape, name="image"), conv, layers.ReLU(name="relu")])
    inputs = keras.Input(input_shape, name="image")
    return keras.Model(inputs, layers.ReLU(name="relu")(conv(inputs)))


def with_kernel(model, shared: np.ndarray):
    layer = model.get_layer("conv")
    layer.set_weights([to_keras(shared), *layer.get_weights()[1:]])
    return model


def written_tucker2(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (R1, Cin), (R2, R1, *K), (Cout, R2) factors stored in the file."""
    first, core, last = (oihw(kernel(model, f"conv_{part}")) for part in ("in", "core", "out"))
    return first.reshape(first.shape[:2]), core, last.reshape(last.shape[:2])


def tucker2_product(first, core, last) -> np.ndarray:
    return np.einsum("or,rs...,si->oi...", last, core, first)


def geometry(layer) -> tuple:
    return (tuple(layer.kernel_size), tuple(layer.strides), layer.padding, tuple(layer.dilation_rate), layer.data_format)


#: (id, conv, input shape, Sequential?)
GEOMETRIES = [
    ("2d-stride2-same", lambda: layers.Conv2D(20, 3, strides=2, padding="same", activation="relu", name="conv"),
     (9, 9, 12), True),
    ("2d-dilated-channels-first", lambda: layers.Conv2D(20, 3, dilation_rate=2, data_format="channels_first",
                                                        name="conv"), (12, 9, 9), False),
    ("1d", lambda: layers.Conv1D(20, 5, padding="same", name="conv"), (16, 12), False),
    ("3d", lambda: layers.Conv3D(20, 3, name="conv"), (5, 6, 5, 12), True),
]
GEOMETRY_ARGS = dict(argnames="make, input_shape, sequential", argvalues=[g[1:] for g in GEOMETRIES],
                     ids=[g[0] for g in GEOMETRIES])


# Tucker-2 -------------------------------------------------------------------------------------

@pytest.mark.parametrize(**GEOMETRY_ARGS)
def test_an_exact_tucker2_kernel_is_rewritten_without_changing_the_outputs(tmp_path, make, input_shape, sequential):
    conv = make()
    model = randomise(one_conv(conv, input_shape, sequential))
    rng = np.random.default_rng(4)
    window = tuple(conv.kernel_size)
    shared = tucker2_product(rng.standard_normal((4, 12)), rng.standard_normal((6, 4, *window)),
                             rng.standard_normal((20, 6))) * 0.1
    with_kernel(model, shared)
    path = save(model, tmp_path / "model.keras")
    x = sample(model)

    note = apply_plan(path, "tucker2-conv", ConvFactorisePlan("conv", "tucker2", energy=0.9999, multiple_of=1))

    fixed = load(path)
    names = [layer.name for layer in fixed.layers if "Conv" in type(layer).__name__]
    assert names == ["conv_in", "conv_core", "conv_out"]
    pointwise_in, core, pointwise_out = (fixed.get_layer(name) for name in names)
    assert all(type(layer) is type(conv) for layer in (pointwise_in, core, pointwise_out))
    one = (1,) * len(window)
    assert tuple(pointwise_in.kernel_size) == one and tuple(pointwise_out.kernel_size) == one
    assert geometry(core) == geometry(conv)
    assert (pointwise_in.filters, core.filters, pointwise_out.filters) == (4, 6, 20)
    assert not pointwise_in.use_bias and not core.use_bias and pointwise_out.use_bias
    assert pointwise_out.activation.__name__ == conv.activation.__name__
    assert "pointwise 12->4" in note and "4->6" in note and "pointwise 6->20" in note
    assert "fine-tune" in note
    assert relative(run(fixed, x)[0], run(model, x)[0]) < 1e-5
    assert reported_error(note) < 1e-5


def graded_kernel(cout: int, cin: int, window: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A kernel whose channel unfoldings have slowly decaying singular values (as trained
    kernels do), so that the energy picks ranks well below break-even."""
    rng = np.random.default_rng(seed)
    out_basis, _ = np.linalg.qr(rng.standard_normal((cout, cout)))
    in_basis, _ = np.linalg.qr(rng.standard_normal((cin, cin)))
    core = rng.standard_normal((cout, cin, *window))
    core *= (0.8 ** np.arange(cout))[:, None, None, None] * (0.8 ** np.arange(cin))[None, :, None, None]
    return np.einsum("or,rs...,is->oi...", out_basis, core, in_basis)


def test_tucker2_error_falls_as_the_energy_and_the_ranks_grow(tmp_path):
    """More energy, higher ranks, a smaller kernel error (the one in the note, measured
    here from the three stored kernels, within HOSVD's bound) and a smaller output error."""
    shared = graded_kernel(48, 32, (3, 3))
    model = with_kernel(randomise(one_conv(layers.Conv2D(48, 3, padding="same", name="conv"), (8, 8, 32))), shared)
    original = save(model, tmp_path / "original.keras")
    x = sample(model)
    expected = run(model, x)[0]
    results, energies = [], (0.5, 0.8, 0.95)
    for energy in energies:
        path = tmp_path / f"model-{energy}.keras"
        path.write_bytes(original.read_bytes())
        note = apply_plan(path, "tucker2-conv", ConvFactorisePlan("conv", "tucker2", energy=energy, multiple_of=1))
        fixed = load(path)
        first, core, last = written_tucker2(fixed)
        measured = relative(tucker2_product(first, core, last), shared)
        assert reports(note, measured)
        results.append((first.shape[0] + last.shape[1], measured, relative(run(fixed, x)[0], expected)))
    ranks, kernel_errors, output_errors = zip(*results)
    assert list(ranks) == sorted(set(ranks))
    assert list(kernel_errors) == sorted(kernel_errors, reverse=True) and len(set(kernel_errors)) == 3
    assert list(output_errors) == sorted(output_errors, reverse=True)
    # HOSVD's bound: each truncated unfolding loses at most 1 - energy of the kernel's energy
    assert all(error <= np.sqrt(2 * (1 - energy)) for error, energy in zip(kernel_errors, energies))


def test_tucker2_refuses_at_break_even_and_leaves_the_file(tmp_path):
    """A random (full-rank) kernel at 99.9% energy needs ranks whose three layers cost more."""
    model = randomise(one_conv(layers.Conv2D(16, 3, name="conv"), (6, 6, 16)))
    path = save(model, tmp_path / "model.keras")
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="no smaller than the 16x16x3x3 conv"):
        apply_plan(path, "tucker2-conv", ConvFactorisePlan("conv", "tucker2", energy=0.999))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


# separable ------------------------------------------------------------------------------------

@pytest.mark.parametrize(**GEOMETRY_ARGS)
def test_an_exactly_separable_kernel_is_rewritten_without_changing_the_outputs(tmp_path, make, input_shape,
                                                                               sequential):
    conv = make()
    model = randomise(one_conv(conv, input_shape, sequential))
    rng = np.random.default_rng(5)
    window = tuple(conv.kernel_size)
    pointwise, depthwise = rng.standard_normal((20, 12)), rng.standard_normal((12, *window))
    with_kernel(model, np.einsum("oi,i...->oi...", pointwise, depthwise) * 0.2)
    path = save(model, tmp_path / "model.h5")
    x = sample(model)

    note = apply_plan(path, "separable-conv", ConvFactorisePlan("conv", "separable"))

    fixed = load(path)
    names = [layer.name for layer in fixed.layers if "Conv" in type(layer).__name__]
    assert names == ["conv_dw", "conv_pw"]
    spatial, pw = fixed.get_layer("conv_dw"), fixed.get_layer("conv_pw")
    if len(window) < 3:
        assert type(spatial).__name__ == f"DepthwiseConv{len(window)}D" and spatial.depth_multiplier == 1
    else:  # Keras has no DepthwiseConv3D: one group per channel
        assert type(spatial).__name__ == "Conv3D" and spatial.groups == spatial.filters == 12
    assert geometry(spatial) == geometry(conv) and not spatial.use_bias
    assert type(pw) is type(conv) and tuple(pw.kernel_size) == (1,) * len(window) and pw.filters == 20
    assert pw.use_bias and pw.activation.__name__ == conv.activation.__name__
    assert f"depthwise {'x'.join(map(str, window))} + pointwise 12->20" in note
    assert relative(run(fixed, x)[0], run(model, x)[0]) < 1e-5
    assert reported_error(note) < 1e-5


def test_separable_reports_the_error_of_the_stored_kernels_which_is_the_best_rank_one_per_channel(tmp_path):
    model = randomise(one_conv(layers.Conv2D(24, 3, padding="same", name="conv"), (7, 7, 10)), seed=2)
    path = save(model, tmp_path / "model.keras")
    shared = oihw(kernel(model, "conv"))

    note = apply_plan(path, "separable-conv", ConvFactorisePlan("conv", "separable"))

    fixed = load(path)
    depthwise = np.moveaxis(kernel(fixed, "conv_dw")[..., 0], -1, 0)  # (*K, Cin, 1) -> (Cin, *K)
    pointwise = kernel(fixed, "conv_pw")[0, 0].T  # (Cout, Cin)
    measured = relative(np.einsum("oi,i...->oi...", pointwise, depthwise), shared)
    assert reports(note, measured)
    # the best a depthwise + pointwise pair can do: each input channel's Cout x K*K slice at rank 1
    left = sum(np.sum(s[1:] ** 2) for s in (np.linalg.svd(shared[:, i].reshape(24, -1), compute_uv=False)
                                             for i in range(10)))
    assert measured == pytest.approx(np.sqrt(left / np.sum(shared**2)), rel=1e-3)
    assert f"{24 * 10 * 9} -> {10 * 9 + 24 * 10} weights" in note


def test_separable_refuses_a_conv_it_would_not_shrink(tmp_path):
    """One output channel: depthwise (Cin*9) + pointwise (Cin) is more than the conv's Cin*9."""
    model = randomise(one_conv(layers.Conv2D(1, 3, name="conv"), (6, 6, 4)))
    path = save(model, tmp_path / "model.keras")
    before = path.read_bytes()
    with pytest.raises(FixNotApplicable, match="no smaller"):
        apply_plan(path, "separable-conv", ConvFactorisePlan("conv", "separable"))
    assert path.read_bytes() == before


# through the command line ------------------------------------------------------------------

def test_pw005_separable_fix_keeps_an_exactly_separable_convs_outputs(tmp_path):
    model = randomise(one_conv(layers.Conv2D(48, 3, padding="same", name="conv"), (8, 8, 32)))
    rng = np.random.default_rng(8)
    with_kernel(model, np.einsum("oi,i...->oi...", rng.standard_normal((48, 32)), rng.standard_normal((32, 3, 3))) * .1)
    path = save(model, tmp_path / "model.keras")
    configure(tmp_path, "PW005", **{"max-params": 1000, "method": '"separable"'})
    x = sample(model)

    report = fix_report(path, "--unsafe-fixes", "--select", "PW005")

    (outcome,) = outcomes(report, "PW005")
    assert "depthwise 3x3 + pointwise 32->48" in outcome["note"] and "fine-tune" in outcome["note"]
    fixed = load(path)
    assert type(fixed.get_layer("conv_dw")).__name__ == "DepthwiseConv2D"
    assert relative(run(fixed, x)[0], run(model, x)[0]) < 1e-5
    assert reported_error(outcome["note"]) < 1e-5


def test_pw005_tucker2_at_break_even_is_not_applied_and_the_file_is_untouched(tmp_path):
    model = randomise(one_conv(layers.Conv2D(16, 3, name="conv"), (6, 6, 16)))
    path = save(model, tmp_path / "model.keras")
    configure(tmp_path, "PW005", **{"max-params": 1000, "energy": 0.999})
    before = path.read_bytes()

    report = fix_report(path, "--unsafe-fixes", "--select", "PW005")

    (outcome,) = outcomes(report, "PW005", "not_applied")
    assert "no smaller than the 16x16x3x3 conv" in outcome["note"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "pyproject.toml"]
