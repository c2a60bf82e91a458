"""Fixtures for the cluster tests: a real SLURM cluster, started once per session on 127.0.0.1.

A cluster that cannot start here skips its tests with the reason; under ``SEQEXP_CLUSTER_TESTS=required``
(set by ``.ci/run``, which installs and can start everything) it fails them instead, so CI never passes
by skipping.
"""

from __future__ import annotations

import os

import pytest

from tests.cluster.slurm import SlurmCluster, unavailable


def cannot_run(reason: str):
    if os.environ.get("SEQEXP_CLUSTER_TESTS") == "required":
        pytest.fail(f"SEQEXP_CLUSTER_TESTS=required, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node cluster; its node has a private ``submit_tmp`` folder, as a compute node has
    its own /tmp: a sweep submitted with TMPDIR there finds out if it relies on the submitter's /tmp."""
    why = unavailable()
    if why:
        cannot_run(why)
    folder = tmp_path_factory.mktemp("slurm")
    folder.chmod(0o700)  # munged refuses a key folder others can read
    submit_tmp = folder / "submit-tmp"
    submit_tmp.mkdir()
    # 8 CPUs on the node (on any machine): 8 one-CPU jobs can run at once, as the many-writers test needs.
    cluster = SlurmCluster(folder / "cluster", cpus=8, private_dirs=(submit_tmp,))
    cluster.submit_tmp = submit_tmp
    try:
        cluster.start()
    except (RuntimeError, OSError) as exc:
        cluster.stop()
        cannot_run(f"the SLURM cluster did not start: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_mlflow(tmp_path_factory):
    """``mlflow server`` on a PostgreSQL backend store (both on 127.0.0.1), one artifact root; its URL."""
    from seqexp.server import Postgres, ServerError, mlflow_server, postgres_bindir, stop

    if postgres_bindir() is None:
        cannot_run("PostgreSQL's server programs are not installed: apt-get install postgresql (.ci/run does)")
    folder = tmp_path_factory.mktemp("mlflow-server")
    if os.geteuid() == 0:
        folder.chmod(0o755)  # the postgres user reaches its data folder inside
        for parent in folder.parents:
            if parent == parent.parent or parent.stat().st_mode & 0o005 == 0o005:
                break
            parent.chmod(parent.stat().st_mode | 0o005)
    try:
        pg = Postgres(folder).start()
    except ServerError as exc:
        cannot_run(f"PostgreSQL did not start: {exc}")
    try:
        proc, url = mlflow_server(folder, pg.uri, env=pg.env, workers=4)  # 8 writers at once
    except ServerError:
        pg.stop()
        raise
    yield url
    stop(proc)
    pg.stop()
