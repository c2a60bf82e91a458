"""The report's three figures, as PNG files (Agg backend: no display needed).

* learning curves: mean validation F1 per epoch, one line per configuration;
* grouped bars: mean test F1 ± std per model, one bar per strategy;
* cost/quality: mean test F1 against mean train time, Pareto frontier drawn;
* expected validation performance (Dodge et al. 2019): expected best dev F1 of
  each cell against the number of candidates tried.

Error bars are drawn only where there are at least two seeds: one seed has no spread to show.
Legends sit to the right of the axes, never on the data, and points are named in the legend
(colour and marker), not by text labels that could overlap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from seqexp.report.aggregate import DEV_METRIC, Cell, Config, expected_max, pareto_front  # noqa: E402

DPI = 110
log = logging.getLogger("seqexp.report.plots")


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _finish(ax, xlabel: str, ylabel: str, title: str, empty: str, legend_size: int, legend_loc: str,
            integer_x: bool = False) -> None:
    """Labels, grid, and a legend, or ``empty`` in the middle when nothing was drawn."""
    ax.set_xlabel(xlabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        _legend_outside(ax, legend_size)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)


def _legend_outside(ax, size: int) -> None:
    """The legend to the right of the axes (the figure grows to hold it): it never covers a line or a point."""
    ax.legend(fontsize=size, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def layout_problems(fig) -> list[str]:
    """What makes a figure hard to read: a legend over its axes, labels (annotations, x tick labels) that overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None and legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)):
            problems.append(f"{ax.get_title()!r}: the legend covers the axes")
        for kind, texts in (("labels", ax.texts), ("x tick labels", ax.get_xticklabels())):
            shown = [t for t in texts if t.get_visible() and t.get_text()]
            boxes = [t.get_window_extent(renderer) for t in shown]
            problems += [f"{ax.get_title()!r}: {kind} {shown[i].get_text()!r} and {shown[j].get_text()!r} overlap"
                         for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    return problems


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    for problem in layout_problems(fig):
        log.warning("%s: %s", path.name, problem)
    fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")  # keeps the outside legend in the image
    plt.close(fig)
    return path


def learning_curves(configs: Sequence[Config], histories: Mapping[str, list[tuple[int, float]]], path: Path,
                    metric: str = "val_f1") -> Path:
    """Mean over seeds of ``metric`` per epoch (seeds that stopped early average over fewer runs)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for config, color in zip(configs, _colors(len(configs))):
        per_step: dict[int, list[float]] = {}
        for run in config.runs:
            for step, value in histories.get(run.run_id, []):
                per_step.setdefault(step, []).append(value)
        if not per_step:
            continue
        steps = sorted(per_step)
        ys = [100 * sum(per_step[s]) / len(per_step[s]) for s in steps]
        ax.plot([s + 1 for s in steps], ys, marker="o", color=color, label=f"{config.label} (n={len(config.runs)})")
    _finish(ax, "epoch", f"{metric} ×100 (mean over seeds)", "Validation learning curves",
            f"no {metric} history logged", 7, "upper left", integer_x=True)
    return _save(fig, path)


Series = tuple[str, list[float], list[float], list[float | None]]


def bar_series(groups: Mapping[str, Sequence[Config]]) -> list[Series]:
    """Per strategy: bar x positions, mean test F1 ×100 and std ×100 (None with a single seed: no error bar)."""
    strategies = list(dict.fromkeys(c.strategy for cs in groups.values() for c in cs))
    names = list(groups)
    width = 0.8 / max(1, len(strategies))
    out = []
    for j, strategy in enumerate(strategies):
        xs, ys, errs = [], [], []
        for i, name in enumerate(names):
            config = next((c for c in groups[name] if c.strategy == strategy), None)
            if config is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(100 * (config.mean("test_f1") or 0.0))
            std = config.std("test_f1")
            errs.append(None if std is None else 100 * std)
        out.append((strategy, xs, ys, errs))
    return out


def f1_bars(groups: Mapping[str, Sequence[Config]], path: Path) -> Path:
    """Grouped bars: x = model, one bar per strategy, error bar = std over seeds (none for a single seed)."""
    series = bar_series(groups)
    names = list(groups)
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.5 * len(names) * max(1, len(series))), 4.8))
    for (strategy, xs, ys, errs), color in zip(series, _colors(len(series))):
        ax.bar(xs, ys, width, color=color, label=strategy or "(single strategy)")
        with_err = [(x, y, e) for x, y, e in zip(xs, ys, errs) if e is not None]
        if with_err:
            ax.errorbar([x for x, _, _ in with_err], [y for _, y, _ in with_err], yerr=[e for _, _, e in with_err],
                        fmt="none", ecolor="black", capsize=3, elinewidth=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test F1 ×100 (mean over seeds; ± std with ≥2 seeds)")
    ax.set_title("Test F1 per model and strategy")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax, 8)
    return _save(fig, path)


def cost_quality(configs: Sequence[Config], path: Path) -> Path:
    """Test F1 against train time per configuration, with the Pareto frontier (per dataset)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    points = [(c.mean("train_time_s"), c.mean("test_f1")) for c in configs]
    kept = [(c, (t, 100 * f)) for c, (t, f) in zip(configs, points) if t is not None and f is not None]
    markers = "osD^vP*Xh<>p"
    for i, ((config, (t, f)), color) in enumerate(zip(kept, _colors(len(kept)))):
        # Named in the legend, not by a text label beside the point: labels of close points overlapped.
        ax.scatter([t], [f], color=color, marker=markers[i % len(markers)], s=50, zorder=3, label=config.label)
    datasets = sorted({c.axes.get("dataset", "") for c, _ in kept})
    for k, dataset in enumerate(datasets):
        sub = [p for c, p in kept if c.axes.get("dataset", "") == dataset]
        front = [sub[i] for i in pareto_front(sub)]
        label = "Pareto frontier" + (f" ({dataset})" if len(datasets) > 1 else "")
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", drawstyle="steps-post",
                color="black" if k == 0 else f"C{k}", alpha=0.7, zorder=2, label=label)
    times = [p[0] for _, p in kept if p[0] > 0]
    if times and max(times) / min(times) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.1, y=0.1)
    _finish(ax, "train time, s (mean over seeds)", "test F1 ×100 (mean over seeds)",
            "Cost / quality: test F1 against train time", "no train_time_s logged", 8, "lower right")
    return _save(fig, path)


def expected_validation(cells: Sequence[Cell], path: Path) -> Path:
    """Expected best dev F1 of each cell against n candidates tried (sampling its candidates with replacement)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    on = {id(cell): cell.selection_seeds or None for cell in cells}  # the dev scores the pick was chosen on
    curves = [(cell, [m for c in cell.candidates if (m := c.mean(DEV_METRIC, on[id(cell)])) is not None])
              for cell in cells]
    curves = [(cell, vals) for cell, vals in curves if vals]
    top = max((len(v) for _, v in curves), default=1)
    ns = list(range(1, max(top, 2) + 1))
    for (cell, vals), color in zip(curves, _colors(len(curves))):
        ys = [100 * expected_max(vals, n) for n in ns]
        ax.plot(ns, ys, color=color, label=f"{cell.label} ({len(vals)} candidate{'s' if len(vals) != 1 else ''})")
        ax.scatter([len(vals)], [ys[len(vals) - 1]], color=color, zorder=3)
    _finish(ax, "candidates tried (n)", "expected best dev F1 ×100",
            "Expected validation performance (dot: candidates actually tried)", "no dev scores", 7, "lower right",
            integer_x=True)
    return _save(fig, path)
