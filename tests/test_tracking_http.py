"""A run logged to a real ``mlflow server`` on 127.0.0.1 over HTTP, and an unreachable URI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from seqexp.server import mlflow_env
from tests import warm
from tests.test_run_e2e import seqexp_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = warm.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=mlflow_env(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up on 127.0.0.1 within 90 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_run_over_http(tmp_path, mini_conll, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    seqexp_run(work, "model=tiny-bert", f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1",
               f"tracking.uri={mlflow_server}", "tracking.experiment=http-study")
    assert not (work / "mlruns.db").exists()
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("http-study")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and "test_f1" in run.data.metrics
    assert run.data.params["model"] == "tiny-bert"
    conll = Path(client.download_artifacts(run.info.run_id, "test_predictions.txt", str(tmp_path)))
    assert len([b for b in conll.read_text().split("\n\n") if b.strip()]) == 150


def test_unreachable_server_is_a_clear_error_before_training(tmp_path, mini_conll):
    port = free_port()  # nothing listens there
    proc = seqexp_run(tmp_path, "model=tiny-bert", f"dataset.data_dir={mini_conll}",
                      f"tracking.uri=http://127.0.0.1:{port}", check=False)
    assert proc.returncode == 2
    assert "tracking.uri" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


class _SlowHealth:
    """A real HTTP server on 127.0.0.1 whose first ``delays`` answers to /health each take ``delay`` seconds:
    a server that is up but loaded (8 writers starting at once on 2 cores)."""

    def __init__(self, delays: int, delay: float):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        state = {"left": delays}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if state["left"] > 0:
                    state["left"] -= 1
                    time.sleep(delay)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_slow_server_is_asked_again_and_a_silent_one_fails_after_its_patience():
    from seqexp.errors import ConfigError
    from seqexp.tracking import check_reachable

    slow = _SlowHealth(delays=2, delay=1.0)  # two answers slower than the 0.3 s allowed each, then fast ones
    try:
        check_reachable(slow.url, timeout=0.3, patience=10)
    finally:
        slow.close()
    silent = _SlowHealth(delays=100, delay=5.0)
    try:
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"`tracking.uri`: MLflow server .* is unreachable \(no answer in"):
            check_reachable(silent.url, timeout=0.3, patience=1.5)
        assert time.monotonic() - start < 3
    finally:
        silent.close()
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: no second try
    start = time.monotonic()
    with pytest.raises(ConfigError, match="is unreachable"):
        check_reachable(refused, timeout=0.3, patience=30)
    assert time.monotonic() - start < 1
