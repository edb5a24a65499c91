"""The shared linear-chain merge maths (pwlint/fix/merge.py) every backend uses for PW006:
the merged layer computes what the two did (through an eval BatchNorm too), checked by
running both with torch; and the rule's parameter count agrees with the maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pwlint.fix import merge
from pwlint.ir import Layer
from pwlint_rules.linear_chain import Chain, merged_params

EPS = 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _norm(channels, rng):
    return (rng.standard_normal(channels), rng.standard_normal(channels), rng.standard_normal(channels),
            rng.uniform(0.5, 2.0, channels))


def test_norm_affine_is_batchnorm_in_eval_form():
    rng = _rng()
    gamma, beta, mean, var = _norm(8, rng)
    x = rng.standard_normal((4, 8))
    scale, shift = merge.norm_affine(gamma, beta, mean, var, EPS)
    expected = F.batch_norm(torch.tensor(x), torch.tensor(mean), torch.tensor(var), torch.tensor(gamma),
                            torch.tensor(beta), training=False, eps=EPS).numpy()
    np.testing.assert_allclose(x * scale + shift, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias1, bias2, norm", [(True, True, False), (False, True, True), (True, False, True), (False, False, False)])
def test_dense_then_dense(bias1, bias2, norm):
    rng = _rng(1)
    w1, w2 = rng.standard_normal((32, 16)), rng.standard_normal((8, 32))  # (out, in)
    b1 = rng.standard_normal(32) if bias1 else None
    b2 = rng.standard_normal(8) if bias2 else None
    x = torch.tensor(rng.standard_normal((5, 16)))
    h = F.linear(x, torch.tensor(w1), None if b1 is None else torch.tensor(b1))
    affine = None
    if norm:
        gamma, beta, mean, var = _norm(32, rng)
        h = F.batch_norm(h, torch.tensor(mean), torch.tensor(var), torch.tensor(gamma), torch.tensor(beta),
                         training=False, eps=EPS)
        affine = merge.norm_affine(gamma, beta, mean, var, EPS)
    expected = F.linear(h, torch.tensor(w2), None if b2 is None else torch.tensor(b2)).numpy()
    weight, bias = merge.merge_linear(w1, b1, w2, b2, affine)
    assert weight.shape == (8, 16) and bias.shape == (8,)
    np.testing.assert_allclose(x.numpy() @ weight.T + bias, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_kxk_conv_then_pointwise_conv_through_batchnorm(stride, padding, dilation):
    rng = _rng(2)
    w1, b1 = rng.standard_normal((24, 6, 3, 3)), rng.standard_normal(24)
    w2, b2 = rng.standard_normal((10, 24, 1, 1)), rng.standard_normal(10)
    gamma, beta, mean, var = _norm(24, rng)
    x = torch.tensor(rng.standard_normal((2, 6, 9, 9)))
    h = F.conv2d(x, torch.tensor(w1), torch.tensor(b1), stride, padding, dilation)
    h = F.batch_norm(h, torch.tensor(mean), torch.tensor(var), torch.tensor(gamma), torch.tensor(beta),
                     training=False, eps=EPS)
    expected = F.conv2d(h, torch.tensor(w2), torch.tensor(b2))
    weight, bias = merge.merge_linear(w1, b1, w2, b2, merge.norm_affine(gamma, beta, mean, var, EPS))
    assert weight.shape == (10, 6, 3, 3)
    merged = F.conv2d(x, torch.tensor(weight), torch.tensor(bias), stride, padding, dilation)
    np.testing.assert_allclose(merged.numpy(), expected.numpy(), rtol=1e-9, atol=1e-9)


def test_pointwise_conv_then_dense_on_a_one_by_one_map():
    """A 1x1 conv on a 1x1 map, flattened, then a dense layer (a convolutionalised head)."""
    rng = _rng(3)
    w1, w2, b2 = rng.standard_normal((12, 7, 1, 1)), rng.standard_normal((5, 12)), rng.standard_normal(5)
    x = torch.tensor(rng.standard_normal((3, 7, 1, 1)))
    expected = F.linear(torch.flatten(F.conv2d(x, torch.tensor(w1)), 1), torch.tensor(w2), torch.tensor(b2))
    weight, bias = merge.merge_linear(w1, None, w2, b2)
    merged = torch.flatten(F.conv2d(x, torch.tensor(weight), torch.tensor(bias)), 1)
    np.testing.assert_allclose(merged.numpy(), expected.numpy(), rtol=1e-10, atol=1e-10)


def _layer(name, kind, cin, cout, kernel=None):
    attrs = ({"in_features": cin, "out_features": cout} if kind == "dense"
             else {"in_channels": cin, "out_channels": cout, "kernel": kernel, "groups": 1})
    return Layer(name=name, kind=kind, op=kind, attrs=attrs)


@pytest.mark.parametrize("first, second", [
    (_layer("a", "dense", 64, 128), _layer("b", "dense", 128, 32)),
    (_layer("a", "conv", 16, 64, (3, 3)), _layer("b", "conv", 64, 8, (1, 1))),
    (_layer("a", "conv", 16, 64, (1, 1)), _layer("b", "conv", 64, 8, (1, 1))),
])
def test_rule_counts_the_merged_layer_as_the_maths_writes_it(first, second):
    """PW006 counts parameters without numpy (linting imports none); the shared maths
    agrees, and so does the size of the weight and bias merge_linear returns."""
    kernel = first.attrs.get("kernel") or ()
    first_shape = (first.attrs.get("out_features") or first.attrs["out_channels"],
                   first.attrs.get("in_features") or first.attrs["in_channels"], *kernel)
    out = second.attrs.get("out_features") or second.attrs["out_channels"]
    expected = merge.merged_params(first_shape, out)
    assert merged_params(Chain(first, [], second)) == expected
    weight, bias = merge.merge_linear(np.ones(first_shape), None, np.ones((out, first_shape[0])), None)
    assert weight.size + bias.size == expected
