"""Sweeps: one MLflow parent run per sweep, a child run per job, skip what is done.

Hydra calls ``SweepCallback`` around a ``-m`` multirun (registered in
``conf/config.yaml``). Before any job starts it creates the tracking database
(parallel jobs race on a fresh sqlite file), the experiment and the parent run,
and hands them to the jobs through the ``SEQEXP_SWEEP`` environment variable,
which every launcher's worker processes inherit. Every job writes its outcome
into the sweep's outcome folder; at the end the callback prints a summary
table and fails the command if any job failed.

A sweep's identity is its command (experiment + overrides + sweeper params):
rerunning the same command reopens the same parent run, and each job whose
config fingerprint already has a FINISHED run is skipped (``rerun=true``
forces it). A RUNNING run whose process is gone is marked KILLED; a KILLED or
FAILED run that left a checkpoint continues in the same MLflow run
(``seqexp.training.checkpoints``), any other is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from seqexp import tracking
from seqexp.config_errors import ConfigError

log = logging.getLogger("seqexp.sweep")

SWEEP_ENV = "SEQEXP_SWEEP"
# Keys that say where things are or how fast they run, not what is computed.
NOT_FINGERPRINTED = ("tracking", "cache_dir", "rerun", "tuned", "trainer.num_workers", "trainer.num_threads",
                     "trainer.host_mmap_threshold_mib", "trainer.accelerator", "trainer.devices",
                     # resume: where checkpoints go and how often; a resumed run computes what an uninterrupted one does
                     "resume", "trainer.checkpoint_every_n_steps", "trainer.checkpoint_dir", "trainer.keep_checkpoint")


def fingerprint(cfg: DictConfig) -> str:
    """Hash of every resolved value that changes what a run computes."""
    flat = tracking.flatten(cfg)
    kept = {k: v for k, v in flat.items()
            if not any(k == x or k.startswith(x + ".") for x in NOT_FINGERPRINTED)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def optuna_storage(tracking_uri: str) -> str:
    """The Optuna study's database beside the MLflow sqlite store (mlruns.db -> mlruns-optuna.db).

    Never the MLflow database itself: both keep their schema version in an ``alembic_version`` table.
    Other tracking URIs (a server): ./optuna.db.
    """
    uri = tracking.resolve_uri(tracking_uri)
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return tracking.resolve_uri("sqlite:///optuna.db")
    path = Path(uri[len("sqlite:///"):])
    suffix = path.suffix or ".db"
    return f"sqlite:///{path.with_name(path.stem + '-optuna' + suffix)}"


# conf/hydra/sweeper/optuna.yaml interpolates it; Hydra instantiates this module's callback first.
OmegaConf.register_new_resolver("seqexp.optuna_storage", optuna_storage, replace=True)


def search_space(config: DictConfig) -> dict[str, str]:
    """What an Optuna sweeper searches: its params, then the command line's sweep overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.optuna_config.params")
    if params is None:
        return {}
    space = {str(k): str(v) for k, v in params.items()}
    for override in OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task]):
        if override.is_sweep_override():
            space[override.get_key_element()] = override.input_line
    return space


def check_tuned(config: DictConfig) -> None:
    """Optuna may search only keys the study declares as tuned; the rest are compared, cell by cell."""
    tuned = set(config.get("tuned") or [])
    untuned = [k for k in search_space(config) if k.lstrip("+~") not in tuned]
    if untuned:
        raise ConfigError(
            f"`tuned`: the Optuna search space (hydra.sweeper.optuna_config.params and sweep overrides) "
            f"has {', '.join(untuned)}, which `tuned` ({sorted(tuned)}) does not list; list the "
            "hyperparameters to tune there, and run one study per compared value (e.g. model=...)")


