"""Group runs into configurations (everything but the seed) and summarise each over its seeds.

A configuration is the tuple of grid axes (``model``, ``dataset``, ``freeze``,
``optim``, ``scheduler``, ``head``) PLUS any flattened config value that differs
between runs sharing those axes (say ``optim.lr`` in a learning-rate sweep):
otherwise such runs would be averaged together as if they were seeds. Values
that say where or how a run executed (paths, tracking, threads, devices) never
split a configuration.

Within a model, configurations are called *strategies* and named by the axes
that vary, e.g. ``unfreeze+adam``; the best one per model is the one with the
highest mean test F1.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from seqexp.report.collect import RunRecord

BASE_AXES = ("dataset", "model", "freeze", "optim", "scheduler", "head")
ALWAYS_SHOWN = ("model", "freeze", "optim")
STRATEGY_AXES = ("freeze", "optim", "scheduler", "head")
TABLE_METRICS = ("test_accuracy", "test_precision", "test_recall", "test_f1")
PER_TYPE_PREFIX = "test_f1_"
_IGNORED_EXACT = {
    "seed", "labels", "trainer.accelerator", "trainer.devices", "trainer.num_workers", "trainer.num_threads",
    "trainer.host_mmap_threshold_mib", "trainer.eval_batch_size", "trainer.log_every_n_steps", "trainer.compile", "dataset.source", "dataset.hub_id",
}
_IGNORED_PREFIX = ("tracking.", "hydra.")
_IGNORED_SUFFIX = ("data_dir", "cache_dir")
MISSING = "—"


def _natural(value: str) -> tuple:
    """Sort "s2" before "s10" and numbers numerically."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", value) if p)


def _ignored(key: str) -> bool:
    return key in _IGNORED_EXACT or key.startswith(_IGNORED_PREFIX) or key.endswith(_IGNORED_SUFFIX) \
        or key in BASE_AXES


@dataclass
class Config:
    """One configuration and its runs (one per seed, in seed order)."""

    axes: dict[str, str]
    runs: list[RunRecord]
    group: str = ""
    strategy: str = ""

    @property
    def seeds(self) -> list[str]:
        return [r.seed for r in self.runs]

    @property
    def label(self) -> str:
        return f"{self.group} {self.strategy}".strip()

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def mean(self, metric: str) -> float | None:
        vals = self.values(metric)
        return statistics.fmean(vals) if vals else None

    def std(self, metric: str) -> float | None:
        """Sample standard deviation (n - 1) over seeds; None with fewer than two seeds."""
        vals = self.values(metric)
        return statistics.stdev(vals) if len(vals) > 1 else None

    def per_type(self) -> list[str]:
        """Entity types (or tags) with per-type test F1 in any run."""
        return sorted({k[len(PER_TYPE_PREFIX):] for r in self.runs for k in r.metrics if k.startswith(PER_TYPE_PREFIX)})


@dataclass
class Grid:
    """All configurations, which axes vary (table columns) and how strategies are named."""

    configs: list[Config]
    shown_axes: list[str]
    strategy_axes: list[str]
    extra_axes: list[str] = field(default_factory=list)

    def groups(self) -> dict[str, list[Config]]:
        """Configurations per model (per model and dataset when datasets vary), in table order."""
        out: dict[str, list[Config]] = {}
        for c in self.configs:
            out.setdefault(c.group, []).append(c)
        return out

    def best(self) -> dict[str, Config]:
        """The configuration with the highest mean test F1 per group."""
        return {g: max(cs, key=lambda c: c.mean("test_f1") or -math.inf) for g, cs in self.groups().items()}

    def datasets(self) -> list[str]:
        return sorted({c.axes.get("dataset", MISSING) for c in self.configs}, key=_natural)


def extra_axes(runs: Sequence[RunRecord]) -> list[str]:
    """Flattened params that differ between runs with the same grid axes (and are not locations)."""
    by_axes: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        by_axes.setdefault(tuple(r.params.get(a, MISSING) for a in BASE_AXES), []).append(r)
    keys = sorted({k for r in runs for k in r.params if not _ignored(k)})
    extra = []
    for key in keys:
        if any(len({r.params.get(key, MISSING) for r in group}) > 1 for group in by_axes.values()):
            extra.append(key)
    return extra


def _varying(runs: Iterable[RunRecord], axis: str) -> bool:
    return len({r.params.get(axis, MISSING) for r in runs}) > 1


def group_configs(runs: Sequence[RunRecord]) -> Grid:
    """Configurations of ``runs`` (which must all be complete, FINISHED runs)."""
    extras = extra_axes(runs)
    axes_order = [*BASE_AXES, *extras]
    shown = [a for a in axes_order if a in ALWAYS_SHOWN or _varying(runs, a)]
    strategy_axes = [a for a in shown if a in STRATEGY_AXES or a in extras]
    multi_dataset = _varying(runs, "dataset")
    by_key: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        by_key.setdefault(tuple(r.params.get(a, MISSING) for a in axes_order), []).append(r)
    configs = []
    for key in sorted(by_key, key=lambda k: tuple(_natural(v) for v in k)):
        axes = dict(zip(axes_order, key))
        members = sorted(by_key[key], key=lambda r: _natural(r.seed))
        group = axes["model"] + (f" on {axes['dataset']}" if multi_dataset else "")
        parts = [axes[a] if a in BASE_AXES else f"{a}={axes[a]}" for a in strategy_axes]
        configs.append(Config(axes, members, group, "+".join(parts)))
    return Grid(configs, shown, strategy_axes, extras)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and quality (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
