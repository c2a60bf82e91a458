"""Faults as a user meets them: ``python -m seqexp.run`` subprocesses, checked in the real MLflow store.

NaN loss and an exception inside a ``-m`` sweep, SIGTERM and Ctrl-C (SIGINT) from outside
while a run trains, and a SIGKILL (power loss) mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO, compose
from tests.test_sweep import runs, sweep

FAST = ["model=tiny-bert", "trainer.batch_size=16", "trainer.num_threads=1"]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A migrated, empty MLflow sqlite file: creating one costs seconds, copying it does not."""
    path = tmp_path_factory.mktemp("store") / "mlruns.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def work(tmp_path, empty_store) -> Path:
    shutil.copy(empty_store, tmp_path / "mlruns.db")
    return tmp_path


def test_nan_loss_and_an_exception_fail_their_jobs_and_the_sweep_goes_on(work, mini_conll):
    proc = sweep(work, "fault.kind=nan,null,error", "fault.step=2", "freeze=last", "trainer.max_epochs=1",
                 f"dataset.data_dir={mini_conll}", *FAST)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "1 finished, 0 skipped, 2 failed" in proc.stdout
    client, (parent,), children = runs(work)
    by_fault = {c.data.params.get("fault.kind", "off"): c for c in children}  # no fault: no fault.* params
    assert sorted(by_fault) == ["error", "nan", "off"]
    finished = by_fault["off"]
    assert finished.info.status == "FINISHED"
    assert {"test_f1", "test_precision", "test_recall", "test_accuracy", "val_f1"} <= set(finished.data.metrics)
    nan = by_fault["nan"]
    assert nan.info.status == "FAILED"
    assert nan.data.tags["error"].startswith("NonFiniteLossError: training loss is nan at epoch 0, step 2")
    error = by_fault["error"]
    assert error.info.status == "FAILED"
    assert error.data.tags["error"] == "RuntimeError: injected fault at training step 2 (fault.kind=error)"
    traceback = Path(client.download_artifacts(error.info.run_id, "traceback.txt", str(work))).read_text()
    assert "Traceback" in traceback and "injected fault" in traceback
    assert parent.info.status == "FAILED"


def wait_for_epoch_metric(db: Path, proc: subprocess.Popen, timeout: float = 600):
    """The run, once its first per-epoch dev metric is in MLflow (polled in the sqlite store)."""
    client = MlflowClient(f"sqlite:///{db}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before it was signalled:\n{proc.stderr.read()[-4000:]}")
        exp = client.get_experiment_by_name("seqexp")
        if exp is not None:
            for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'"):
                if "val_f1" in run.data.metrics:
                    return run
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"no val_f1 metric within {timeout} s")


@pytest.mark.parametrize("signum, multirun", [
    pytest.param(signal.SIGTERM, True, id="SIGTERM-sweep"),
    # Slow only to keep the default suite short: tests/training/test_faults.py covers the SIGINT handler.
    pytest.param(signal.SIGINT, False, id="SIGINT-run", marks=pytest.mark.slow),
])
def test_signal_during_training_leaves_the_run_killed_with_its_metrics(work, mini_conll, signum, multirun):
    # SIGTERM is sent to a -m sweep of two jobs: the first ends KILLED and the second never starts.
    args = ["-m", "seed=1,2"] if multirun else []
    # Early stopping off: on the tiny corpus patience runs out within a second, and the signal must land in training.
    cmd = [sys.executable, "-m", "seqexp.run", *args, "freeze=last", "trainer.max_epochs=100000",
           "trainer.early_stopping=false", f"dataset.data_dir={mini_conll}", *FAST]
    proc = warm.Popen(cmd, cwd=work, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        running = wait_for_epoch_metric(work / "mlruns.db", proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr[-4000:]
    name = signal.Signals(signum).name
    assert f"seqexp: interrupted by {name}" in stderr and "Traceback" not in stderr, stderr[-4000:]

    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    run = client.get_run(running.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"Interrupted: interrupted by {name}"
    assert run.data.tags["stop_reason"] == "interrupted"
    epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")]
    assert epochs and epochs == list(range(len(epochs)))  # every epoch logged before the signal is kept
    assert run.data.metrics["stopped_at_step"] >= 10 * len(epochs) - 10
    assert "test_f1" not in run.data.metrics
    if multirun:
        _, (parent,), children = runs(work)
        assert [c.info.run_id for c in children] == [run.info.run_id]  # seed=2 never started
        assert parent.info.status == "KILLED"


def test_sigkill_mid_run_leaves_it_running_until_the_next_run_of_that_job(work, mini_conll):
    from seqexp.sweep import fingerprint, standing

    overrides = ["fault.kind=kill", "fault.step=2", "freeze=last", "trainer.max_epochs=1",
                 f"dataset.data_dir={mini_conll}", *FAST]
    proc = warm.run([sys.executable, "-m", "seqexp.run", *overrides], cwd=work,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-4000:]
    uri = f"sqlite:///{work / 'mlruns.db'}"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])
    assert run.info.status == "RUNNING"  # power loss: nothing could be recorded
    # The next run of this job looks it up first (seqexp.sweep.standing), finds its process dead,
    # and marks it KILLED before running the job again.
    fp = fingerprint(compose([*overrides, f"tracking.uri={uri}"]))
    assert run.data.tags["seqexp.fingerprint"] == fp
    assert standing(client, "seqexp", fp).done is None
    dead = client.get_run(run.info.run_id)
    assert dead.info.status == "KILLED"
    assert dead.data.tags["error"] == f"process {run.data.tags['seqexp.pid']} died while the run was RUNNING"
