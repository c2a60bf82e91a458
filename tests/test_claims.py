"""Claims: a job claims its config fingerprint before it trains, so identical jobs started together
train once (issue 11.2). Real sqlite MLflow stores, real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import warm
from tests.conftest import REPO, compose

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
FAST = ["model=tiny-bert", "trainer.max_epochs=1", "trainer.batch_size=16", "trainer.num_threads=1",
        "dataset.max_train_sentences=48"]


def _claim(tmp_path: Path, mini_conll: Path, tags: dict[str, str]):
    """A RUNNING run of the job's fingerprint with ``tags``, then ``claim_job`` for the same job."""
    from seqexp import tracking
    from seqexp.sweep import claim_job, fingerprint
    from seqexp.tracking import RunTracker

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = compose([*FAST, f"dataset.data_dir={mini_conll}", f"tracking.uri={uri}"])
    fp = fingerprint(cfg)
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "seqexp", uri)
    other = client.create_run(exp, run_name="other", tags={"seqexp.fingerprint": fp, **tags})
    tracker = RunTracker(uri, "seqexp")
    claim = claim_job(cfg, tracker, fp, "mine", {"model": "tiny-bert"}, {"seqexp.fingerprint": fp,
                      "seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid())})
    return client, other.info.run_id, tracker, claim


def test_a_live_claim_makes_the_job_skip_without_a_run(tmp_path, mini_conll):
    me = {"seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid())}
    client, other, tracker, claim = _claim(tmp_path, mini_conll, me)
    assert claim.holder is not None and claim.holder.info.run_id == other
    assert claim.done is None and tracker.run_id is None
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])] == [other]


def test_a_fresh_heartbeat_from_another_host_holds_the_claim(tmp_path, mini_conll):
    tags = {"seqexp.host": "elsewhere", "seqexp.pid": "1", "seqexp.heartbeat": f"{time.time() - 60:.0f}"}
    _, other, tracker, claim = _claim(tmp_path, mini_conll, tags)
    assert claim.holder is not None and claim.holder.info.run_id == other and tracker.run_id is None


def test_stale_claims_are_marked_killed_and_taken_over(tmp_path, mini_conll):
    from seqexp.sweep import LEASE_S

    dead = warm.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for case, (tags, why) in enumerate((({"seqexp.host": socket.gethostname(), "seqexp.pid": str(dead.pid)},
                       f"process {dead.pid} died while the run was RUNNING"),
                      ({"seqexp.host": "elsewhere", "seqexp.pid": "7", "seqexp.heartbeat": f"{time.time() - 2 * LEASE_S:.0f}"},
                       "no heartbeat from process 7 on elsewhere for"))):
        work = tmp_path / str(case)
        work.mkdir()
        client, other, tracker, claim = _claim(work, mini_conll, tags)
        assert claim.holder is None and claim.done is None and tracker.run_id is not None
        old = client.get_run(other)
        assert old.info.status == "KILLED" and old.data.tags["error"].startswith(why)
        mine = client.get_run(tracker.run_id)
        assert mine.info.status == "RUNNING" and len(mine.data.tags["seqexp.claim"]) == 32
        with tracker:
            pass
        assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_two_identical_unfreeze_runs_at_once_train_once_and_never_share_the_checkpoint(tmp_path, mini_conll):
    """Both processes start together on an existing store; before claims both trained (two FINISHED
    runs of one fingerprint, both writing <fingerprint>/last.ckpt)."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    MlflowClient(uri).search_experiments()  # an existing store
    # Long enough (4 epochs of 150 sentences) that the two overlap however their imports are staggered.
    args = [sys.executable, "-m", "seqexp.run", *FAST, "freeze=unfreeze", f"dataset.data_dir={mini_conll}",
            "trainer.max_epochs=4", "dataset.max_train_sentences=150",
            f"tracking.uri={uri}", "trainer.checkpoint_every_n_steps=1"]
    procs = []
    for i in (1, 2):
        log = open(tmp_path / f"run{i}.log", "w")  # noqa: SIM115 -- closed with the process
        procs.append(warm.Popen(args, cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT))
    for proc in procs:
        assert proc.wait(timeout=600) == 0, [(tmp_path / f"run{i}.log").read_text()[-3000:] for i in (1, 2)]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in (1, 2)]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
    (winner,) = runs
    trained = [log for log in logs if "checkpoints: " in log]
    skipped = [log for log in logs if f"being trained by run {winner.info.run_id}" in log]
    assert len(trained) == 1 and len(skipped) == 1, logs
    assert "MLflow run" not in skipped[0]
    assert not (tmp_path / "checkpoints" / winner.data.tags["seqexp.fingerprint"]).exists()


@pytest.mark.parametrize("after", [1, 2, 3])
def test_a_claim_that_ends_finished_during_the_look_up_is_not_trained_again(tmp_path, mini_conll, monkeypatch, after):
    """The other process ends its run FINISHED right after this one's ``after``-th search of the store for
    the fingerprint (it needs no lock to end a run). Looked up in two searches, the run was RUNNING in
    one (not done) and FINISHED in the next (no live claim), and the job trained a second time (CI:
    three concurrent sweeps, one job trained twice). Whenever it ends, the job skips."""
    me = {"seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid())}
    search = MlflowClient.search_runs
    searches: list[str] = []

    def search_then_the_other_ends(self, experiment_ids, filter_string="", *args, **kwargs):
        found = search(self, experiment_ids, filter_string, *args, **kwargs)
        if "seqexp.fingerprint" in filter_string:
            searches.append(filter_string)
            other = [r for r in found if r.info.run_name == "other" and r.info.status == "RUNNING"]
            if len(searches) == after and other:
                self.set_terminated(other[0].info.run_id, "FINISHED")
        return found

    monkeypatch.setattr(MlflowClient, "search_runs", search_then_the_other_ends)
    client, other, tracker, claim = _claim(tmp_path, mini_conll, me)
    monkeypatch.undo()
    assert tracker.run_id is None, f"the job claimed a fingerprint that FINISHED after search {after} of {len(searches)}"
    seen = claim.holder or claim.done  # live when it looked before the end, done after
    assert seen is not None and seen.info.run_id == other
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("seqexp").experiment_id])] == [other]
