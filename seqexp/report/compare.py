"""Pairwise strategy comparisons within each model, on shared seeds, from the saved predictions.

For every model, every pair of its strategies is tested with
:func:`~seqexp.report.significance.paired_bootstrap` on the seeds both ran.
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
from seqexp.report.collect import RunRecord
from seqexp.report.significance import (
    BootstrapResult,
    SentenceCounts,
    counts_from_file,
    describe,
    paired_bootstrap,
    resample_weights,
)


@dataclass
class Comparison:
    """Strategy ``a`` against strategy ``b`` of one model; ``result`` None when it could not be tested."""

    group: str
    a: Config
    b: Config
    metric: str
    result: BootstrapResult | None
    reason: str = ""

    @property
    def sentence(self) -> str:
        if self.result is None:
            return f"On {self.group}, {self.a.strategy} vs {self.b.strategy}: not tested — {self.reason}."
        return describe(self.group, self.a.strategy, self.b.strategy, self.result, self.metric)

    def involves(self, config: Config) -> bool:
        return config is self.a or config is self.b

    def winner(self) -> Config | None:
        if self.result is None or self.result.delta == 0:
            return None
        return self.a if self.result.delta > 0 else self.b


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


def _pair(group: str, a: Config, b: Config, cache: CountsCache, weights_for: Callable[[int], np.ndarray]
          ) -> Comparison:
    metric = "F1" if entity_level(a.runs[0]) else "accuracy"
    a_by_seed = {r.seed: r for r in a.runs}
    b_by_seed = {r.seed: r for r in b.runs}
    shared = [s for s in a_by_seed if s in b_by_seed]
    if not shared:
        return Comparison(group, a, b, metric, None, "no shared seeds")
    runs = [(a_by_seed[s], b_by_seed[s]) for s in shared]
    missing = [r.name for pair in runs for r in pair if cache.get(r) is None]
    if missing:
        return Comparison(group, a, b, metric, None, "test_predictions.conll missing for " + ", ".join(missing))
    ca = [cache.get(ra) for ra, _ in runs]
    cb = [cache.get(rb) for _, rb in runs]
    try:
        result = paired_bootstrap(ca, cb, weights=weights_for(ca[0].n_sentences))  # type: ignore[arg-type]
    except ValueError as exc:
        return Comparison(group, a, b, metric, None, str(exc))
    return Comparison(group, a, b, metric, result)


def compare_strategies(grid: Grid, fetch: Callable[[RunRecord, Path], Path | None], resamples: int = 1000,
                       seed: int = 0) -> list[Comparison]:
    """All pairwise comparisons, per model, in table order (better mean F1 first within a pair)."""
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
            for a, b in itertools.combinations(ranked, 2):
                out.append(_pair(group, a, b, cache, weights_for))
    finally:
        cache.close()
    return out
