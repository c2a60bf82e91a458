"""Group runs into cells (what is compared), their candidates (tuned values) and seeds; pick on dev.

A *cell* is the tuple of grid axes (``model``, ``dataset``, ``freeze``,
``optim``, ``scheduler``, ``head``) PLUS any flattened config value that differs
between runs sharing those axes (say ``optim.momentum`` in a sweep) and is not a
*tuned* key: otherwise such runs would be averaged together as if they were
seeds. Which values split a cell is the fingerprint's rule (``seqexp.identity``):
exactly the keys that change the result; those that only say where or how a run
executed (tracking, threads, devices, eval batch size, compilation, checkpoints)
never do.

Tuned keys are the hyperparameters a study declares it tunes (the runs' tag
``seqexp.tuned``, comma-separated, else their ``tuned`` config list; plus ``--tuned``). The *candidates* of a cell
are its distinct combinations of tuned values; each candidate has its seeds.
Each cell keeps ONE candidate, its *pick*: the best mean dev F1 (``best_val_f1``)
over the cell's *selection seeds*, the seeds on which every candidate has a dev
score (all seeds when every candidate ran every seed; a study may tune on one
seed and run only the pick on the others), ties broken by fewer seeds without a
dev score, then by the order of the tuned values (numbers numerically, smallest
first). Test metrics never take part. The main
table, verdicts, significance tests and plots see only the picks
(:attr:`Grid.configs`); the selection table shows every candidate.

Within a model, cells are called *strategies* and named by the compared axes
that vary, e.g. ``unfreeze+adam``; the best one per model is the pick with the
highest mean test F1.
"""

from __future__ import annotations

import ast
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from seqexp import identity
from seqexp.report.collect import RunRecord

BASE_AXES = identity.AXES
ALWAYS_SHOWN = identity.NAME_AXES
STRATEGY_AXES = identity.STRATEGY_AXES
TABLE_METRICS = ("test_accuracy", "test_precision", "test_recall", "test_f1")
PER_TYPE_PREFIX = "test_f1_"
MISSING = "—"
TUNED_TAG = "seqexp.tuned"
TUNED_PARAM = "tuned"  # the study's declaration in the config (a list), flattened to a param
DEV_METRIC = "best_val_f1"


