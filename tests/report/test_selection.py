"""Selection on dev: the tuned candidate of each cell is chosen by mean dev F1 over seeds, never by test.

Synthetic RunRecords for the rule itself, then a real MLflow sqlite store whose
runs are logged with the ``mlflow`` client the way ``seqexp.run`` logs them
(``best_val_f1``, ``best_epoch``, ``epochs_run``, ``max_epochs``, the tags
``seqexp.tuned`` and ``seqexp.fingerprint``), with predictions built from real
CoNLL-2003 test sentences.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from seqexp.identity import FINGERPRINT_VERSION
from seqexp.metrics import evaluate
from seqexp.report import build_report, collect_report
from seqexp.report.__main__ import main
from seqexp.report.aggregate import expected_max, group_configs
from seqexp.report.collect import RunRecord, with_fallbacks
from tests.conftest import shared_corpus
from tests.report.test_report import conll, md_table, run_id_of, section
from tests.report.test_significance import corrupt, read_tags


def rec(run_id: str, freeze: str, lr: str, seed: str, dev: float | None, test: float, tuned: str = "optim.lr",
        **metrics: float) -> RunRecord:
    params = {"model": "minilm", "dataset": "conll2003", "freeze": freeze, "optim": "adam", "scheduler": "linear",
              "head": "linear", "seed": seed, "optim.lr": lr, "trainer.max_epochs": "20"}
    m = {"test_f1": test, **metrics}
    if dev is not None:
        m["best_val_f1"] = dev
    return RunRecord(run_id, f"minilm|{freeze}|adam|s{seed}", "FINISHED", "1", params, m,
                     {"seqexp.tuned": tuned} if tuned else {})


def two_candidates(test_good: float = 0.95, test_bad: float = 0.70) -> list[RunRecord]:
    """lr=1e-3: best test, worse dev; lr=1e-2: better dev, worse test."""
    runs = []
    for s in ("1", "2", "3"):
        runs.append(rec(f"a{s}", "last", "1e-3", s, dev=0.80 + 0.01 * int(s), test=test_good))
        runs.append(rec(f"b{s}", "last", "1e-2", s, dev=0.85 + 0.01 * int(s), test=test_bad))
    return runs


def test_the_best_test_candidate_with_a_worse_dev_score_is_not_picked():
    grid = group_configs(two_candidates())
    (cell,) = grid.cells
    assert grid.tuned == ["optim.lr"] and grid.extra_axes == []
    assert [c.tuned for c in cell.candidates] == [{"optim.lr": "1e-3"}, {"optim.lr": "1e-2"}]  # numeric order
    assert cell.pick is not None and cell.pick.tuned == {"optim.lr": "1e-2"}
    assert grid.configs == [cell.pick]  # the main table, verdicts and plots see only the pick
    best_test = max(cell.candidates, key=lambda c: c.mean("test_f1") or 0.0)
    assert best_test is not cell.pick


def test_changing_only_test_metrics_never_changes_the_pick():
    rng = random.Random(0)
    for _ in range(30):
        runs = [RunRecord(r.run_id, r.name, r.status, r.experiment_id, r.params,
                          {**r.metrics, "test_f1": rng.random(), "test_accuracy": rng.random()}, r.tags)
                for r in two_candidates()]
        assert group_configs(runs).cells[0].pick.tuned == {"optim.lr": "1e-2"}


def test_tuned_keys_come_from_tags_or_the_flag_and_otherwise_split_cells():
    untagged = [RunRecord(r.run_id, r.name, r.status, r.experiment_id, r.params, r.metrics, {})
                for r in two_candidates()]
    assert len(group_configs(untagged).cells) == 2  # an untuned swept key is a compared axis, as before
    by_flag = group_configs(untagged, tuned=["optim.lr"])
    assert len(by_flag.cells) == 1 and by_flag.configs[0].tuned == {"optim.lr": "1e-2"}


def test_tuned_keys_also_come_from_the_tuned_config_param():
    runs = [RunRecord(r.run_id, r.name, r.status, r.experiment_id, {**r.params, "tuned": "['optim.lr']"},
                      r.metrics, {}) for r in two_candidates()]
    grid = group_configs(runs)
    assert grid.tuned == ["optim.lr"] and len(grid.cells) == 1 and "tuned" not in grid.extra_axes
    assert grid.configs[0].tuned == {"optim.lr": "1e-2"}


def test_ties_go_to_fewer_missing_seeds_then_sorted_order():
    runs = [rec("a1", "last", "1e-3", "1", 0.8, 0.1), rec("a2", "last", "1e-3", "2", None, 0.1),
            rec("b1", "last", "1e-2", "1", 0.8, 0.9), rec("b2", "last", "1e-2", "2", 0.8, 0.9)]
    assert group_configs(runs).cells[0].pick.tuned == {"optim.lr": "1e-2"}  # 1e-3 lacks a dev score on seed 2
    runs[1] = rec("a2", "last", "1e-3", "2", 0.8, 0.1)
    for order in itertools.permutations(runs):
        assert group_configs(list(order)).cells[0].pick.tuned == {"optim.lr": "1e-3"}  # 1e-3 < 1e-2, whatever test


def test_candidates_without_any_dev_score_cannot_be_picked():
    runs = [rec("a1", "last", "1e-3", "1", None, 0.99), rec("b1", "last", "1e-2", "1", 0.5, 0.1)]
    assert group_configs(runs).cells[0].pick.tuned == {"optim.lr": "1e-2"}
    none = [rec("a1", "last", "1e-3", "1", None, 0.99), rec("b1", "last", "1e-2", "1", None, 0.1)]
    cell = group_configs(none).cells[0]
    assert cell.pick is None and "nothing to select on" in cell.reason


def test_older_runs_select_on_their_dev_history_not_on_test():
    run = rec("old", "last", "1e-3", "1", None, 0.99)
    derived = with_fallbacks(run, [(0, 0.5), (1, 0.7), (2, 0.7), (3, 0.6)])
    assert derived.metrics["best_val_f1"] == 0.7 and derived.metrics["best_epoch"] == 2.0  # first best, 1-based
    assert derived.metrics["max_epochs"] == 20.0
    assert derived.metrics["epochs_run"] == 4.0
    assert set(derived.derived) == {"best_val_f1", "best_epoch", "epochs_run", "max_epochs"}
    assert "test_f1" not in derived.derived and derived.metrics["test_f1"] == 0.99
    assert with_fallbacks(run, []).metrics.get("best_val_f1") is None  # no dev at all: nothing invented


def test_one_seed_run_twice_is_one_seed_even_with_another_fingerprint():
    """The same configuration and seed under an older fingerprint version (another fingerprint tag,
    the same params): one seed, never two."""
    runs = two_candidates()
    again = rec("a1-again", "last", "1e-3", "1", dev=0.99, test=0.99)
    again = RunRecord(again.run_id, again.name, again.status, again.experiment_id, again.params, again.metrics,
                      {**again.tags, "seqexp.fingerprint": "fp-of-version-1"}, start_time=5)
    grid = group_configs([*runs, again])
    cand = next(c for c in grid.candidates() if c.tuned == {"optim.lr": "1e-3"})
    assert cand.seeds == ["1", "2", "3"] and "a1-again" not in {r.run_id for r in cand.runs}
    assert [(r.run_id, why) for r, why in grid.repeated] == [
        ("a1-again", "seed 1 of this configuration again: duplicate of a1")]
    assert grid.cells[0].pick.tuned == {"optim.lr": "1e-2"}  # the repeat's dev 0.99 did not count


def test_a_run_on_data_in_another_folder_is_another_cell():
    """``dataset.data_dir`` changes the result (another folder may hold other files), as in the fingerprint."""
    runs = two_candidates()
    moved = rec("a1-moved", "last", "1e-3", "1", dev=0.99, test=0.99)
    moved = RunRecord(moved.run_id, moved.name, moved.status, moved.experiment_id,
                      {**moved.params, "dataset.data_dir": "/elsewhere"}, moved.metrics, moved.tags, start_time=5)
    grid = group_configs([*runs, moved])
    assert grid.extra_axes == ["dataset.data_dir"] and not grid.repeated
    assert [len(c.runs) for c in grid.candidates()] == [1, 3, 3]


def test_candidates_are_compared_on_the_seeds_they_all_ran():
    """Tuned on seed 1, the pick then run on seeds 2 and 3: its later seeds must not undo the choice."""
    runs = [rec("a1", "last", "1e-3", "1", 0.86, 0.5), rec("a2", "last", "1e-3", "2", 0.80, 0.5),
            rec("a3", "last", "1e-3", "3", 0.80, 0.5), rec("b1", "last", "1e-2", "1", 0.84, 0.9)]
    (cell,) = group_configs(runs).cells
    assert cell.selection_seeds == ["1"]
    assert cell.pick.tuned == {"optim.lr": "1e-3"}  # 0.86 vs 0.84 on seed 1 (over its own seeds it would be 0.82)
    assert cell.reason == "picked on seed 1 (the seeds every candidate ran); seeds 2, 3 of the pick were not part " \
                          "of the choice"
    disjoint = [rec("a1", "last", "1e-3", "1", 0.80, 0.5), rec("b2", "last", "1e-2", "2", 0.90, 0.5)]
    (cell,) = group_configs(disjoint).cells
    assert cell.selection_seeds == [] and cell.pick.tuned == {"optim.lr": "1e-2"}
    assert "share no seed" in cell.reason


def scale_runs(devs: dict[str, float]) -> list[RunRecord]:
    """One seed-1 run per freeze.lr_scale candidate, with the overrides tag seqexp.run writes."""
    runs = []
    for k, (value, dev) in enumerate(devs.items()):
        r = rec(f"r{k}", "last", "1e-3", "1", dev, 0.5, tuned="freeze.lr_scale")
        r.params["freeze.lr_scale"] = value
        r.tags["overrides"] = f"seed=1 model=minilm freeze=last freeze.lr_scale={value} trainer.num_threads=1"
        runs.append(r)
    return runs


def test_a_pick_at_the_end_of_the_grid_gets_one_more_candidate_past_it():
    from seqexp.report.aggregate import beyond_edge

    (top,) = group_configs(scale_runs({"5.0": 0.80, "10.0": 0.82, "20.0": 0.84})).cells
    assert beyond_edge(top) == ["model=minilm", "freeze=last", "trainer.num_threads=1", "freeze.lr_scale=40.0",
                                "seed=1"]
    (bottom,) = group_configs(scale_runs({"3": 0.84, "10": 0.82, "30": 0.80})).cells
    assert beyond_edge(bottom)[-2:] == ["freeze.lr_scale=0.9", "seed=1"]
    (ints,) = group_configs(scale_runs({"1": 0.80, "2": 0.81, "4": 0.82})).cells
    assert beyond_edge(ints)[-2:] == ["freeze.lr_scale=8", "seed=1"]
    (inside,) = group_configs(scale_runs({"5.0": 0.80, "10.0": 0.85, "20.0": 0.84})).cells
    assert beyond_edge(inside) is None
    (two,) = group_configs(scale_runs({"5.0": 0.80, "10.0": 0.85})).cells
    assert beyond_edge(two) is None  # with 2 candidates every pick is at an end


def test_the_selection_section_names_picks_at_an_end_of_their_grid():
    from seqexp.report.sections import selection_blocks

    def text(devs: dict[str, float]) -> str:
        return " ".join(getattr(b, "text", "") for b in selection_blocks(group_configs(scale_runs(devs))))

    assert "Picks at an end of their grid (the best value tried is the largest or smallest): minilm last+adam " \
           "(`freeze.lr_scale=20.0`, largest)" in text({"5.0": 0.80, "10.0": 0.82, "20.0": 0.84})
    assert "(`freeze.lr_scale=3`, smallest)" in text({"3": 0.84, "10": 0.82, "30": 0.80})
    assert "Picks at an end" not in text({"5.0": 0.80, "10.0": 0.85, "20.0": 0.84})


def test_the_report_names_the_picks_whose_budget_binds():
    from seqexp.report.verdict import budget_text, verdict_paragraphs

    runs = [rec("a1", "last", "1e-3", "1", 0.8, 0.5, best_epoch=10, max_epochs=10),
            rec("a2", "last", "1e-3", "2", 0.8, 0.5, best_epoch=7, max_epochs=10),
            rec("b1", "unfreeze", "1e-3", "1", 0.9, 0.6, best_epoch=2, max_epochs=3),
            rec("b2", "unfreeze", "1e-3", "2", 0.9, 0.6, best_epoch=3, max_epochs=3)]
    grid = group_configs(runs)
    assert [(c.strategy, k, n) for c, k, n in grid.binding_budgets()] == [("last+adam", 1, 2), ("unfreeze+adam", 1, 2)]
    assert "for minilm last+adam (1 of 2 seeds), minilm unfreeze+adam (1 of 2 seeds)" in budget_text(grid)
    assert verdict_paragraphs(grid, [], False)[-1].startswith("Caveat: minilm last+adam, minilm unfreeze+adam")
    for r in runs:
        r.metrics["best_epoch"] = 1.0
    assert group_configs(runs).binding_budgets() == []
    assert budget_text(group_configs(runs)).startswith("No budget binds")


def test_expected_max_known_cases():
    values = [0.2, 0.5, 0.9]
    assert expected_max(values, 1) == pytest.approx(sum(values) / 3)  # n = 1: the mean
    assert expected_max(values, 200) == pytest.approx(0.9, abs=1e-9)  # n -> large: the max
    assert expected_max([0.0, 1.0], 2) == pytest.approx(0.75)  # P(at least one 1 in 2 draws) = 3/4
    assert expected_max([0.7], 5) == pytest.approx(0.7)
    assert all(expected_max(values, n) <= expected_max(values, n + 1) for n in range(1, 10))


# ---------------------------------------------------------------- a real MLflow store

N_SENTENCES = 200
# (freeze, lr) -> (share of entities the test predictions lose, dev F1 per seed)
PLAN = {("last", "1e-3"): (0.02, (0.80, 0.81, 0.82)),  # best test, worse dev
        ("last", "1e-2"): (0.25, (0.86, 0.87, 0.88)),  # the pick
        ("last", "5e-2"): (0.30, (0.84, 0.85, 0.83)),
        ("unfreeze", "1e-4"): (0.10, (0.90, 0.91, 0.92))}
BUDGET = {"last": (20, 12, 9), "unfreeze": (4, 4, 3)}  # max epochs, epochs run, best epoch


def make_store(root: Path, tag: bool = True, older: bool = False) -> dict:
    gold = read_tags(shared_corpus("conll2003") / "eng.testb", limit=N_SENTENCES)
    uri = f"sqlite:///{root / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("sel", artifact_location=(root / "artifacts").as_uri())
    ids: dict[tuple[str, str, str], str] = {}
    clock = 1_700_000_000_000

    def log(freeze: str, lr: str, seed: str, k: int, version: int = FINGERPRINT_VERSION) -> str:
        nonlocal clock
        clock += 1000
        drop, devs = PLAN[(freeze, lr)]
        pred = corrupt(gold, drop, seed=100 * k + int(seed))
        result = evaluate(gold, pred, "IOB2")
        tags = {"seqexp.fingerprint": f"fp-{freeze}-{lr}-{seed}-v{version}", "mlflow.source.git.commit": "abc",
                "seqexp.fingerprint_version": str(version), "overrides": f"seed={seed} freeze={freeze} optim.lr={lr}"}
        if tag:
            tags["seqexp.tuned"] = "optim.lr"
        run = client.create_run(exp_id, start_time=clock, run_name=f"minilm|{freeze}|adam|s{seed}", tags=tags)
        rid = run.info.run_id
        params = {"model": "minilm", "dataset": "conll2003", "freeze": freeze, "optim": "adam",
                  "scheduler": "linear", "head": "linear", "seed": seed, "optim.lr": lr,
                  "optim.weight_decay": "0.0", "trainer.max_epochs": str(BUDGET[freeze][0]),
                  "dataset.scheme": "IOB2", "dataset.task": "ner", "dataset.data_dir": "/data/conll2003"}
        max_e, run_e, best_e = BUDGET[freeze]
        metrics = {f"test_{k}": v for k, v in result.items() if isinstance(v, float)}
        metrics.update(best_val_f1=devs[int(seed) - 1], best_epoch=best_e, epochs_run=run_e, max_epochs=max_e,
                       train_time_s=10.0 if freeze == "last" else 100.0, trainable_params=3_081 if freeze == "last"
                       else 22_713_216, total_params=22_713_216)
        ms = [Metric(key, float(v), clock, 0) for key, v in metrics.items()]
        ms += [Metric("val_f1", devs[int(seed) - 1] - 0.01 * (run_e - e), clock, e) for e in range(run_e)]
        client.log_batch(rid, params=[Param(k2, v) for k2, v in params.items()],
                         tags=[RunTag("mlflow.runName", f"minilm|{freeze}|adam|s{seed}")], metrics=ms,
                         synchronous=True)
        client.log_text(rid, conll(gold, pred), "test_predictions.txt")
        client.set_terminated(rid, "FINISHED", end_time=clock + 500)
        return rid

    for k, ((freeze, lr), _) in enumerate(PLAN.items()):
        for seed in ("1", "2", "3"):
            ids[(freeze, lr, seed)] = log(freeze, lr, seed, k)
    duplicate = log("unfreeze", "1e-4", "1", 99)  # the same fingerprint run again, later
    # The same configuration and seed, run before the fingerprint's rule changed.
    old = log("unfreeze", "1e-4", "2", 98, version=FINGERPRINT_VERSION - 1) if older else None
    return {"uri": uri, "client": client, "ids": ids, "duplicate": duplicate, "older": old}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    return make_store(tmp_path_factory.mktemp("sel"))


@pytest.fixture(scope="module")
def report(store, tmp_path_factory) -> Path:
    return build_report(store["uri"], "sel", tmp_path_factory.mktemp("out") / "r", bootstrap=200, seed=0)


def test_real_store_picks_on_dev_and_hides_test_of_other_candidates(store, report):
    data = collect_report(store["uri"], "sel", bootstrap=0)
    last = next(cell for cell in data.grid.cells if cell.axes["freeze"] == "last")
    assert [c.tuned["optim.lr"] for c in last.candidates] == ["1e-3", "1e-2", "5e-2"]
    assert last.pick.tuned == {"optim.lr": "1e-2"}
    assert max(last.candidates, key=lambda c: c.mean("test_f1")).tuned == {"optim.lr": "1e-3"}
    md = report.read_text()
    rows = md_table(section(md, "2. Selection on dev"))
    assert [(r["strategy"], r["candidate"], r["picked"]) for r in rows[:4]] == [
        ("last+adam", "optim.lr=1e-3", ""), ("last+adam", "optim.lr=1e-2", "✔"),
        ("last+adam", "optim.lr=5e-2", ""), ("unfreeze+adam", "optim.lr=1e-4", "✔")]
    assert rows[1]["dev F1 (mean ± std)"] == "87.00 ± 1.00" and rows[1]["seeds"] == "3"
    assert "test" not in " ".join(md_table(section(md, "2. Selection on dev"))[0])  # no test column there
    client = store["client"]
    for lr in ("1e-3", "5e-2"):  # no test score of a candidate that was not picked, anywhere in the report
        for seed in ("1", "2", "3"):
            f1 = client.get_run(store["ids"][("last", lr, seed)]).data.metrics["test_f1"]
            assert f"{100 * f1:.2f}" not in md
    assert "`optim.lr`" in section(md, "2. Selection on dev") and "`optim.weight_decay=0.0`" in md
    picked = [(r["tuned"], r["picked"]) for r in data.selection_table() if r["axes"]["freeze"] == "last"]
    assert picked == [({"optim.lr": "1e-3"}, False), ({"optim.lr": "1e-2"}, True), ({"optim.lr": "5e-2"}, False)]
    assert all("test_f1" not in row for row in data.selection_table())
    assert "expected_validation.png" in section(md, "3. Expected validation")
    assert (report.parent / "expected_validation.png").read_bytes()[:4] == b"\x89PNG"


def test_real_store_main_table_shows_the_budget_of_every_cell(report):
    rows = md_table(section(report.read_text(), "1. Test scores"))
    by = {r["freeze"]: r for r in rows}
    assert set(by) == {"last", "unfreeze"} and by["last"]["picked optim.lr"] == "1e-2"
    for freeze, (max_e, run_e, best_e) in BUDGET.items():
        assert (by[freeze]["max epochs"], by[freeze]["epochs run"], by[freeze]["best epoch"]) == (
            str(max_e), f"{run_e:.1f}", f"{best_e:.1f}")
    assert by["unfreeze"]["seeds"] == "3"  # the duplicate did not become a fourth seed


def test_duplicate_fingerprint_counts_once_and_is_listed(store, report):
    data = collect_report(store["uri"], "sel", bootstrap=0)
    reasons = {r.run_id: why for r, why in data.selection.excluded}
    first = store["ids"][("unfreeze", "1e-4", "1")]
    assert reasons == {store["duplicate"]: reasons[store["duplicate"]]}
    assert reasons[store["duplicate"]].startswith(f"duplicate of {first}")
    unfreeze = next(c for c in data.grid.configs if c.axes["freeze"] == "unfreeze")
    assert unfreeze.seeds == ["1", "2", "3"] and first in {r.run_id for r in unfreeze.runs}
    excluded = md_table(section(report.read_text(), "Excluded runs"))
    assert [run_id_of(r["run id"]) for r in excluded] == [store["duplicate"]]
    assert f"duplicate of {first}" in excluded[0]["status / reason"]


def test_real_store_verdict_uses_the_picks(report):
    verdict = section(report.read_text(), "Verdict")
    assert re.search(r"On \*\*minilm\*\*, \*\*unfreeze\+adam\*\* beats last\+adam by \d+\.\d test F1 "
                     r"\(\d+\.\d\d vs \d+\.\d\d; ε_min \d\.\d\d, Holm p[<=][\d.]+, 3 seeds: (not )?significant\), "
                     r"at 10× the train time and 100% vs 0\.014% of the parameters trained\.", verdict), verdict


def test_a_study_tuned_on_one_seed_keeps_its_pick_and_prints_it_for_the_other_seeds(tmp_path, capsys):
    s = make_store(tmp_path)
    client = s["client"]
    for lr in ("1e-3", "5e-2"):  # candidates that lost on seed 1 ran no other seed
        for seed in ("2", "3"):
            client.delete_run(s["ids"][("last", lr, seed)])
    for seed in ("2", "3"):  # the seed-1 pick (0.86) does worse on its later seeds than 5e-2 did on seed 1 (0.84)
        client.log_metric(s["ids"][("last", "1e-2", seed)], "best_val_f1", 0.80, timestamp=2_000_000_000_000, step=1)
    out = tmp_path / "r"
    assert main(["sel", "--uri", s["uri"], "--out", str(out), "--bootstrap", "0", "--no-attach"]) == 0
    rows = md_table(section((out / "report.md").read_text(), "2. Selection on dev"))
    assert [(r["candidate"], r["seeds"], r["dev F1 (mean ± std)"], r["selection seeds"], r["dev F1 on them"],
             r["picked"]) for r in rows[:3]] == [
        ("optim.lr=1e-3", "1", "80.00", "1", "80.00", ""), ("optim.lr=1e-2", "3", "82.00 ± 3.46", "1", "86.00", "✔"),
        ("optim.lr=5e-2", "1", "84.00", "1", "84.00", "")]
    assert "last+adam: picked on seed 1 (the seeds every candidate ran); seeds 2, 3 of the pick were not part" \
        in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["sel", "--uri", s["uri"], "--picks"]) == 0
    assert capsys.readouterr().out.splitlines() == ["freeze=last optim.lr=1e-2", "freeze=unfreeze optim.lr=1e-4"]
    assert main(["sel", "--uri", s["uri"], "--beyond-edges"]) == 0  # 1e-2 lies between 1e-3 and 5e-2
    assert capsys.readouterr().out == ""
    # the budget check: each pick with its own max_epochs (BUDGET: last 20, unfreeze 4) doubled
    assert main(["sel", "--uri", s["uri"], "--picks", "--budget-factor", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["freeze=last optim.lr=1e-2 freeze.max_epochs=40",
                                                    "freeze=unfreeze optim.lr=1e-4 freeze.max_epochs=8"]
    for bad in (["--budget-factor", "2"], ["--picks", "--budget-factor", "0"]):
        with pytest.raises(SystemExit):
            main(["sel", "--uri", s["uri"], *bad])
    assert "--budget-factor" in capsys.readouterr().err


def test_the_budget_check_scales_the_budget_the_pick_ran_with(tmp_path):
    """A pick whose overrides set the budget gets that override scaled (not a second one after it): freeze's own,
    or trainer.max_epochs, which overrides every strategy's."""
    from seqexp.report.aggregate import scaled_budget

    s = make_store(tmp_path)
    client = s["client"]
    for seed in ("1", "2", "3"):
        client.set_tag(s["ids"][("last", "1e-2", seed)], "overrides", f"seed={seed} freeze=last freeze.max_epochs=20")
        client.set_tag(s["ids"][("unfreeze", "1e-4", seed)], "overrides", f"seed={seed} trainer.max_epochs=4 freeze=unfreeze")
    cells = {c.pick.axes["freeze"]: c for c in collect_report(s["uri"], "sel", bootstrap=0).grid.cells}
    assert scaled_budget(cells["last"], 2) == ["freeze=last", "freeze.max_epochs=40"]
    assert scaled_budget(cells["unfreeze"], 1.5) == ["trainer.max_epochs=6", "freeze=unfreeze"]
    assert scaled_budget(cells["unfreeze"], 1) == ["trainer.max_epochs=4", "freeze=unfreeze"]


