"""Paired bootstrap over test sentences: is one strategy's win more than resampling noise?

Two configurations are compared on the SAME seeds and the SAME test sentences:
each resample draws sentence indices with replacement, recomputes every run's
corpus-level score on that resample, averages over the shared seeds, and takes
the difference A - B. The two-sided p-value is the share of resampled
differences at least as far from the observed one as the observed one is from
zero (the bootstrap distribution shifted to the null), with add-one smoothing so
that 1000 resamples can say at best p = 1/1001.

Why per-sentence counts: entity F1 is not a mean over sentences, but it is a
function of three sums, ``2 * TP / (n_pred + n_gold)``. Counting TP, predicted
and gold entities per sentence once turns every resample into a weighted sum,
and all resamples together into one matrix product. Accuracy fits the same
formula with ``hit = correct words`` and ``pred = gold = words``, so POS needs
no special case in the bootstrap itself.

The verdict on a comparison combines it with ASO over seeds
(:mod:`seqexp.report.aso`) in :func:`verdict_word`, after Holm's correction of
the bootstrap p-values within a table (:func:`holm`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqexp.report.aso import TAU

MIN_SEEDS = 3
ALPHA = 0.05


@dataclass(frozen=True)
class SentenceCounts:
    """One run's test predictions reduced to per-sentence counts.

    ``kind`` is "f1" (entity-level, seqeval's default-mode entities, the same
    ones ``test_f1`` is computed from) or "accuracy" (plain tags, e.g. POS).
    ``gold_digest`` identifies the gold side, so runs scored on different test
    sets are never paired.
    """

    kind: str
    hit: np.ndarray
    pred: np.ndarray
    gold: np.ndarray
    gold_digest: str

    @property
    def n_sentences(self) -> int:
        return int(self.hit.shape[0])

    def score(self) -> float:
        """Corpus-level score on the full test set (equals the logged metric)."""
        den = float(self.pred.sum() + self.gold.sum())
        return 2.0 * float(self.hit.sum()) / den if den else 0.0


@dataclass(frozen=True)
class BootstrapResult:
    """Observed difference A - B (mean over shared seeds), its p-value and 95% interval."""

    score_a: float
    score_b: float
    delta: float
    p_value: float
    ci_low: float
    ci_high: float
    n_seeds: int
    resamples: int


def read_conll(text: str) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, pred) tag sequences from ``word<TAB>gold<TAB>pred`` lines, blank line between sentences."""
    gold: list[list[str]] = []
    pred: list[list[str]] = []
    g: list[str] = []
    p: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if g:
                gold.append(g)
                pred.append(p)
                g, p = [], []
            continue
        cols = line.split("\t")
        if len(cols) < 3:
            raise ValueError(f"prediction line {line!r} does not have word, gold and pred columns")
        g.append(cols[-2])
        p.append(cols[-1])
    if g:
        gold.append(g)
        pred.append(p)
    return gold, pred


def _digest(gold: Sequence[Sequence[str]]) -> str:
    h = hashlib.sha1()
    for sent in gold:
        h.update("\x1f".join(sent).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def _entities_per_sentence(sentences: Sequence[Sequence[str]], offsets: np.ndarray) -> dict[tuple, int]:
    """seqeval default-mode entities as {(type, start, end): sentence index}, positions in the joined corpus."""
    from seqeval.metrics.sequence_labeling import get_entities  # imports scikit-learn: only when needed

    ents = get_entities([list(s) for s in sentences])  # joins sentences with an "O" between them
    return {(t, b, e): int(np.searchsorted(offsets, b, side="right") - 1) for t, b, e in ents}


def count_sentences(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], entity_level: bool
) -> SentenceCounts:
    """Per-sentence (hit, pred, gold) counts: entities for NER/chunking, words for plain tagging."""
    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred)):
        raise ValueError("gold and predicted tag sequences have different shapes")
    n = len(gold)
    lengths = np.fromiter((len(s) for s in gold), dtype=np.int64, count=n)
    if not entity_level:
        correct = np.fromiter((sum(a == b for a, b in zip(g, p)) for g, p in zip(gold, pred)), np.int64, n)
        return SentenceCounts("accuracy", correct.astype(float), lengths.astype(float),
                              lengths.astype(float), _digest(gold))
    # Sentence i starts at offsets[i] in the joined sequence (each sentence is followed by one "O").
    offsets = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    g_ents = _entities_per_sentence(gold, offsets)
    p_ents = _entities_per_sentence(pred, offsets)
    hit = np.zeros(n)
    n_pred = np.zeros(n)
    n_gold = np.zeros(n)
    np.add.at(n_gold, np.fromiter(g_ents.values(), np.int64, len(g_ents)), 1)
    np.add.at(n_pred, np.fromiter(p_ents.values(), np.int64, len(p_ents)), 1)
    tp = [g_ents[k] for k in g_ents.keys() & p_ents.keys()]
    np.add.at(hit, np.asarray(tp, dtype=np.int64), 1)
    return SentenceCounts("f1", hit, n_pred, n_gold, _digest(gold))