def _sweep_id(config: DictConfig) -> str:
    overrides = sorted(str(o) for o in config.hydra.overrides.task)
    params = config.hydra.sweeper.get("params") or OmegaConf.select(config, "hydra.sweeper.optuna_config.params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    key = json.dumps([config.tracking.experiment, overrides, params], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SweepInfo:
    sweep_id: str
    parent_run_id: str
    uri: str
    experiment: str
    outcome_dir: str

    @classmethod
    def for_current_job(cls) -> "SweepInfo | None":
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return None
        value = os.environ.get(SWEEP_ENV)
        return cls(**json.loads(value)) if value else None


@dataclass
class Outcome:
    name: str
    status: str  # FINISHED | FAILED | SKIPPED | KILLED
    run_id: str
    test_f1: float | None = None
    error: str = ""
    dev_f1: float | None = None  # best dev F1: what a search optimizes

    def save(self) -> None:
        info = SweepInfo.for_current_job()
        if info is not None:
            out = Path(info.outcome_dir) / f"{HydraConfig.get().job.num:05d}.json"
            out.write_text(json.dumps(asdict(self)))


def find_previous(client, experiment: str, uri: str, fp: str):
    """The newest FINISHED run with this fingerprint; dead RUNNING ones are marked KILLED."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`seqexp.fingerprint` = '{fp}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status == "RUNNING":
            tags = run.data.tags
            pid = int(tags.get("seqexp.pid", "0") or 0)
            if tags.get("seqexp.host") == socket.gethostname() and pid and not _pid_alive(pid):
                log.warning("run %s (%s) was left RUNNING by dead process %d: marking it KILLED",
                            run.info.run_name, run.info.run_id, pid)
                client.set_tag(run.info.run_id, "error", f"process {pid} died while the run was RUNNING")
                client.set_terminated(run.info.run_id, "KILLED")
    for run in runs:
        if run.info.status == "FINISHED":
            return run
    return None


def end_interrupted_sweep() -> None:
    """Ctrl-C or SIGTERM stopped a job: the sweep stops with it, and its parent run ends KILLED."""
    info = SweepInfo.for_current_job()
    if info is not None:
        tracking.client(info.uri).set_terminated(info.parent_run_id, "KILLED")


def job_tags(cfg: DictConfig, fp: str, overrides: list[str]) -> dict[str, str]:
    """Tags of a run; inside a sweep, also its parent, sweep id and grid coordinates."""
    tags = {"seqexp.fingerprint": fp, "seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid()),
            "overrides": " ".join(overrides), "seqexp.tuned": ",".join(cfg.get("tuned") or [])}
    info = SweepInfo.for_current_job()
    if info is not None:
        tags.update({"mlflow.parentRunId": info.parent_run_id, "seqexp.sweep_id": info.sweep_id,
                     "seqexp.role": "job"})
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            tags[f"grid.{key}"] = value
    return tags


class SweepCallback(Callback):
    """Hydra turns exceptions raised in callbacks into warnings, so failures here exit explicitly."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._open_sweep(config)
        except Exception as exc:
            print(f"seqexp: error: cannot start the sweep: {exc}", file=sys.stderr)
            sys.exit(2)

    def _open_sweep(self, config: DictConfig) -> None:
        check_tuned(config)
        uri = tracking.resolve_uri(config.tracking.uri)
        tracking.check_reachable(uri)
        client = tracking.client(uri)  # creates and migrates a fresh sqlite DB, once
        exp_id = tracking.experiment_id(client, config.tracking.experiment, uri)
        sweep_id = _sweep_id(config)
        found = client.search_runs([exp_id], filter_string=f"tags.`seqexp.sweep_id` = '{sweep_id}' "
                                   "and tags.`seqexp.role` = 'sweep'")
        if found:
            parent = found[0].info.run_id
            client.update_run(parent, status="RUNNING")
            log.info("resuming sweep %s (parent run %s)", sweep_id, parent)
        else:
            overrides = " ".join(str(o) for o in config.hydra.overrides.task)
            run = client.create_run(exp_id, run_name=f"sweep {sweep_id}", tags={
                "seqexp.role": "sweep", "seqexp.sweep_id": sweep_id, "overrides": overrides,
                "command": tracking.command_line(),
                "mlflow.source.git.commit": tracking.git_commit(),
            })
            parent = run.info.run_id
            log.info("sweep %s: parent run %s in %s", sweep_id, parent, uri)
        outcome_dir = Path(tempfile.mkdtemp(prefix=f"seqexp-sweep-{sweep_id}-"))
        self.info = SweepInfo(sweep_id, parent, uri, config.tracking.experiment, str(outcome_dir))
        os.environ[SWEEP_ENV] = json.dumps(asdict(self.info))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        info = self.info
        outcome_dir = Path(info.outcome_dir)
        outcomes = [Outcome(**json.loads(p.read_text())) for p in sorted(outcome_dir.glob("*.json"))]
        shutil.rmtree(outcome_dir, ignore_errors=True)
        os.environ.pop(SWEEP_ENV, None)
        print(summary_table(outcomes, info), flush=True)
        failed = [o for o in outcomes if o.status in ("FAILED", "KILLED")]
        client = tracking.client(info.uri)
        client.set_terminated(info.parent_run_id, "FAILED" if failed else "FINISHED")
        if failed:
            print(f"seqexp: {len(failed)} of {len(outcomes)} jobs failed (recorded as FAILED in MLflow)",
                  file=sys.stderr, flush=True)
            sys.exit(1)


def summary_table(outcomes: list[Outcome], info: SweepInfo) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("FINISHED", "SKIPPED", "FAILED", "KILLED")}
    width = max([len(o.name) for o in outcomes] + [3])
    lines = [f"\nsweep {info.sweep_id} ({info.experiment}, parent run {info.parent_run_id})",
             f"{'run':<{width}}  {'status':<8}  {'dev_f1':>7}  {'test_f1':>7}  run id / error"]
    for o in outcomes:
        dev, f1 = (f"{v:.4f}" if v is not None else "-" for v in (o.dev_f1, o.test_f1))
        detail = o.error if len(o.error) <= 100 else o.error[:97] + "..."
        lines.append(f"{o.name:<{width}}  {o.status:<8}  {dev:>7}  {f1:>7}  {detail or o.run_id}")
    lines.append(", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    return "\n".join(lines)
