"""One run over 2 processes (Lightning DDP on CPU, gloo): real ``python -m seqexp.run`` processes, a real
sqlite MLflow store under tmp_path, tiny-bert on the first 150 sentences of each real CoNLL-2003 split.

What each test breaks on (checked by reverting the behaviour it names; see the commit message):
- rank-0-only logging: one MLflow run, every metric once per step;
- each dev/test word predicted and scored once (no DistributedSampler padding), and every rank taking the
  steps a one-process run with the same effective batch takes;
- the frozen encoder's features computed by rank 0 alone (the other rank loads them);
- a DDP run SIGKILLed mid-epoch resumes from its last.ckpt in the same MLflow run and finishes;
- metrics close to a one-process run with the same effective batch (2 x 16 vs 1 x 32);
- bad combinations are one line naming the config key.

Each was seen failing with its behaviour reverted: dev/test windows served to every rank (the run fails:
"1958 words of the dev split were predicted by more than one process"); training batches not split across
ranks (20 optimizer steps instead of 10 in the 2-epoch version); prepare_data a no-op (rank 1 encodes the
features too); rank 1 logging into the run (val_f1 twice per step); the sampler's resume_at skipped (the
resumed run's test accuracy 0.0019 off the uninterrupted one); both ranks training the same half of each
batch (epoch 5's train loss 3.9% off the one-process run); the three sampler tests with both shardings undone.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqexp.data.datamodule import LengthGroupedBatches
from seqexp.errors import ConfigError
from tests.conftest import REPO, compose

DDP = ["trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2"]
# Head-only on cached features: an epoch takes 0.3 s, so the run is mostly start-up. 8 epochs: dev F1 leaves 0
# at epoch 3 (seed 1), so the comparison with one process compares something.
EPOCHS = 8
HEAD_ONLY = ["model=tiny-bert", "freeze=last", f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping=false"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "seqexp.run", *args]


def start(cwd: Path, *args: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(cwd / "out.log", "w")  # noqa: SIM115 -- closed with the process
    return subprocess.Popen(command(*args), cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finished(proc: subprocess.Popen, cwd: Path) -> str:
    """The process's output once it exits 0 (fails the test otherwise)."""
    code = proc.wait(timeout=600)
    out = (cwd / "out.log").read_text()
    assert code == 0, out[-5000:]
    return out


