"""Reliability suite: concurrent sweeps as real processes against one real sqlite MLflow store.

Each case shows that nothing is lost: the store is usable (MLflow's schema, experiments listed),
each config fingerprint has exactly one FINISHED run and no other run, every FINISHED run has all
its metrics with each per-epoch value once, and the report's seed counts are true.

Short forms run by default; ``pytest -m slow tests/test_reliability.py`` runs the long form (more jobs,
joblib workers, a sweep killed with SIGKILL and rerun). The kill -9, outage and fault cases of single
runs live in tests/test_faults_e2e.py, tests/test_resume.py and tests/test_tracking_outage.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PER_EPOCH = {"train_loss", "val_f1", "val_precision", "val_recall", "val_accuracy", "val_strict_f1"}
AT_END = {"test_f1", "test_precision", "test_recall", "test_accuracy", "test_strict_f1", "train_time_s",
          "trainable_params", "total_params"}
SPLIT_SIZES = {"train_sentences", "dev_sentences", "test_sentences"}  # params: bookkeeping, not curves


def launch(work: Path, tag: str, *overrides: str) -> subprocess.Popen:
    out = open(work / f"{tag}.log", "w")  # noqa: SIM115 -- closed with the process
    return warm.Popen([sys.executable, "-m", "seqexp.run", "-m", *overrides], cwd=work, env=ENV,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def together(work: Path, phase: str, n: int, overrides: list[str], timeout: float = 900) -> list[str]:
    """``n`` identical sweeps started at once; returns their logs once all have exited 0."""
    procs = [launch(work, f"{phase}{i}", *overrides) for i in range(n)]
    for proc in procs:
        proc.wait(timeout=timeout)
    logs = [(work / f"{phase}{i}.log").read_text() for i in range(n)]
    assert [p.returncode for p in procs] == [0] * n, [log[-3000:] for log in logs]
    return logs


def claims(logs: list[str]) -> list[str]:
    """What each sweep claimed, skipped or took over, in order: the evidence when a job trains twice."""
    keep = ("MLflow run ", "skipping", "marking it KILLED", "resuming run")
    return [f"sweep {i}: {line}" for i, log in enumerate(logs) for line in log.splitlines()
            if any(k in line for k in keep)]


def summary_counts(logs: list[str]) -> Counter:
    total: Counter = Counter()
    for log in logs:
        (line,) = re.findall(r"^(\d+) finished, (\d+) skipped, (\d+) failed, (\d+) killed$", log, re.M)
        total.update(dict(zip(("finished", "skipped", "failed", "killed"), map(int, line))))
    return total


def check_store(work: Path, experiment: str, epochs: int, killed_ok: bool = False) -> list:
    """Usable store; one FINISHED run per fingerprint and nothing else (``killed_ok``: also runs of
    killed processes, marked KILLED with the reason); every metric, each once. Returns the FINISHED."""
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version
    from sqlalchemy import create_engine

    uri = f"sqlite:///{work / 'mlruns.db'}"
    assert _get_schema_version(create_engine(uri)) == _get_latest_schema_revision()
    client = MlflowClient(uri)
    assert experiment in {e.name for e in client.search_experiments()}
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("seqexp.role") == "job"]
    others = [r for r in jobs if r.info.status != "FINISHED"]
    if killed_ok:
        assert all(r.info.status == "KILLED" and "died" in r.data.tags.get("error", "") for r in others), [
            (r.info.status, r.data.tags.get("error")) for r in others]
    else:
        assert not others, Counter(r.info.status for r in jobs)
    jobs = [r for r in jobs if r.info.status == "FINISHED"]
    per_fp = Counter(r.data.tags["seqexp.fingerprint"] for r in jobs)
    assert set(per_fp.values()) == {1}, per_fp
    for run in jobs:
        assert PER_EPOCH | AT_END <= set(run.data.metrics), sorted(PER_EPOCH | AT_END - set(run.data.metrics))
        assert SPLIT_SIZES <= set(run.data.params), sorted(SPLIT_SIZES - set(run.data.params))
        for key in PER_EPOCH:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(epochs)), (run.info.run_name, key, steps)
        assert len(client.get_metric_history(run.info.run_id, "test_f1")) == 1
    parents = [r for r in runs if r.data.tags.get("seqexp.role") == "sweep"]
    assert len(parents) == len({r.data.tags["seqexp.sweep_id"] for r in parents}), "one parent run per sweep"
    return jobs


def report_counts(work: Path, target: str) -> tuple[int, int, str]:
    """(finished runs, cells, seeds each) as ``python -m seqexp.report`` states them."""
    proc = warm.run([sys.executable, "-m", "seqexp.report", target, "--uri", f"sqlite:///{work / 'mlruns.db'}",
                           "--out", str(work / "report" / target), "--bootstrap", "0"],
                          cwd=work, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (work / "report" / target / "report.md").read_text()
    match = re.search(r"(\d+) finished runs? of .* in (\d+) cells? \((?:.*the pick of each, )?([\d/]+) seeds? each\)", text)
    assert match, text[:2000]
    return int(match.group(1)), int(match.group(2)), match.group(3)


def test_three_concurrent_sweeps_on_a_fresh_then_an_existing_store(tmp_path, mini_conll):
    base = ["model=tiny-bert", "freeze=last", f"dataset.data_dir={mini_conll}", "dataset.max_train_sentences=32",
            "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.num_threads=1"]
    # A fresh store: all three create it at once (issue 11.1) and race for the same two jobs (11.2).
    logs = together(tmp_path, "fresh", 3, [*base, "optim=adam,sgd"])
    counts = summary_counts(logs)
    assert counts == Counter(finished=2, skipped=4, failed=0, killed=0), (counts, claims(logs))
    jobs = check_store(tmp_path, "seqexp", epochs=1)
    assert len(jobs) == 2
    assert report_counts(tmp_path, "seqexp") == (2, 2, "1")

    # The existing store: a second seed for each; the seed-1 jobs are done already.
    logs = together(tmp_path, "existing", 3, [*base, "optim=adam,sgd", "seed=1,2"])
    counts = summary_counts(logs)
    assert counts == Counter(finished=2, skipped=10, failed=0, killed=0), (counts, claims(logs))
    jobs = check_store(tmp_path, "seqexp", epochs=1)
    assert sorted((r.data.params["optim"], r.data.params["seed"]) for r in jobs) == [
        ("adam", "1"), ("adam", "2"), ("sgd", "1"), ("sgd", "2")]
    assert report_counts(tmp_path, "seqexp") == (4, 2, "2")


@pytest.mark.slow
def test_long_form_concurrent_joblib_sweeps_one_killed_then_rerun(tmp_path, mini_conll):
    """Three identical 4-job sweeps with 2 joblib workers each on a fresh store; one is killed with
    SIGKILL while it trains; the same command afterwards completes the grid, each job once."""
    args = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=tiny-bert", "freeze=last,unfreeze",
            "optim=adam,sgd", f"dataset.data_dir={mini_conll}", "dataset.max_train_sentences=64",
            "trainer.max_epochs=2", "trainer.batch_size=16", "trainer.num_threads=1"]
    procs = [launch(tmp_path, f"long{i}", *args) for i in range(3)]
    deadline = time.time() + 600
    # Killed while it trains a job it claimed: its run stays RUNNING with a dead pid, to be taken over.
    while time.time() < deadline and "MLflow run " not in (tmp_path / "long0.log").read_text():
        assert procs[0].poll() is None, (tmp_path / "long0.log").read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(procs[0].pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=1800)
    assert [p.returncode for p in procs[1:]] == [0, 0], [(tmp_path / f"long{i}.log").read_text()[-3000:] for i in (1, 2)]
    rerun = together(tmp_path, "rerun", 1, args, timeout=1800)
    assert summary_counts(rerun)["failed"] == 0
    logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert "died while the run was RUNNING: marking it KILLED" in logs  # the killed sweep's claim was taken over
    jobs = check_store(tmp_path, "seqexp", epochs=2, killed_ok=True)
    assert len(jobs) == 4
    assert report_counts(tmp_path, "seqexp") == (4, 4, "1")
