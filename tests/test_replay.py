"""Replaying undelivered writes (issue 11.3) into a real sqlite MLflow store: nothing twice, no checkpoint left."""

from __future__ import annotations

import json
import shutil
import time

import torch
from mlflow import MlflowClient

from tests.conftest import compose


def test_replay_skips_what_the_run_holds_and_removes_a_finished_runs_checkpoint(tmp_path, monkeypatch):
    from seqexp.tracking import RunTracker
    from seqexp.tracking_buffer import Outbox, params_op, replay, terminate_op

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = RunTracker(uri, "replay")
    tracker.start(compose(["model=tiny-bert"]), "r", {"model": "tiny-bert"})
    run_id = tracker.run_id
    # What an outage left in the file: epochs 0 and 1, the test metrics, the end.
    saved_at = int(time.time() * 1000) - 60_000
    writes = [{"op": "metrics", "metrics": [["val_f1", 0.1, saved_at, 0], ["train_loss", 2.0, saved_at, 0]]},
              {"op": "metrics", "metrics": [["val_f1", 0.2, saved_at + 1, 1]]},
              params_op({"labels": "O B-PER"}),
              {"op": "metrics", "metrics": [["test_f1", 0.3, saved_at + 2, 1]]},
              terminate_op("FINISHED")]
    # Meanwhile the run was resumed and logged epoch 0 and the test metrics anew, at other timestamps.
    tracker.log_metrics({"val_f1": 0.1, "train_loss": 2.0}, step=0)
    tracker.log_params({"labels": "O B-PER"})
    tracker.log_metrics({"test_f1": 0.3}, step=1)
    checkpoint = tmp_path / "checkpoints" / "fp" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"seqexp": {"run_id": run_id, "fingerprint": "fp"}, "global_step": 4, "epoch": 1}, checkpoint)
    box = Outbox(uri, "replay")
    box.run_id, box.pending, box.checkpoint = run_id, writes, str(checkpoint)
    path = box.save()
    assert json.loads(path.read_text())["checkpoint"] == str(checkpoint)
    shutil.copy(path, tmp_path / "copy.json")

    count, done = replay(path)
    assert count == 5 and done.name == f"{run_id}.json.delivered"
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, steps in (("val_f1", [0, 1]), ("train_loss", [0]), ("test_f1", [1])):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == steps, key
    assert not checkpoint.exists() and not checkpoint.parent.exists()

    # Replaying the same writes again changes nothing, not even the end time.
    replay(tmp_path / "copy.json")
    again = client.get_run(run_id)
    assert again.info.end_time == run.info.end_time
    for key, steps in (("val_f1", [0, 1]), ("train_loss", [0]), ("test_f1", [1])):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == steps, key
