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
config fingerprint atomic (``seqexp/sweep.py``). A fresh sqlite store starts as a copy of
an empty one that MLflow migrated once per MLflow, alembic, SQLAlchemy and sqlite version
(``<cache_dir>/mlflow/``): running MLflow's ~60 migrations costs ~1 s per new store, the
copy ~0.04 s.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqexp import identity
from seqexp.errors import ConfigError, StoreError  # noqa: F401  (StoreError: defined with every user error)
from seqexp.tracking_buffer import (KILLED_WAIT_S, Outbox, TrackingUnavailableError, inputs_op, metrics_op,
                                    params_op, tags_op, terminate_op, text_op)
from seqexp.training.stopping import uninterrupted

# Grid axes: the config groups whose chosen option names become short top-level params.
AXES = identity.AXES
_MAX_PARAM = 6000
# Default of `tracking.outage_wait_s`: how long the end of a run waits for a lost server.
OUTAGE_WAIT_S = 120.0
# MLflow's run and experiment description (what its UI shows and edits under "Description").
DESCRIPTION_TAG = "mlflow.note.content"
# MLflow's experiment-level setting of what kind of work an experiment holds. MLflow 3's UI reads it where its
# workflow switch is off and writes it itself once it infers a kind; with the switch on (3.17), the view
# comes from the URL's `workflowType` (see ``ui_url``).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Config keys kept out of a run's params: where things are, the test-only fault while it is off, and Hydra's own
# instantiation keys. They are in the run's config.yaml artifact; params hold what a user compares or needs
# to reproduce (the keys that change the result: ``seqexp.identity.changes_result``).
_NOT_PARAMS = ("hydra", "fault")
_NOT_PARAM_SUFFIXES = ("._target_", "._partial_", "._recursive_", "._convert_")
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


