"""The plain-words verdict: per model, one sentence — which strategy, by how much, how sure, at what cost.

The leader of a model is its cell whose picked candidate (chosen on dev, see
:mod:`seqexp.report.aggregate`) has the best mean test F1 (the ★ of the main
table); the sentence compares it with the runner-up, e.g. "On **minilm**,
**unfreeze+adam** beats last+adam by 3.1 test F1 (91.20 vs 88.10; ε_min 0.00,
Holm p<0.001, 3 seeds: significant), at 12× the train time and 100% vs 0.014%
of the parameters trained." With more than two strategies, a second sentence
gives the verdict word against each of the others. The verdict words are those
of :func:`seqexp.report.significance.verdict_word`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from seqexp.report.aggregate import Config, Grid
from seqexp.report.compare import Comparison
from seqexp.report.significance import gap_decimals


def score(config: Config, metric: str = "test_f1", seeds: Iterable[str] | None = None) -> str:
    """"91.23 ± 0.12" (×100; no ± with one seed), or "—"; over ``seeds`` only when given."""
    mean, std = config.mean(metric, seeds), config.std(metric, seeds)
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _share(config: Config) -> str | None:
    trainable, total = config.mean("trainable_params"), config.mean("total_params")
    if trainable is None or not total:
        return None
    pct = 100 * trainable / total
    return f"{pct:.0f}%" if pct >= 1 else f"{pct:.2g}%"


def cost(best: Config, other: Config) -> str:
    """"at 12× the train time and 100% vs 0.014% of the parameters trained" (parts without data left out)."""
    t_best, t_other = best.mean("train_time_s"), other.mean("train_time_s")
    time = None
    if t_best and t_other:
        ratio = t_best / t_other
        time = ("about the same train time" if 0.95 <= ratio <= 1.05
                else f"{ratio:.0f}× the train time" if ratio >= 10 else f"{ratio:.2g}× the train time")
    s_best, s_other = _share(best), _share(other)
    params = f"{s_best} vs {s_other} of the parameters trained" if s_best and s_other else None
    if time:
        return "at " + time + (f" and {params}" if params else "")
    return params or ""


def _how_sure(comp: Comparison | None, tested: bool) -> str:
    if not tested:
        return "significance not tested: --bootstrap 0"
    if comp is None:
        return "not compared"
    if comp.result is None:
        return comp.word
    return f"{comp.stats()}: {comp.word}"


def _find(comparisons: list[Comparison], a: Config, b: Config) -> Comparison | None:
    return next((c for c in comparisons if c.involves(a) and c.involves(b)), None)


def _group_verdict(group: str, configs: list[Config], best: Config, comparisons: list[Comparison],
                   tested: bool) -> str:
    if len(configs) == 1:
        return (f"On **{group}**, only **{best.strategy or 'one configuration'}** ran (test F1 {score(best)}, "
                f"{_seeds(len(best.runs))}): nothing to compare it with.")
    ranked = sorted(configs, key=lambda c: -(c.mean("test_f1") or 0.0))
    runner = ranked[1] if ranked[0] is best else ranked[0]
    m_best, m_run = 100 * (best.mean("test_f1") or 0.0), 100 * (runner.mean("test_f1") or 0.0)
    comp = _find(comparisons, best, runner)
    how = _how_sure(comp, tested)
    verb = "ties with" if m_best == m_run else "beats"
    by = "" if m_best == m_run else f" by {m_best - m_run:.{gap_decimals(m_best - m_run)}f} test F1"
    price = cost(best, runner)
    text = (f"On **{group}**, **{best.strategy}** {verb} {runner.strategy}{by} ({m_best:.2f} vs {m_run:.2f}; "
            f"{how}){', ' + price if price else ''}.")
    others = [c for c in ranked if c is not best and c is not runner]
    if others and tested:
        parts = []
        for other in others:
            c = _find(comparisons, best, other)
            parts.append(f"{other.strategy} ({100 * (other.mean('test_f1') or 0.0):.2f}; {_how_sure(c, tested)})")
        whom = "the other strategy" if len(others) == 1 else f"the other {len(others)} strategies"
        text += f" Against {whom}: " + "; ".join(parts) + "."
    return text


def budget_text(grid: Grid) -> str:
    """Which picks were best at their last allowed epoch, and what that means for a verdict."""
    binding = grid.binding_budgets()
    if not binding:
        return ("No budget binds: every pick's best dev epoch came before its last allowed epoch, in every seed "
                "(or the runs did not log `best_epoch` and `max_epochs`).")
    cells = ", ".join(f"{c.label} ({k} of {n} seeds)" for c, k, n in binding)
    return (f"Budgets that bind: the best dev epoch was the last one allowed (`best_epoch` = `max_epochs`) for {cells}. "
            "These cells might score higher with more epochs, so a comparison they lose may be the budget's "
            "verdict rather than the strategy's; rerunning them with `max_epochs` doubled tells.")


def verdict_paragraphs(grid: Grid, comparisons: list[Comparison], tested: bool) -> list[str]:
    """One paragraph per model, then the overall best per dataset and a strategy tally."""
    groups, best = grid.groups(), grid.best()
    out = [_group_verdict(g, cs, best[g], comparisons, tested) for g, cs in groups.items()]
    for dataset in grid.datasets():
        cands = [c for c in grid.configs if c.axes.get("dataset") == dataset or len(grid.datasets()) == 1]
        if not cands:
            continue
        top = max(cands, key=lambda c: c.mean("test_f1") or -1.0)
        where = f" on {dataset}" if len(grid.datasets()) > 1 or dataset != "—" else ""
        out.append(f"Best overall{where}: {top.label} (test F1 {score(top)}).")
    if len(groups) > 1:
        tally = Counter(b.strategy for b in best.values())
        parts = [f"{s} on {n} of {len(groups)} models" for s, n in tally.most_common()]
        out.append("Best strategy per model: " + ", ".join(parts) + ".")
    binding = grid.binding_budgets()
    if binding:
        out.append("Caveat: " + ", ".join(c.label for c, _, _ in binding)
                   + " were best at their last allowed epoch in some seed: their budget binds (section 1).")
    return out
