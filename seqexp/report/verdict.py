"""The plain-words verdict: per model, which strategy wins and whether the win is significant.

The winner is the strategy with the best mean test F1 (the ★ of the main
table). Its win is called significant only if it beats EVERY other strategy of
that model with p < 0.05 on at least 3 shared seeds; otherwise the verdict
names each comparison that falls short and why.
"""

from __future__ import annotations

from collections import Counter

from seqexp.report.aggregate import Config, Grid
from seqexp.report.compare import Comparison
from seqexp.report.significance import MIN_SEEDS, format_p, verdict


def score(config: Config, metric: str = "test_f1") -> str:
    """"91.23 ± 0.12" (×100; no ± with one seed), or "—"."""
    mean, std = config.mean(metric), config.std(metric)
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _lead(comp: Comparison, best: Config) -> str:
    """The winner's lead over the other strategy of ``comp``, e.g. "last+adam by 4.3 F1 (p=0.001, 3 seeds)"."""
    other = comp.b if comp.a is best else comp.a
    if comp.result is None:
        return f"{other.strategy}: not tested — {comp.reason}"
    r = comp.result
    delta = r.delta if comp.a is best else -r.delta
    stats = f"({format_p(r.p_value)}, {_seeds(r.n_seeds)})"
    if delta > 0:
        text = f"{other.strategy} by {100 * delta:.1f} {comp.metric} {stats}"
    elif delta == 0:
        text = f"{other.strategy}: a tie on the shared seeds {stats}"
    else:
        text = f"{other.strategy}: behind it by {100 * -delta:.1f} {comp.metric} on the shared seeds {stats}"
    return text if r.significant and delta > 0 else f"{text} — {verdict(r).removeprefix('not significant — ')}"


def _group_verdict(group: str, configs: list[Config], best: Config, comparisons: list[Comparison],
                   tested: bool) -> str:
    head = f"**{group}**: **{best.strategy or 'the only configuration'}** "
    head += f"has the best test F1 ({score(best)}, {_seeds(len(best.runs))})."
    if len(configs) == 1:
        return head + " Nothing to compare it with."
    if not tested:
        return head + " Significance was not tested (--bootstrap 0)."
    mine = [c for c in comparisons if c.group == group and c.involves(best)]
    wins = [c for c in mine if c.result is not None and c.result.significant and c.winner() is best]
    if len(wins) == len(mine):
        if len(mine) == 1:
            return head + f" The win is **significant**: it beats {_lead(mine[0], best)}."
        closest = min(wins, key=lambda c: abs(c.result.delta))  # type: ignore[union-attr]
        return (head + f" The win is **significant**: it beats each of the {len(mine)} other strategies with "
                f"p < 0.05 on at least {MIN_SEEDS} shared seeds; the closest is {_lead(closest, best)}.")
    short = [_lead(c, best) for c in mine if c not in wins]
    return head + " The win is **not significant** over " + "; over ".join(short) + "."


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
    return out
