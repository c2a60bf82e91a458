"""Read the runs a report is built from, straight out of the MLflow store.

A target is a sweep id (the ``seqexp.sweep_id`` tag that every job of one
``python -m seqexp.run -m`` sweep carries) or an experiment name. Only FINISHED
runs with test metrics enter the tables; everything else is kept aside so the
report can say what was left out and why. Parent (sweep) runs hold no metrics
of their own and are kept for provenance only.

Two FINISHED runs with the same ``seqexp.fingerprint`` tag are one
configuration AND seed run twice, never two seeds: the EARLIEST (start time,
then run id) is kept and each later one is excluded as "duplicate of <run id>".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from seqexp.errors import ReportError  # noqa: F401  (defined with every user error)

from seqexp import identity

SWEEP_TAG = "seqexp.sweep_id"
ROLE_TAG = "seqexp.role"
PARENT_TAG = "mlflow.parentRunId"
FINGERPRINT_TAG = identity.FINGERPRINT_TAG
REQUIRED_METRIC = "test_f1"
# A run's test predictions (word, gold, predicted per line; seqexp.pipeline writes them), and the names
# runs made before used (still read).
PREDICTIONS = "test_predictions.txt"
EARLIER_PREDICTIONS = ("test_predictions.conll",)
_PROGRESS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass(frozen=True)
class RunRecord:
    """The parts of one MLflow run a report needs."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int = 0
    artifact_uri: str = ""
    derived: tuple[str, ...] = ()  # metrics the report derived (older runs), not read from MLflow

    @property
    def seed(self) -> str:
        return self.params.get("seed", "?")

    @property
    def commit(self) -> str:
        return self.tags.get("mlflow.source.git.commit", "unknown")

    @property
    def error(self) -> str:
        return self.tags.get("error", "")

    @classmethod
    def from_run(cls, run: Any) -> "RunRecord":
        tags = dict(run.data.tags)
        return cls(
            run_id=run.info.run_id,
            name=tags.get("mlflow.runName") or run.info.run_name or run.info.run_id[:8],
            status=run.info.status,
            experiment_id=run.info.experiment_id,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=tags,
            start_time=run.info.start_time or 0,
            artifact_uri=run.info.artifact_uri or "",
        )


@dataclass
class Selection:
    """Which runs a report covers: ``finished`` enter the tables, ``excluded`` are listed with a reason."""

    uri: str
    target: str
    kind: str  # "sweep" or "experiment"
    experiments: dict[str, str]  # id -> name, of the experiments the runs live in
    finished: list[RunRecord]
    excluded: list[tuple[RunRecord, str]] = field(default_factory=list)
    parents: list[RunRecord] = field(default_factory=list)
    ui_base: str = ""  # the MLflow UI the report's run links open (a server store: the server itself)

    @property
    def sweep_id(self) -> str | None:
        return self.target if self.kind == "sweep" else None


def resolve_uri(uri: str) -> str:
    """Absolute sqlite path; a missing database file is an error, not a fresh empty store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).expanduser().resolve()  # relative to the current directory
        if not path.is_file():
            raise ReportError(f"no MLflow store at {path} (pass --uri sqlite:///path/to/mlruns.db)")
        return f"sqlite:///{path}"
    return uri


def open_client(uri: str):
    """An MlflowClient on ``uri``, without alembic's migration chatter on stderr."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _search(client, experiment_ids: list[str], filter_string: str = "") -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _experiments(client) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _sweep_runs(client, experiment_ids: list[str], target: str) -> list[Any]:
    if not experiment_ids or "'" in target or "\\" in target:
        return []
    return _search(client, experiment_ids, f"tags.`{SWEEP_TAG}` = '{target}'")


def _known_targets(client, experiments) -> str:
    names = [e.name for e in experiments]
    sweeps: set[str] = set()
    if experiments:
        for run in _search(client, [e.experiment_id for e in experiments], f"tags.`{ROLE_TAG}` = 'sweep'"):
            sweeps.add(run.data.tags.get(SWEEP_TAG, ""))
    text = "experiments: " + (", ".join(repr(n) for n in names) if names else "none")
    if sweeps:
        shown = sorted(s for s in sweeps if s)
        text += "; sweeps: " + ", ".join(shown[:10]) + (f" (+{len(shown) - 10} more)" if len(shown) > 10 else "")
    return text


def _split(records: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[RunRecord, str]]]:
    finished, excluded = [], []
    first_of: dict[str, RunRecord] = {}
    for r in sorted(records, key=lambda r: (r.start_time, r.run_id)):
        fp = r.tags.get(FINGERPRINT_TAG)
        if r.status != "FINISHED":
            excluded.append((r, r.status + (f": {r.error}" if r.error else "")))
        elif REQUIRED_METRIC not in r.metrics:
            excluded.append((r, f"FINISHED without {REQUIRED_METRIC}"))
        elif fp and fp in first_of:
            excluded.append((r, f"duplicate of {first_of[fp].run_id} (same {FINGERPRINT_TAG}: same config and seed)"))
        else:
            if fp:
                first_of[fp] = r
            finished.append(r)
    return finished, excluded


