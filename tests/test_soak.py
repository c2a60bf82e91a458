"""Soak: 16 tiny runs in one ``-m`` sweep on 2 joblib workers, faults injected into a known 4.

Run it with ``pytest -m slow tests/test_soak.py -s`` (a few minutes). The faults come from
environment variables read by an experiment file (``fault.kind`` per seed and freeze), so the
same command, run again without them, is a rerun after transient faults: it must redo exactly
the 4 failed jobs, skip the 12 finished ones, and leave no job without a FINISHED run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_sweep import runs

pytestmark = pytest.mark.slow

EXPERIMENT = """\
# @package _global_
# python -m seqexp.run -m --config-dir {conf} experiment=soak hydra/launcher=joblib hydra.launcher.n_jobs=2
#
# 8 seeds x 2 freeze strategies; SEQEXP_SOAK_FAULT_S<seed>_<strategy>=nan|inf|error injects a fault.
fault:
  kind: ${{oc.env:SEQEXP_SOAK_FAULT_S${{seed}}_${{freeze.strategy}},null}}
  step: 12   # in the second epoch: the first epoch's dev metrics are logged before the fault
hydra:
  sweeper:
    params:
      seed: range(1,9)
      freeze: last,unfreeze
"""

FAULTS = {(2, "last"): "nan", (3, "unfreeze"): "error", (5, "unfreeze"): "inf", (7, "last"): "error"}
GRID = [(seed, freeze) for seed in range(1, 9) for freeze in ("last", "unfreeze")]
TEST_METRICS = ("test_f1", "test_precision", "test_recall", "test_accuracy")
DEV_METRICS = ("val_f1", "val_precision", "val_recall", "val_accuracy")
EPOCHS = 2


def soak_sweep(work: Path, conf: Path, data: Path, faults: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQEXP_SOAK_FAULT_")}
    env.update({f"SEQEXP_SOAK_FAULT_S{seed}_{freeze}": kind for (seed, freeze), kind in faults.items()})
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "seqexp.run", "-m", "--config-dir", str(conf), "experiment=soak",
           "model=tiny-bert", "optim=adam", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"dataset.data_dir={data}", f"trainer.max_epochs={EPOCHS}", "trainer.batch_size=16",
           "trainer.num_threads=1"]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=3000)


def coordinates(run) -> tuple[int, str]:
    return int(run.data.params["seed"]), run.data.params["freeze"]


@pytest.mark.timeout(3600)
def test_soak_16_runs_2_workers_faults_then_rerun(tmp_path, mini_conll, capsys):
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "soak.yaml").write_text(EXPERIMENT.format(conf=conf))
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()

    first = soak_sweep(work, conf, mini_conll, FAULTS)
    assert first.returncode == 1, first.stderr[-4000:]
    assert "12 finished, 0 skipped, 4 failed" in first.stdout, first.stdout[-3000:]
    client, parents, children = runs(work)
    assert len(parents) == 1 and len(children) == 16
    by_job = {coordinates(c): c for c in children}
    assert sorted(by_job) == sorted(GRID)
    for job, run in by_job.items():
        history = {m: [p.step for p in client.get_metric_history(run.info.run_id, m)] for m in DEV_METRICS}
        if job in FAULTS:
            kind = FAULTS[job]
            assert run.info.status == "FAILED", job
            error = run.data.tags["error"]
            if kind == "error":
                assert error == "RuntimeError: injected fault at training step 12 (fault.kind=error)"
            else:
                assert error.startswith(f"NonFiniteLossError: training loss is {kind} at epoch 1, step 12"), error
            assert run.data.params["fault.kind"] == kind
            assert history == {m: [0] for m in DEV_METRICS}, (job, history)  # epoch 0 kept
        else:
            assert run.info.status == "FINISHED", (job, run.data.tags.get("error"))
            assert "fault.kind" not in run.data.params  # no fault: no fault.* params, never "None"
            assert all(m in run.data.metrics for m in TEST_METRICS), (job, sorted(run.data.metrics))
            assert history == {m: list(range(EPOCHS)) for m in DEV_METRICS}, (job, history)
    first_ids = {job: run.info.run_id for job, run in by_job.items()}

    # The same command, the faults gone: only the 4 failed jobs run again, and they finish.
    again = soak_sweep(work, conf, mini_conll, {})
    assert again.returncode == 0, again.stderr[-4000:]
    assert "4 finished, 12 skipped, 0 failed" in again.stdout, again.stdout[-3000:]
    client, parents2, children2 = runs(work)
    assert [p.info.run_id for p in parents2] == [parents[0].info.run_id]
    assert parents2[0].info.status == "FINISHED"
    new = [c for c in children2 if c.info.run_id not in first_ids.values()]
    assert sorted(coordinates(c) for c in new) == sorted(FAULTS)
    assert all(c.info.status == "FINISHED" and all(m in c.data.metrics for m in TEST_METRICS) for c in new)
    for c in children2:  # the first sweep's runs are untouched: the failed stay FAILED, the finished FINISHED
        if c.info.run_id in first_ids.values():
            assert c.info.status == ("FAILED" if coordinates(c) in FAULTS else "FINISHED")
    finished_jobs = {coordinates(c) for c in children2 if c.info.status == "FINISHED"}
    lost = len(set(GRID) - finished_jobs)
    assert lost == 0
    with capsys.disabled():
        print(f"\nsoak: {len(GRID)} runs launched on 2 workers, {len(FAULTS)} faults injected "
              f"({len(FAULTS)} FAILED, {len(GRID) - len(FAULTS)} FINISHED); rerun: {len(new)} recovered, "
              f"{len(GRID) - len(new)} skipped; runs lost = {lost}; {time.monotonic() - started:.0f} s")
