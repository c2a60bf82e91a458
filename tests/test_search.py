"""A real Optuna search (hydra/sweeper=optuna, experiments/search.yaml) into real MLflow and Optuna sqlite stores."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.conftest import compose
from tests.test_sweep import runs, sweep

optuna = pytest.importorskip("optuna", reason="the `optuna` extra is not installed (make install includes it)")

SEARCH = ["experiment=search", "dataset.max_train_sentences=50", "trainer.max_epochs=1", "trainer.batch_size=16"]


def best_dev_f1(client: MlflowClient, run) -> float:
    """What a trial must be scored by: the run's best dev F1 (``best_val_f1``, else its highest ``val_f1``)."""
    if "best_val_f1" in run.data.metrics:
        return run.data.metrics["best_val_f1"]
    return max(m.value for m in client.get_metric_history(run.info.run_id, "val_f1"))


def the_study(cwd):
    storage = f"sqlite:///{cwd / 'mlruns-optuna.db'}"  # the default: beside the MLflow store mlruns.db
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def check_trials_are_child_runs(cwd, n: int):
    client, parents, children = runs(cwd, "search")
    assert len(parents) == 1 and len(children) == n
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    study = the_study(cwd)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == n
    by_lr = {float(c.data.params["optim.lr"]): c for c in children}
    assert len(by_lr) == n
    for trial in trials:
        child = by_lr[trial.params["optim.lr"]]  # the trial's sampled value is the run's config
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["seqexp.sweep_id"] == parent.data.tags["seqexp.sweep_id"]
        assert float(child.data.tags["grid.optim.lr"]) == trial.params["optim.lr"]
        assert trial.value == best_dev_f1(client, child)  # dev, never test, is the objective
    assert study.best_value == max(best_dev_f1(client, c) for c in children)
    scores = [(best_dev_f1(client, c), c.data.metrics["test_f1"]) for c in children]
    assert any(dev != test for dev, test in scores), scores  # else dev vs test would go unnoticed
    return study, parent, children


def test_optuna_search_trials_are_child_runs_and_a_rerun_continues_the_study(tmp_path, mini_conll):
    args = [*SEARCH, f"dataset.data_dir={mini_conll}"]
    # A seeded sampler makes the test repeatable (the preset's is unseeded: conf/hydra/sweeper/optuna.yaml).
    proc = sweep(tmp_path, *args, "hydra.sweeper.optuna_config.n_trials=2", "hydra.sweeper.optuna_config.sampler.seed=1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 finished, 0 skipped, 0 failed" in proc.stdout
    study, parent, first = check_trials_are_child_runs(tmp_path, 2)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    for child in first:  # the summary table shows the objective next to test F1
        dev, test = best_dev_f1(client, child), child.data.metrics["test_f1"]
        assert f"FINISHED   {dev:.4f}   {test:.4f}  {child.info.run_id}" in proc.stdout, proc.stdout

    # A killed command leaves its trial RUNNING in the study, with the parameters it was given.
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    study.enqueue_trial({"optim.lr": 0.0123})
    interrupted = study.ask({"optim.lr": lr})

    # The same command with n_trials=3 continues the same study and parent run: n_trials is the
    # total of completed trials, so one more trial runs, not three, and it is the interrupted one
    # again (same config, so its run would resume from its checkpoint).
    again = sweep(tmp_path, *args, "hydra.sweeper.optuna_config.n_trials=3")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "1 finished, 0 skipped, 0 failed" in again.stdout
    study3, parent3, children = check_trials_are_child_runs(tmp_path, 3)
    assert study3.study_name == study.study_name and parent3.info.run_id == parent.info.run_id
    assert study3.trials[interrupted.number].state == optuna.trial.TrialState.FAIL
    assert study3.trials[-1].params == {"optim.lr": 0.0123} and study3.trials[-1].value is not None

    # Once n_trials have completed, the same command runs nothing.
    done = sweep(tmp_path, *args, "hydra.sweeper.optuna_config.n_trials=3")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "0 finished, 0 skipped, 0 failed" in done.stdout
    check_trials_are_child_runs(tmp_path, 3)

    # A trial whose config already FINISHED is skipped, and still scores its stored best dev F1.
    from seqexp.run import run

    child = children[0]
    cfg = compose([*args, f"optim.lr={child.data.params['optim.lr']}",
                   f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}"])
    assert run(cfg) == best_dev_f1(client, child)
    assert len(runs(tmp_path, "search")[2]) == 3  # nothing trained again


def test_search_over_an_undeclared_key_is_refused_before_any_run(tmp_path, mini_conll):
    # optim.lr is searched but `tuned` does not list it; model=a,b would make Optuna pick the compared axis.
    for bad in (["tuned=[]"], ["model=tiny-bert,tiny-albert"]):
        proc = sweep(tmp_path, *SEARCH, f"dataset.data_dir={mini_conll}", *bad)
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("seqexp: error:")]
        assert "`tuned`" in line and ("optim.lr" in line if bad == ["tuned=[]"] else "model" in line)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns-optuna.db").exists()


@pytest.mark.parametrize(("tracking_uri", "expected"), [
    ("sqlite:///mlruns.db", "mlruns-optuna.db"),
    ("sqlite:///stores/exp.sqlite", "stores/exp-optuna.sqlite"),
    ("sqlite:///stores/exp", "stores/exp-optuna.db"),
    ("http://127.0.0.1:5000", "optuna.db"),
])
def test_the_study_database_lies_beside_the_mlflow_store(tmp_path, monkeypatch, tracking_uri, expected):
    from seqexp.sweep import optuna_storage

    monkeypatch.chdir(tmp_path)
    assert optuna_storage(tracking_uri) == f"sqlite:///{tmp_path / expected}"