def _natural(value: str) -> tuple:
    """Sort "s2" before "s10" and numbers numerically."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", value) if p)


def _value_key(value: str) -> tuple:
    """Order of tuned values: numbers numerically (1e-3 < 1e-2 < 5e-2), then other strings naturally."""
    try:
        return (0, float(value), ())
    except ValueError:
        return (1, 0.0, _natural(value))


def splits_cells(key: str) -> bool:
    """Whether runs whose param ``key`` differs are different configurations (``seqexp.identity``: it
    changes the result, as the fingerprint says), and the key is not the seed (repeats), a grid axis
    (a cell's own coordinates) or a param about the data."""
    return identity.changes_result(key) and key not in (identity.SEED, *BASE_AXES, *identity.DATA_PARAMS)


@dataclass
class Config:
    """One candidate of a cell (its compared ``axes`` plus ``tuned`` values) and its runs, one per seed."""

    axes: dict[str, str]
    runs: list[RunRecord]
    group: str = ""
    strategy: str = ""
    tuned: dict[str, str] = field(default_factory=dict)

    @property
    def seeds(self) -> list[str]:
        return [r.seed for r in self.runs]

    @property
    def label(self) -> str:
        return f"{self.group} {self.strategy}".strip()

    def values(self, metric: str, seeds: Iterable[str] | None = None) -> list[float]:
        """``metric`` of each run that logged it, on ``seeds`` only when given."""
        keep = None if seeds is None else set(seeds)
        return [r.metrics[metric] for r in self.runs if metric in r.metrics and (keep is None or r.seed in keep)]

    def mean(self, metric: str, seeds: Iterable[str] | None = None) -> float | None:
        vals = self.values(metric, seeds)
        return statistics.fmean(vals) if vals else None

    def std(self, metric: str, seeds: Iterable[str] | None = None) -> float | None:
        """Sample standard deviation (n - 1) over seeds; None with fewer than two seeds."""
        vals = self.values(metric, seeds)
        return statistics.stdev(vals) if len(vals) > 1 else None

    @property
    def candidate(self) -> str:
        """The tuned values, e.g. "optim.lr=0.001, freeze.lr_scale=10" ("—" when nothing is tuned)."""
        return ", ".join(f"{k}={v}" for k, v in self.tuned.items()) or MISSING

    def dev_seeds(self) -> list[str]:
        return [r.seed for r in self.runs if DEV_METRIC in r.metrics]

    def per_type(self) -> list[str]:
        """Entity types (or tags) with per-type test F1 in any run."""
        return sorted({k[len(PER_TYPE_PREFIX):] for r in self.runs for k in r.metrics if k.startswith(PER_TYPE_PREFIX)})


@dataclass
class Cell:
    """One compared cell: its candidates (one per tuned-value combination) and the one picked on dev."""

    axes: dict[str, str]
    group: str
    strategy: str
    candidates: list[Config]
    pick: Config | None
    reason: str = ""  # why there is no pick, or a note on it

    @property
    def label(self) -> str:
        return f"{self.group} {self.strategy}".strip()

    @property
    def seeds(self) -> list[str]:
        """Every seed any candidate ran, in natural order."""
        return sorted({s for c in self.candidates for s in c.seeds}, key=_natural)

    @property
    def selection_seeds(self) -> list[str]:
        """The seeds its candidates were compared on (:func:`selection_seeds`)."""
        return selection_seeds(self.candidates)


def selection_seeds(candidates: Sequence[Config]) -> list[str]:
    """The seeds on which every candidate with a dev score has one: the seeds candidates are compared on.

    Empty when those candidates share no seed; with one candidate, its own seeds with a dev score.
    """
    scored = [set(c.dev_seeds()) for c in candidates if c.dev_seeds()]
    return sorted(set.intersection(*scored), key=_natural) if scored else []


def pick_candidate(candidates: Sequence[Config]) -> tuple[Config | None, str]:
    """The candidate with the best mean dev F1 on the selection seeds, and a note.

    Never looks at test metrics. Candidates are compared on the seeds they all have a dev score on
    (:func:`selection_seeds`), so a candidate run on more seeds than the others (the pick of a study that
    tunes on one seed, then runs the pick on the rest) is not judged on seeds the others lack. When they
    share no seed, each is judged on all of its own, and the note says so.
    Ties: fewer of the cell's seeds without a dev score, then the order of the tuned values (numbers
    numerically, the smallest first).
    A lone candidate is the pick even without a dev score (there is nothing to choose);
    among several, candidates without any dev score cannot be picked.
    """
    shared = selection_seeds(candidates)
    if len(candidates) == 1:
        only = candidates[0]
        return only, "" if only.dev_seeds() else f"only candidate; no dev score ({DEV_METRIC})"
    eligible = [c for c in candidates if c.dev_seeds()]
    if not eligible:
        return None, f"no candidate has a dev score ({DEV_METRIC} or a val_f1 history): nothing to select on"
    seeds = {s for c in candidates for s in c.seeds}
    on = shared or None
    note = "" if shared else "its candidates share no seed with a dev score, so each was judged on its own seeds"

    def key(c: Config) -> tuple:
        return (-(c.mean(DEV_METRIC, on) or 0.0), len(seeds - set(c.dev_seeds())),
                tuple(_value_key(v) for v in c.tuned.values()))

    pick = min(eligible, key=key)
    if shared and set(pick.dev_seeds()) != set(shared):
        more = [s for s in pick.dev_seeds() if s not in shared]
        note = (f"picked on seed{'s' if len(shared) > 1 else ''} {', '.join(shared)} (the seeds every candidate "
                f"ran); seed{'s' if len(more) > 1 else ''} {', '.join(more)} of the pick {'were' if len(more) > 1 else 'was'} "
                "not part of the choice")
    return pick, note


def pick_overrides(cell: Cell) -> list[str] | None:
    """The command-line overrides (the ``overrides`` tag) of the run that made ``cell``'s pick on a selection
    seed, without ``seed=``: rerunning them with other seeds runs the pick on those seeds. None without one."""
    if cell.pick is None:
        return None
    for r in cell.pick.runs:
        if r.seed in cell.selection_seeds and r.tags.get("overrides"):
            return [o for o in r.tags["overrides"].split() if not o.startswith(f"{identity.SEED}=")]
    return None


def scaled_budget(cell: Cell, factor: float) -> list[str] | None:
    """The pick's overrides (:func:`pick_overrides`) with its epoch budget times ``factor``: the budget check.

    The budget is the pick's ``max_epochs`` (logged, or its ``trainer.max_epochs`` param). A ``trainer.max_epochs``
    override in the pick's own overrides is scaled where it stands (it overrides every strategy's budget); else
    ``freeze.max_epochs`` (the strategy's own), in place of the pick's or appended. None without overrides or a
    budget.
    """
    base = pick_overrides(cell)
    budgets = {r.metrics["max_epochs"] for r in cell.pick.runs if "max_epochs" in r.metrics} if base else set()
    if base is None or len(budgets) != 1:
        return None
    epochs = max(1, round(budgets.pop() * factor))
    key = "trainer.max_epochs" if any(o.startswith("trainer.max_epochs=") for o in base) else "freeze.max_epochs"
    if any(o.startswith(f"{key}=") for o in base):
        return [f"{key}={epochs}" if o.startswith(f"{key}=") else o for o in base]
    return [*base, f"{key}={epochs}"]


def grid_edge(cell: Cell) -> tuple[str, float, float] | None:
    """(key, pick's value, its neighbour's) when ``cell``'s pick is the largest or smallest value of its grid.

    Only for a cell that tunes one key, with at least 3 candidates (with 2, every pick is at an end) whose
    values are positive numbers; None otherwise, or when the pick lies inside the grid.
    """
    if cell.pick is None or len(cell.pick.tuned) != 1 or len(cell.candidates) < 3:
        return None
    (key,) = cell.pick.tuned
    try:
        values = sorted({float(c.tuned[key]) for c in cell.candidates})
    except (KeyError, ValueError):
        return None
    picked = float(cell.pick.tuned[key])
    if len(values) < 3 or values[0] <= 0 or picked not in (values[0], values[-1]):
        return None
    return key, picked, values[1] if picked == values[0] else values[-2]


def beyond_edge(cell: Cell) -> list[str] | None:
    """Overrides of one more candidate past the end of the grid where ``cell``'s pick lies, on its selection seeds.

    A pick at the largest (smallest) value of the grid (:func:`grid_edge`) says the best value may lie beyond
    it: the new value continues the grid's ratio between the pick and its neighbour (10, 20 -> 40; 1.0, 0.5 ->
    0.25), and the overrides are the pick's (:func:`pick_overrides`) with that value and ``seed=`` the
    selection seeds. None when the pick is inside the grid (or has no grid, or no overrides tag).
    """
    edge, base = grid_edge(cell), pick_overrides(cell)
    if edge is None or base is None or not cell.selection_seeds:
        return None
    key, picked, neighbour = edge
    new = picked * picked / neighbour
    ints = all(re.fullmatch(r"-?\d+", c.tuned[key]) for c in cell.candidates)
    text = str(int(new)) if ints and new == int(new) else repr(new)
    out = [o for o in base if not o.startswith(f"{key}=")]
    return [*out, f"{key}={text}", f"{identity.SEED}={','.join(cell.selection_seeds)}"]


@dataclass
class Grid:
    """The picked candidate of every cell (``configs``), all cells, which axes vary and what was tuned."""

    configs: list[Config]
    shown_axes: list[str]
    strategy_axes: list[str]
    extra_axes: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    repeated: list[tuple[RunRecord, str]] = field(default_factory=list)  # a seed run twice in one candidate

    def candidates(self) -> list[Config]:
        return [c for cell in self.cells for c in cell.candidates]

    def groups(self) -> dict[str, list[Config]]:
        """Configurations per model (per model and dataset when datasets vary), in table order."""
        out: dict[str, list[Config]] = {}
        for c in self.configs:
            out.setdefault(c.group, []).append(c)
        return out

    def best(self) -> dict[str, Config]:
        """The pick with the highest mean test F1 per group (the outcome reported, not a selection)."""
        return {g: max(cs, key=lambda c: c.mean("test_f1") or -math.inf) for g, cs in self.groups().items()}

    def binding_budgets(self) -> list[tuple[Config, int, int]]:
        """Picks whose best dev epoch was the last one allowed (``best_epoch`` = ``max_epochs``) in some seed:
        (pick, seeds where it was, seeds that logged both). More epochs might have raised their score."""
        out = []
        for c in self.configs:
            both = [r for r in c.runs if "best_epoch" in r.metrics and "max_epochs" in r.metrics]
            at_end = sum(1 for r in both if r.metrics["best_epoch"] >= r.metrics["max_epochs"])
            if at_end:
                out.append((c, at_end, len(both)))
        return out

    def datasets(self) -> list[str]:
        return sorted({c.axes.get("dataset", MISSING) for c in self.configs}, key=_natural)


def _declared(run: RunRecord) -> str:
    """A run's tuned keys, comma-separated: the ``seqexp.tuned`` tag, else the ``tuned`` param (a list)."""
    if TUNED_TAG in run.tags:
        return run.tags[TUNED_TAG]
    param = run.params.get(TUNED_PARAM, "")
    try:
        value = ast.literal_eval(param) if param.startswith("[") else param
    except (ValueError, SyntaxError):
        return param
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def tuned_keys(runs: Iterable[RunRecord], extra: Iterable[str] = ()) -> list[str]:
    """Union of the runs' declared tuned keys and ``extra`` (e.g. ``--tuned``), in first-seen order."""
    keys: dict[str, None] = {}
    for source in [*(_declared(r) for r in runs), ",".join(extra)]:
        for key in source.split(","):
            if key.strip():
                keys[key.strip()] = None
    return list(keys)


def extra_axes(runs: Sequence[RunRecord]) -> list[str]:
    """Flattened params that differ between runs with the same grid axes and change the result."""
    by_axes: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        by_axes.setdefault(tuple(r.params.get(a, MISSING) for a in BASE_AXES), []).append(r)
    keys = sorted({k for r in runs for k in r.params if splits_cells(k)})
    extra = []
    for key in keys:
        if any(len({r.params.get(key, MISSING) for r in group}) > 1 for group in by_axes.values()):
            extra.append(key)
    return extra


def _varying(runs: Iterable[RunRecord], axis: str) -> bool:
    return len({r.params.get(axis, MISSING) for r in runs}) > 1


def group_configs(runs: Sequence[RunRecord], tuned: Iterable[str] = ()) -> Grid:
    """Cells, candidates and picks of ``runs`` (complete, FINISHED runs, one per fingerprint).

    ``tuned`` adds tuned keys to those of the runs' ``seqexp.tuned`` tags. A seed that appears twice in
    one candidate (fingerprints that differ although no key that changes the result does: runs made
    under another ``seqexp.identity.FINGERPRINT_VERSION``) counts once: the earliest run stays, the
    others go to ``Grid.repeated`` with the reason.
    """
    tuned_all = tuned_keys(runs, tuned)
    tuned_set = set(tuned_all)
    extras = [k for k in extra_axes(runs) if k not in tuned_set]
    tuned_present = [k for k in tuned_all if any(k in r.params for r in runs)]
    axes_order = [*BASE_AXES, *extras]
    shown = [a for a in axes_order if a in ALWAYS_SHOWN or _varying(runs, a)]
    strategy_axes = [a for a in shown if a in STRATEGY_AXES or a in extras]
    multi_dataset = _varying(runs, "dataset")
    by_cell: dict[tuple, dict[tuple, list[RunRecord]]] = {}
    for r in runs:
        cell = tuple(r.params.get(a, MISSING) for a in axes_order)
        cand = tuple(r.params.get(k, MISSING) for k in tuned_present)
        by_cell.setdefault(cell, {}).setdefault(cand, []).append(r)
    cells, repeated = [], []
    for key in sorted(by_cell, key=lambda k: tuple(_natural(v) for v in k)):
        axes = dict(zip(axes_order, key))
        group = axes["model"] + (f" on {axes['dataset']}" if multi_dataset else "")
        parts = [axes[a] if a in BASE_AXES else f"{a}={axes[a]}" for a in strategy_axes]
        strategy = "+".join(parts)
        candidates = []
        for cand in sorted(by_cell[key], key=lambda k: tuple(_value_key(v) for v in k)):
            members = []
            first: dict[str, RunRecord] = {}
            for r in sorted(by_cell[key][cand], key=lambda r: (r.start_time, r.run_id)):
                if r.seed in first:  # same cell, candidate and seed (another fingerprint version)
                    why = f"seed {r.seed} of this configuration again: duplicate of {first[r.seed].run_id}"
                    repeated.append((r, why))
                else:
                    first[r.seed] = r
                    members.append(r)
            members.sort(key=lambda r: _natural(r.seed))
            candidates.append(Config(axes, members, group, strategy, dict(zip(tuned_present, cand))))
        pick, reason = pick_candidate(candidates)
        cells.append(Cell(axes, group, strategy, candidates, pick, reason))
    picks = [c.pick for c in cells if c.pick is not None]
    return Grid(picks, shown, strategy_axes, extras, cells, tuned_present, repeated)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and quality (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def expected_max(values: Sequence[float], n: int) -> float:
    """Expected best of ``n`` draws with replacement from ``values`` (Dodge et al. 2019, "Show Your Work").

    With the empirical CDF of the N values sorted as v(1) ≤ … ≤ v(N),
    ``E[max] = Σ_i v(i) · ((i/N)^n − ((i−1)/N)^n)``: n = 1 gives the mean, large n the maximum.
    """
    if not values or n < 1:
        raise ValueError("expected_max needs at least one value and n ≥ 1")
    v = sorted(values)
    total = len(v)
    return sum(x * ((i / total) ** n - ((i - 1) / total) ** n) for i, x in enumerate(v, start=1))