def counts_from_file(path: Path, entity_level: bool) -> SentenceCounts:
    """Counts of a test predictions artifact (``seqexp.report.collect.PREDICTIONS``)."""
    gold, pred = read_conll(Path(path).read_text(encoding="utf-8"))
    return count_sentences(gold, pred, entity_level)


def resample_weights(n_sentences: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n_sentences) multiplicities: row r says how often each sentence is drawn in resample r."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_sentences, size=(resamples, n_sentences))
    flat = (idx + (np.arange(resamples) * n_sentences)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n_sentences).reshape(resamples, n_sentences).astype(float)


def _scores(runs: Sequence[SentenceCounts], weights: np.ndarray) -> np.ndarray:
    """(resamples,) mean over seeds of each run's resampled corpus score."""
    hit = np.stack([r.hit for r in runs])  # (seeds, sentences)
    den = np.stack([r.pred + r.gold for r in runs])
    num_r = 2.0 * (weights @ hit.T)  # (resamples, seeds)
    den_r = weights @ den.T
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(den_r > 0, num_r / np.where(den_r > 0, den_r, 1.0), 0.0)
    return score.mean(axis=1)


def paired_bootstrap(
    a: Sequence[SentenceCounts],
    b: Sequence[SentenceCounts],
    resamples: int = 1000,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> BootstrapResult:
    """Paired bootstrap of mean-over-seeds score A - B; ``a[i]`` and ``b[i]`` must share seed i.

    ``weights`` (from :func:`resample_weights`) may be passed to reuse the same
    resamples across many pairs; otherwise they are drawn from ``seed``.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of seeds on both sides (got {len(a)} and {len(b)})")
    digests = {r.gold_digest for r in (*a, *b)}
    if len(digests) != 1:
        raise ValueError("the runs were scored on different test sets (gold tags differ)")
    n = a[0].n_sentences
    if weights is None:
        weights = resample_weights(n, resamples, seed)
    elif weights.shape[1] != n:
        raise ValueError(f"weights are for {weights.shape[1]} sentences, the runs have {n}")
    score_a = float(np.mean([r.score() for r in a]))
    score_b = float(np.mean([r.score() for r in b]))
    delta = score_a - score_b
    boot = _scores(a, weights) - _scores(b, weights)
    extreme = int(np.count_nonzero(np.abs(boot - delta) >= abs(delta) - 1e-12))
    p_value = (extreme + 1) / (len(boot) + 1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return BootstrapResult(score_a, score_b, delta, p_value, float(low), float(high), len(a), len(boot))


def format_p(p: float) -> str:
    """p-values as a reader wants them: 2 significant digits, never "0"."""
    if p < 0.001:
        return "p<0.001"
    if p < 0.01:
        return f"p={p:.3f}"
    return f"p={p:.2f}"


def gap_decimals(gap: float) -> int:
    """Decimals for a gap in F1 points and the two scores beside it: one, or two where one decimal would
    print a gap that is not zero as 0.0 ("beats it by 0.0 (61.2 vs 61.2)" reads as a contradiction)."""
    return 1 if gap == 0.0 or abs(gap) >= 0.05 else 2


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order (step-down: k·p(1), (k−1)·p(2), …, monotone)."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    adjusted = [0.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


SIGNIFICANT = "significant"
NOT_SIGNIFICANT = "not significant"


def inconclusive(n_seeds: int) -> str:
    return f"inconclusive: {n_seeds} seed{'' if n_seeds == 1 else 's'}"


def verdict_word(n_seeds: int, eps_min: float | None, p_holm: float, delta: float) -> str:
    """The one verdict word of a comparison (the rule the report states).

    With fewer than 3 shared seeds the seed-level test cannot run: "inconclusive: N seed(s)",
    whatever the sentence bootstrap says. Otherwise the win is "significant" when ASO's
    ε_min < 0.2 AND the Holm-adjusted bootstrap p < 0.05, else "not significant".
    """
    if n_seeds < MIN_SEEDS or eps_min is None:
        return inconclusive(n_seeds)
    if delta != 0.0 and eps_min < TAU and p_holm < ALPHA:
        return SIGNIFICANT
    return NOT_SIGNIFICANT
