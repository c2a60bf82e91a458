"""MLflow outages: a real ``mlflow server`` on 127.0.0.1 is stopped under a running ``python -m seqexp.run``.

Buffer and retry (seqexp/tracking_buffer.py): writes the server misses are kept in order and
retried; the run waits up to ``tracking.outage_wait_s`` at its end; if the server stays down
the writes go to a local JSON file that ``python -m seqexp.tracking replay`` delivers later.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from seqexp.server import mlflow_env
from tests import warm
from tests.conftest import REPO, compose, tiny_overrides

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PER_EPOCH = ("train_loss", "val_f1", "val_precision", "val_recall", "val_accuracy", "val_strict_f1")
AT_END = ("test_f1", "test_precision", "test_recall", "test_accuracy", "test_strict_f1", "train_time_s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, poll: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}")
        time.sleep(poll)
    pytest.fail(f"no {what} within {timeout:.0f} s")


class Server:
    """``mlflow server`` on a fixed port and sqlite backend that can be stopped and started again."""

    def __init__(self, store: Path):
        self.store, self.port, self.proc = store, free_port(), None
        store.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def start(self, wait: bool = True) -> None:
        log = open(self.store / "server.log", "ab")
        self.proc = warm.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
             "--artifacts-destination", str(self.store / "artifacts"), "--workers", "1"],
            cwd=self.store, stdout=log, stderr=log, start_new_session=True,
            env=mlflow_env(),
        )
        log.close()
        if wait:
            self.wait_healthy()

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.wait_healthy()

    def wait_healthy(self) -> None:
        wait_for(f"mlflow server on {self.url}", self.healthy, timeout=180)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        wait_for("server port to close", lambda: not self.healthy(), timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each start costs 10-40 s); each test leaves it running."""
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


def start_run(work: Path, mini_conll: Path, url: str, epochs: int, *extra: str) -> subprocess.Popen:
    work.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "seqexp.run", "model=tiny-bert", f"dataset.data_dir={mini_conll}",
           f"trainer.max_epochs={epochs}", "trainer.early_stopping=false", "trainer.num_threads=1", f"tracking.uri={url}",
           f"tracking.experiment={work.parent.name}", *extra]
    return warm.Popen(cmd, cwd=work, env=ENV, stdout=open(work / "stdout.txt", "w"),
                            stderr=open(work / "stderr.txt", "w"))


def first_epoch_logged(url: str, experiment: str):
    """The run id once the run's first dev metric is on the server, else None."""
    client = MlflowClient(url)
    try:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "val_f1"):
            return runs[0].info.run_id
    except MlflowException:
        return None
    return None


def assert_complete(url: str, run_id: str, epochs: int) -> None:
    """FINISHED, every per-epoch metric once at each step 0..epochs-1, every test metric, the artifacts."""
    client = MlflowClient(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), (key, steps)
    for key in AT_END:
        assert key in run.data.metrics, key
    assert run.data.params["model"] == "tiny-bert" and run.data.tags["mlflow.runName"] == run.info.run_name
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "test_report.txt", "test_metrics.json", "test_predictions.txt"} <= files


def test_server_restarted_mid_run_run_ends_finished_with_every_metric(tmp_path, mini_conll, server):
    epochs = 10
    work = tmp_path / "work"
    server.ensure_up()
    proc = start_run(work, mini_conll, server.url, epochs)
    try:
        run_id = wait_for("first epoch metric on the server", lambda: first_epoch_logged(server.url, tmp_path.name),
                          timeout=300, proc=proc)
        assert proc.poll() is None, "the run ended before the server could be stopped"
        server.stop()
        # Training goes on; the run's next write finds the server gone and is buffered.
        wait_for("a buffered write", lambda: "unreachable" in (work / "stdout.txt").read_text()
                 or proc.poll() is not None, timeout=120)
        time.sleep(2)
        server.start(wait=False)  # it comes up while the run trains on (or waits at its end)
        proc.wait(timeout=400)
        server.wait_healthy()
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = (work / "stdout.txt").read_text(), (work / "stderr.txt").read_text()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert f"MLflow server {server.url} unreachable" in out
    assert re.search(rf"MLflow server {re.escape(server.url)} is back: \d+ buffered writes delivered", out)
    assert_complete(server.url, run_id, epochs)
    assert not (work / "seqexp-undelivered").exists()


