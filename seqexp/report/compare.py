"""Pairwise strategy comparisons within each model, on shared seeds, from the saved predictions.

For every model, every pair of its strategies (the picked candidate of each
cell) is tested twice on the seeds both ran: with
:func:`~seqexp.report.significance.paired_bootstrap` over test sentences
(p-values Holm-adjusted within the model's table) and with ASO over the
per-seed scores (:func:`~seqexp.report.aso.aso`, confidence level
Bonferroni-adjusted by the number of pairs in the table). The verdict word
follows :func:`~seqexp.report.significance.verdict_word`.
The statistic follows the dataset's scoring: entity-level F1 (seqeval's
default-mode entities, as ``test_f1``) when the tags form chunks, word accuracy
for plain tagging (POS, ``dataset.scheme=none``, whose table F1 is a macro
average that does not decompose over sentences).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqexp.report.aggregate import Config, Grid
from seqexp.report.aso import AsoResult, aso
from seqexp.report.collect import RunRecord
from seqexp.report.significance import (
    MIN_SEEDS,
    BootstrapResult,
    SentenceCounts,
    counts_from_file,
    format_p,
    gap_decimals,
    holm,
    paired_bootstrap,
    resample_weights,
    verdict_word,
)


@dataclass
class Comparison:
    """Strategy ``a`` against strategy ``b`` of one model; ``result`` None when it could not be tested.

    ``aso`` is ε_min of "the winner on the shared seeds dominates the other" (None with < 3 seeds);
    ``p_holm`` the bootstrap p after Holm's correction over the model's table.
    """

    group: str
    a: Config
    b: Config
    metric: str
    result: BootstrapResult | None
    reason: str = ""
    aso: AsoResult | None = None
    p_holm: float | None = None

    def involves(self, config: Config) -> bool:
        return config is self.a or config is self.b

    def winner(self) -> Config | None:
        if self.result is None or self.result.delta == 0:
            return None
        return self.a if self.result.delta > 0 else self.b

    @property
    def word(self) -> str:
        """"significant", "not significant", "inconclusive: N seed(s)" (or "not tested — why")."""
        if self.result is None:
            return f"not tested — {self.reason}"
        p = self.p_holm if self.p_holm is not None else self.result.p_value
        return verdict_word(self.result.n_seeds, self.aso.eps_min if self.aso else None, p, self.result.delta)

    def stats(self) -> str:
        """"ε_min 0.00, Holm p<0.001, 3 seeds" (ASO left out when it could not run)."""
        r = self.result
        assert r is not None
        p = self.p_holm if self.p_holm is not None else r.p_value
        parts = [f"ε_min {self.aso.eps_min:.2f}"] if self.aso else []
        parts += [f"Holm {format_p(p)}", f"{r.n_seeds} seed{'' if r.n_seeds == 1 else 's'}"]
        if self.aso is None:
            parts.append(f"ASO needs ≥{MIN_SEEDS}")
        return ", ".join(parts)

    @property
    def sentence(self) -> str:
        """E.g. "On minilm, unfreeze+adam beats last+adam by 3.1 F1 (91.2 vs 88.1; ε_min 0.00, Holm p<0.001,
        3 seeds): significant."."""
        if self.result is None:
            return f"On {self.group}, {self.a.strategy} vs {self.b.strategy}: {self.word}."
        r = self.result
        if r.delta == 0.0:
            return (f"On {self.group}, {self.a.strategy} and {self.b.strategy} tie on {self.metric} "
                    f"({100 * r.score_a:.1f}; {self.stats()}): {self.word}.")
        (win, s_win), (lose, s_lose) = sorted([(self.a, r.score_a), (self.b, r.score_b)], key=lambda x: -x[1])
        d = gap_decimals(100 * r.delta)
        return (f"On {self.group}, {win.strategy} beats {lose.strategy} by {100 * abs(r.delta):.{d}f} {self.metric} "
                f"({100 * s_win:.{d}f} vs {100 * s_lose:.{d}f}; {self.stats()}): {self.word}.")


