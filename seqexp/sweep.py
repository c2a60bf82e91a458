"""Sweeps: one MLflow parent run per sweep, a child run per job, skip what is done.

Hydra calls ``SweepCallback`` around a ``-m`` multirun (registered in
``conf/config.yaml``). Before any job starts it opens the tracking database
(a sqlite store is created under its file lock, see ``seqexp.tracking.client``), the experiment and the parent run,
and hands them to the jobs through the ``SEQEXP_SWEEP`` environment variable,
which every launcher's worker processes inherit (SLURM jobs too: sbatch exports the
submitting environment). Every job writes its outcome into the sweep's outcome
folder, inside the sweep folder (hydra.sweep.dir); at the end the callback prints a summary
table and fails the command if any job failed.

A sweep's identity is its command (experiment + overrides + sweeper params):
rerunning the same command reopens the same parent run, and each job whose
config fingerprint already has a FINISHED run is skipped (``rerun=true``
forces it). A RUNNING run whose process is gone is marked KILLED; a KILLED or
FAILED run that left a checkpoint continues in the same MLflow run
(``seqexp.training.checkpoints``), any other is redone.

Claims (``claim_job``): a job claims its fingerprint before it trains, so identical
sweeps started together train each job once and never share a checkpoint. The claim
is the job's RUNNING run, tagged with the fingerprint, host, pid, a claim token and a
heartbeat that the run refreshes while it trains. With a sqlite store the look-up and
the creation happen under the store's file lock; with a server the run is created,
and after ``CLAIM_SETTLE_S`` the earliest live claim wins (losers delete their run).
A job whose fingerprint is claimed by a live run is SKIPPED, naming that run. A claim
is stale, and is marked KILLED and taken over, when its process is dead (same host)
or its heartbeat is older than ``LEASE_S`` (another host). Writes a run saved in
``seqexp-undelivered/<run id>.json`` while the server was down are delivered first.
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
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from seqexp import identity, tracking
from seqexp.errors import ConfigError

log = logging.getLogger("seqexp.sweep")

SWEEP_ENV = "SEQEXP_SWEEP"


def fingerprint(cfg: DictConfig) -> str:
    """Hash of every resolved value that changes what a run computes (the rule: ``seqexp.identity``)."""
    return identity.fingerprint(tracking.flatten(cfg))


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


def sweep_grid(config: DictConfig) -> tuple[dict[str, list[str]], dict[str, str], int | None]:
    """(swept key -> its values, fixed override -> value, number of jobs) of a sweep's command.

    The sweeper's params (an experiment's ``hydra.sweeper.params``) come first; a command-line override of
    the same key replaces them, as Hydra's basic sweeper does. An Optuna search has ``n_trials`` jobs.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in config.hydra.overrides.task]
    chosen: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        chosen[override.get_key_element().lstrip("+~")] = override
    axes = {k: list(o.sweep_string_iterator()) for k, o in chosen.items() if o.is_sweep_override()}
    fixed = {k: o.get_value_element_as_str() for k, o in chosen.items() if not o.is_sweep_override()}
    trials = OmegaConf.select(config, "hydra.sweeper.optuna_config.n_trials")
    if OmegaConf.select(config, "hydra.sweeper.optuna_config") is not None or trials is not None:
        return {k: [v] for k, v in search_space(config).items()}, fixed, int(trials) if trials is not None else None
    jobs = 1
    for values in axes.values():
        jobs *= len(values)
    return axes, fixed, jobs


def sweep_title(experiment: str, axes: dict[str, list[str]], fixed: dict[str, str]) -> str:
    """A parent run's name: the experiment, what it sweeps, and the groups its command fixed,
    e.g. ``demo: freeze.lr_scale=3,10,30 optim=adam,sgd seed=1,2,3 (model=minilm freeze=last)``."""
    swept = " ".join(f"{k}={','.join(v)}" for k, v in axes.items()) or "one job"
    shown = " ".join(f"{k}={v}" for k, v in fixed.items() if "." not in k and "/" not in k and k != "experiment")
    return f"{experiment}: {swept}" + (f" ({shown})" if shown else "")


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
    axes: list[str] = field(default_factory=list)  # the swept keys: a job's grid.<key> tags
    jobs: int | None = None  # how many jobs the sweep runs (None: not known in advance)

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