def test_server_never_back_writes_saved_then_replayed(tmp_path, mini_conll, server):
    epochs = 8
    work = tmp_path / "work"
    server.ensure_up()
    proc = start_run(work, mini_conll, server.url, epochs, "tracking.outage_wait_s=3")
    try:
        run_id = wait_for("first epoch metric on the server", lambda: first_epoch_logged(server.url, tmp_path.name),
                          timeout=300, proc=proc)
        assert proc.poll() is None, "the run ended before the server could be stopped"
        server.stop()
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (work / "stderr.txt").read_text()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("seqexp: error:")]
    match = re.search(rf"MLflow server {re.escape(server.url)} still unreachable after 3 s .*: (\d+) writes "
                      rf"to run {run_id} not delivered, saved to (\S+);", line)
    assert match, line
    count, saved = int(match.group(1)), Path(match.group(2))
    assert saved == (work / "seqexp-undelivered" / f"{run_id}.json").resolve()
    data = json.loads(saved.read_text())
    assert data["run_id"] == run_id and data["uri"] == server.url and len(data["writes"]) == count
    metrics = [m for w in data["writes"] if w["op"] == "metrics" for m in w["metrics"]]
    assert any(key == "test_f1" for key, *_ in metrics)
    assert any(key == "val_f1" and step == epochs - 1 for key, _, _, step in metrics)
    assert data["writes"][-1]["op"] == "terminate" and data["writes"][-1]["status"] == "FINISHED"
    assert {w["artifact_file"] for w in data["writes"] if w["op"] == "text"} >= {"test_predictions.txt"}

    replay = [sys.executable, "-m", "seqexp.tracking", "replay", str(saved)]
    # Still down: a clear error, and the file keeps every write.
    down = warm.run(replay, cwd=work, env=ENV, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1 and "unreachable" in down.stderr and "Traceback" not in down.stderr
    assert json.loads(saved.read_text())["writes"] == data["writes"]

    server.start()  # same port, same backend
    assert MlflowClient(server.url).get_run(run_id).info.status == "RUNNING"
    up = warm.run(replay, cwd=work, env=ENV, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr[-3000:]
    assert f"delivered {count} writes" in up.stdout
    assert not saved.exists() and saved.with_name(saved.name + ".delivered").exists()
    assert_complete(server.url, run_id, epochs)


def test_frozen_server_writes_wait_in_order_and_go_with_a_later_write(server, monkeypatch):
    """A server that accepts connections but never answers (SIGSTOP): each write times out fast,
    is kept, and the first write after the server thaws delivers the whole queue, each value once."""
    from seqexp.tracking import RunTracker
    from seqexp.tracking_buffer import RETRY_EVERY_S

    server.ensure_up()
    tracker = RunTracker(server.url, "frozen", outage_wait_s=60)
    tracker.start(compose(["model=tiny-bert"]), "frozen", {"model": "tiny-bert"})
    tracker.log_metrics({"val_f1": 0.0}, step=0)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # the user's setting wins over seqexp's 5 s
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        for step in (1, 2, 3):
            tracker.log_metrics({"val_f1": step / 10}, step=step)
        tracker.log_text("while frozen", "frozen.txt")
        assert time.perf_counter() - started < 8, "a frozen server must not hold training up"
        assert [op["op"] for op in tracker.outbox.pending] == ["metrics"] * 3 + ["text"]
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    server.wait_healthy()
    time.sleep(RETRY_EVERY_S)
    tracker.log_metrics({"val_f1": 0.4}, step=4)  # a later write delivers the queue first
    assert tracker.outbox.pending == []
    with tracker:
        pass
    client = MlflowClient(server.url)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, "val_f1"))
    assert history == [(s, s / 10) for s in range(5)]
    assert "frozen.txt" in {f.path for f in client.list_artifacts(tracker.run_id)}


# -- the pieces, without a subprocess ---------------------------------------------------------
def test_fail_fast_settings_are_scoped_and_never_override_the_user(monkeypatch):
    from seqexp.tracking_buffer import FAIL_FAST, fail_fast

    for key in FAIL_FAST:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    with fail_fast():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"


def test_unreachable_writes_fail_fast_and_stay_queued_in_order(tmp_path, monkeypatch):
    from seqexp.tracking_buffer import FAIL_FAST, Outbox, TrackingUnavailableError, metrics_op, tags_op

    for key in FAIL_FAST:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    box = Outbox(url, "x")
    box.client, box.run_id = MlflowClient(url), "r1"
    started = time.perf_counter()
    ops = [metrics_op({"val_f1": 0.1 * i}, i) for i in range(5)] + [tags_op({"k": "v"})]
    for op in ops:
        box.send(op)
    assert time.perf_counter() - started < 5, "writes to a dead server must not hold training up"
    assert box.pending == ops
    with pytest.raises(TrackingUnavailableError, match=r"6 writes to run r1 not delivered"):
        box.finish(0)
    assert json.loads((tmp_path / "seqexp-undelivered" / "r1.json").read_text())["writes"] == ops


