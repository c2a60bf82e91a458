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


def _qkv(batch=3, heads=2, length=7, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=g, requires_grad=True) for _ in range(3)]


class _Module(nn.Module):  # what transformers passes as ``module``: an encoder's self-attention
    is_causal = False


def test_attention_is_softmax_attention_with_the_fast_dropout_mask():
    """softmax(QK^T / sqrt(d) + mask) V with the probabilities dropped by fast_dropout's mask (the same
    seed draws the same mask), padded keys never attended, and the gradient through that mask."""
    from seqexp.models.dropout import attention, fast_dropout

    q, k, v = _qkv()
    keep = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    keep[1, ..., 5:] = False  # the second sentence has two padded positions
    torch.manual_seed(3)
    out, weights = attention(_Module(), q, k, v, keep, dropout=0.25)
    assert weights is None and out.shape == (3, 7, 2, 8)
    torch.manual_seed(3)
    probs = torch.softmax((q @ k.transpose(-1, -2)) / 8 ** 0.5 + torch.where(keep, 0.0, float("-inf")), dim=-1)
    expected = (fast_dropout(probs, 0.25) @ v).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    g = torch.randn_like(out)
    mine = torch.autograd.grad(out, (q, k, v), g)
    theirs = torch.autograd.grad(expected, (q, k, v), g)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(mine, theirs))
    assert (mine[2][1, :, 5:] == 0).all()  # padded values get no gradient: never attended


def test_attention_without_dropout_is_transformers_sdpa_bit_for_bit():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from seqexp.models.dropout import attention

    q, k, v = _qkv(seed=1)
    keep = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    keep[0, ..., 6:] = False
    for mask in (keep, None):
        mine, _ = attention(_Module(), q, k, v, mask, dropout=0.0)
        theirs, _ = sdpa_attention_forward(_Module(), q, k, v, mask, dropout=0.0)
        assert torch.equal(mine, theirs)