def record_failure(error: BaseException) -> None:
    """In a sweep, a job that failed before it had a run (a config error, an unreachable store) is still
    FAILED in the summary, and fails the command; without this it vanished from both."""
    info = SweepInfo.for_current_job()
    if info is not None and not (Path(info.outcome_dir) / f"{HydraConfig.get().job.num:05d}.json").exists():
        name = " ".join(HydraConfig.get().overrides.task) or HydraConfig.get().job.name
        Outcome(name, "FAILED", "", error=f"{type(error).__name__}: {error}").save()


# A claim from another host whose heartbeat is older than this is stale; the run beats every HEARTBEAT_S.
LEASE_S = 600.0
HEARTBEAT_S = 60.0
# Server stores: how long a new claim waits before it checks that it is the earliest.
CLAIM_SETTLE_S = 1.0


def stale(run, now: float | None = None) -> str | None:
    """Why a RUNNING run no longer holds its claim (dead process, lapsed lease), or None while it does."""
    tags = run.data.tags
    pid = int(tags.get("seqexp.pid", "0") or 0)
    host = tags.get("seqexp.host")
    if host == socket.gethostname():
        return f"process {pid} died while the run was RUNNING" if pid and not _pid_alive(pid) else None
    beat = tags.get("seqexp.heartbeat")
    try:
        age = (now or time.time()) - float(beat) if beat else None
    except ValueError:
        age = None
    if age is not None and age > LEASE_S:
        return f"no heartbeat from process {pid} on {host} for {age:.0f} s (lease {LEASE_S:.0f} s)"
    return None


