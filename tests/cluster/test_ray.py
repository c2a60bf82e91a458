"""Ray through Hydra's Ray launcher (``hydra/launcher=ray_cluster``), against a real local Ray cluster that the
test starts with ``ray start --head`` on 127.0.0.1: the same sweep as the SLURM test, every run FINISHED once
under one parent run, with the metrics of a local run of the same config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from seqexp.server import free_port
from tests.cluster.conftest import cannot_run
from tests.cluster.test_slurm import BASE, GRID, assert_same_metrics, jobs_of, seqexp


# Ray on Linux replaces 127.0.0.1 by the machine's routable address when it connects; with this (Ray's switch
# for laptops) the head, its workers and the driver all stay on the loopback interface.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def ray_head():
    """``ray start --head --block`` on 127.0.0.1 (2 CPUs); stopping that process stops what it started."""
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        cannot_run(f"Ray is not installed in {sys.prefix}: pip install -e '.[ray]' (make install does)")
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    log = open(temp / "ray-start.log", "w")  # noqa: SIM115 -- closed with the process
    proc = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **LOOPBACK})
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            cannot_run(f"ray start --head exited ({proc.returncode}):\n{(temp / 'ray-start.log').read_text()[-3000:]}")
        status = subprocess.run([str(ray), "status", f"--address={address}"], capture_output=True, text=True,
                                env={**os.environ, **LOOPBACK})
        if status.returncode == 0:
            break
        time.sleep(1)
    else:
        proc.terminate()
        cannot_run(f"the Ray head on {address} did not answer within 120 s")
    yield address
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
    shutil.rmtree(temp, ignore_errors=True)


# Outside make test (.ci/run runs it); make test: the sweep callback under other launchers (joblib:
# test_concurrency; submitit_local: test_slurm)
@pytest.mark.extended
def test_ray_sweep_finishes_every_run_once_with_local_metrics(tmp_path, mini_conll, ray_head):
    args = [*BASE, f"dataset.data_dir={mini_conll}", *GRID]
    local = seqexp(tmp_path / "local", *args)
    cluster = tmp_path / "ray"
    # Ray's workers start in their own folders: the store and the checkpoints are named by absolute paths.
    sweep = seqexp(cluster, *args, "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}",
                   f"tracking.uri=sqlite:///{cluster / 'mlruns.db'}",
                   f"trainer.checkpoint_dir={cluster / 'checkpoints'}", env={**os.environ, **LOOPBACK})
    assert sweep.wait(timeout=600) == 0, (cluster / "sweep.log").read_text()[-6000:]
    assert local.wait(timeout=600) == 0, (tmp_path / "local" / "sweep.log").read_text()[-4000:]
    assert "4 finished, 0 skipped, 0 failed, 0 killed" in (cluster / "sweep.log").read_text()

    client, jobs, (parent,) = jobs_of(cluster)
    ref_client, ref_jobs, _ = jobs_of(tmp_path / "local")
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.status for r in jobs) == ["FINISHED"] * 4
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in jobs)
    by_fp = {r.data.tags["seqexp.fingerprint"]: r for r in jobs}
    ref_by_fp = {r.data.tags["seqexp.fingerprint"]: r for r in ref_jobs}
    assert len(by_fp) == 4 and set(by_fp) == set(ref_by_fp)
    assert len({r.data.tags["seqexp.pid"] for r in jobs}) >= 2  # run by Ray's worker processes, not the driver
    assert_same_metrics(client, by_fp, ref_client, ref_by_fp)
