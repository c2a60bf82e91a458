import pytest
import torch
from torch import nn

from seqexp.models.dropout import FastDropout


def test_is_a_dropout_with_the_same_p():
    d = FastDropout(0.1)
    assert isinstance(d, nn.Dropout) and d.p == 0.1


def test_eval_mode_is_identity():
    x = torch.randn(4, 5, 8)
    assert torch.equal(FastDropout(0.5).eval()(x), x)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_mask_rate_and_scale(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = FastDropout(p).train()(x)
    kept = y != 0
    levels = 1 << 16
    scale = levels / (levels - round(p * levels))
    assert torch.all(y[kept] == scale)
    rate = 1 - kept.float().mean().item()
    assert abs(rate - p) < 0.003  # 1M draws: the standard error is under 0.0005
    assert abs(y.mean().item() - 1) < 0.01  # expectation preserved


def test_every_element_position_is_dropped_independently():
    """Each 64-bit draw gives 4 lanes: every lane must be uniform (no lane always kept)."""
    torch.manual_seed(1)
    y = FastDropout(0.25).train()(torch.ones(200_000, 4))
    per_lane = (y == 0).float().mean(0)
    assert torch.all((per_lane - 0.25).abs() < 0.01), per_lane


def test_same_seed_same_mask_and_draws_from_torch_default_generator():
    x = torch.randn(3, 7, 16)
    d = FastDropout(0.2).train()
    torch.manual_seed(5)
    a = d(x)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    b = d(x)
    assert torch.equal(a, b)
    torch.manual_seed(5)
    assert not torch.equal(torch.get_rng_state(), after)  # it consumed the default generator


def test_gradient_is_the_scaled_mask():
    torch.manual_seed(2)
    x = torch.randn(6, 9, requires_grad=True)
    y = FastDropout(0.3).train()(x)
    y.sum().backward()
    mask = (y != 0).float() * (1 / (1 - round(0.3 * 65536) / 65536))
    assert torch.allclose(x.grad, mask)


def test_p_zero_and_one_and_dtype():
    x = torch.randn(5, 5)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    assert FastDropout(0.1).train()(x.bfloat16()).dtype == torch.bfloat16


def test_empty_and_non_contiguous_inputs():
    assert FastDropout(0.1).train()(torch.empty(0, 8)).shape == (0, 8)
    x = torch.randn(8, 6).t()
    y = FastDropout(0.5).train()(x)
    assert y.shape == x.shape and torch.all((y == 0) | torch.isclose(y, x * 2))