def client_of(cwd: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{cwd / 'mlruns.db'}")


def only_run(cwd: Path):
    client = client_of(cwd)
    exp = client.get_experiment_by_name("seqexp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 1, [r.info.run_name for r in runs]  # rank 1 opened no run of its own
    return client, runs[0]


def history(client, run_id: str, key: str) -> dict[int, float]:
    values = client.get_metric_history(run_id, key)
    assert len(values) == len({m.step for m in values}), f"{key} logged more than once at a step: {values}"
    return {m.step: m.value for m in values}


def words_of(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("-DOCSTART-")]


# -- the batch sampler, alone (no processes) ---------------------------------------------------------
def test_ranks_share_out_the_batches_of_one_process_with_the_whole_batch():
    lengths = [((i * 7919) % 97) + 3 for i in range(203)]  # 203 windows: the last batch of 32 is short
    one = LengthGroupedBatches(lengths, 32, seed=5)
    ranks = [LengthGroupedBatches(lengths, 16, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for _ in range(2):  # two epochs: the order follows seed and epoch on every rank alike
        whole, parts = list(one), [list(s) for s in ranks]
        assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == len(whole)  # the same steps on every rank
        for batch, a, b in zip(whole, *parts):
            assert sorted(a + b) == sorted(batch) and a and b  # each step: the one-process batch, split
        assert sorted(i for p in parts for batch in p for i in batch) == list(range(len(lengths)))


def test_a_last_batch_smaller_than_the_ranks_joins_another_and_resume_skips_alike():
    ranks = [LengthGroupedBatches([10] * 33, 16, seed=1, num_replicas=2, rank=r) for r in (0, 1)]  # 32 + 1
    parts = [list(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == 1  # the odd window joined the batch
    assert sorted(i for p in parts for batch in p for i in batch) == list(range(33))

    def sampler(rank: int) -> LengthGroupedBatches:
        return LengthGroupedBatches([10] * 100, 16, seed=1, num_replicas=2, rank=rank)

    uninterrupted = [sampler(r) for r in (0, 1)]
    for s in uninterrupted:
        list(s)  # epoch 0
    epoch1 = [list(s) for s in uninterrupted]
    resumed = [sampler(r) for r in (0, 1)]
    for s in resumed:
        s.resume_at(1, 2)  # as a checkpoint saved after 2 steps of epoch 1 says, on every rank
    assert [list(s) for s in resumed] == [e[2:] for e in epoch1]


def test_evaluation_windows_are_dealt_to_exactly_one_rank():
    lengths = [((i * 31) % 50) + 1 for i in range(101)]
    shards = [[i for batch in LengthGroupedBatches(lengths, 8, seed=0, shuffle=False, num_replicas=2, rank=r)
               for i in batch] for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(101)) and not set(shards[0]) & set(shards[1])


# -- config errors: one line naming the key ----------------------------------------------------------
@pytest.mark.parametrize(("overrides", "key"), [
    (["trainer.devices=999"], "`trainer.devices`"),
    (["trainer.compile=true"], "`trainer.compile`"),
    (["freeze=gradual"], "`freeze`"),
    (["trainer.strategy=ddp_spawn"], "`trainer.strategy`"),
    (["trainer.devices=0"], "`trainer.devices`"),
])
def test_combinations_ddp_does_not_support_name_their_key(tmp_path, overrides, key):
    from seqexp.config import validate

    cfg = compose(["model=tiny-bert", *DDP, f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(key)


def test_ddp_with_one_device_is_a_plain_run_and_strategy_is_not_identity(tmp_path):
    from seqexp.config import validate
    from seqexp.sweep import fingerprint
    from seqexp.training.distributed import lightning_strategy

    plain = compose(["model=tiny-bert", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    ddp1 = compose(["model=tiny-bert", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", "trainer.strategy=ddp"])
    ddp2 = compose(["model=tiny-bert", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", *DDP])
    validate(ddp1)
    assert lightning_strategy(ddp1.trainer) == "auto" and lightning_strategy(ddp2.trainer) == "ddp"
    assert fingerprint(plain) == fingerprint(ddp1) != fingerprint(ddp2)  # devices count, the strategy word not


def test_ddp_in_a_sweep_is_a_failed_job_naming_the_key(tmp_path, mini_conll):
    proc = subprocess.run(command("-m", "model=tiny-bert", f"dataset.data_dir={mini_conll}", *DDP, "seed=1,2"),
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "`trainer.devices`: 2 (DDP) in a sweep (-m)" in said
    assert "Traceback" not in said


# -- real DDP runs ------------------------------------------------------------------------------------
def test_head_only_ddp_run_logs_once_predicts_each_word_once_and_matches_one_process(tmp_path, mini_conll):
    data = f"dataset.data_dir={mini_conll}"
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    # Each its own feature cache (cache_dir): rank 0 must find none and encode every split itself.
    one = start(one_dir, *HEAD_ONLY, data, "trainer.batch_size=32", "trainer.num_threads=1",
                f"cache_dir={one_dir / 'cache'}")
    ddp = start(ddp_dir, *HEAD_ONLY, data, *DDP, "trainer.batch_size=16", f"cache_dir={ddp_dir / 'cache'}")
    out = finished(ddp, ddp_dir)
    finished(one, one_dir)

    # the feature cache: built once, by rank 0; rank 1 loaded the files
    assert out.count("feature cache: encoded") == 3, out[-4000:]  # train, dev, test
    assert out.count("feature cache: loaded") == 3
    assert len(list((ddp_dir / "cache" / "features").glob("*.pt"))) == 3

    # rank-0-only logging: one run, every metric once per step
    client, run = only_run(ddp_dir)
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    rid = run.info.run_id
    for key in ("val_f1", "val_loss", "train_loss"):
        assert sorted(history(client, rid, key)) == list(range(EPOCHS)), key
    for key in ("test_f1", "best_val_f1", "stopped_at_step", "train_time_s", "trainable_params"):
        assert len(client.get_metric_history(rid, key)) == 1, key
    assert sorted(a.path for a in client.list_artifacts(rid)) == [
        "config.yaml", "test_metrics.json", "test_predictions.txt", "test_report.txt"]

    # each test word once, in the split's order
    predictions = Path(client.download_artifacts(rid, "test_predictions.txt", str(tmp_path)))
    assert words_of(predictions) == words_of(mini_conll / "eng.testb")  # every word once, in order

    # the same steps as one process with the whole batch, and metrics within noise of it
    _, ref = only_run(one_dir)
    m, r = run.data.metrics, ref.data.metrics
    assert m["stopped_at_step"] == r["stopped_at_step"] == EPOCHS * math.ceil(150 / 32)
    assert r["test_f1"] > 0.05  # it learned something to compare (measured: 0.0918 one process, 0.0903 DDP)
    for key in ("test_f1", "test_accuracy", "best_val_f1"):
        assert abs(m[key] - r[key]) <= 0.03, (key, m[key], r[key])
    losses = history(client, rid, "train_loss"), history(client_of(one_dir), ref.info.run_id, "train_loss")
    for epoch in range(EPOCHS):
        assert losses[0][epoch] == pytest.approx(losses[1][epoch], rel=0.03), epoch


# Outside make test (.ci/run runs it); make test: the DDP head-only run above; resume: test_resume
@pytest.mark.extended
def test_ddp_run_killed_mid_epoch_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, mini_conll):
    """Full fine-tuning (dropout on) SIGKILLed after a mid-epoch checkpoint; the same command resumes it.
    Every rank continues its own random stream and its own share of the epoch's batches, so the run ends
    with the metrics of the same DDP run left alone (run beside it)."""
    import torch

    from seqexp.sweep import fingerprint

    args = ["model=tiny-bert", "freeze=unfreeze", "trainer.max_epochs=1", "trainer.batch_size=4",
            "trainer.checkpoint_every_n_steps=3", f"dataset.data_dir={mini_conll}", *DDP]
    ckpt = tmp_path / "run" / "checkpoints" / fingerprint(compose(args)) / "last.ckpt"
    reference = start(tmp_path / "ref", *args)
    victim = start(tmp_path / "run", *args)
    deadline, killed = time.time() + 400, None
    while time.time() < deadline and killed is None and victim.poll() is None:
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if state["global_step"] >= 6:
                os.killpg(victim.pid, signal.SIGKILL)  # rank 0 and the rank it started
                victim.wait(timeout=30)
                killed = torch.load(ckpt, map_location="cpu", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError, KeyError):
            time.sleep(0.05)
    assert killed is not None, (tmp_path / "run" / "out.log").read_text()[-4000:]
    steps = math.ceil(150 / 8)  # 2 ranks x 4 windows a step
    assert 6 <= killed["global_step"] < steps and len(killed["seqexp"]["rng_ranks"]) == 2

    said = finished(start(tmp_path / "run", *args), tmp_path / "run")  # the same command
    assert f"from step {killed['global_step']}" in said
    finished(reference, tmp_path / "ref")
    client, run = only_run(tmp_path / "run")
    ref_client, ref = only_run(tmp_path / "ref")
    assert run.info.run_id == killed["seqexp"]["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_step"] == str(killed["global_step"])
    assert run.data.metrics["stopped_at_step"] == ref.data.metrics["stopped_at_step"] == steps
    test = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    assert test and test == pytest.approx({k: v for k, v in ref.data.metrics.items() if k.startswith("test_")},
                                          abs=1e-6)
    for key in ("val_f1", "val_loss", "train_loss"):
        assert history(client, run.info.run_id, key) == pytest.approx(
            history(ref_client, ref.info.run_id, key), abs=1e-6), key
    assert not ckpt.exists()
