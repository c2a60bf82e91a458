"""Build a report: select runs, aggregate, test significance, draw, write report.md and report.html.

:func:`collect_report` does everything that needs the store and returns the
numbers (:class:`ReportData`); :func:`build_report` also writes the files.
Tests and notebooks can use the first to check numbers without parsing text.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqexp.report.aggregate import DEV_METRIC, Grid, group_configs
from seqexp.report.collect import (
    ReportError,
    Selection,
    download_predictions,
    metric_history,
    open_client,
    resolve_uri,
    safe_name,
    select_runs,
    with_fallbacks,
)
from seqexp.report.compare import Comparison, compare_strategies
from seqexp.report.render import to_html, to_markdown
from seqexp.report.sections import METRIC_COLUMNS, document, show_expected_validation

HISTORY_METRIC = "val_f1"
BUDGET_METRICS = ("max_epochs", "epochs_run", "best_epoch", "train_time_s")


@dataclass
class ReportData:
    """Everything a report shows, before rendering."""

    selection: Selection
    grid: Grid
    histories: dict[str, list[tuple[int, float]]]
    comparisons: list[Comparison]
    resamples: int
    seed: int
    generated: str

    def table(self) -> list[dict[str, Any]]:
        """The main table as data, one row per cell's picked candidate: axes, tuned values, seeds, run ids,
        raw mean/std of each metric (not ×100) and budget, best flag."""
        best = {id(c) for c in self.grid.best().values()}
        rows = []
        for c in self.grid.configs:
            row: dict[str, Any] = {"axes": dict(c.axes), "group": c.group, "strategy": c.strategy,
                                   "tuned": dict(c.tuned), "seeds": c.seeds, "run_ids": [r.run_id for r in c.runs],
                                   "best": id(c) in best}
            for key in (*(k for _, k in METRIC_COLUMNS), "trainable_params", DEV_METRIC, *BUDGET_METRICS):
                row[key] = {"mean": c.mean(key), "std": c.std(key)}
            rows.append(row)
        return rows

    def selection_table(self) -> list[dict[str, Any]]:
        """Every candidate of every cell: tuned values, seeds, dev mean/std and whether it was picked (no test)."""
        rows = []
        for cell in self.grid.cells:
            for c in cell.candidates:
                rows.append({"axes": dict(cell.axes), "group": cell.group, "strategy": cell.strategy,
                             "tuned": dict(c.tuned), "seeds": c.seeds, "dev_seeds": c.dev_seeds(),
                             "run_ids": [r.run_id for r in c.runs], "picked": c is cell.pick,
                             DEV_METRIC: {"mean": c.mean(DEV_METRIC), "std": c.std(DEV_METRIC)},
                             "selection_seeds": list(cell.selection_seeds),
                             "selection_" + DEV_METRIC: c.mean(DEV_METRIC, cell.selection_seeds or None)})
        return rows


def collect_report(uri: str, target: str, bootstrap: int = 1000, seed: int = 0,
                   tuned: Sequence[str] = (), ui_url: str | None = None) -> ReportData:
    """Read the runs of sweep/experiment ``target`` from ``uri`` and compute every number of the report.

    ``tuned``: config keys to treat as tuned hyperparameters, besides the runs' ``seqexp.tuned`` tags.
    """
    uri = resolve_uri(uri)
    client = open_client(uri)
    selection = select_runs(client, uri, target)
    base = ui_url or (uri if uri.startswith(("http://", "https://")) else DEFAULT_UI)
    selection = dataclasses.replace(selection, ui_base=base.rstrip("/"))
    if not selection.finished:
        counts = ", ".join(f"{r.name}: {why}" for r, why in selection.excluded[:5])
        raise ReportError(f"{selection.kind} {target!r} has no finished runs with test metrics"
                          + (f" ({len(selection.excluded)} excluded: {counts})" if counts else ""))
    histories = {r.run_id: metric_history(client, r.run_id, HISTORY_METRIC) for r in selection.finished}
    selection = dataclasses.replace(selection, finished=[with_fallbacks(r, histories[r.run_id])
                                                         for r in selection.finished])
    known = {k for r in selection.finished for k in r.params}
    unknown = [k for k in tuned if k not in known]
    if unknown:
        close = sorted({m for u in unknown for m in difflib.get_close_matches(u, known, n=3)})
        raise ReportError(f"--tuned {','.join(unknown)}: no run of {selection.kind} {target!r} has such a param"
                          + (f" (similar: {', '.join(close)})" if close else ""))
    grid = group_configs(selection.finished, tuned)
    if grid.repeated:
        gone = {r.run_id for r, _ in grid.repeated}
        selection = dataclasses.replace(selection, finished=[r for r in selection.finished if r.run_id not in gone],
                                        excluded=[*selection.excluded, *grid.repeated])
    comparisons = compare_strategies(grid, lambda run, dst: download_predictions(client, run, dst),
                                     resamples=bootstrap, seed=seed)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ReportData(selection, grid, histories, comparisons, bootstrap, seed, generated)


def write_report(data: ReportData, out_dir: Path) -> Path:
    """Write the PNGs, report.md and a self-contained report.html into ``out_dir``; return report.md."""
    from seqexp.report import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "curves": plots.learning_curves(data.grid.configs, data.histories, out_dir / "learning_curves.png"),
        "bars": plots.f1_bars(data.grid.groups(), out_dir / "f1_by_strategy.png"),
        "cost": plots.cost_quality(data.grid.configs, out_dir / "cost_quality.png"),
    }
    if show_expected_validation(data.grid):
        figures["expected"] = plots.expected_validation(data.grid.cells, out_dir / "expected_validation.png")
    blocks = document(data, figures)
    md = out_dir / "report.md"
    md.write_text(to_markdown(blocks, out_dir), encoding="utf-8")
    (out_dir / "report.html").write_text(to_html(blocks, f"seqexp report: {data.selection.target}"),
                                         encoding="utf-8")
    return md


def default_out_dir(target: str) -> Path:
    return Path("reports") / safe_name(target)


# Where `make ui` serves a sqlite store: the run links of a report on one point there.
DEFAULT_UI = "http://127.0.0.1:5000"


def build_report(uri: str, target: str, out_dir: str | Path | None = None, bootstrap: int = 1000,
                 seed: int = 0, tuned: Sequence[str] = (), ui_url: str | None = None) -> Path:
    """The whole report for sweep id or experiment name ``target``; returns the path of report.md."""
    data = collect_report(uri, target, bootstrap=bootstrap, seed=seed, tuned=tuned, ui_url=ui_url)
    return write_report(data, Path(out_dir) if out_dir is not None else default_out_dir(target))
