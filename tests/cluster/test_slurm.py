"""SLURM through Hydra's submitit launcher, on a real single-node cluster (tests/cluster/slurm.py).

The sweep is the user's grid in small (freeze x optim, tiny-bert, 150 CoNLL-2003 sentences, 1 epoch), submitted
with the ``slurm_cpu`` preset. Two of its jobs are interrupted mid-epoch, each just after a checkpoint:

- one is requeued by SLURM (``scontrol requeue``, as an administrator or ``PreemptMode=REQUEUE`` would): SLURM
  sends it SIGTERM, the run ends KILLED, and SLURM starts the job again;
- one gets the signal SLURM sends before a job's time limit (``--signal=USR2@signal_delay_s``): submitit's
  handler checkpoints the job and requeues it itself (``max_num_timeout``).

Both come back under the same SLURM job id, resume from their own checkpoint in the same MLflow run, and end
FINISHED with the metrics of an uninterrupted local run of the same config.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO
from tests.test_resume import checkpoint_state, per_epoch

# Full fine-tuning of tiny-bert in batches of 4: 38 steps an epoch on mini_conll, a checkpoint every 4.
BASE = ["model=tiny-bert", "trainer.batch_size=4", "trainer.num_threads=1", "trainer.max_epochs=1",
        "trainer.checkpoint_every_n_steps=4"]
GRID = ["freeze=last,unfreeze", "optim=adam,sgd"]
# The test cluster's partition, one CPU a job (2 at once on 2 cores); timeout_min below 50 makes submitit count
# any USR2 as a time-out, as SLURM's signal before the time limit would be.
SLURM = ["hydra/launcher=slurm_cpu", "hydra.launcher.partition=test", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=null", "hydra.launcher.array_parallelism=2", "hydra.launcher.timeout_min=10",
         "hydra.launcher.max_num_timeout=2"]


def seqexp(cwd: Path, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "sweep.log", "w")  # noqa: SIM115 -- closed with the process
    return warm.Popen([sys.executable, "-m", "seqexp.run", "-m", *args], cwd=cwd,
                      env={**(env or os.environ), "PYTHONPATH": str(REPO)}, stdout=log,
                      stderr=subprocess.STDOUT, **kw)


def jobs_of(store: Path) -> tuple[MlflowClient, list, list]:
    client = MlflowClient(f"sqlite:///{store / 'mlruns.db'}")
    exp = client.get_experiment_by_name("seqexp")
    found = client.search_runs([exp.experiment_id], max_results=100) if exp else []
    return (client, [r for r in found if r.data.tags.get("seqexp.role") == "job"],
            [r for r in found if r.data.tags.get("seqexp.role") == "sweep"])


def slurm_job_id(pid: int) -> str:
    environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    if "SLURM_ARRAY_JOB_ID" in environ:  # an array task: its own JobId may also be the whole array's id
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def interrupt_mid_epoch(slurm, store: Path, sweep: subprocess.Popen, actions, timeout: float = 400) -> dict:
    """Interrupt one full fine-tuning job per action, just after its first mid-epoch checkpoint.

    The job's process is stopped (SIGSTOP) while the action is sent, so it cannot finish in between, then
    continued. SLURM signals it asynchronously (SIGCONT first), so it may write more checkpoints before it ends:
    the state returned is the checkpoint on disk once the process is gone, the one its requeued job must resume
    from. Returns {fingerprint: (action name, SLURM job id, checkpoint state)}.
    """
    from seqexp import tracking

    client = None  # opened once a checkpoint exists, under seqexp's store lock: never beside the sweep's migration
    done, seen, leaving, deadline = {}, set(), {}, time.time() + timeout
    while len(done) < len(actions) and time.time() < deadline:
        for fp, (pid, ckpt, name, job) in list(leaving.items()):
            if not Path(f"/proc/{pid}").exists():  # ended: its requeued job has not started training yet
                done[fp] = (name, job, checkpoint_state(ckpt))
                del leaving[fp]
        for ckpt in (store / "checkpoints").glob("*/last.ckpt"):
            fp = ckpt.parent.name
            state = checkpoint_state(ckpt) if fp not in seen else None
            if state is None:
                continue
            seen.add(fp)
            client = client or tracking.client(f"sqlite:///{store / 'mlruns.db'}")
            run = client.get_run(state["run_id"])
            if run.data.tags.get("grid.freeze") != "unfreeze" or not state["mid_epoch"]:
                continue
            pid = int(run.data.tags["seqexp.pid"])
            os.kill(pid, signal.SIGSTOP)
            job = slurm_job_id(pid)
            name, action = actions[len(done) + len(leaving)]
            action(job)
            os.kill(pid, signal.SIGCONT)
            leaving[fp] = (pid, ckpt, name, job)
            if len(done) + len(leaving) == len(actions):
                break
        if sweep.poll() is not None:
            break
        time.sleep(0.02)
    assert len(done) == len(actions), (
        f"interrupted {len(done)} of {len(actions)} jobs mid-epoch; sweep log:\n"
        f"{(store / 'sweep.log').read_text()[-4000:]}\n{slurm.logs()}")
    return done


def wait_lifting_requeue_holds(slurm, proc: subprocess.Popen, timeout: float) -> int:
    """Wait for ``proc``; SLURM holds a requeued job for two minutes (BeginTime), which is lifted here."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        for job in slurm.jobs():
            if job["JobState"] == "PENDING" and job["Reason"] == "BeginTime" and job["Restarts"] != "0":
                slurm.scontrol("update", f"JobId={job['JobId']}", "StartTime=now")
        time.sleep(1)
    return proc.wait(timeout=max(1.0, deadline - time.time()))