def check_reachable(uri: str, timeout: float = 5.0, patience: float = 120.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer or a database cannot be opened.

    A refused connection fails at once (nothing listens there). A server that accepts but is slow to answer
    (a loaded machine with many writers starting together) is asked again, each time for up to ``timeout``
    seconds, until ``patience`` seconds have passed."""
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
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                if reply.status != 200:
                    raise OSError(f"HTTP {reply.status}")
            return
        except (OSError, urllib.error.URLError) as exc:
            slow = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
            waited = time.monotonic() - start
            if not slow:
                raise ConfigError(f"`tracking.uri`: MLflow server {uri} is unreachable ({exc})") from None
            if waited + timeout > patience:
                raise ConfigError(f"`tracking.uri`: MLflow server {uri} is unreachable (no answer in "
                                  f"{waited:.0f} s)") from None
            log.warning("MLflow server %s has not answered in %.0f s; asking again", uri, waited)


# -- one store, safe across processes ----------------------------------------------------------------
_lock_guard = threading.RLock()
_held: dict[Path, list] = {}  # lock file -> [open file, depth]: re-entrant within the process


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """sqlite: an exclusive ``fcntl.flock`` on ``<db>.lock`` beside the database, re-entrant in this
    process, and once it is held, a block that Ctrl-C or SIGTERM lets end before stopping the run
    (``seqexp.training.stopping.uninterrupted``); other stores: nothing (their server serializes writes)."""
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
            with uninterrupted():
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[lock]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                entry[0].close()


_ready: set[str] = set()  # store URIs created and checked by this process


def empty_store(cache_dir: Path) -> Path | None:
    """An empty sqlite store migrated to this MLflow's schema, without MLflow's Default experiment (MLflow
    adds it, with its artifact location, when it opens a copy); built once per version of the four
    libraries that shape it. None where it cannot be built (e.g. a read-only cache_dir): migrate instead."""
    from importlib.metadata import version

    key = "-".join(f"{name}{version(name)}" for name in ("mlflow", "alembic", "sqlalchemy"))
    template = Path(cache_dir).expanduser() / "mlflow" / f"empty-store-{key}-sqlite{sqlite3.sqlite_version}.db"
    if template.is_file():
        return template
    tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
    try:
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables

        template.parent.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)  # MLflow's own: its initial tables, then every migration
        finally:
            engine.dispose()
        os.replace(tmp, template)  # whole or absent, whoever builds it at the same time
        return template
    except Exception as exc:  # noqa: BLE001 -- the template only saves time
        tmp.unlink(missing_ok=True)
        log.debug("no empty-store template in %s (%s); migrating the new store instead", template.parent, exc)
        return None


def _seed(path: Path, cache_dir: Path | str | None) -> None:
    """Start the sqlite store at ``path`` (held under its lock) as a copy of :func:`empty_store`, if it does not
    exist yet."""
    if cache_dir is None or (path.exists() and path.stat().st_size > 0):
        return
    template = empty_store(Path(str(cache_dir)))
    if template is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, tmp)
        os.replace(tmp, path)


def client(uri: str, cache_dir: Path | str | None = None):
    """An MlflowClient on ``uri``. A sqlite store is created (and migrated) under its lock, since
    building the client builds the store, and is checked to answer at MLflow's schema. With ``cache_dir``,
    a new sqlite store is a copy of :func:`empty_store` (no migrations to run)."""
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if uri in _ready or path is None:
        return MlflowClient(tracking_uri=uri)
    with store_lock(uri):
        for name in ("alembic", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            _seed(path, cache_dir)
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
            created = mlflow_client.create_experiment(name, artifact_location=artifact_root(uri))
            describe_experiment(mlflow_client, created)
            return created
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


def run_params(cfg: DictConfig, axes: Mapping[str, str]) -> dict[str, str]:
    """A run's params: the grid axes (``model``, ``freeze``, ...) and every resolved value a user compares or
    needs to reproduce the run. Unset (null) values are left out rather than stored as the string "None";
    so are locations, the test-only ``fault.*`` while no fault is set, Hydra's ``_target_`` keys and ``<axis>.strategy`` where it repeats
    the axis (``freeze.strategy`` is ``freeze``)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    fault_off = (container.get("fault") or {}).get("kind") is None  # an injected fault is part of the run
    skipped = tuple(k for k in _NOT_PARAMS if k != "fault" or fault_off)
    params: dict[str, str] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if (not identity.changes_result(name) or any(name == x or name.startswith(x + ".") for x in skipped)
                    or name.endswith(_NOT_PARAM_SUFFIXES)):
                continue
            if isinstance(value, Mapping):
                walk(value, name + ".")
            elif value is not None and value != []:
                params[name] = str(value)[:_MAX_PARAM]

    walk(container, "")
    for axis, value in axes.items():
        params[axis] = str(value)
        if params.get(f"{axis}.strategy") == str(value):
            del params[f"{axis}.strategy"]
    return params


def run_description(cfg: DictConfig, axes: Mapping[str, str]) -> str:
    """The run's MLflow description: what it trained, on what, and how it was tested."""
    data = OmegaConf.select(cfg, "dataset.max_train_sentences")
    size = f"the first {data:,} training sentences of " if data else ""
    return (f"**{axes.get('model', '?')}**, strategy `freeze={axes.get('freeze', '?')}`, optimizer "
            f"`optim={axes.get('optim', '?')}`, seed {axes.get('seed', '?')}: trained on {size}"
            f"`{axes.get('dataset', '?')}`, tested with the weights of its best dev epoch "
            f"(`{OmegaConf.select(cfg, 'trainer.monitor', default='val_f1')}`). Final scores are the `test_*` "
            "metrics (one value each, step 0); per-epoch curves are `train_loss` and `val_*`; the whole "
            "config is the artifact `config.yaml`.")


def context_tags() -> dict[str, str]:
    """MLflow's own run context: ``mlflow.user``, ``mlflow.source.name``/``type``, git commit and repo."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: str(v) for k, v in resolve_tags().items()}
    if sys.argv and sys.argv[0].endswith(("seqexp/run.py", "seqexp\\run.py")):
        tags["mlflow.source.name"] = "python -m seqexp.run"
    return tags


def dataset_inputs(cfg: DictConfig, splits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One MLflow dataset per split (``mlflow.log_input``): its file as the source and a digest of its
    words and tags, so that the runs table's Dataset column tells which runs saw the same data."""
    import hashlib
    import json

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    name = OmegaConf.select(cfg, "dataset.name", default="dataset")
    contexts = {"train": "training", "dev": "validation", "test": "testing"}
    out = []
    for split, sentences in splits.items():
        digest = hashlib.sha256()
        words = 0
        for sentence in sentences:
            digest.update(json.dumps([sentence.words, sentence.tags]).encode())
            words += len(sentence.words)
        origin = getattr(sentences[0], "origin", "") if sentences else ""
        path = origin.rsplit(":", 1)[0] if origin else str(Path(str(cfg.cache_dir)).expanduser())
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local file
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(Path(path).resolve()))
        entity = MetaDataset(source=source, name=f"{name}/{split}", digest=digest.hexdigest()[:8]).to_dict()
        entity["profile"] = json.dumps({"sentences": len(sentences), "words": words})
        out.append({"dataset": entity, "context": contexts.get(split, split)})
    return out


