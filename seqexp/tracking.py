"""MLflow tracking: one store, readable run names, flat params, grid axes, artifacts.

The embedded default is a sqlite store in the working directory. Any MLflow URI
works (``http://`` servers included); an unreachable one is reported before any
training starts, naming ``tracking.uri``.

A server lost mid-run does not stop training: the run's writes are buffered and
retried, flushed for up to ``tracking.outage_wait_s`` seconds at the end, and
saved to a local JSON file if the server stays down (``python -m seqexp.tracking
replay FILE`` delivers it later). The details are in ``seqexp/tracking_buffer.py``.

A sqlite store is created and migrated under an exclusive lock on ``<db>.lock`` beside
the database (``store_lock``), so any number of processes may open a fresh store at
once; its schema is checked afterwards. The same lock makes a job's claim of its
config fingerprint atomic (``seqexp/sweep.py``).
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqexp import identity
from seqexp.errors import ConfigError, StoreError  # noqa: F401  (StoreError: defined with every user error)
from seqexp.tracking_buffer import (KILLED_WAIT_S, Outbox, TrackingUnavailableError, metrics_op, params_op,
                                    tags_op, terminate_op, text_op)

# Grid axes: the config groups whose chosen option names become short top-level params.
AXES = identity.AXES
_MAX_PARAM = 6000
# Default of `tracking.outage_wait_s`: how long the end of a run waits for a lost server.
OUTAGE_WAIT_S = 120.0
log = logging.getLogger("seqexp.tracking")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to the current directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().resolve()


def _in_working_tree(path: Path) -> bool:
    return path.is_relative_to(Path.cwd().resolve())


def resolve_uri(uri: str) -> str:
    """Absolute sqlite paths (relative ones are relative to the current directory).

    A relative path inside the working directory may name a folder that does not exist yet:
    it is created (and logged). Any other missing folder is the user's to create
    (``check_reachable`` says so before anything runs).
    """
    path = sqlite_path(uri)
    if path is None or uri.startswith("sqlite:////"):
        return uri
    if not path.parent.exists() and _in_working_tree(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("created folder %s for the MLflow store", path.parent)
    return f"sqlite:///{path}"


# The pip package that provides a DB-API module SQLAlchemy imports (where the names differ).
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                    "pymysql": "PyMySQL", "pymssql": "pymssql", "pyodbc": "pyodbc", "oracledb": "oracledb",
                    "cx_Oracle": "cx_Oracle", "_sqlite3": "pysqlite3"}


def check_driver(uri: str) -> None:
    """A database URI whose DB-API driver is not installed: one line naming the package to install.

    SQLAlchemy decides which module a URI needs (``postgresql://`` means psycopg in SQLAlchemy
    2.1, ``postgresql+psycopg2://`` psycopg2, ``mysql://`` mysqlclient, ``mssql://`` pyodbc),
    so its dialect is asked; nothing of torch is imported.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(f"`tracking.uri`: {uri!r} is not a database URI SQLAlchemy knows ({exc})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = exc.name or str(exc)
        package = _DRIVER_PACKAGES.get(module, module)
        raise ConfigError(
            f"`tracking.uri`: {url.drivername}:// needs the Python module {module!r}, which is not installed; "
            f"install it with: pip install '{package}'"
        ) from None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer or a database cannot be opened."""
    if not uri.startswith(("http://", "https://")):
        if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "databricks")):
            raise ConfigError(
                f"`tracking.uri`: {uri!r} is not a supported MLflow store "
                "(use sqlite:///path.db or http://host:port)"
            )
        path = sqlite_path(uri)
        if path is not None and not path.parent.is_dir() and (uri.startswith("sqlite:////")
                                                             or not _in_working_tree(path)):
            raise ConfigError(f"`tracking.uri`: folder {path.parent} for the MLflow store does not exist; "
                              f"create it (mkdir -p {path.parent}) or choose another path")
        if not uri.startswith("databricks"):
            check_driver(uri)
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
            if reply.status != 200:
                raise OSError(f"HTTP {reply.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise ConfigError(f"`tracking.uri`: MLflow server {uri} is unreachable ({exc})") from None


# -- one store, safe across processes ----------------------------------------------------------------
_lock_guard = threading.RLock()
_held: dict[Path, list] = {}  # lock file -> [open file, depth]: re-entrant within the process


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """sqlite: an exclusive ``fcntl.flock`` on ``<db>.lock`` beside the database, re-entrant in this
    process; other stores: nothing (their server serializes writes)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    with _lock_guard:
        entry = _held.get(lock)
        if entry is None:
            handle = open(lock, "a")  # noqa: SIM115 -- kept open while held
            fcntl.flock(handle, fcntl.LOCK_EX)
            entry = _held[lock] = [handle, 0]
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[lock]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                entry[0].close()


_ready: set[str] = set()  # store URIs created and checked by this process


def client(uri: str):
    """An MlflowClient on ``uri``. A sqlite store is created (and migrated) under its lock, since
    building the client builds the store, and is checked to answer at MLflow's schema."""
    from mlflow import MlflowClient

    if uri in _ready or sqlite_path(uri) is None:
        return MlflowClient(tracking_uri=uri)
    with store_lock(uri):
        for name in ("alembic", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            mlflow_client = MlflowClient(tracking_uri=uri)  # creates, migrates and checks the schema
            mlflow_client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 -- what MLflow says is the message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"`tracking.uri`: the MLflow store {uri} cannot be used: {first}") from None
    _ready.add(uri)
    return mlflow_client


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store live beside the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    """The experiment's id, created on first use (safe when several processes race: sqlite under
    the store's lock; any store: another process's experiment of that name is taken)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    with store_lock(uri):
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifact_root(uri))
        except Exception:
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """Every resolved leaf as ``a.b.c -> str(value)``."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:_MAX_PARAM]
    return flat


def run_name(choices: Mapping[str, str], overrides: list[str], seed: int) -> str:
    """``model|freeze|optim`` then any other compared override, then ``s<seed>``.

    Which overrides are spelled out follows from ``seqexp.identity`` (``in_run_name``): never a key
    that does not change the result, nor a setting (data, budget) that the study holds fixed.
    """
    parts = [str(choices.get(axis, "?")) for axis in identity.NAME_AXES]
    for override in overrides:
        if identity.in_run_name(override.split("=", 1)[0]):
            parts.append(override.lstrip("+~"))
    return "|".join(parts + [f"s{seed}"])


def command_line() -> str:
    """The command as the user typed it (``python -m seqexp.run ...``, not the module's path)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("seqexp/run.py", "seqexp\\run.py")):
        argv[0:1] = ["-m", "seqexp.run"]
    return " ".join(["python", *argv])


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunTracker:
    """One MLflow run. A context manager: leaves the run FINISHED, FAILED or KILLED."""

    def __init__(self, uri: str, experiment: str, outage_wait_s: float | None = None):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None
        # Writes the server has not taken yet (seqexp/tracking_buffer.py); None: tracking.outage_wait_s.
        self.outage_wait_s = outage_wait_s
        self.outbox = Outbox(self.uri, experiment)
        self._stop_beat: threading.Event | None = None

    def heartbeat(self, every_s: float) -> None:
        """Refresh the run's ``seqexp.heartbeat`` tag every ``every_s`` s until the run ends: a claim on
        its config fingerprint that other hosts see alive (``seqexp.sweep.stale``). Its own client, off
        the outbox: a beat the server misses is simply the next one's job."""
        stop = self._stop_beat = threading.Event()
        run_id, beat_client = self.run_id, client(self.uri)

        def beat() -> None:
            while not stop.wait(every_s):
                try:
                    beat_client.set_tag(run_id, "seqexp.heartbeat", f"{time.time():.0f}")
                except Exception:  # noqa: BLE001 -- an outage or a busy database: try at the next beat
                    pass

        threading.Thread(target=beat, name="seqexp-heartbeat", daemon=True).start()

    def release(self) -> str | None:
        """Stop tracking the run without ending it (another process owns it); returns its id."""
        if self._stop_beat is not None:
            self._stop_beat.set()
        run_id, self.run_id = self.run_id, None
        return run_id

    def start(self, cfg: DictConfig, name: str, axes: Mapping[str, str], tags: Mapping[str, str] | None = None,
              resume_run_id: str | None = None) -> str:
        """Create the run, or with ``resume_run_id`` reopen that KILLED/FAILED run (RUNNING again, params kept)."""
        self.client = client(self.uri)
        if self.outage_wait_s is None:
            self.outage_wait_s = float(OmegaConf.select(cfg, "tracking.outage_wait_s", default=OUTAGE_WAIT_S))
        if resume_run_id is not None:
            error = self.client.get_run(resume_run_id).data.tags.get("error")
            if error is not None:  # what ended it before is history now, not this run's outcome
                self.client.delete_tag(resume_run_id, "error")
            self.client.update_run(resume_run_id, status="RUNNING")
            self.run_id = resume_run_id
            history = {"resumed_after_error": error} if error is not None else {}
            self._send(tags_op({"command": command_line(), **history, **(tags or {})}))
            return self.run_id
        exp = experiment_id(self.client, self.experiment, self.uri)
        all_tags = {
            "mlflow.source.git.commit": git_commit(),
            "command": command_line(),
            **(tags or {}),
        }
        run = self.client.create_run(exp, run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        params = flatten(cfg)
        params.update({k: str(v) for k, v in axes.items()})
        self._send(params_op(params))
        self._send(tags_op({"mlflow.runName": name}))
        return self.run_id

    def _send(self, op: dict) -> None:
        """Every write goes through the outbox: kept and retried while the server is unreachable."""
        self.outbox.client, self.outbox.run_id = self.client, self.run_id
        self.outbox.send(op)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self._send(metrics_op(dict(metrics), step))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send(params_op(dict(params)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._send(tags_op(dict(tags)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._send(text_op(text, artifact_file))

    def __enter__(self) -> "RunTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._stop_beat is not None:
            self._stop_beat.set()
        if self.run_id is None:
            return False
        wait = OUTAGE_WAIT_S if self.outage_wait_s is None else self.outage_wait_s
        self.outbox.client, self.outbox.run_id = self.client, self.run_id
        if exc_type is None:
            self.outbox.pending.append(terminate_op("FINISHED"))
            errors = self.outbox.finish(wait)  # TrackingUnavailableError if the server stays down
            if errors:
                raise errors[0]
            return False
        killed = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
        # Queued, not sent one by one, so that the final status is attempted whatever fails before it.
        self.outbox.pending += [
            tags_op({"error": f"{exc_type.__name__}: {exc}"}),
            text_op("".join(traceback.format_exception(exc_type, exc, tb)), "traceback.txt"),
            terminate_op("KILLED" if killed else "FAILED"),
        ]
        try:
            for error in self.outbox.finish(min(wait, KILLED_WAIT_S) if killed else wait):
                log.error("recording the failure in MLflow: %s", error)
        except TrackingUnavailableError as err:
            log.error("%s", err)
        return False


if __name__ == "__main__":
    from seqexp.tracking_buffer import main

    sys.exit(main())
