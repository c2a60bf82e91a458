"""The tracking store itself: created safely by concurrent processes, drivers and folders checked up front."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# Each process waits for the go file, then opens the store and creates the experiment, as a sweep does.
OPEN_STORE = """
import sys, time
from pathlib import Path
go, uri = Path(sys.argv[1]), sys.argv[2]
from seqexp import tracking
while not go.exists():
    time.sleep(0.01)
c = tracking.client(uri)
print(tracking.experiment_id(c, "race", uri))
print(len(c.search_experiments()))
"""


def test_concurrent_processes_create_one_usable_fresh_sqlite_store(tmp_path):
    """Issue 11.1: several processes opening a fresh sqlite store at once used to race through MLflow's
    migrations ("table experiments already exists", a half-migrated DB). Under the store lock each
    waits for the first, and every one sees the same experiment in a store at MLflow's schema."""
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version
    from sqlalchemy import create_engine

    db = tmp_path / "fresh" / "c.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(go), uri], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    time.sleep(8)  # all of them past their imports, polling for the go file
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    ids = {out.split()[0] for out, _ in results}
    assert len(ids) == 1, results
    engine = create_engine(uri)
    assert _get_schema_version(engine) == _get_latest_schema_revision()
    assert (tmp_path / "fresh" / "c.db.lock").exists()