def entity_level(run: RunRecord) -> bool:
    """Chunk tags (NER, chunking) are scored per entity; plain tags (POS) per word."""
    scheme = run.params.get("dataset.scheme")
    if scheme is not None:
        try:
            from seqexp.data.schemes import scoring_scheme

            return scoring_scheme(scheme) is not None
        except (ImportError, ValueError, KeyError):
            return scheme.lower() != "none"
    return run.params.get("dataset.task", "ner") != "pos"


class CountsCache:
    """Per-run sentence counts, each artifact downloaded and counted at most once."""

    def __init__(self, fetch: Callable[[RunRecord, Path], Path | None]):
        self._fetch = fetch
        self._tmp = tempfile.TemporaryDirectory(prefix="seqexp-report-")
        self._counts: dict[str, SentenceCounts | None] = {}

    def get(self, run: RunRecord) -> SentenceCounts | None:
        if run.run_id not in self._counts:
            path = self._fetch(run, Path(self._tmp.name))
            self._counts[run.run_id] = counts_from_file(path, entity_level(run)) if path else None
        return self._counts[run.run_id]

    def close(self) -> None:
        self._tmp.cleanup()


def _pair(group: str, a: Config, b: Config, cache: CountsCache, weights_for: Callable[[int], np.ndarray],
          comparisons: int = 1, resamples: int = 1000, seed: int = 0) -> Comparison:
    metric = "F1" if entity_level(a.runs[0]) else "accuracy"
    a_by_seed = {r.seed: r for r in a.runs}
    b_by_seed = {r.seed: r for r in b.runs}
    shared = [s for s in a_by_seed if s in b_by_seed]
    if not shared:
        return Comparison(group, a, b, metric, None, "no shared seeds")
    runs = [(a_by_seed[s], b_by_seed[s]) for s in shared]
    missing = [r.name for pair in runs for r in pair if cache.get(r) is None]
    if missing:
        return Comparison(group, a, b, metric, None, "test_predictions.txt missing for " + ", ".join(missing))
    ca = [cache.get(ra) for ra, _ in runs]
    cb = [cache.get(rb) for _, rb in runs]
    try:
        result = paired_bootstrap(ca, cb, weights=weights_for(ca[0].n_sentences))  # type: ignore[arg-type]
    except ValueError as exc:
        return Comparison(group, a, b, metric, None, str(exc))
    seed_level = None
    if len(shared) >= MIN_SEEDS:
        sa, sb = [c.score() for c in ca], [c.score() for c in cb]  # type: ignore[union-attr]
        win, lose = (sb, sa) if result.delta < 0 else (sa, sb)
        seed_level = aso(win, lose, resamples=max(resamples, 2), seed=seed, comparisons=comparisons)
    return Comparison(group, a, b, metric, result, aso=seed_level)


def compare_strategies(grid: Grid, fetch: Callable[[RunRecord, Path], Path | None], resamples: int = 1000,
                       seed: int = 0) -> list[Comparison]:
    """All pairwise comparisons, per model, in table order (better mean F1 first within a pair).

    Holm's correction runs over the tested comparisons of each model; ASO's level is α / (pairs of the model).
    """
    if resamples <= 0:
        return []
    cache = CountsCache(fetch)
    weights: dict[int, np.ndarray] = {}

    def weights_for(n: int) -> np.ndarray:
        if n not in weights:
            weights[n] = resample_weights(n, resamples, seed)
        return weights[n]

    out = []
    try:
        for group, configs in grid.groups().items():
            ranked = sorted(configs, key=lambda c: -(c.mean("test_f1") or 0.0))
            pairs = list(itertools.combinations(ranked, 2))
            mine = [_pair(group, a, b, cache, weights_for, len(pairs), resamples, seed) for a, b in pairs]
            tested = [c for c in mine if c.result is not None]
            for comp, p in zip(tested, holm([c.result.p_value for c in tested])):  # type: ignore[union-attr]
                comp.p_holm = p
            out.extend(mine)
    finally:
        cache.close()
    return out
