"""Grouping runs into configurations, the Pareto frontier and the verdict's wording (no store needed)."""

from __future__ import annotations

from pathlib import Path

from seqexp.metrics import evaluate
from seqexp.report.aggregate import group_configs, pareto_front
from seqexp.report.collect import RunRecord
from seqexp.report.compare import Comparison, compare_strategies
from seqexp.report.significance import BootstrapResult
from seqexp.report.verdict import verdict_paragraphs
from tests.conftest import shared_corpus
from tests.report.test_significance import corrupt, read_tags


def record(run_id: str, model: str, freeze: str, seed: str, f1: float, **params: str) -> RunRecord:
    axes = {"model": model, "dataset": "conll2003", "freeze": freeze, "optim": "adam", "scheduler": "linear",
            "head": "linear", "seed": seed, "dataset.scheme": "IOB2", "trainer.eval_batch_size": f"{8 * int(seed or 1)}"}
    return RunRecord(run_id, f"{model}|{freeze}|adam|s{seed}", "FINISHED", "1", {**axes, **params},
                     {"test_f1": f1, "train_time_s": 10.0}, {})


def test_a_swept_value_outside_the_axes_splits_configurations():
    runs = [record(f"r{i}", "minilm", "unfreeze", str(i % 2), 0.9, **{"optim.lr": lr})
            for i, lr in enumerate(["1e-3", "1e-3", "1e-4", "1e-4"])]
    grid = group_configs(runs)
    assert grid.extra_axes == ["optim.lr"]  # the eval batch size differs too, but changes nothing
    assert [c.strategy for c in grid.configs] == ["unfreeze+adam+optim.lr=1e-3", "unfreeze+adam+optim.lr=1e-4"]
    assert "optim.lr" in grid.shown_axes and "dataset" not in grid.shown_axes
    assert all(len(c.runs) == 2 for c in grid.configs)


def test_seeds_sort_numerically_and_std_needs_two_seeds():
    grid = group_configs([record("a", "m", "last", s, 0.5) for s in ("10", "2", "1")])
    assert grid.configs[0].seeds == ["1", "2", "10"]
    single = group_configs([record("b", "m", "last", "1", 0.5)]).configs[0]
    assert single.std("test_f1") is None and single.mean("test_f1") == 0.5


def test_pareto_front():
    pts = [(10.0, 0.5), (20.0, 0.7), (15.0, 0.4), (30.0, 0.7), (40.0, 0.9)]
    assert pareto_front(pts) == [0, 1, 4]


def test_verdict_calls_a_one_seed_win_inconclusive_whatever_its_p(tmp_path: Path):
    gold = read_tags(shared_corpus("conll2003") / "eng.testb", limit=300)
    files: dict[str, Path] = {}
    runs = []
    for run_id, freeze, drop, seeds in (("u", "unfreeze", 0.05, ["1"]), ("l", "last", 0.3, ["1"]),
                                        ("n", "top_k", 0.4, ["1"])):
        for seed in seeds:
            pred = corrupt(gold, drop, seed=len(runs))
            runs.append(record(run_id + seed, "minilm", freeze, seed, evaluate(gold, pred, "IOB2")["f1"]))
            path = tmp_path / f"{run_id}{seed}.conll"
            path.write_text("\n".join("\n".join(f"w\t{g}\t{p}" for g, p in zip(gs, ps)) + "\n"
                                      for gs, ps in zip(gold, pred)))
            files[run_id + seed] = path
    files.pop("n1")  # a run that did not log its predictions
    grid = group_configs(runs)
    comps = compare_strategies(grid, lambda run, dst: files.get(run.run_id), resamples=300, seed=0)
    assert len(comps) == 3
    text = verdict_paragraphs(grid, comps, tested=True)[0]
    assert text.startswith("On **minilm**, **unfreeze+adam** beats last+adam by ")
    assert comps[0].result.p_value < 0.01  # the sentence bootstrap is sure ...
    assert "Holm p=0.003, 1 seed, ASO needs ≥3: inconclusive: 1 seed)" in text  # ... the verdict is not
    assert "significant" not in text
    assert "Against the other strategy: top_k+adam (" in text
    assert "not tested — test_predictions.txt missing for minilm|top_k|adam|s1" in text


def test_bars_have_no_error_bar_from_a_single_seed():
    from seqexp.report.plots import bar_series

    grid = group_configs([record("a", "m", "last", "1", 0.5), record("b", "m", "unfreeze", "1", 0.7),
                          record("c", "m", "unfreeze", "2", 0.9)])
    series = {strategy: errs for strategy, _, _, errs in bar_series(grid.groups())}
    assert series["last+adam"] == [None]
    assert series["unfreeze+adam"][0] is not None and abs(series["unfreeze+adam"][0] - 14.142) < 0.01


def test_a_gap_that_rounds_to_zero_is_printed_with_two_decimals():
    """61.20 against 61.18 over 5 seeds (experiments/reports/precision): "beats it by 0.0" read as a tie
    that was called a win; a gap under 0.05 points is printed with two decimals, a larger one with one."""
    from seqexp.report.significance import gap_decimals

    seeds = ("1", "2", "3")
    runs = [record(f"a{s}", "minilm", "unfreeze", s, 0.6120) for s in seeds]
    runs += [record(f"b{s}", "minilm", "last", s, 0.6118) for s in seeds]
    grid = group_configs(runs)
    text = verdict_paragraphs(grid, [], tested=False)[0]
    assert "**unfreeze+adam** beats last+adam by 0.02 test F1 (61.20 vs 61.18;" in text, text
    last, unfreeze = sorted(grid.configs, key=lambda c: c.strategy)
    result = BootstrapResult(0.6118, 0.6120, -0.0002, 0.25, -0.0007, 0.0002, 3, 1000)
    sentence = Comparison("minilm", last, unfreeze, "F1", result, p_holm=0.25).sentence
    assert sentence.startswith("On minilm, unfreeze+adam beats last+adam by 0.02 F1 (61.20 vs 61.18; "), sentence
    assert [gap_decimals(g) for g in (0.0, 0.02, -0.049, 0.05, 3.1)] == [1, 2, 2, 1, 1]
