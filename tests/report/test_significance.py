"""The paired bootstrap, Holm's correction and the verdict words on cases whose answer is known.

Predictions are built from real CoNLL-2003 test sentences.
"""

from __future__ import annotations

import random
import time

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from seqexp.metrics import evaluate
from seqexp.report.aso import aso
from seqexp.report.significance import (
    count_sentences,
    holm,
    paired_bootstrap,
    read_conll,
    resample_weights,
    verdict_word,
)
from tests.conftest import shared_corpus


def read_tags(path, limit: int | None = None) -> list[list[str]]:
    """NER tags (column 3) of a CoNLL-2003 file, one list per sentence."""
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
                current = []
            continue
        current.append(line.split()[3])
    if current:
        sentences.append(current)
    return sentences[:limit]


def corrupt(gold: list[list[str]], drop: float, seed: int) -> list[list[str]]:
    """Gold tags with a share ``drop`` of entities deleted and ``drop / 2`` given the wrong type."""
    rng = random.Random(seed)
    out = []
    for sent in gold:
        pred = list(sent)
        for kind, start, end in get_entities(sent):
            u = rng.random()
            if u < drop:
                pred[start:end + 1] = ["O"] * (end - start + 1)
            elif u < 1.5 * drop:
                wrong = "ORG" if kind != "ORG" else "PER"
                pred[start:end + 1] = [t[:2] + wrong for t in pred[start:end + 1]]
        out.append(pred)
    return out


@pytest.fixture(scope="module")
def test_gold() -> list[list[str]]:
    return read_tags(shared_corpus("conll2003") / "eng.testb")


def test_counts_reproduce_seqeval_scores(test_gold):
    gold = test_gold[:1500]
    pred = corrupt(gold, 0.2, seed=3)
    expected = evaluate(gold, pred, "IOB2")
    assert count_sentences(gold, pred, entity_level=True).score() == pytest.approx(expected["f1"], abs=1e-12)
    assert count_sentences(gold, pred, entity_level=False).score() == pytest.approx(expected["accuracy"], abs=1e-12)


def test_identical_predictions_are_not_significant(test_gold):
    gold = test_gold[:800]
    runs = [count_sentences(gold, corrupt(gold, 0.1, seed=s), True) for s in range(3)]
    result = paired_bootstrap(runs, runs, resamples=500, seed=0)
    assert result.delta == 0.0
    assert result.p_value == pytest.approx(1.0)
    scores = [r.score() for r in runs]
    eps = aso(scores, scores).eps_min
    assert eps >= 0.2
    assert verdict_word(result.n_seeds, eps, result.p_value, result.delta) == "not significant"


def word_of(a, b, result, comparisons: int = 1) -> str:
    eps = aso([r.score() for r in a], [r.score() for r in b], comparisons=comparisons).eps_min
    return verdict_word(result.n_seeds, eps, result.p_value, result.delta)


def test_clear_win_over_three_seeds_is_significant(test_gold):
    gold = test_gold[:800]
    good = [count_sentences(gold, corrupt(gold, 0.05, seed=s), True) for s in range(3)]
    bad = [count_sentences(gold, corrupt(gold, 0.30, seed=10 + s), True) for s in range(3)]
    result = paired_bootstrap(good, bad, resamples=1000, seed=0)
    assert result.delta > 0.1
    assert result.p_value < 0.05
    assert result.ci_low > 0
    assert word_of(good, bad, result) == "significant"
    # The order of the arguments flips the sign, not the p-value.
    flipped = paired_bootstrap(bad, good, resamples=1000, seed=0)
    assert flipped.delta == pytest.approx(-result.delta) and flipped.p_value == result.p_value
    # ASO asked the wrong way round (does the loser dominate?) refuses: ε_min = 1.
    assert word_of(bad, good, flipped) == "not significant"