def test_swapping_test_metrics_in_mlflow_keeps_the_pick_and_the_flag_equals_the_tag(tmp_path, capsys):
    s = make_store(tmp_path, tag=False, older=True)
    assert len(collect_report(s["uri"], "sel", bootstrap=0).grid.cells) == 4  # untuned: lr is a compared axis
    before = collect_report(s["uri"], "sel", bootstrap=0, tuned=["optim.lr"])
    assert next(c for c in before.grid.configs if c.axes["freeze"] == "last").tuned == {"optim.lr": "1e-2"}
    for (freeze, lr, _), rid in s["ids"].items():  # the picked candidate becomes the worst on test, others best
        s["client"].log_metric(rid, "test_f1", 0.01 if lr == "1e-2" else 0.99, timestamp=2_000_000_000_000, step=1)
    after = collect_report(s["uri"], "sel", bootstrap=0, tuned=["optim.lr"])
    why = dict((r.run_id, w) for r, w in after.selection.excluded)[s["older"]]  # same seed, older fingerprint
    assert why == f"seed 2 of this configuration again: duplicate of {s['ids'][('unfreeze', '1e-4', '2')]}"
    assert s["older"] not in {r.run_id for r in after.selection.finished}
    last = next(c for c in after.grid.configs if c.axes["freeze"] == "last")
    assert last.tuned == {"optim.lr": "1e-2"} and last.mean("test_f1") == pytest.approx(0.01)
    out = tmp_path / "cli"
    assert main(["sel", "--uri", s["uri"], "--out", str(out), "--bootstrap", "0", "--tuned", "optim.lr"]) == 0
    assert "| last+adam | optim.lr=1e-2 | 3 | 87.00 ± 1.00 | ✔ |" in (out / "report.md").read_text()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--tuned" in capsys.readouterr().out
    assert main(["sel", "--uri", s["uri"], "--out", str(tmp_path / "bad"), "--tuned", "optim.lrr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "seqexp.report: error: --tuned optim.lrr: no run of experiment 'sel' has such a param (similar: ")
    assert "optim.lr" in err[0]
    assert not (tmp_path / "bad").exists()
