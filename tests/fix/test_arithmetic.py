"""The fix arithmetic every backend shares (pwlint.fix.head, fold, lowrank) and the typed
plans, checked with numpy against what the layers compute, independently of any format."""

from __future__ import annotations

import numpy as np
import pytest

from pwlint.errors import FixNotApplicable
from pwlint.findings import Fix
from pwlint.fix import actions
from pwlint.fix.fold import folded_mean
from pwlint.fix.head import conv_kernel, dense_terms, head_kernels, pooled_kernel
from pwlint.fix.lowrank import factorise
from pwlint.fix.plans import FactorisePlan, FoldBiasPlan, HeadPlan, flatten_order, plan_for
from pwlint.ir import Layer, ModelGraph

RNG = np.random.default_rng(7)


def valid_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """A conv whose kernel covers the whole (C, *positions) map ``x``: one value per output."""
    return np.tensordot(kernel, x, axes=x.ndim)


def flattened(x: np.ndarray, channels_last: bool) -> np.ndarray:
    """``x`` (C, *positions) flattened as a framework does: channels last moves C to the end."""
    return (np.moveaxis(x, 0, -1) if channels_last else x).reshape(-1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("positions", [(5,), (3, 4), (2, 3, 2)])
def test_conv_kernel_reproduces_the_dense_layer_on_a_random_map(channels_last, positions):
    channels, units = 3, 6
    x = RNG.standard_normal((channels, *positions))
    weight = RNG.standard_normal((channels * int(np.prod(positions)), units))
    kernel = conv_kernel(weight, channels, positions, flatten_order(len(positions), channels_last))
    assert kernel.shape == (units, channels, *positions)
    np.testing.assert_allclose(valid_conv(x, kernel), flattened(x, channels_last) @ weight, rtol=1e-12)


def test_a_channels_last_flatten_needs_the_permutation():
    """The two orders give different kernels: using the channels-first one for a
    channels-last flatten would be wrong (what a missing permutation would do)."""
    x = RNG.standard_normal((3, 4, 4))
    weight = RNG.standard_normal((48, 2))
    wrong = conv_kernel(weight, 3, (4, 4), flatten_order(2, False))
    assert not np.allclose(valid_conv(x, wrong), flattened(x, True) @ weight)


def test_conv_kernel_follows_any_flatten_order():
    """Keras' Flatten(data_format="channels_first") on a channels-last (H, W, C) map moves the
    first axis last: it reads (W, C, H)."""
    x = RNG.standard_normal((3, 4, 5))  # (C, H, W)
    weight = RNG.standard_normal((60, 2))
    kernel = conv_kernel(weight, 3, (4, 5), (2, 0, 1))
    np.testing.assert_allclose(valid_conv(x, kernel), x.transpose(2, 0, 1).reshape(-1) @ weight, rtol=1e-12)


def test_conv_kernel_is_a_view_not_a_copy():
    weight = RNG.standard_normal((48, 2)).astype(np.float32)
    assert np.shares_memory(conv_kernel(weight, 3, (4, 4), flatten_order(2, True)), weight)


def test_conv_kernel_refuses_a_dense_layer_of_another_size():
    with pytest.raises(FixNotApplicable, match="do not match the flattened map"):
        conv_kernel(np.zeros((47, 2)), 3, (4, 4), flatten_order(2, False))


@pytest.mark.parametrize("channels_last", [False, True])
def test_pooled_kernel_is_exact_on_a_spatially_constant_map(channels_last):
    channels, positions, units = 4, (3, 5), 2
    per_channel = RNG.standard_normal(channels)
    x = np.broadcast_to(per_channel[:, None, None], (channels, *positions))
    weight = RNG.standard_normal((channels * 15, units))
    (pooled,) = head_kernels([weight], channels, positions, flatten_order(2, channels_last), pool=True)
    assert pooled.shape == (units, channels, 1, 1)
    global_average = x.mean(axis=(1, 2))
    np.testing.assert_allclose(pooled[:, :, 0, 0] @ global_average, flattened(x, channels_last) @ weight, rtol=1e-12)


def test_pooled_kernel_is_not_exact_on_a_varying_map():
    """Why the pool fix is unsafe: on a map that varies over positions the outputs change."""
    x = RNG.standard_normal((4, 3, 3))
    weight = RNG.standard_normal((36, 2))
    pooled = pooled_kernel(conv_kernel(weight, 4, (3, 3), flatten_order(2, False)))
    assert not np.allclose(pooled[:, :, 0, 0] @ x.mean(axis=(1, 2)), flattened(x, False) @ weight)


def test_pooled_kernel_keeps_the_dtype_and_sums_in_float64():
    kernel = np.full((1, 1, 100, 100), 0.1, np.float32)
    pooled = pooled_kernel(kernel)
    assert pooled.dtype == np.float32
    assert pooled.item() == np.float32(np.float64(np.float32(0.1)) * 10_000)


def test_later_dense_layers_become_pointwise_convs():
    first = RNG.standard_normal((2 * 9, 5))
    second = RNG.standard_normal((5, 3))
    kernels = head_kernels([first, second], 2, (3, 3), flatten_order(2, False), pool=False)
    assert kernels[1].shape == (3, 5, 1, 1)
    hidden = RNG.standard_normal(5)
    np.testing.assert_allclose(kernels[1][:, :, 0, 0] @ hidden, hidden @ second, rtol=1e-12)


def test_gemm_alpha_and_beta_are_taken_into_the_weights():
    x = RNG.standard_normal((2, 6))
    weight, bias = RNG.standard_normal((6, 4)), RNG.standard_normal(4)
    plain_weight, plain_bias = dense_terms(weight, bias, "fc", alpha=0.5, beta=-2.0)
    np.testing.assert_allclose(x @ plain_weight + plain_bias, 0.5 * (x @ weight) + -2.0 * bias, rtol=1e-12)


def test_a_scalar_bias_is_broadcast_per_unit_and_a_wrong_one_refused():
    _, bias = dense_terms(np.zeros((6, 4)), np.array([1.5]), "fc")
    assert bias.tolist() == [1.5] * 4
    with pytest.raises(FixNotApplicable, match="the bias of 'fc' does not broadcast per unit"):
        dense_terms(np.zeros((6, 4)), np.ones(3), "fc")


def batch_norm(x, mean, var, scale, shift, eps=1e-5):
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + shift.reshape(shape)


def test_folded_mean_reproduces_conv_bias_then_batch_norm():
    conv_out = RNG.standard_normal((2, 4, 3, 3))  # a conv's output before its bias
    bias = RNG.standard_normal(4)
    mean, var = RNG.standard_normal(4), RNG.random(4) + 0.5
    scale, shift = RNG.standard_normal(4), RNG.standard_normal(4)
    before = batch_norm(conv_out + bias.reshape(1, -1, 1, 1), mean, var, scale, shift)
    folded = folded_mean(mean.astype(np.float32), bias.astype(np.float32), "conv", "bn")
    assert folded.dtype == np.float32 and folded.shape == (4,)
    np.testing.assert_allclose(batch_norm(conv_out, folded.astype(np.float64), var, scale, shift), before, rtol=1e-5,
                               atol=1e-5)


def test_folded_mean_refuses_a_bias_of_another_size():
    with pytest.raises(FixNotApplicable, match="the bias of 'conv' \\(3 values\\) does not match the running mean"):
        folded_mean(np.zeros(4), np.zeros(3), "conv", "bn")


def test_factorise_meets_its_parameter_target_and_reports_its_error():
    weight = RNG.standard_normal((40, 30))
    low = factorise(weight, FactorisePlan("fc", target_params=700))
    assert low.rank == (700 - 30) // 70
    assert low.error == pytest.approx(np.linalg.norm(weight - low.first @ low.second) / np.linalg.norm(weight))


# plans and dispatch ---------------------------------------------------------------------

HEAD = HeadPlan(flatten="flat", denses=("fc1", "fc2"), channels=4, positions=(3, 3), layout="NHWC")


def test_plans_read_like_the_dict_plans_of_earlier_versions():
    assert HEAD["denses"] == ["fc1", "fc2"] and HEAD["positions"] == [3, 3] and HEAD.get("channels") == 4
    assert HEAD.get("nothing") is None
    assert HEAD.action == "convolutionalise-head"


def test_a_dict_plan_is_converted_for_its_action():
    plan = plan_for("pool-pointwise-head", {"flatten": "flat", "denses": ["fc1"], "channels": 4,
                                            "positions": [3, 3], "layout": "NCHW"})
    assert isinstance(plan, HeadPlan) and plan.pool and plan.denses == ("fc1",)
    with pytest.raises(ValueError, match="incomplete"):
        plan_for("fold-bias-into-norm", {"conv": "c"})
    with pytest.raises(ValueError, match="takes a FoldBiasPlan"):
        plan_for("fold-bias-into-norm", HEAD)


def test_notes_are_written_once_for_every_backend():
    assert actions.head_note(HEAD) == "'fc1' replaced by a 3x3 conv, and 1 later dense layer(s) by 1x1 convs"
    pooled = HeadPlan(flatten="flat", denses=("fc1",), channels=4, positions=(3, 3), layout="NCHW", kind="pool")
    assert actions.head_note(pooled) == "'fc1' replaced by global average pooling + a 1x1 conv"
    assert actions.fold_note(FoldBiasPlan("c", "bn", "batch")) == "bias of 'c' folded into 'bn'"
    assert actions.fold_note(FoldBiasPlan("c", "in", "instance")) == "bias of 'c' dropped ('in' subtracts it)"


class Refusing:
    label = "test"

    @staticmethod
    def can_apply(plan, graph):
        return "this backend does not do heads" if isinstance(plan, HeadPlan) else None


def head_graph() -> ModelGraph:
    graph = ModelGraph("m", "test")
    for name, kind in (("flat", "flatten"), ("fc1", "dense"), ("fc2", "dense")):
        graph.add_layer(Layer(name, kind, kind))
    return graph


def test_the_backends_reason_is_what_the_fix_loop_reports():
    fix = Fix("safe", "convolutionalise", action=HEAD.action, plan=HEAD)
    with pytest.raises(FixNotApplicable, match="^this backend does not do heads$"):
        actions.accepted(fix, head_graph(), Refusing)
    with pytest.raises(FixNotApplicable, match="the test backend has no 'do-magic' action"):
        actions.accepted(Fix("safe", "magic", action="do-magic", plan=HEAD), head_graph(), Refusing)


@pytest.mark.parametrize("backend, positions, reason", [
    ("pytorch.pt2.backend:Pt2Backend", (4,),
     "the flattened map has 1 spatial dimensions; the .pt2 backend rewrites 2-D heads only"),
    ("pytorch.pt2.backend:Pt2Backend", (2, 2), None),
    ("keras.backend:KerasBackend", (2, 2, 2, 2),
     "the flattened map has 4 spatial dimensions; the Keras backend rewrites 1-D to 3-D heads only"),
    ("keras.backend:KerasBackend", (2, 2, 2), None),
    ("keras.backend:KerasBackend", (), "the feature map's height and width are dynamic"),
    ("onnx.backend:OnnxBackend", (2, 2, 2, 2), None),
])
def test_each_backend_declares_the_heads_it_rewrites(backend, positions, reason):
    import importlib

    module, _, name = backend.partition(":")
    backend = getattr(importlib.import_module(f"pwlint.formats.{module}"), name)
    plan = HeadPlan(flatten="flat", denses=("fc1",), channels=2, positions=positions, layout="NCHW")
    assert backend.can_apply(plan, head_graph()) == reason


def test_onnx_does_not_rewrite_quantized_layers():
    from pwlint.formats.onnx.backend import OnnxBackend

    graph = head_graph()
    graph.layer("fc1").attrs["quantized"] = True
    assert OnnxBackend.can_apply(HEAD, graph) == "the model is quantized: fix the float model, then quantize again"
