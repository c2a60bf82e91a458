"""The report's sections as render blocks: verdict, tables, selection, figures, significance, provenance.

Every table number is an MLflow metric of the listed runs, ×100, mean (± sample
std) over seeds, two decimals: nothing is recomputed for the tables, so a
reader can check any cell against the MLflow UI. The exception is older runs
without ``best_val_f1``/``best_epoch``/``max_epochs``: those are derived from
the ``val_f1`` history (or the ``trainer.max_epochs`` param) and the report
says so under Provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seqexp import identity
from seqexp.report.aggregate import DEV_METRIC, MISSING, Config, Grid, grid_edge, pareto_front
from seqexp.report.aso import TAU
from seqexp.report.render import Block, Bullets, Heading, Image, Para, Table
from seqexp.report.significance import ALPHA, MIN_SEEDS, format_p
from seqexp.report.verdict import budget_text, score, verdict_paragraphs

if TYPE_CHECKING:
    from seqexp.report.build import ReportData

METRIC_COLUMNS = (("accuracy", "test_accuracy"), ("precision", "test_precision"), ("recall", "test_recall"),
                  ("F1", "test_f1"))
BEST = "★"
PICK = "✔"
VERDICT_RULE = (
    f"Verdict rule: with at least {MIN_SEEDS} seeds shared by both strategies, a win is **significant** when ASO "
    f"finds the winner almost stochastically dominant over seeds (ε_min < {TAU}) AND the Holm-adjusted "
    f"paired-bootstrap p over test sentences is below {ALPHA}; otherwise it is **not significant**. With fewer "
    f"than {MIN_SEEDS} shared seeds the seed-level test cannot run and the comparison is **inconclusive: N "
    "seed(s)**, whatever the sentence bootstrap's p (shown all the same).")
_HYPER_PREFIX = tuple(f"{axis}." for axis in identity.STRATEGY_AXES)
_HYPER_SKIP_SUFFIX = (".name", ".strategy", "._target_", "._partial_", ".betas", ".eps")
_HYPER_EXACT = {"trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.batch_size",
                "trainer.accumulate_grad_batches", "dataset.max_train_sentences"}


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


def _mean(c: Config, key: str, digits: int = 1) -> str:
    mean = c.mean(key)
    return "—" if mean is None else (f"{mean:.0f}" if digits == 0 else f"{mean:.{digits}f}")


def main_table(grid: Grid) -> Table:
    """One row per cell (its picked candidate): scores, seeds, cost and budget."""
    best = {id(c) for c in grid.best().values()}
    tuned = ["picked " + ", ".join(grid.tuned)] if grid.tuned else []
    header = [*grid.shown_axes, *tuned, "seeds", *(name for name, _ in METRIC_COLUMNS), "dev F1",
              "trainable params", "train time (s)", "max epochs", "epochs run", "best epoch"]
    rows = []
    for c in grid.configs:
        cells = [score(c, key) for _, key in METRIC_COLUMNS]
        if id(c) in best:
            cells[-1] = f"**{cells[-1]}** {BEST}"
        picked = [", ".join(c.tuned.values()) or MISSING] if grid.tuned else []
        rows.append([*(c.axes[a] for a in grid.shown_axes), *picked, str(len(c.runs)), *cells,
                     score(c, DEV_METRIC), _params(c), _time(c), _mean(c, "max_epochs", 0), _mean(c, "epochs_run"),
                     _mean(c, "best_epoch")])
    n_left = len(grid.shown_axes) + len(tuned)
    align = ["l"] * n_left + ["r"] * (len(header) - n_left)
    return Table(header, rows, align)


def _hyper(key: str) -> bool:
    if not identity.changes_result(key) or key.endswith(_HYPER_SKIP_SUFFIX):
        return False
    if key.startswith(_HYPER_PREFIX) or key in _HYPER_EXACT:
        return True
    return key.startswith("trainer.") and any(w in key for w in ("stop", "patience", "min_delta", "monitor"))


def selection_blocks(grid: Grid) -> list[Block]:
    """What was tuned (selection table with every candidate's dev score) and what was fixed."""
    blocks: list[Block] = []
    if grid.tuned:
        blocks.append(Para(
            "Tuned hyperparameters (the runs' `seqexp.tuned` tag or `tuned` config, and `--tuned`): "
            + ", ".join(f"`{k}`" for k in grid.tuned) + ". For each cell the candidate (combination of tuned "
            "values) with the best **mean dev F1 over seeds** (`best_val_f1`, the dev F1 of each run's best "
            "epoch) is picked, on the seeds every candidate of the cell has a dev score for (its *selection "
            "seeds*: all of them when every candidate ran every seed); ties go to the candidate with fewer seeds "
            "missing a dev score, then to the first in sorted order. The test set takes no part: test scores are "
            f"shown only for the picks ({PICK})."))
        # A column for the selection seeds' dev F1 only where some cell chose on fewer seeds than a candidate ran.
        subset = any(set(cell.selection_seeds) != set(c.dev_seeds()) for cell in grid.cells
                     for c in cell.candidates if cell.selection_seeds)
        rows = []
        for cell in grid.cells:
            for c in cell.candidates:
                n_dev = len(c.dev_seeds())
                seeds = str(len(c.runs)) + ("" if n_dev == len(c.runs) else f" ({n_dev} with dev)")
                note = PICK if c is cell.pick else (cell.reason if cell.pick is None else "")
                row = [cell.group, cell.strategy, c.candidate, seeds, score(c, DEV_METRIC)]
                if subset:
                    row += [", ".join(cell.selection_seeds) or MISSING,
                            score(c, DEV_METRIC, cell.selection_seeds or None)]
                rows.append([*row, note])
        head = ["model", "strategy", "candidate", "seeds", "dev F1 (mean ± std)"]
        head += ["selection seeds", "dev F1 on them"] if subset else []
        blocks.append(Table([*head, "picked"], rows, ["l", "l", "l", "r", "r"] + (["r", "r"] if subset else []) + ["l"]))
        for cell in grid.cells:
            if cell.pick is not None and cell.reason:
                blocks.append(Para(f"{cell.label}: {cell.reason}."))
        edges = [(cell, edge) for cell in grid.cells if (edge := grid_edge(cell)) is not None]
        if edges:
            blocks.append(Para(
                "Picks at an end of their grid (the best value tried is the largest or smallest): "
                + ", ".join(f"{cell.label} (`{key}={cell.pick.tuned[key]}`, "
                            f"{'largest' if picked > neighbour else 'smallest'})" for cell, (key, picked, neighbour)
                            in edges)
                + ". Their best value may lie beyond what was tried: `python -m seqexp.report <target> "
                  "--beyond-edges` prints the next candidate of each."))
        dropped = [cell.label for cell in grid.cells if cell.pick is None]
        if dropped:
            blocks.append(Para("Left out of every table and figure (no candidate could be picked on dev): "
                               + ", ".join(dropped) + "."))
    else:
        blocks.append(Para("Nothing was tuned (no run declares tuned keys and no `--tuned` was given): "
                           "each cell has one candidate, and it is the one reported."))
    keys = sorted({k for c in grid.configs for r in c.runs for k in r.params if _hyper(k)}
                  - set(grid.tuned) - set(grid.extra_axes))
    same, varying = [], []
    for k in keys:
        values = {r.params.get(k, MISSING) for c in grid.configs for r in c.runs}
        (same if len(values) == 1 else varying).append(k)
    if same:
        first = grid.configs[0].runs[0].params
        blocks.append(Para("Fixed in every run: " + ", ".join(f"`{k}={first.get(k, MISSING)}`" for k in same) + "."))
    if varying:
        blocks.append(Para("Fixed per cell (not tuned; they come with the strategy or the study):"))
        rows = [[c.group, c.strategy, *(" / ".join(sorted({r.params.get(k, MISSING) for r in c.runs}))
                                        for k in varying)] for c in grid.configs]
        blocks.append(Table(["model", "strategy", *varying], rows, ["l", "l"] + ["r"] * len(varying)))
    return blocks


def show_expected_validation(grid: Grid) -> bool:
    """The expected-validation curve is shown whenever some cell tried at least 2 candidates with dev scores."""
    return any(sum(1 for c in cell.candidates if c.dev_seeds()) >= 2 for cell in grid.cells)


def expected_validation_blocks(grid: Grid, figure: Path | None) -> list[Block]:
    if figure is None:
        return [Para("Not shown: no cell tried more than one candidate.")]
    counts = sorted({sum(1 for c in cell.candidates if c.dev_seeds()) for cell in grid.cells})
    text = ("Expected best dev F1 after n candidates (Dodge et al. 2019, \"Show Your Work\"): the expected maximum "
            "of n draws with replacement from the cell's candidates' mean dev F1 on its selection seeds, from their empirical "
            "distribution (n = 1 is their mean; large n approaches the best). Shown whenever a cell has at least "
            "2 candidates. ")
    text += ("The cells tried different numbers of candidates (" + ", ".join(map(str, counts)) + "): compare them "
             "at the same n to see how much of a gap is budget.") if len(counts) > 1 else \
        f"Every cell tried {counts[0]} candidate{'s' if counts[0] != 1 else ''}."
    return [Para(text), Image(figure, "Expected best dev F1 against the number of candidates tried, per cell")]


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
        return [Para("Not tested (`--bootstrap 0`)."), Para(VERDICT_RULE)]
    if not data.comparisons:
        return [Para("Nothing to compare: every model has a single strategy."), Para(VERDICT_RULE)]
    intro = Para(
        "Two tests per pair of strategies of one model, on the seeds BOTH ran. (1) Seeds are the unit of "
        "evidence: Almost Stochastic Order (ASO; Dror et al. 2019, with the ε_min of del Barrio et al. 2018 as "
        f"in Ulmer et al. 2022) on the per-seed test scores, {data.resamples} bootstrap resamples, seed "
        f"{data.seed}; ε_min < {TAU} means the winner almost stochastically dominates. Its confidence level is "
        f"Bonferroni-adjusted: 1 − {ALPHA}/k with k the number of pairs in the model's table. (2) Paired "
        f"bootstrap over test sentences ({data.resamples} resamples, seed {data.seed}): each resample recomputes "
        "every run's corpus-level score from its saved test predictions (entity-level F1 with "
        "seqeval's entities for NER/chunking, word accuracy for POS), averages over the shared seeds and takes "
        "the difference; p is two-sided, then Holm–Bonferroni-adjusted over the pairs of the model's table.")
    sentences = Bullets([c.sentence for c in data.comparisons])
    rows = []
    for c in data.comparisons:
        r = c.result
        if r is None:
            rows.append([c.group, c.a.strategy, c.b.strategy, "—", "—", "—", "—", "—", "—", "—", c.word])
            continue
        p_holm = c.p_holm if c.p_holm is not None else r.p_value
        rows.append([c.group, c.a.strategy, c.b.strategy, c.metric, f"{100 * r.delta:+.2f}",
                     f"[{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}]", _p(r.p_value), _p(p_holm),
                     "—" if c.aso is None else f"{c.aso.eps_min:.2f}", str(r.n_seeds), c.word])
    table = Table(["model", "A", "B", "metric", "Δ A−B ×100", "95% interval", "p", "Holm p", "ε_min",
                   "shared seeds", "verdict"], rows, ["l", "l", "l", "l", "r", "r", "r", "r", "r", "r", "l"])
    return [intro, Para("The verdict column follows the rule stated under Verdict."), sentences, table]


def _p(p: float) -> str:
    return format_p(p).removeprefix("p=").removeprefix("p")


def run_ref(sel, run) -> str:
    """A run id, linked to its MLflow UI page when the report knows the UI."""
    if not sel.ui_base:
        return f"`{run.run_id}`"
    from seqexp.tracking import run_url

    return f"[`{run.run_id}`]({run_url(sel.ui_base, run.experiment_id, run.run_id)})"


def excluded_blocks(data: "ReportData") -> list[Block]:
    sel = data.selection
    if not sel.excluded:
        return [Para("None: every run finished with test metrics.")]
    rows = [[run_ref(sel, r), r.name, reason[:300]] for r, reason in sel.excluded]
    blocks: list[Block] = [Para(f"{plural(len(sel.excluded), 'run')} {'is' if len(sel.excluded) == 1 else 'are'} "
                                "in no table or figure:"),
                           Table(["run id", "run name", "status / reason"], rows)]
    if any("duplicate of" in reason for _, reason in sel.excluded):
        blocks.append(Para("A configuration and seed that FINISHED more than once (same `seqexp.fingerprint`, or "
                           "the same cell, candidate and seed) counts once: the earliest run is kept."))
    return blocks


def provenance_blocks(data: "ReportData") -> list[Block]:
    sel = data.selection
    exps = ", ".join(f"{name} (id {i})" for i, name in sel.experiments.items())
    commits: dict[str, int] = {}
    for r in sel.finished:
        commits[r.commit] = commits.get(r.commit, 0) + 1
    items = [f"Tracking URI: `{sel.uri}`", f"Experiment: {exps}"]
    if sel.ui_base:
        local = not sel.uri.startswith(("http://", "https://"))
        items.append(f"Run ids link to their page in the MLflow UI at {sel.ui_base}"
                     + (" (start it with `make ui`, which serves this sqlite store there)" if local else ""))
    if sel.sweep_id:
        items.append(f"Sweep id: `{sel.sweep_id}`")
    for p in sel.parents:
        items.append(f"Sweep parent run: {run_ref(sel, p)} ({p.name}, {p.status})"
                     + (f", overrides `{p.tags['overrides']}`" if p.tags.get("overrides") else ""))
    items.append("Git commit(s): " + ", ".join(f"`{c}` ({n} run{'s' if n != 1 else ''})" for c, n in commits.items())
                 + (" — **runs come from different commits**" if len(commits) > 1 else ""))
    items.append(f"Significance: ASO over seeds and paired bootstrap over test sentences, {data.resamples} "
                 f"resamples each, seed {data.seed}")
    derived: dict[str, int] = {}
    for r in sel.finished:
        for key in r.derived:
            derived[key] = derived.get(key, 0) + 1
    if derived:
        items.append("Derived for older runs that did not log them: " + ", ".join(
            f"`{k}` ({n} run{'s' if n != 1 else ''}; " + ("from `trainer.max_epochs`" if k == "max_epochs"
                                                          else "from the `val_f1` history") + ")"
            for k, n in derived.items()))
    items.append(f"Generated {data.generated}")
    rows = []
    for cell in data.grid.cells:
        for c in cell.candidates:
            picked = c is cell.pick
            for r in c.runs:
                dev = r.metrics.get(DEV_METRIC)
                rows.append([run_ref(sel, r), r.name, cell.label, c.candidate, r.seed,
                             "—" if dev is None else f"{100 * dev:.2f}",
                             f"{100 * r.metrics['test_f1']:.2f}" if picked else "— (not picked)", r.commit[:10]])
    which = "this run" if len(rows) == 1 else f"these {len(rows)} runs"
    return [Bullets(items), Para(f"Every number above was built from {which} (test F1 only for the picked candidates):"),
            Table(["run id", "run name", "cell", "candidate", "seed", "dev F1", "test F1", "commit"], rows,
                  ["l", "l", "l", "l", "r", "r", "r", "l"])]


def document(data: "ReportData", figures: dict[str, Path]) -> list[Block]:
    """The whole report, top to bottom."""
    sel, grid = data.selection, data.grid
    what = f"sweep `{sel.target}`" if sel.kind == "sweep" else f"experiment `{sel.target}`"
    n_seeds = sorted({len(c.runs) for c in grid.configs})
    n_cands = len(grid.candidates())
    blocks: list[Block] = [
        Heading(f"seqexp report: {sel.target}", 1),
        Para(f"{plural(len(sel.finished), 'finished run')} of {what} in {plural(len(grid.cells), 'cell')} "
             + (f"({plural(n_cands, 'candidate')} in all; reported: the pick of each, " if n_cands > len(grid.cells)
                else "(")
             + f"{'/'.join(map(str, n_seeds))} seed{'' if n_seeds == [1] else 's'} each); "
             f"{plural(len(sel.excluded), 'run')} excluded."),
        Heading("Verdict"),
        *(Para(p) for p in verdict_paragraphs(grid, data.comparisons, data.resamples > 0)),
        Para(VERDICT_RULE),
        Heading("1. Test scores per cell"),
        Para("All scores ×100 with two decimals: mean ± sample standard deviation (n − 1) over seeds of the "
             "MLflow metrics `test_accuracy`, `test_precision`, `test_recall`, `test_f1` (no ± with one seed), "
             "for the candidate picked on dev in each cell (section 2). "
             "F1 is seqeval's entity-level micro F1 for NER/chunking and the macro F1 over tags for POS. "
             f"{BEST} and bold: the best mean test F1 of each model. Dev F1: `best_val_f1`, the dev F1 of the "
             "epoch whose weights were tested. Budget: `max_epochs` (epochs allowed), mean `epochs_run` (early "
             "stopping may end sooner) and mean `best_epoch` (1-based); train time in seconds."),
        main_table(grid),
        Para(budget_text(grid)),
        Heading("2. Selection on dev: what was tuned, what was fixed"),
        *selection_blocks(grid),
        Heading("3. Expected validation performance"),
        *expected_validation_blocks(grid, figures.get("expected")),
        Heading("4. Per-type test F1"),
        Para("Mean over seeds of `test_f1_<TYPE>`, ×100."),
        *per_type_tables(grid),
        Heading("5. Validation learning curves"),
        Image(figures["curves"], "Validation F1 per epoch, mean over seeds, one line per cell (its pick)"),
        Heading("6. Test F1 per model and strategy"),
        Image(figures["bars"], "Test F1 ×100, mean over seeds; error bars = std over seeds, only with ≥2 seeds"),
        Heading("7. Cost against quality"),
        Image(figures["cost"], "Test F1 against train time, Pareto frontier dashed"),
        Para(pareto_text(grid)),
        Heading("8. Significance"),
        *significance_blocks(data),
        Heading("Excluded runs"),
        *excluded_blocks(data),
        Heading("Provenance"),
        *provenance_blocks(data),
    ]
    return blocks