def with_fallbacks(run: RunRecord, history: list[tuple[int, float]]) -> RunRecord:
    """``run`` with the selection and budget metrics older runs lack, derived from their dev history.

    ``best_val_f1``/``best_epoch``: the maximum of the per-epoch ``val_f1`` (first
    epoch reaching it; steps are 0-based epochs); ``epochs_run``: the last epoch
    with a dev score when dev ran every epoch; ``max_epochs``: the param ``trainer.max_epochs``. Derived names are listed in ``derived``; test metrics are never used.
    """
    metrics, derived = dict(run.metrics), []
    if "best_val_f1" not in metrics and history:
        step, value = max(history, key=lambda sv: (sv[1], -sv[0]))
        metrics["best_val_f1"] = value
        derived.append("best_val_f1")
        if "best_epoch" not in metrics:
            metrics["best_epoch"] = float(step + 1)
            derived.append("best_epoch")
    if "epochs_run" not in metrics and history and run.params.get("trainer.val_every_n_epochs", "1") == "1":
        metrics["epochs_run"] = float(max(step for step, _ in history) + 1)  # dev ran after every epoch
        derived.append("epochs_run")
    if "max_epochs" not in metrics:
        try:
            metrics["max_epochs"] = float(run.params["trainer.max_epochs"])
            derived.append("max_epochs")
        except (KeyError, ValueError):
            pass
    if not derived:
        return run
    return dataclasses.replace(run, metrics=metrics, derived=(*run.derived, *derived))


def select_runs(client, uri: str, target: str) -> Selection:
    """The runs of sweep ``target`` if such a sweep exists, else of experiment ``target``."""
    experiments = _experiments(client)
    by_id = {e.experiment_id: e.name for e in experiments}
    sweep = [RunRecord.from_run(r) for r in _sweep_runs(client, list(by_id), target)]
    if sweep:
        parents = [r for r in sweep if r.tags.get(ROLE_TAG) == "sweep"]
        children = [r for r in sweep if r.tags.get(ROLE_TAG) != "sweep"]
        finished, excluded = _split(children)
        used = {r.experiment_id for r in sweep}
        return Selection(uri, target, "sweep", {i: by_id[i] for i in used}, finished, excluded, parents)
    exp = next((e for e in experiments if e.name == target), None)
    if exp is None:
        raise ReportError(f"no experiment or sweep named {target!r} in {uri}; {_known_targets(client, experiments)}")
    records = [RunRecord.from_run(r) for r in _search(client, [exp.experiment_id])]
    parent_ids = {r.tags[PARENT_TAG] for r in records if PARENT_TAG in r.tags}
    parents = [r for r in records if r.tags.get(ROLE_TAG) == "sweep" or r.run_id in parent_ids]
    parent_set = {r.run_id for r in parents}
    finished, excluded = _split([r for r in records if r.run_id not in parent_set])
    return Selection(uri, target, "experiment", {exp.experiment_id: exp.name}, finished, excluded, parents)


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a per-epoch metric, last value per step, in step order."""
    last: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in last or m.timestamp >= last[m.step][0]:
            last[m.step] = (m.timestamp, m.value)
    return [(step, last[step][1]) for step in sorted(last)]


def download_predictions(client, run: RunRecord, dst: Path) -> Path | None:
    """The run's test predictions (:data:`PREDICTIONS`, or an earlier name): read in place from a local
    artifact store, else downloaded. Returns None when the run did not log them (``tracking.log_predictions=false``).
    """
    for name in (PREDICTIONS, *EARLIER_PREDICTIONS):
        found = _predictions(client, run, dst, name)
        if found is not None:
            return found
    return None


def _predictions(client, run: RunRecord, dst: Path, name: str) -> Path | None:
    if run.artifact_uri.startswith("file:") or run.artifact_uri.startswith("/"):
        local = Path(url2pathname(urlparse(run.artifact_uri).path)) / name
        return local if local.is_file() else None
    target = dst / run.run_id
    target.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get(_PROGRESS)
    os.environ[_PROGRESS] = "false"  # no progress bar per artifact on stderr
    try:
        return Path(client.download_artifacts(run.run_id, name, str(target)))
    except Exception:  # noqa: BLE001 - any store error means "no predictions to test with"
        return None
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS, None)
        else:
            os.environ[_PROGRESS] = previous


def safe_name(target: str) -> str:
    """A sweep id or experiment name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", target).strip("._") or "report"
