"""The report's sections as render blocks: verdict, tables, figures, significance, exclusions, provenance.

Every table number is an MLflow metric of the listed runs, ×100, mean (± sample
std) over seeds, two decimals: nothing is recomputed for the tables, so a
reader can check any cell against the MLflow UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seqexp.report.aggregate import Config, Grid, pareto_front
from seqexp.report.render import Block, Bullets, Heading, Image, Para, Table
from seqexp.report.significance import format_p, verdict
from seqexp.report.verdict import score, verdict_paragraphs

if TYPE_CHECKING:
    from seqexp.report.build import ReportData

METRIC_COLUMNS = (("accuracy", "test_accuracy"), ("precision", "test_precision"), ("recall", "test_recall"),
                  ("F1", "test_f1"))
BEST = "★"


def plural(n: int, word: str) -> str:
    """"1 run", "3 runs"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _int(v: float | None) -> str:
    return "—" if v is None else f"{round(v):,}"


def _params(c: Config) -> str:
    trainable, total = c.mean("trainable_params"), c.mean("total_params")
    if trainable is None:
        return "—"
    return _int(trainable) + (f" ({100 * trainable / total:.2f}%)" if total else "")


def _time(c: Config) -> str:
    mean, std = c.mean("train_time_s"), c.std("train_time_s")
    if mean is None:
        return "—"
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def main_table(grid: Grid) -> Table:
    """Configurations × (accuracy, precision, recall, F1, seeds, trainable params, train time)."""
    best = {id(c) for c in grid.best().values()}
    header = [*grid.shown_axes, "seeds", *(name for name, _ in METRIC_COLUMNS), "trainable params", "train time (s)"]
    rows = []
    for c in grid.configs:
        cells = [score(c, key) for _, key in METRIC_COLUMNS]
        if id(c) in best:
            cells[-1] = f"**{cells[-1]}** {BEST}"
        rows.append([*(c.axes[a] for a in grid.shown_axes), str(len(c.runs)), *cells, _params(c), _time(c)])
    align = ["l"] * len(grid.shown_axes) + ["r"] * (len(header) - len(grid.shown_axes))
    return Table(header, rows, align)


def per_type_tables(grid: Grid) -> list[Block]:
    """Mean per-type test F1 per configuration; transposed when there are more types than fit across."""
    blocks: list[Block] = []
    datasets = grid.datasets()
    for dataset in datasets:
        configs = [c for c in grid.configs if c.axes.get("dataset") == dataset] if len(datasets) > 1 else grid.configs
        types = sorted({t for c in configs for t in c.per_type()})
        if len(datasets) > 1:
            blocks.append(Heading(dataset, 3))
        if not types:
            blocks.append(Para("No per-type metrics (`test_f1_<TYPE>`) were logged."))
            continue

        def cell(c: Config, t: str) -> str:
            m = c.mean(f"test_f1_{t}")
            return "—" if m is None else f"{100 * m:.2f}"

        if len(types) <= 12:
            header = ["model", "strategy", *types]
            rows = [[c.axes["model"], c.strategy, *(cell(c, t) for t in types)] for c in configs]
            blocks.append(Table(header, rows, ["l", "l"] + ["r"] * len(types)))
        else:
            header = ["type", *(c.label for c in configs)]
            rows = [[t, *(cell(c, t) for c in configs)] for t in types]
            blocks.append(Table(header, rows, ["l"] + ["r"] * len(configs)))
    return blocks


def pareto_text(grid: Grid) -> str:
    """The frontier in words: configurations no other one beats on both time and F1."""
    parts = []
    for dataset in grid.datasets():
        configs = [c for c in grid.configs if c.axes.get("dataset") == dataset or len(grid.datasets()) == 1]
        configs = [c for c in configs if c.mean("train_time_s") is not None]
        pts = [(c.mean("train_time_s") or 0.0, c.mean("test_f1") or 0.0) for c in configs]
        front = [configs[i] for i in pareto_front(pts)]
        names = ", ".join(f"{c.label} ({score(c)} F1, {c.mean('train_time_s'):.1f} s)" for c in front)
        if names:
            parts.append(("" if len(grid.datasets()) == 1 else f"{dataset}: ") + names)
    if not parts:
        return "No train times were logged."
    return "On the Pareto frontier (no other configuration is both faster and better), from cheapest: " \
        + "; ".join(parts) + "."


