"""What a user of the MLflow UI relies on, without a browser: the store a run writes to, the sweep's progress
and its parent run's summary, MLflow's system metrics, and the saved comparison (tests/test_ui_browser.py
opens them in Chromium)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO, compose


def test_mlflow_tracking_uri_is_the_default_of_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose([]).tracking.uri == "sqlite:///mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert compose([]).tracking.uri == "http://127.0.0.1:5999"  # the team's server, as every MLflow tool reads it
    assert compose(["tracking.uri=sqlite:///mine.db"]).tracking.uri == "sqlite:///mine.db"  # the command line wins
    from seqexp.report.__main__ import parse_args

    assert parse_args(["demo"]).uri == "http://127.0.0.1:5999"


def test_params_hold_no_none_no_plumbing_and_no_duplicate_of_an_axis():
    from seqexp.tracking import run_params

    cfg = compose(["model=tiny-bert", "freeze=last", "tracking.run_name=x"])
    params = run_params(cfg, {"model": "tiny-bert", "freeze": "last", "optim": "adamw", "seed": "1"})
    assert "None" not in params.values() and "dataset.max_train_sentences" not in params  # null: absent
    assert not [k for k in params if k.startswith(("tracking.", "fault.", "hydra")) or k.endswith("._target_")]
    assert "cache_dir" not in params and "freeze.strategy" not in params and params["freeze"] == "last"
    assert params["optim.lr"] == str(cfg.optim.lr) and params["freeze.lr_scale"] == str(cfg.freeze.lr_scale)


def test_sweep_progress_parent_summary_and_system_metrics(tmp_path, mini_conll):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}  # jobs of a few seconds
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = warm.run(
        [sys.executable, "-m", "seqexp.run", "-m", "model=tiny-bert", "freeze=last,unfreeze", "seed=1",
         f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1", "trainer.batch_size=16",
         "trainer.num_threads=1", "trainer.log_every_n_steps=2", "tracking.system_metrics_after_s=0",
         "tracking.experiment=study"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    # The sweep says where it is: job k of N, what is done so far, and how long the rest will take.
    assert "seqexp: job 1 of 2: model=tiny-bert freeze=last seed=1" in out
    assert re.search(r"seqexp: job 1 of 2 FINISHED in \d+ s; so far 1 finished, 0 failed, 0 skipped; "
                     r"about \d+ s left \(1 job\)", out), out[-3000:]
    assert "seqexp: job 2 of 2 FINISHED" in out and "so far 2 finished, 0 failed, 0 skipped" in out
    # Logged to a file (not a terminal), each epoch reports its progress every 10%.
    assert re.search(r"epoch 1/1: +100% \(\d+/\d+ batches, [\d.]+ batches/s\), train_loss [\d.]+", out), out[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("study")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development" and exp.tags["mlflow.note.content"]
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("seqexp.role") == "sweep")
    jobs = [r for r in runs if r.data.tags.get("seqexp.role") == "job"]
    best = max(jobs, key=lambda r: r.data.metrics["test_f1"])
    # The parent run is the sweep's summary.
    assert parent.info.run_name == "study: freeze=last,unfreeze (model=tiny-bert seed=1)"
    assert parent.data.params == {"freeze": "last,unfreeze"}
    assert parent.data.metrics == {"best_test_f1": best.data.metrics["test_f1"], "jobs_finished": 2.0,
                                   "jobs_failed": 0.0, "jobs_skipped": 0.0}
    assert parent.data.tags["best_run_id"] == best.info.run_id
    description = parent.data.tags["mlflow.note.content"]
    assert "`freeze` ∈ {last, unfreeze}" in description and "Parallel coordinates" in description
    for job in jobs:
        tags = job.data.tags
        assert {k for k in tags if k.startswith("grid.")} == {"grid.freeze"}  # what the sweep varies, only
        assert any(k.startswith("system/") for k in job.data.metrics), sorted(job.data.metrics)  # MLflow's own
        steps = sorted(m.step for m in client.get_metric_history(job.info.run_id, "train_loss_step"))
        assert steps and all(step % 2 == 0 for step in steps)  # every trainer.log_every_n_steps steps

    # The saved comparison is MLflow's shared view, on the experiment.
    view = json.loads(exp.tags["mlflow.sharedViewState.seqexp-compare"])
    parallel = view["compareRunCharts"][0]
    assert parallel["type"] == "PARALLEL" and parallel["selectedMetrics"] == ["test_f1"]
    assert parallel["selectedParams"] == ["model", "freeze", "optim"]
    assert "metrics.`test_f1`" in view["selectedColumns"] and view["runsHiddenMode"] == "SHOW_ALL"

    ui = warm.run([sys.executable, "-m", "seqexp.ui", "--uri", f"sqlite:///{tmp_path / 'mlruns.db'}",
                         "--port", "5123", "--print-only"], env=env, capture_output=True, text=True, timeout=120)
    assert ui.returncode == 0, ui.stderr
    assert f"runs table:  open http://127.0.0.1:5123/#/experiments/{exp.experiment_id}?workflowType=machine_learning" \
        in ui.stdout
    assert "viewStateShareKey=seqexp-compare" in ui.stdout
