"""The CRF against brute-force enumeration of every tag sequence."""

from __future__ import annotations

import itertools

import pytest
import torch

from seqexp.models.crf import CRF


def _random_crf(num_tags: int, seed: int) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(num_tags)
    with torch.no_grad():  # larger than the init so that transitions matter
        crf.start_transitions.normal_()
        crf.end_transitions.normal_()
        crf.transitions.normal_()
    return crf


def _batch(lengths: list[int], num_tags: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    emissions = torch.randn(len(lengths), width, num_tags, generator=g)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    tags = torch.randint(num_tags, (len(lengths), width), generator=g).masked_fill(~mask, -100)
    return emissions, tags, mask


def _score(crf: CRF, em: torch.Tensor, seq: tuple[int, ...]) -> float:
    """Score of one tag sequence for one sentence, straight from the definition."""
    s = crf.start_transitions[seq[0]] + em[0, seq[0]]
    for t in range(1, len(seq)):
        s = s + crf.transitions[seq[t - 1], seq[t]] + em[t, seq[t]]
    return float(s + crf.end_transitions[seq[-1]])


@torch.no_grad()
def _all_scores(crf: CRF, em: torch.Tensor, n: int) -> dict[tuple[int, ...], float]:
    return {seq: _score(crf, em, seq) for seq in itertools.product(range(crf.num_tags), repeat=n)}


CASES = [(3, [1, 5, 3, 2], 0), (4, [4, 1, 5], 1), (3, [2, 2], 2), (4, [1], 3)]


@pytest.mark.parametrize(("num_tags", "lengths", "seed"), CASES)
def test_log_partition_nll_and_viterbi_match_brute_force(num_tags, lengths, seed):
    crf = _random_crf(num_tags, seed)
    emissions, tags, mask = _batch(lengths, num_tags, seed)
    with torch.no_grad():
        log_z = crf.log_partition(emissions, mask)
        nll = crf.neg_log_likelihood(emissions, tags, mask)
        best = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        scores = _all_scores(crf, emissions[b], n)
        brute_z = torch.logsumexp(torch.tensor(list(scores.values()), dtype=torch.float64), 0).item()
        assert log_z[b].item() == pytest.approx(brute_z, abs=1e-4)
        gold = tuple(tags[b, :n].tolist())
        assert nll[b].item() == pytest.approx(-(scores[gold] - brute_z), abs=1e-4)
        argmax = max(scores, key=scores.get)
        assert tuple(best[b, :n].tolist()) == argmax
        assert best[b, n:].eq(0).all(), "padding must decode to 0"


def test_padding_does_not_change_results():
    crf = _random_crf(3, 7)
    emissions, tags, mask = _batch([3, 2], 3, 7)
    wide_em = torch.cat([emissions, torch.randn(2, 4, 3) * 50], dim=1)  # junk in the padding
    wide_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    wide_tags = torch.cat([tags, torch.full((2, 4), -100)], dim=1)
    with torch.no_grad():
        assert torch.allclose(crf.log_partition(emissions, mask), crf.log_partition(wide_em, wide_mask))
        assert torch.allclose(
            crf.neg_log_likelihood(emissions, tags, mask),
            crf.neg_log_likelihood(wide_em, wide_tags, wide_mask),
        )
        assert torch.equal(crf.decode(emissions, mask), crf.decode(wide_em, wide_mask)[:, :3])


def test_gradients_are_finite_and_reach_every_parameter():
    crf = _random_crf(4, 11)
    emissions, tags, mask = _batch([5, 1, 3], 4, 11)
    emissions.requires_grad_(True)
    tags[0, 2] = -100  # an unknown gold label inside a sentence
    crf.neg_log_likelihood(emissions, tags, mask).mean().backward()
    for name, param in [("emissions", emissions), *crf.named_parameters()]:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert emissions.grad[~mask].abs().sum() == 0, "padding must get no gradient"


def test_unknown_gold_labels_are_marginalised():
    """A -100 at a real word: the numerator sums over every tag there."""
    num_tags = 3
    crf = _random_crf(num_tags, 5)
    emissions, tags, mask = _batch([4, 3, 2], num_tags, 5)
    tags[0, 1] = -100
    tags[0, 3] = -100
    tags[1, :3] = -100  # every label unknown: the NLL is 0
    with torch.no_grad():
        nll = crf.neg_log_likelihood(emissions, tags, mask)
    for b, n in enumerate([4, 3, 2]):
        scores = _all_scores(crf, emissions[b], n)
        gold = tags[b, :n].tolist()
        agree = [s for seq, s in scores.items() if all(g in (-100, y) for g, y in zip(gold, seq))]
        logsumexp = lambda xs: torch.logsumexp(torch.tensor(xs, dtype=torch.float64), 0).item()  # noqa: E731
        expected = logsumexp(list(scores.values())) - logsumexp(agree)
        assert nll[b].item() == pytest.approx(expected, abs=1e-4)
    assert nll[1].item() == pytest.approx(0.0, abs=1e-5)


def test_half_precision_emissions_are_upcast():
    crf = _random_crf(3, 2)
    emissions, tags, mask = _batch([3, 1], 3, 2)
    nll32 = crf.neg_log_likelihood(emissions, tags, mask)
    nll16 = crf.neg_log_likelihood(emissions.bfloat16(), tags, mask)
    assert nll16.dtype == torch.float32
    assert torch.allclose(nll32, nll16, atol=0.1)


def test_bad_shapes_are_rejected():
    crf = CRF(3)
    with pytest.raises(ValueError, match="emissions must be"):
        crf.decode(torch.zeros(2, 4, 5), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        crf.decode(torch.zeros(2, 4, 3), torch.ones(2, 5, dtype=torch.bool))