def describe_experiment(mlflow_client, exp_id: str) -> None:
    """Mark the experiment as model training (MLflow's experiment kind) and give it a description."""
    tags = mlflow_client.get_experiment(exp_id).tags
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow_client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    view = compare_view_state()
    if tags.get(SHARED_VIEW_TAG + COMPARE_VIEW) != view:
        mlflow_client.set_experiment_tag(exp_id, SHARED_VIEW_TAG + COMPARE_VIEW, view)
    if DESCRIPTION_TAG not in tags:
        mlflow_client.set_experiment_tag(exp_id, DESCRIPTION_TAG, (
            "A seqexp study: fine-tuning strategies for sequence labeling compared run by run. Each sweep is a "
            "parent run (its name gives the grid; it holds the best test F1 and the report); its jobs are the "
            "child runs, one per model × strategy × optimizer × seed. Compare them in the Chart view with "
            "`test_f1`, or see the parent run's description for the parallel-coordinates chart."))


# The saved comparison: a view of the runs page stored the way MLflow's own "Share" stores one (experiment tag
# `mlflow.sharedViewState.<key>`, opened with `?viewStateShareKey=<key>`): the jobs only (a search on the
# seqexp.role tag, so the parent's summary does not take a slot), every run shown (not MLflow's first 10),
# the compared params and test_f1 as columns, and first among the charts parallel coordinates of
# model/freeze/optim against test_f1 and test_f1 per run.
COMPARE_VIEW = "seqexp-compare"
SHARED_VIEW_TAG = "mlflow.sharedViewState."
COMPARED_PARAMS = ("model", "freeze", "optim")


def compare_view_state() -> str:
    import json

    section, model, system = "seqexp-comparison", "seqexp-model-metrics", "seqexp-system-metrics"
    card = {"runsCountToCompare": 100, "metricSectionId": section, "deleted": False, "isGenerated": False}
    charts = [
        {**card, "uuid": "seqexp-parallel", "type": "PARALLEL", "selectedParams": list(COMPARED_PARAMS),
         "selectedMetrics": ["test_f1"], "showAllRuns": True, "displayName": "test F1 by model, strategy, optimizer"},
        {**card, "uuid": "seqexp-test-f1", "type": "BAR", "metricKey": "test_f1", "displayName": "test_f1 per run"},
        {**card, "uuid": "seqexp-cost", "type": "SCATTER", "xaxis": {"key": "train_time_s", "type": "METRIC"},
         "yaxis": {"key": "test_f1", "type": "METRIC"}, "displayName": "test_f1 against train time"},
        {**card, "uuid": "seqexp-val-f1", "type": "LINE", "metricKey": "val_f1", "xAxisKey": "step",
         "lineSmoothness": 0, "scaleType": "linear", "xAxisScaleType": "linear", "useGlobalXaxisKey": True,
         "useGlobalLineSmoothing": True, "displayName": "val_f1 per epoch"},
    ]
    sections = [{"uuid": uid, "name": name, "display": True, "isReordered": False, "deleted": False,
                 "isGenerated": uid != section}
                for uid, name in ((section, "Comparison"), (model, "Model metrics"), (system, "System metrics"))]
    columns = [f"params.`{k}`" for k in (*COMPARED_PARAMS, "seed")] + \
        [f"metrics.`{k}`" for k in ("test_f1", "best_val_f1", "train_time_s")] + ["attributes.`Dataset`"]
    return json.dumps({
        "searchFilter": "tags.`seqexp.role` = 'job'", "orderByKey": "metrics.`test_f1`", "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns, "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts, "compareRunSections": sections, "viewMaximized": False,
        "runListHidden": False, "isAccordionReordered": True, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""}})