def test_clear_win_with_one_seed_is_not_significant(test_gold):
    gold = test_gold[:800]
    good = [count_sentences(gold, corrupt(gold, 0.05, seed=1), True)]
    bad = [count_sentences(gold, corrupt(gold, 0.30, seed=2), True)]
    result = paired_bootstrap(good, bad, resamples=1000, seed=0)
    assert result.p_value < 0.001 and result.n_seeds == 1
    # Even with p < 0.001 over sentences, one seed cannot say anything about seeds.
    assert verdict_word(result.n_seeds, None, result.p_value, result.delta) == "inconclusive: 1 seed"
    assert verdict_word(2, 0.0, result.p_value, result.delta) == "inconclusive: 2 seeds"


def test_small_difference_is_not_significant(test_gold):
    gold = test_gold[:300]
    a = [count_sentences(gold, corrupt(gold, 0.10, seed=s), True) for s in range(3)]
    b = [count_sentences(gold, corrupt(gold, 0.10, seed=20 + s), True) for s in range(3)]
    result = paired_bootstrap(a, b, resamples=1000, seed=0)
    assert result.p_value >= 0.05, result
    assert word_of(a, b, result) == "not significant"


def test_verdict_needs_both_aso_and_holm_p():
    assert verdict_word(3, 0.1, 0.01, 0.02) == "significant"
    assert verdict_word(3, 0.25, 0.01, 0.02) == "not significant"  # ASO does not find dominance
    assert verdict_word(3, 0.1, 0.06, 0.02) == "not significant"  # the (Holm-adjusted) p is too large
    assert verdict_word(3, 0.0, 0.0, 0.0) == "not significant"  # a tie is never a win


def test_holm_on_a_known_case():
    # Holm (1979): sorted p 0.01, 0.03, 0.04 with k = 3 -> 0.03, max(0.06, 0.03), max(0.04, 0.06).
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == [0.02]
    assert holm([]) == []


def test_different_test_sets_are_refused(test_gold):
    a = count_sentences(test_gold[:100], test_gold[:100], True)
    b = count_sentences(test_gold[100:200], test_gold[100:200], True)
    with pytest.raises(ValueError, match="different test sets"):
        paired_bootstrap([a], [b], resamples=10)


def test_bootstrap_is_fast_on_the_full_test_set(test_gold):
    assert len(test_gold) == 3453
    a = [count_sentences(test_gold, corrupt(test_gold, 0.05, seed=s), True) for s in range(3)]
    b = [count_sentences(test_gold, corrupt(test_gold, 0.10, seed=s), True) for s in range(3)]
    started = time.perf_counter()
    result = paired_bootstrap(a, b, resamples=1000, seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"1000 resamples over 3453 sentences took {elapsed:.2f} s"
    assert result.resamples == 1000 and result.n_seeds == 3
    # Reusing the resample matrix across pairs gives the same answer.
    again = paired_bootstrap(a, b, weights=resample_weights(len(test_gold), 1000, 0))
    assert again == result


def test_read_conll_roundtrip():
    text = "EU\tB-ORG\tB-ORG\nrejects\tO\tO\n\nPeter\tB-PER\tO\n"
    gold, pred = read_conll(text)
    assert gold == [["B-ORG", "O"], ["B-PER"]]
    assert pred == [["B-ORG", "O"], ["O"]]


def to_iobes(sentences: list[list[str]]) -> list[list[str]]:
    out = []
    for sent in sentences:
        tags = ["O"] * len(sent)
        for kind, start, end in get_entities(sent):
            if start == end:
                tags[start] = f"S-{kind}"
            else:
                tags[start:end + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1) + [f"E-{kind}"]
        out.append(tags)
    return out


def test_counts_reproduce_seqeval_scores_in_iobes(test_gold):
    gold = to_iobes(test_gold[:500])
    pred = to_iobes(corrupt(test_gold[:500], 0.2, seed=4))
    expected = evaluate(gold, pred, "IOBES")
    assert count_sentences(gold, pred, entity_level=True).score() == pytest.approx(expected["f1"], abs=1e-12)