# Outside make test (.ci/run runs it); make test: submitit_local below (the submitit launcher and the sweep
# callback), test_resume (killed, resumed in its MLflow run)
@pytest.mark.extended
def test_slurm_sweep_with_requeued_jobs_finishes_every_run_once_with_local_metrics(tmp_path, mini_conll, slurm):
    args = [*BASE, f"dataset.data_dir={mini_conll}", *GRID]
    local = seqexp(tmp_path / "local", *args)  # the reference: Hydra's basic launcher, its own store
    env = {**slurm.env, "TMPDIR": str(slurm.submit_tmp)}  # the node does not see the submitter's TMPDIR
    cluster = tmp_path / "slurm"
    sweep = seqexp(cluster, *args, *SLURM, env=env)
    actions = [("requeue", lambda job: slurm.run("scontrol", "requeue", job, check=True)),
               ("time limit", lambda job: slurm.run("scancel", "--signal=USR2", job, check=True))]
    interrupted = interrupt_mid_epoch(slurm, cluster, sweep, actions)

    assert wait_lifting_requeue_holds(slurm, sweep, timeout=600) == 0, \
        (cluster / "sweep.log").read_text()[-6000:] + slurm.logs()
    assert local.wait(timeout=600) == 0, (tmp_path / "local" / "sweep.log").read_text()[-4000:]
    said = (cluster / "sweep.log").read_text()
    assert "4 finished, 0 skipped, 0 failed, 0 killed" in said, said[-3000:]

    client, jobs, (parent,) = jobs_of(cluster)
    ref_client, ref_jobs, _ = jobs_of(tmp_path / "local")
    assert parent.info.status == "FINISHED"
    # Every run FINISHED, once: one MLflow run per config, the interrupted ones resumed in place.
    assert sorted(r.info.status for r in jobs) == ["FINISHED"] * 4
    by_fp = {r.data.tags["seqexp.fingerprint"]: r for r in jobs}
    ref_by_fp = {r.data.tags["seqexp.fingerprint"]: r for r in ref_jobs}
    assert len(by_fp) == 4 and set(by_fp) == set(ref_by_fp)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)

    restarts = {f"{j['ArrayJobId']}_{j['ArrayTaskId']}": int(j["Restarts"]) for j in slurm.jobs()}
    for fp, (name, job, state) in interrupted.items():
        run = by_fp[fp]
        assert run.info.run_id == state["run_id"], name  # the same MLflow run
        assert run.data.tags["resumed_from_step"] == str(state["step"]), name  # from its own checkpoint
        assert restarts[job] == 1, (name, restarts)  # SLURM ran the same job again, once
        assert not (cluster / "checkpoints" / fp).exists()  # FINISHED: its checkpoint is gone
        (log,) = cluster.glob(f"multirun/*/*/.submitit/{job}/{job}_0_log.err")
        said_by_job = log.read_text()
        assert "CANCELLED AT" in said_by_job and "DUE TO JOB REQUEUE" in said_by_job, name
        if name == "time limit":  # submitit's handler took the signal as a time-out and requeued the job
            assert "Caught signal SIGUSR2" in said_by_job and "this job is timed-out" in said_by_job

    # The same metrics as the uninterrupted local runs of the same configs.
    assert_same_metrics(client, by_fp, ref_client, ref_by_fp)



def test_submitit_local_launcher_records_failures_and_skips_finished_jobs(tmp_path, mini_conll):
    """``hydra/launcher=submitit_local``: one job fails in training (FAILED in MLflow), one before it has a run
    (its config), one finishes; the sweep exits 1. The same command again skips the finished one only."""
    args = ["model=tiny-bert", "freeze=last", "trainer.num_threads=1", "trainer.max_epochs=1",
            f"dataset.data_dir={mini_conll}", "fault.kind=null,error,bogus", "fault.step=0",
            "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    first = seqexp(tmp_path, *args)
    assert first.wait(timeout=300) == 1, (tmp_path / "sweep.log").read_text()[-4000:]
    said = (tmp_path / "sweep.log").read_text()
    assert "1 finished, 0 skipped, 2 failed, 0 killed" in said, said[-3000:]
    assert "fault.kind=bogus" in said and "`fault.kind`: unknown 'bogus'" in said
    _, jobs, (parent,) = jobs_of(tmp_path)
    status = {r.data.tags["grid.fault.kind"]: r.info.status for r in jobs}
    assert status == {"null": "FINISHED", "error": "FAILED"} and parent.info.status == "FAILED"

    again = seqexp(tmp_path, *args)
    assert again.wait(timeout=300) == 1
    assert "0 finished, 1 skipped, 2 failed" in (tmp_path / "sweep.log").read_text()
    _, jobs, _ = jobs_of(tmp_path)
    assert sorted(r.info.status for r in jobs) == ["FAILED", "FAILED", "FINISHED"]



def assert_same_metrics(client, by_fp: dict, ref_client, ref_by_fp: dict) -> None:
    """Every run (by config fingerprint) has the test, best-dev and per-epoch metrics of its local reference run."""
    for fp, run in by_fp.items():
        ref = ref_by_fp[fp]
        test = {k: v for k, v in run.data.metrics.items() if k.startswith(("test_", "best_"))}
        assert test and test == {k: v for k, v in ref.data.metrics.items() if k.startswith(("test_", "best_"))}
        for key in ("val_f1", "train_loss"):
            assert per_epoch(client, run.info.run_id, key) == per_epoch(ref_client, ref.info.run_id, key), key