def ui_url(base: str, exp_id: str, compare: bool = False) -> str:
    """The MLflow UI page of an experiment's runs table (MLflow 3's model-training view, not GenAI's), or
    with ``compare`` its saved comparison in the chart view."""
    if compare:  # the shared view is read on the runs tab's own route
        return (f"{base.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
                f"&compareRunsMode=CHART&viewStateShareKey={COMPARE_VIEW}")
    return f"{base.rstrip('/')}/#/experiments/{exp_id}?workflowType=machine_learning"


def run_url(base: str, exp_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI."""
    return f"{base.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning"


def run_name(choices: Mapping[str, str], overrides: list[str], seed: int, swept: Collection[str] = ()) -> str:
    """``model|freeze|optim`` then any other compared override, then ``s<seed>``.

    Which overrides are spelled out follows from ``seqexp.identity`` (``in_run_name``): never a key
    that does not change the result, nor a setting (data, budget) that the study holds fixed; a setting
    among ``swept``, the keys the sweep varies, is spelled out.
    """
    parts = [str(choices.get(axis, "?")) for axis in identity.NAME_AXES]
    for override in overrides:
        if identity.in_run_name(override.split("=", 1)[0], swept):
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
        self.client = client(self.uri, cache_dir=OmegaConf.select(cfg, "cache_dir"))
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
            **context_tags(),
            "mlflow.source.git.commit": git_commit(),
            "command": command_line(),
            DESCRIPTION_TAG: run_description(cfg, axes),
            **(tags or {}),
        }
        run = self.client.create_run(exp, run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        self._send(params_op(run_params(cfg, axes)))
        self._send(tags_op({"mlflow.runName": name}))
        self.system_metrics(OmegaConf.select(cfg, "tracking.system_metrics_after_s"))
        return self.run_id

    def system_metrics(self, after_s: float | None) -> None:
        """MLflow's own system metrics (CPU, memory, disk, network, GPU) for a run that lasts more than
        ``after_s`` seconds (``tracking.system_metrics_after_s``; null: never): its monitor starts then."""
        if after_s is None:
            return
        run_id, uri = self.run_id, self.uri

        def start() -> None:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(run_id, tracking_uri=uri, resume_logging=True)
                self._monitor.start()
            except Exception as exc:  # noqa: BLE001 -- a run never fails for its system metrics
                log.warning("system metrics are off for run %s: %s", run_id, exc)

        self._monitor_timer = threading.Timer(float(after_s), start)
        self._monitor_timer.daemon = True
        self._monitor_timer.start()

    def _stop_system_metrics(self) -> None:
        timer, monitor = getattr(self, "_monitor_timer", None), getattr(self, "_monitor", None)
        if timer is not None:
            timer.cancel()
        if monitor is not None:
            try:
                monitor.finish()
            except Exception:  # noqa: BLE001
                pass

    def log_inputs(self, cfg: DictConfig, splits: Mapping[str, Any]) -> None:
        """Each split as an MLflow dataset input (the runs table's Dataset column)."""
        self._send(inputs_op(dataset_inputs(cfg, splits)))

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
        self._stop_system_metrics()
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
