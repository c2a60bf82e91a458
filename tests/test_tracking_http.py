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
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
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