def significance_blocks(data: "ReportData") -> list[Block]:
    if data.resamples <= 0:
        return [Para("Not tested (`--bootstrap 0`).")]
    if not data.comparisons:
        return [Para("Nothing to compare: every model has a single strategy.")]
    intro = Para(
        f"Paired bootstrap over test sentences ({data.resamples} resamples, seed {data.seed}): each resample "
        "recomputes every run's corpus-level score from its saved `test_predictions.conll` (entity-level F1 "
        "with seqeval's entities for NER/chunking, word accuracy for POS), averages over the seeds BOTH "
        "strategies ran, and takes the difference; p is two-sided. A win counts as significant only with "
        "p < 0.05 and at least 3 shared seeds.")
    sentences = Bullets([c.sentence for c in data.comparisons])
    rows = []
    for c in data.comparisons:
        r = c.result
        if r is None:
            rows.append([c.group, c.a.strategy, c.b.strategy, "—", "—", "—", "—", "—", f"not tested — {c.reason}"])
            continue
        rows.append([c.group, c.a.strategy, c.b.strategy, c.metric, f"{100 * r.delta:+.2f}",
                     f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]", format_p(r.p_value).removeprefix("p=").removeprefix("p"),
                     str(r.n_seeds), verdict(r)])
    table = Table(["model", "A", "B", "metric", "Δ A−B ×100", "95% interval", "p", "shared seeds", "verdict"],
                  rows, ["l", "l", "l", "l", "r", "r", "r", "r", "l"])
    return [intro, sentences, table]


def excluded_blocks(data: "ReportData") -> list[Block]:
    sel = data.selection
    if not sel.excluded:
        return [Para("None: every run finished with test metrics.")]
    rows = [[f"`{r.run_id}`", r.name, reason[:300]] for r, reason in sel.excluded]
    return [Para(f"{plural(len(sel.excluded), 'run')} {'is' if len(sel.excluded) == 1 else 'are'} "
                 "in no table or figure:"),
            Table(["run id", "run name", "status / reason"], rows)]


def provenance_blocks(data: "ReportData") -> list[Block]:
    sel = data.selection
    exps = ", ".join(f"{name} (id {i})" for i, name in sel.experiments.items())
    commits: dict[str, int] = {}
    for r in sel.finished:
        commits[r.commit] = commits.get(r.commit, 0) + 1
    items = [f"Tracking URI: `{sel.uri}`", f"Experiment: {exps}"]
    if sel.sweep_id:
        items.append(f"Sweep id: `{sel.sweep_id}`")
    for p in sel.parents:
        items.append(f"Sweep parent run: `{p.run_id}` ({p.name}, {p.status})"
                     + (f", overrides `{p.tags['overrides']}`" if p.tags.get("overrides") else ""))
    items.append("Git commit(s): " + ", ".join(f"`{c}` ({n} run{'s' if n != 1 else ''})" for c, n in commits.items())
                 + (" — **runs come from different commits**" if len(commits) > 1 else ""))
    items.append(f"Significance: paired bootstrap, {data.resamples} resamples, seed {data.seed}")
    items.append(f"Generated {data.generated}")
    rows = []
    for c in data.grid.configs:
        for r in c.runs:
            rows.append([f"`{r.run_id}`", r.name, c.label, r.seed, f"{100 * r.metrics['test_f1']:.2f}", r.commit[:10]])
    return [Bullets(items), Para(f"Every number above was built from {'this run' if len(rows) == 1 else f'these {len(rows)} runs'}:"),
            Table(["run id", "run name", "configuration", "seed", "test F1", "commit"], rows,
                  ["l", "l", "l", "r", "r", "l"])]


def document(data: "ReportData", figures: dict[str, Path]) -> list[Block]:
    """The whole report, top to bottom."""
    sel, grid = data.selection, data.grid
    what = f"sweep `{sel.target}`" if sel.kind == "sweep" else f"experiment `{sel.target}`"
    n_seeds = sorted({len(c.runs) for c in grid.configs})
    blocks: list[Block] = [
        Heading(f"seqexp report: {sel.target}", 1),
        Para(f"{plural(len(sel.finished), 'finished run')} of {what} in {plural(len(grid.configs), 'configuration')} "
             f"({'/'.join(map(str, n_seeds))} seed{'' if n_seeds == [1] else 's'} each); "
             f"{plural(len(sel.excluded), 'run')} excluded."),
        Heading("Verdict"),
        *(Para(p) for p in verdict_paragraphs(grid, data.comparisons, data.resamples > 0)),
        Heading("1. Test scores per configuration"),
        Para("All scores ×100 with two decimals: mean ± sample standard deviation (n − 1) over seeds of the "
             "MLflow metrics `test_accuracy`, `test_precision`, `test_recall`, `test_f1` (no ± with one seed). "
             "F1 is seqeval's entity-level micro F1 for NER/chunking and the macro F1 over tags for POS. "
             f"{BEST} and bold: the best mean F1 of each model. Train time in seconds."),
        main_table(grid),
        Heading("2. Per-type test F1"),
        Para("Mean over seeds of `test_f1_<TYPE>`, ×100."),
        *per_type_tables(grid),
        Heading("3. Validation learning curves"),
        Image(figures["curves"], "Validation F1 per epoch, mean over seeds, one line per configuration"),
        Heading("4. Test F1 per model and strategy"),
        Image(figures["bars"], "Test F1 ×100, mean over seeds, error bars = std over seeds"),
        Heading("5. Cost against quality"),
        Image(figures["cost"], "Test F1 against train time, Pareto frontier dashed"),
        Para(pareto_text(grid)),
        Heading("6. Significance"),
        *significance_blocks(data),
        Heading("Excluded runs"),
        *excluded_blocks(data),
        Heading("Provenance"),
        *provenance_blocks(data),
    ]
    return blocks
