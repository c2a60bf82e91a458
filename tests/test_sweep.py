"""Real ``-m`` sweeps into a real MLflow sqlite store: parent/child runs, failures, skips, joblib."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from seqexp.identity import FINGERPRINT_VERSION
from tests import warm
from tests.conftest import REPO

TINY = ["trainer.max_epochs=1", "trainer.batch_size=16"]


def sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return warm.run([sys.executable, "-m", "seqexp.run", "-m", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def runs(cwd: Path, experiment: str = "seqexp"):
    client = MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")
    exp = client.get_experiment_by_name(experiment)
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("seqexp.role") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("seqexp.role") == "job"]
    return client, parents, children


def test_a_setting_the_sweep_varies_names_its_runs(tmp_path, mini_conll):
    """trainer.* and dataset.* keys stay out of run names, unless the sweep varies one: its runs would
    otherwise share a name in the summary and in MLflow (trainer.precision=32-true,bf16-mixed)."""
    proc = sweep(tmp_path, "model=tiny-bert", "freeze=last", "trainer.max_epochs=1,2", "trainer.batch_size=16",
                 "trainer.num_threads=1", f"dataset.data_dir={mini_conll}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    _, _, children = runs(tmp_path)
    names = sorted(child.info.run_name for child in children)
    assert names == ["tiny-bert|last|adamw|trainer.max_epochs=1|s1", "tiny-bert|last|adamw|trainer.max_epochs=2|s1"]
    for name in names:
        assert name in proc.stdout  # the sweep's summary table


def test_grid_sweep_parent_children_and_rerun_skips(tmp_path, mini_conll):
    args = ["model=tiny-bert,tiny-albert", "freeze=last,unfreeze", f"dataset.data_dir={mini_conll}", *TINY]
    proc = sweep(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    sweep_id = parent.data.tags["seqexp.sweep_id"]
    grid = set()
    for child in children:
        tags, params = child.data.tags, child.data.params
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["seqexp.sweep_id"] == sweep_id
        assert tags["grid.model"] == params["model"] and tags["grid.freeze"] == params["freeze"]
        assert child.info.run_name == f"{params['model']}|{params['freeze']}|adamw|s1"
        assert tags["seqexp.fingerprint_version"] == str(FINGERPRINT_VERSION)
        for metric in ("test_accuracy", "test_precision", "test_recall", "test_f1"):
            assert metric in child.data.metrics
        grid.add((params["model"], params["freeze"]))
    assert grid == {(m, f) for m in ("tiny-bert", "tiny-albert") for f in ("last", "unfreeze")}
    assert "4 finished, 0 skipped, 0 failed" in proc.stdout
    check_report_of_real_sweep(tmp_path, sweep_id, children)

    # The same command again: every job is already FINISHED, nothing new runs.
    again = sweep(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "0 finished, 4 skipped, 0 failed" in again.stdout
    _, parents2, children2 = runs(tmp_path)
    assert len(parents2) == 1 and len(children2) == 4


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, mini_conll):
    # bert-base-cased is a hub id: offline and uncached it fails; the tiny job must still finish.
    proc = sweep(tmp_path, "model=tiny-bert,bert", f"dataset.data_dir={mini_conll}", *TINY)
    assert proc.returncode != 0
    assert "1 finished, 0 skipped, 1 failed" in proc.stdout
    client, parents, children = runs(tmp_path)
    status = {c.data.params["model"]: c for c in children}
    assert status["tiny-bert"].info.status == "FINISHED"
    failed = status["bert"]
    assert failed.info.status == "FAILED"
    assert "EncoderUnavailableError" in failed.data.tags["error"] and "model=minilm" in failed.data.tags["error"]
    traceback = Path(client.download_artifacts(failed.info.run_id, "traceback.txt")).read_text()
    assert "Traceback" in traceback
    assert parents[0].info.status == "FAILED"


@pytest.mark.slow  # tests/test_concurrency.py covers it with 4 workers
def test_joblib_two_workers_fresh_db_loses_no_runs(tmp_path, mini_conll):
    proc = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "model=tiny-bert", "optim=adam,sgd", "seed=1,2", f"dataset.data_dir={mini_conll}",
                 "trainer.num_threads=1", *TINY)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 4
    assert all(c.info.status == "FINISHED" and "test_f1" in c.data.metrics for c in children)
    for c in children:
        assert len(client.get_metric_history(c.info.run_id, "val_f1")) == 1


def test_run_left_running_by_a_dead_process_is_marked_killed_and_redone(tmp_path, mini_conll):
    from seqexp.sweep import fingerprint
    from seqexp.tracking import RunTracker
    from tests.conftest import compose

    overrides = ["model=tiny-bert", f"dataset.data_dir={mini_conll}", *TINY]
    cfg = compose(overrides)
    dead = warm.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    tracker = RunTracker(f"sqlite:///{tmp_path / 'mlruns.db'}", "seqexp")
    tracker.start(cfg, "tiny-bert|unfreeze|adamw|s1", {"model": "tiny-bert"},
                  tags={"seqexp.fingerprint": fingerprint(cfg), "seqexp.pid": dead,
                        "seqexp.host": socket.gethostname()})
    proc = sweep(tmp_path, *overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    _, _, children = runs(tmp_path)
    assert [c.info.status for c in children] == ["FINISHED"]


def test_a_study_tuned_on_one_seed_runs_its_picks_on_more_seeds(tmp_path, mini_conll):
    """make strategies' protocol: candidates on seed 1, `seqexp.report --picks`, the picks on seeds 2,3."""
    import shlex

    from seqexp.report import collect_report

    stage1 = sweep(tmp_path, "model=tiny-bert", "freeze=last,unfreeze", "seed=1", "freeze.lr_scale=0.3,3",
                   "tuned=[freeze.lr_scale]", f"dataset.data_dir={mini_conll}", *TINY)
    assert stage1.returncode == 0, stage1.stderr[-4000:]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    picks = warm.run([sys.executable, "-m", "seqexp.report", "seqexp", "--picks"], cwd=tmp_path, env=env,
                     capture_output=True, text=True, timeout=300)
    assert picks.returncode == 0, picks.stderr[-3000:]
    lines = picks.stdout.splitlines()
    assert len(lines) == 2 and all("seed=" not in line for line in lines), lines
    for line in lines:
        stage2 = sweep(tmp_path, *shlex.split(line), "seed=2,3")
        assert stage2.returncode == 0, stage2.stderr[-4000:]
        assert "2 finished, 0 skipped, 0 failed" in stage2.stdout
    grid = collect_report(f"sqlite:///{tmp_path / 'mlruns.db'}", "seqexp", bootstrap=0).grid
    assert len(grid.cells) == 2
    for cell in grid.cells:
        assert cell.selection_seeds == ["1"]
        assert cell.pick.seeds == ["1", "2", "3"]  # the pick ran on every seed, the other candidate on seed 1
        (other,) = [c for c in cell.candidates if c is not cell.pick]
        assert other.seeds == ["1"]
        assert cell.pick.values("best_val_f1", ["1"]) >= other.values("best_val_f1")  # chosen on seed 1 alone
        (line,) = [ln for ln in lines if f"freeze={cell.axes['freeze']}" in shlex.split(ln)]
        assert f"freeze.lr_scale={cell.pick.tuned['freeze.lr_scale']}" in shlex.split(line)
    # make strategies-2x: the picks with their budget doubled (the study's trainer.max_epochs=1 becomes 2), run
    # as another experiment
    doubled = warm.run([sys.executable, "-m", "seqexp.report", "seqexp", "--picks", "--budget-factor", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert doubled.returncode == 0, doubled.stderr[-3000:]
    assert [ln.replace("trainer.max_epochs=2", "trainer.max_epochs=1") for ln in doubled.stdout.splitlines()] == lines
    (head,) = [ln for ln in doubled.stdout.splitlines() if "freeze=last" in shlex.split(ln)]
    check = sweep(tmp_path, *shlex.split(head), "seed=1", "tracking.experiment=seqexp-2x")
    assert check.returncode == 0, check.stderr[-4000:]
    _, _, (run,) = runs(tmp_path, "seqexp-2x")
    assert run.info.status == "FINISHED" and run.data.metrics["max_epochs"] == 2
    assert run.data.params["freeze.lr_scale"] == next(c for c in grid.cells if c.axes["freeze"] == "last").pick.tuned[
        "freeze.lr_scale"]


def check_report_of_real_sweep(cwd: Path, sweep_id: str, children) -> None:
    """``python -m seqexp.report <sweep id>`` on the real sweep: numbers are MLflow's, images exist."""
    import re

    from seqexp.report import collect_report

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = warm.run([sys.executable, "-m", "seqexp.report", sweep_id, "--bootstrap", "200"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = cwd / "reports" / sweep_id
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for png in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") >= 3
    by_id = {c.info.run_id: c for c in children}
    assert all(run_id in md for run_id in by_id)
    data = collect_report(f"sqlite:///{cwd / 'mlruns.db'}", sweep_id, bootstrap=0)
    rows = data.table()
    assert len(rows) == 4
    for row in rows:
        (run_id,) = row["run_ids"]  # one seed per configuration in this sweep
        metrics = by_id[run_id].data.metrics
        for key in ("test_accuracy", "test_precision", "test_recall", "test_f1"):
            assert row[key]["mean"] == metrics[key]
    for child in children:
        f1 = 100 * child.data.metrics["test_f1"]
        assert f"{f1:.2f}" in md, (child.info.run_name, f1)
