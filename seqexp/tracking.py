"""MLflow tracking: one store, readable run names, flat params, grid axes, artifacts.

The embedded default is a sqlite store in the working directory. Any MLflow URI
works (``http://`` servers included); an unreachable one is reported before any
training starts, naming ``tracking.uri``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqexp.config_errors import ConfigError

# Grid axes: the config groups whose chosen option names become short top-level params.
AXES = ("model", "dataset", "freeze", "optim", "scheduler", "head")
# Overrides that say where things are or how long to train, not what is compared: kept out of run names.
_NOT_IN_NAME = ("dataset.", "trainer.", "tracking.", "cache_dir", "hydra.", "experiment", "rerun")
_MAX_PARAM = 6000


def resolve_uri(uri: str) -> str:
    """Absolute sqlite paths (relative ones are relative to the current directory)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql", "databricks")):
            raise ConfigError(
                f"`tracking.uri`: {uri!r} is not a supported MLflow store "
                "(use sqlite:///path.db or http://host:port)"
            )
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
            if reply.status != 200:
                raise OSError(f"HTTP {reply.status}")
    except (OSError, urllib.error.URLError) as exc:
        raise ConfigError(f"`tracking.uri`: MLflow server {uri} is unreachable ({exc})") from None


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store live beside the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    """The experiment's id, created on first use (safe when several jobs race)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
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
    """``model|freeze|optim`` then any other compared override, then ``s<seed>``."""
    parts = [str(choices.get(axis, "?")) for axis in ("model", "freeze", "optim")]
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in ("model", "freeze", "optim", "seed") or key.startswith(_NOT_IN_NAME):
            continue
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

    def __init__(self, uri: str, experiment: str):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None

    def start(self, cfg: DictConfig, name: str, axes: Mapping[str, str], tags: Mapping[str, str] | None = None) -> str:
        from mlflow.entities import Param, RunTag

        self.client = client(self.uri)
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
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
        self.client.log_batch(self.run_id, tags=[RunTag("mlflow.runName", name)], synchronous=True)
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500], synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def __enter__(self) -> "RunTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.run_id is None:
            return False
        if exc_type is None:
            self.client.set_terminated(self.run_id, "FINISHED")
            return False
        status = "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            self.set_tags({"error": f"{exc_type.__name__}: {exc}"})
            self.log_text("".join(traceback.format_exception(exc_type, exc, tb)), "traceback.txt")
        finally:
            self.client.set_terminated(self.run_id, status)
        return False