def _runs_of(client, experiment: str, fp: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`seqexp.fingerprint` = '{fp}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)


@dataclass
class Standing:
    """What the store holds for a fingerprint at one look: its newest FINISHED run (``done``) and the
    RUNNING runs whose process lives (``live``, the earliest claim first)."""

    done: Any = None
    live: list = field(default_factory=list)


def standing(client, experiment: str, fp: str) -> Standing:
    """One search of the store for ``fp``; stale RUNNING runs (see ``stale``) are marked KILLED.

    Both answers come from the same search. A run ends FINISHED without the store's lock, so two
    searches could see it RUNNING in the first (not done) and FINISHED in the second (not live), and
    the job was trained again (seen in CI: three concurrent sweeps, a job trained twice).
    """
    found = Standing()
    for run in _runs_of(client, experiment, fp):
        status = run.info.status
        why = stale(run) if status == "RUNNING" else None
        if why is not None:
            log.warning("run %s (%s): %s: marking it KILLED", run.info.run_name, run.info.run_id, why)
            client.set_tag(run.info.run_id, "error", why)
            client.set_terminated(run.info.run_id, "KILLED")
        elif status == "RUNNING":
            found.live.append(run)
        elif status == "FINISHED" and found.done is None:  # newest first
            found.done = run
    found.live.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return found


def deliver_undelivered(client, cfg: DictConfig, fp: str, uri: str) -> None:
    """Writes of this fingerprint's ended runs that wait in ``seqexp-undelivered/<run id>.json`` go first.

    Without this, rerunning after an outage resumed the run from its checkpoint and left its
    learning curves in the file. A run whose file held its end is FINISHED afterwards (and
    its checkpoint removed), so the job is then skipped.
    """
    from seqexp.tracking_buffer import UNDELIVERED_DIR, replay

    for run in _runs_of(client, cfg.tracking.experiment, fp):
        saved = Path.cwd() / UNDELIVERED_DIR / f"{run.info.run_id}.json"
        if not saved.is_file() or (run.info.status == "RUNNING" and stale(run) is None):
            continue
        log.warning("run %s (%s) left writes in %s while the tracking server was down: delivering them first",
                    run.info.run_name, run.info.run_id, saved)
        try:
            count, done = replay(saved, uri)
        except Exception as exc:  # noqa: BLE001 -- the job goes on; the file stays for a later replay
            log.error("could not deliver %s (%s: %s); they are still waiting: python -m seqexp.tracking "
                      "replay %s", saved, type(exc).__name__, exc, saved)
            continue
        log.warning("delivered %d writes of run %s; the file is now %s", count, run.info.run_id, done)


@dataclass
class Claim:
    """What ``claim_job`` found: a FINISHED run (skip), a live claim by another process (skip), or
    nothing in the way, in which case the tracker's run is open (``resume``: the checkpoint it continues)."""

    done: Any = None
    holder: Any = None
    resume: Any = None


def claim_job(cfg: DictConfig, tracker, fp: str, name: str, axes: dict[str, str], tags: dict[str, str]) -> Claim:
    """Claim ``fp`` for this process and open its MLflow run, unless it is done or claimed by a live run."""
    from seqexp.training.checkpoints import resume_point

    uri, experiment = tracker.uri, cfg.tracking.experiment
    client = tracking.client(uri)
    token = uuid.uuid4().hex
    tags = {**tags, "seqexp.claim": token, "seqexp.heartbeat": f"{time.time():.0f}"}
    with tracking.store_lock(uri):  # sqlite: look-up and creation are one step for every process
        deliver_undelivered(client, cfg, fp, uri)
        seen = standing(client, experiment, fp)
        if seen.done is not None and not cfg.rerun:
            return Claim(done=seen.done)
        if seen.live:
            return Claim(holder=seen.live[0])
        resume = resume_point(cfg, client, fp) if not cfg.rerun else None
        tracker.start(cfg, name, axes, tags=tags, resume_run_id=resume.run_id if resume is not None else None)
        tracker.heartbeat(HEARTBEAT_S)
    if tracking.sqlite_path(uri) is not None:
        return Claim(resume=resume)
    # A server store has no lock: every claimant created (or reopened) a run; the earliest one wins.
    time.sleep(CLAIM_SETTLE_S)
    seen = standing(client, experiment, fp)
    winner = seen.live[0] if seen.live else None
    finished_meanwhile = seen.done is not None and not cfg.rerun  # an earlier claimant that already ended
    if (not finished_meanwhile and winner is not None and winner.info.run_id == tracker.run_id
            and winner.data.tags.get("seqexp.claim") == token):
        return Claim(resume=resume)
    lost = tracker.release()
    if resume is None:
        client.delete_run(lost)
    return Claim(done=seen.done) if finished_meanwhile else Claim(holder=winner)


def claimed_by(run) -> str:
    tags = run.data.tags
    return f"being trained by run {run.info.run_id} (pid {tags.get('seqexp.pid', '?')} on {tags.get('seqexp.host', '?')})"


def end_interrupted_sweep() -> None:
    """Ctrl-C or SIGTERM stopped a job: the sweep stops with it, and its parent run ends KILLED."""
    info = SweepInfo.for_current_job()
    if info is not None:
        tracking.client(info.uri).set_terminated(info.parent_run_id, "KILLED")


def job_tags(cfg: DictConfig, fp: str, overrides: list[str]) -> dict[str, str]:
    """Tags of a run; inside a sweep, also its parent, sweep id and grid coordinates."""
    tags = {identity.FINGERPRINT_TAG: fp, identity.FINGERPRINT_VERSION_TAG: str(identity.FINGERPRINT_VERSION),
            "seqexp.host": socket.gethostname(), "seqexp.pid": str(os.getpid()),
            "overrides": " ".join(overrides), "seqexp.tuned": ",".join(cfg.get("tuned") or [])}
    info = SweepInfo.for_current_job()
    if info is not None:
        tags.update({"mlflow.parentRunId": info.parent_run_id, "seqexp.sweep_id": info.sweep_id,
                     "seqexp.role": "job"})
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if key in info.axes:  # what the sweep varies, not what its command fixed (experiment=demo)
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
        client = tracking.client(uri, cache_dir=config.cache_dir)  # creates a fresh sqlite DB, once
        exp_id = tracking.experiment_id(client, config.tracking.experiment, uri)
        sweep_id = _sweep_id(config)
        with tracking.store_lock(uri):  # identical sweeps started together share one parent run
            parent = self._parent_run(client, config, exp_id, sweep_id, uri)
        # In the sweep folder, not /tmp: a launcher's jobs may run on other machines (SLURM), which see that
        # folder (submitit keeps its own files there) but not this machine's /tmp.
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        outcome_dir = Path(tempfile.mkdtemp(prefix=f".seqexp-outcomes-{sweep_id}-", dir=sweep_dir))
        from mlflow.entities import Param

        axes, fixed, jobs = sweep_grid(config)
        client.log_batch(parent, params=[Param(k, ",".join(v)[:6000]) for k, v in axes.items()], synchronous=True)
        client.set_tag(parent, "mlflow.runName", sweep_title(config.tracking.experiment, axes, fixed))
        self.info = SweepInfo(sweep_id, parent, uri, config.tracking.experiment, str(outcome_dir),
                              list(axes), jobs)
        os.environ[SWEEP_ENV] = json.dumps(asdict(self.info))
        self.started = time.monotonic()

    @staticmethod
    def _parent_run(client, config: DictConfig, exp_id: str, sweep_id: str, uri: str) -> str:
        found = client.search_runs([exp_id], filter_string=f"tags.`seqexp.sweep_id` = '{sweep_id}' "
                                   "and tags.`seqexp.role` = 'sweep'")
        if found:
            parent = found[0].info.run_id
            client.update_run(parent, status="RUNNING")
            log.info("resuming sweep %s (parent run %s)", sweep_id, parent)
        else:
            overrides = " ".join(str(o) for o in config.hydra.overrides.task)
            axes, fixed, _ = sweep_grid(config)
            run = client.create_run(exp_id, run_name=sweep_title(config.tracking.experiment, axes, fixed), tags={
                **tracking.context_tags(),
                "seqexp.role": "sweep", "seqexp.sweep_id": sweep_id, "overrides": overrides,
                "command": tracking.command_line(),
                "mlflow.source.git.commit": tracking.git_commit(),
            })
            parent = run.info.run_id
            log.info("sweep %s: parent run %s in %s", sweep_id, parent, uri)
        return parent

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        info = SweepInfo.for_current_job()
        if info is None:
            return
        self._job_started = time.monotonic()
        num = HydraConfig.get().job.num
        of = f" of {info.jobs}" if info.jobs else ""
        print(f"seqexp: job {num + 1}{of}: {' '.join(HydraConfig.get().overrides.task)}", flush=True)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        info = SweepInfo.for_current_job()
        if info is None or getattr(self, "_job_started", None) is None:
            return
        num = HydraConfig.get().job.num
        mine = Path(info.outcome_dir) / f"{num:05d}.json"
        status = json.loads(mine.read_text())["status"] if mine.is_file() else "FAILED"
        took = time.monotonic() - self._job_started
        (Path(info.outcome_dir) / f"{num:05d}.time").write_text(json.dumps({"s": took, "status": status}))
        print(f"seqexp: {progress_line(info, num, status, took)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        info = self.info
        outcome_dir = Path(info.outcome_dir)
        outcomes = [Outcome(**json.loads(p.read_text())) for p in sorted(outcome_dir.glob("*.json"))]
        shutil.rmtree(outcome_dir, ignore_errors=True)
        os.environ.pop(SWEEP_ENV, None)
        print(summary_table(outcomes, info), flush=True)
        failed = [o for o in outcomes if o.status in ("FAILED", "KILLED")]
        client = tracking.client(info.uri)
        try:
            summarise_parent(client, info, outcomes, config)
        except Exception as exc:  # noqa: BLE001 -- the sweep's outcome stands without its summary
            log.warning("could not write the sweep's summary into parent run %s: %s", info.parent_run_id, exc)
        client.set_terminated(info.parent_run_id, "FAILED" if failed else "FINISHED")
        if failed:
            print(f"seqexp: {len(failed)} of {len(outcomes)} jobs failed (recorded as FAILED in MLflow)",
                  file=sys.stderr, flush=True)
            sys.exit(1)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def progress_line(info: SweepInfo, num: int, status: str, took: float) -> str:
    """"job 5 of 12 FINISHED in 1 min 23 s; so far 4 finished, 0 failed, 1 skipped; about 9 min left"."""
    times = [json.loads(p.read_text()) for p in Path(info.outcome_dir).glob("*.time")]
    counts = {s: sum(t["status"] == s for t in times) for s in ("FINISHED", "FAILED", "SKIPPED", "KILLED")}
    trained = [t["s"] for t in times if t["status"] != "SKIPPED"]
    line = (f"job {num + 1}{f' of {info.jobs}' if info.jobs else ''} {status} in {_duration(took)}; so far "
            f"{counts['FINISHED']} finished, {counts['FAILED'] + counts['KILLED']} failed, "
            f"{counts['SKIPPED']} skipped")
    left = info.jobs - len(times) if info.jobs else None
    if left is not None and left > 0 and trained:
        line += f"; about {_duration(left * sum(trained) / len(trained))} left ({left} job{'s' if left != 1 else ''})"
    return line


def summarise_parent(client, info: SweepInfo, outcomes: list[Outcome], config: DictConfig) -> None:
    """The parent run as the sweep's summary: counts and best test F1 as metrics, the best run's id as a
    tag, and a description saying what was compared and how to see it in the UI."""
    from mlflow.entities import Metric, RunTag

    done = [o for o in outcomes if o.test_f1 is not None]
    best = max(done, key=lambda o: o.test_f1, default=None)
    now = int(time.time() * 1000)
    counts = {"jobs_finished": sum(o.status == "FINISHED" for o in outcomes),
              "jobs_failed": sum(o.status in ("FAILED", "KILLED") for o in outcomes),
              "jobs_skipped": sum(o.status == "SKIPPED" for o in outcomes)}
    metrics = [Metric(k, float(v), now, 0) for k, v in counts.items()]
    tags = {tracking.DESCRIPTION_TAG: sweep_description(info, outcomes, best, config)}
    if best is not None:
        metrics.append(Metric("best_test_f1", float(best.test_f1), now, 0))
        tags.update({"best_run_id": best.run_id, "best_run_name": best.name})
    client.log_batch(info.parent_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()],
                     synchronous=True)


def sweep_description(info: SweepInfo, outcomes: list[Outcome], best: Outcome | None, config: DictConfig) -> str:
    axes, fixed, _ = sweep_grid(config)
    grid = "; ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in axes.items()) or "a single configuration"
    tuned = ", ".join(f"`{k}`" for k in (config.get("tuned") or [])) or "nothing"
    lines = [f"**Sweep of experiment `{info.experiment}`** ({len(outcomes)} jobs): {grid}. "
             f"Tuned on dev: {tuned}; every other swept key is compared, seeds are repeats.", ""]
    if best is not None:
        lines.append(f"Best test F1: **{best.test_f1:.4f}**, run `{best.name}` (`{best.run_id}`, tag `best_run_id`).")
    lines += ["", "Compare the jobs (the child runs, nested under this run): `make ui` prints the URL of the saved "
              f"comparison (the shared view `{tracking.COMPARE_VIEW}`: parallel coordinates of `model`, `freeze`, "
              "`optim` against `test_f1`, and `test_f1` per run). By hand, 3 clicks: the **Chart** view (second "
              "icon above the runs), **Add chart → Parallel coordinates**, then pick the params `model`, `freeze`, "
              "`optim` and the metric `test_f1`.", "",
              "`make report` (`python -m seqexp.report`) attaches the full report (tables, plots, significance "
              "tests) to this run, under the artifacts `report/`."]
    return "\n".join(lines)


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