def test_invalid_write_is_raised_not_buffered(tmp_path):
    from seqexp.tracking import RunTracker

    cfg = compose(["model=tiny-bert", "trainer.max_epochs=1"])
    tracker = RunTracker(f"sqlite:///{tmp_path / 'mlruns.db'}", "x")
    tracker.start(cfg, "r", {"model": "tiny-bert"})
    with pytest.raises(MlflowException, match="optim.lr"):
        tracker.log_params({"optim.lr": "different"})  # a param cannot change its value
    assert tracker.outbox.pending == []
    with tracker:
        tracker.log_metrics({"m": 1.0})
    client = MlflowClient(tracker.uri)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_outage_wait_is_validated_and_an_unreachable_uri_stops_before_torch(tmp_path, mini_conll):
    from seqexp.config import validate
    from seqexp.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`tracking.outage_wait_s`: must be a number of seconds >= 0"):
        validate(compose(tiny_overrides(**{"dataset.data_dir": str(mini_conll), "tracking.outage_wait_s": "-1"})))
    url = f"http://127.0.0.1:{free_port()}"
    code = (
        "import sys\n"
        "from tests.conftest import compose\n"
        "from seqexp.config import validate\n"
        f"cfg = compose(['model=tiny-bert', 'dataset.data_dir={mini_conll}', 'tracking.uri={url}'])\n"
        "try:\n    validate(cfg)\nexcept Exception as exc:\n    print(exc)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))\n"
    )
    # cold, not tests/warm.py: what the driver imported is read off sys.modules
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)
    message, heavy = proc.stdout.strip().splitlines()[-2:]
    assert message.startswith(f"`tracking.uri`: MLflow server {url} is unreachable"), proc.stdout + proc.stderr
    assert heavy == "[]"


