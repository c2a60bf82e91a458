"""The tracking store itself: created safely by concurrent processes, drivers and folders checked up front."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import warm
from tests.conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# Each process waits for the go file, then opens the store and creates the experiment, as a sweep does.
OPEN_STORE = """
import sys, time
from pathlib import Path
go, uri, cache_dir = Path(sys.argv[1]), sys.argv[2], sys.argv[3] or None
from seqexp import tracking
while not go.exists():
    time.sleep(0.01)
c = tracking.client(uri, cache_dir=cache_dir)
print(tracking.experiment_id(c, "race", uri))
print(len(c.search_experiments()))
"""


@pytest.mark.parametrize("start", ["migrated", "from a template built by the first"])
def test_concurrent_processes_create_one_usable_fresh_sqlite_store(tmp_path, start):
    """Issue 11.1: several processes opening a fresh sqlite store at once used to race through MLflow's
    migrations ("table experiments already exists", a half-migrated DB). Under the store lock each
    waits for the first, and every one sees the same experiment in a store at MLflow's schema, whether
    MLflow migrates it or it is copied from the empty-store template (here built in a fresh cache_dir)."""
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version
    from sqlalchemy import create_engine

    db = tmp_path / "fresh" / "c.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    cache = str(tmp_path / "cache") if start != "migrated" else ""
    procs = [warm.Popen([sys.executable, "-c", OPEN_STORE, str(go), uri, cache], cwd=tmp_path, env=ENV,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    time.sleep(3)  # all of them past their imports (forked warm), polling for the go file
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    ids = {out.split()[0] for out, _ in results}
    assert len(ids) == 1, results
    engine = create_engine(uri)
    assert _get_schema_version(engine) == _get_latest_schema_revision()
    assert (tmp_path / "fresh" / "c.db.lock").exists()
    assert len(list((tmp_path / "cache").glob("mlflow/empty-store-*.db"))) == (start != "migrated")


def _contents(db: Path) -> dict:
    """Schema and rows of a sqlite store, with times dropped and the store's own folder written as <dir>."""
    con = sqlite3.connect(db)
    try:
        # MLflow's migrations order a table's constraints by hash seed: each statement as a set of lines
        schema = sorted((kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                        for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master"
                                                           " WHERE name NOT LIKE 'sqlite_%'"))
        rows = {}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cursor = con.execute(f'SELECT * FROM "{table}"')
            keep = [i for i, col in enumerate(cursor.description) if not col[0].endswith("_time")]
            rows[table] = sorted(str([row[i] for i in keep]).replace(str(db.parent), "<dir>") for row in cursor)
        return {"schema": schema, "rows": rows}
    finally:
        con.close()


def test_a_store_copied_from_the_empty_store_template_is_the_one_mlflow_migrates_and_costs_no_migrations(
        tmp_path):
    """A fresh sqlite store starts as a copy of an empty, migrated one (seqexp.tracking.empty_store): same
    tables, indexes, schema version and rows (MLflow's Default experiment, with its artifact location
    beside this store, and seqexp's experiment) as a store MLflow creates by running its migrations; and
    opening it runs none of them (timed in this process: the migrations take ~25x the copy)."""
    from seqexp import tracking

    def opened(name: str, cache_dir: Path | None) -> tuple[Path, float]:
        db = tmp_path / name / "mlruns.db"
        db.parent.mkdir()
        started = time.perf_counter()
        c = tracking.client(f"sqlite:///{db}", cache_dir=cache_dir)
        spent = time.perf_counter() - started
        tracking.experiment_id(c, "seqexp", f"sqlite:///{db}")
        return db, spent

    cache = tmp_path / "cache"
    migrated, _ = opened("migrated", None)
    first, _ = opened("first", cache)  # builds the template
    (template,) = (cache / "mlflow").glob("empty-store-mlflow*-alembic*-sqlalchemy*-sqlite*.db")
    copied, copy_s = opened("copied", cache)
    _, migrate_s = opened("migrated-again", None)
    assert _contents(first) == _contents(copied) == _contents(migrated)
    assert "Default" not in str(_contents(template)["rows"]["experiments"])  # MLflow adds its own, here
    assert copy_s < migrate_s / 4, (copy_s, migrate_s)


CHECK_URIS = """
import sys
from tests.conftest import compose
from seqexp.config import validate
for uri in sys.argv[2:]:
    try:
        validate(compose(['model=tiny-bert', 'dataset.data_dir=' + sys.argv[1], 'tracking.uri=' + uri]))
        print('accepted')
    except Exception as exc:
        print(type(exc).__name__, exc)
print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))
"""


def test_missing_db_driver_and_missing_sqlite_folder_are_one_line_before_torch(tmp_path, mini_conll):
    """Issue 11.6 and 11.11: a database URI without its driver named the package only in a traceback
    after 40 s of imports; an absolute sqlite path silently created its folder."""
    missing = tmp_path / "nonexistent" / "dir"
    uris = ["postgresql://u@127.0.0.1/db", "postgresql+psycopg2://u@127.0.0.1/db", "mysql+pymysql://u@127.0.0.1/db",
            "mssql://u@127.0.0.1/db", f"sqlite:///{missing}/x.db", f"sqlite:///{tmp_path}/x.db", "sqlite:///sub/x.db"]
    # cold, not tests/warm.py: what the driver imported is read off sys.modules
    proc = subprocess.run([sys.executable, "-c", CHECK_URIS, str(mini_conll), *uris], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(uris) + 1, proc.stdout + proc.stderr
    pg, pg2, my, ms, nodir, ok, relative, heavy = lines
    assert pg.startswith("ConfigError `tracking.uri`: postgresql:// needs the Python module 'psycopg'"), pg
    assert pg.endswith("pip install 'psycopg[binary]'"), pg
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:
        assert "'psycopg2'" in pg2 and pg2.endswith("pip install 'psycopg2-binary'"), pg2
    else:  # the server extra (make install) brings psycopg2-binary: then the URI passes the driver check
        assert pg2 == "accepted", pg2
    assert "'pymysql'" in my and my.endswith("pip install 'PyMySQL'"), my
    assert "'pyodbc'" in ms and ms.endswith("pip install 'pyodbc'"), ms
    assert nodir == (f"ConfigError `tracking.uri`: folder {missing} for the MLflow store does not exist; "
                     f"create it (mkdir -p {missing}) or choose another path"), nodir
    assert not missing.exists() and not missing.parent.exists()
    assert ok == "accepted" and relative == "accepted"
    assert heavy == "[]"


def test_relative_sqlite_path_in_the_working_tree_gets_its_folder(tmp_path, monkeypatch, caplog):
    from seqexp.tracking import resolve_uri

    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO", logger="seqexp.tracking"):
        uri = resolve_uri("sqlite:///stores/a/x.db")
    assert uri == f"sqlite:///{tmp_path.resolve()}/stores/a/x.db"
    assert (tmp_path / "stores" / "a").is_dir()
    assert f"created folder {tmp_path.resolve()}/stores/a for the MLflow store" in caplog.text
    assert resolve_uri("sqlite:////no/such/dir/x.db") == "sqlite:////no/such/dir/x.db"
    assert not Path("/no/such/dir").exists()