def test_rerun_after_the_server_stayed_down_delivers_the_saved_writes_first(tmp_path, mini_conll, server):
    """Issue 11.3: rerunning the command (as the Resume section says) used to resume the run from its
    checkpoint and end it FINISHED without the learning curves waiting in seqexp-undelivered/."""
    epochs = 4
    work = tmp_path / "work"
    server.ensure_up()
    proc = start_run(work, mini_conll, server.url, epochs, "tracking.outage_wait_s=3")
    try:
        run_id = wait_for("first epoch metric on the server", lambda: first_epoch_logged(server.url, tmp_path.name),
                          timeout=300, proc=proc)
        assert proc.poll() is None, "the run ended before the server could be stopped"
        server.stop()
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (work / "stderr.txt").read_text()[-3000:]
    saved = (work / "seqexp-undelivered" / f"{run_id}.json").resolve()
    assert saved.is_file()
    checkpoints = list((work / "checkpoints").glob("*/last.ckpt"))
    assert len(checkpoints) == 1  # kept for resume while the run is not FINISHED

    server.start()
    rerun = start_run(work, mini_conll, server.url, epochs, "tracking.outage_wait_s=3")
    rerun.wait(timeout=400)
    out = (work / "stdout.txt").read_text() + (work / "stderr.txt").read_text()
    assert rerun.returncode == 0, out[-3000:]
    assert f"left writes in {saved} while the tracking server was down: delivering them first" in out
    assert f"already FINISHED as run {run_id}" in out
    assert_complete(server.url, run_id, epochs)  # every per-epoch metric once at each step
    client = MlflowClient(server.url)
    assert len(client.get_metric_history(run_id, "test_f1")) == 1
    assert len(client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])) == 1
    assert not saved.exists() and saved.with_name(saved.name + ".delivered").exists()
    assert not checkpoints[0].exists()

    # A later replay of the same writes adds nothing.
    again = warm.run([sys.executable, "-m", "seqexp.tracking", "replay", str(saved.with_name(saved.name + ".delivered"))],
                           cwd=work, env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_complete(server.url, run_id, epochs)
    assert len(client.get_metric_history(run_id, "test_f1")) == 1



def test_a_claim_on_a_server_store_loses_to_an_earlier_concurrent_claim(tmp_path, server, monkeypatch):
    """Issue 11.2 without a lock: every claimant creates its RUNNING run, then the earliest live one wins.
    A second claimant's run, started a millisecond earlier, appears while this one settles: this one
    deletes its run and names the other; alone, it keeps its claim."""
    import threading

    from seqexp import sweep
    from seqexp.sweep import claim_job, fingerprint
    from seqexp.tracking import RunTracker

    monkeypatch.setattr(sweep, "CLAIM_SETTLE_S", 5.0)  # room for the other claimant on a busy machine
    server.ensure_up()
    cfg = compose(["model=tiny-bert", f"tracking.uri={server.url}", f"tracking.experiment={tmp_path.name}"])
    fp = fingerprint(cfg)
    tags = {"seqexp.fingerprint": fp, "seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid())}
    client = MlflowClient(server.url)
    competitor: dict = {}

    def other_claimant() -> None:  # sees this process's run appear, then creates its own, earlier-started
        deadline = time.time() + 60
        while time.time() < deadline and not competitor:
            exp = client.get_experiment_by_name(tmp_path.name)
            mine = client.search_runs([exp.experiment_id]) if exp else []
            if mine:
                run = client.create_run(exp.experiment_id, start_time=mine[0].info.start_time - 1,
                                        run_name="other", tags=tags)
                competitor["run_id"] = run.info.run_id
            time.sleep(0.05)

    thread = threading.Thread(target=other_claimant)
    thread.start()
    tracker = RunTracker(server.url, tmp_path.name)
    claim = claim_job(cfg, tracker, fp, "mine", {"model": "tiny-bert"}, tags)
    thread.join()
    assert claim.holder is not None and claim.holder.info.run_id == competitor["run_id"]
    assert tracker.run_id is None
    exp = client.get_experiment_by_name(tmp_path.name)
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [competitor["run_id"]]

    # Alone (the other claim ended), a claim holds.
    client.set_terminated(competitor["run_id"], "FINISHED")
    again = RunTracker(server.url, tmp_path.name)
    claim = claim_job(cfg, again, fp, "mine", {"model": "tiny-bert"}, tags)
    assert claim.done is not None  # the other one FINISHED it: nothing to train
    rerun = compose(["model=tiny-bert", f"tracking.uri={server.url}", f"tracking.experiment={tmp_path.name}",
                     "rerun=true"])
    claim = claim_job(rerun, again, fp, "mine", {"model": "tiny-bert"}, tags)
    assert claim.holder is None and again.run_id is not None
    with again:
        pass
    assert client.get_run(again.run_id).info.status == "FINISHED"


def test_a_claim_on_a_server_store_yields_to_an_earlier_claim_that_finished_while_it_settled(tmp_path, server, monkeypatch):
    """The earlier claimant trained and ended FINISHED before this one's settle was over: no live claim is
    left, and this one must not win by default; it deletes its run and skips as done."""
    import threading

    from seqexp import sweep
    from seqexp.sweep import claim_job, fingerprint
    from seqexp.tracking import RunTracker

    monkeypatch.setattr(sweep, "CLAIM_SETTLE_S", 5.0)
    server.ensure_up()
    cfg = compose(["model=tiny-bert", f"tracking.uri={server.url}", f"tracking.experiment={tmp_path.name}"])
    fp = fingerprint(cfg)
    tags = {"seqexp.fingerprint": fp, "seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid())}
    client = MlflowClient(server.url)
    competitor: dict = {}

    def earlier_claimant_that_finishes() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not competitor:
            exp = client.get_experiment_by_name(tmp_path.name)
            mine = client.search_runs([exp.experiment_id]) if exp else []
            if mine:
                run = client.create_run(exp.experiment_id, start_time=mine[0].info.start_time - 1,
                                        run_name="other", tags=tags)
                client.set_terminated(run.info.run_id, "FINISHED")
                competitor["run_id"] = run.info.run_id
            time.sleep(0.05)

    thread = threading.Thread(target=earlier_claimant_that_finishes)
    thread.start()
    tracker = RunTracker(server.url, tmp_path.name)
    claim = claim_job(cfg, tracker, fp, "mine", {"model": "tiny-bert"}, tags)
    thread.join()
    assert tracker.run_id is None, "trained a job that an earlier claim had already FINISHED"
    assert claim.done is not None and claim.done.info.run_id == competitor["run_id"]
    exp = client.get_experiment_by_name(tmp_path.name)
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [competitor["run_id"]]
