"""Buffer and retry for a run's MLflow writes: a tracking server outage never stops training.

* **Every write** of a ``RunTracker`` (params, tags, metrics, text artifacts, the final
  status) goes through an ``Outbox``. A write that fails because the server cannot be
  reached (connection refused or reset, timeout, HTTP 429/502/503/504) is kept in memory,
  in order; later writes queue behind it. The queue is retried on a later write, at most
  once every ``RETRY_EVERY_S`` seconds, so training goes on at full speed meanwhile. Any
  other MLflow error (an invalid value, say) is raised at once, as without the buffer.
* **Fail fast:** seqexp's own writes run with one HTTP retry and a 5 s timeout
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1``,
  ``MLFLOW_HTTP_REQUEST_TIMEOUT=5``), each only where the user has not set it, so one failed
  write costs seconds, not MLflow's default minutes of back-off.
* **End of the run:** the queue is flushed with retries for up to ``tracking.outage_wait_s``
  seconds (at most 10 s after Ctrl-C or SIGTERM). If the server comes back, the run ends
  FINISHED (or FAILED / KILLED) with every write at its original step and timestamp.
* **Still down:** the undelivered writes are saved to ``./seqexp-undelivered/<run id>.json``
  and the run fails with one line naming the URI, the count and the file (exit status 2).
  ``python -m seqexp.tracking replay FILE [--uri URI]`` delivers them later; rerunning the same
  command delivers them too, before the run resumes (``seqexp.sweep.deliver_undelivered``).
* **Replaying is idempotent:** a metric the run already holds at that step is not written again
  (a resumed run may have logged it anew, at another timestamp), a param already set is left
  alone, and the final status is not applied to a run that already ended FINISHED. A replay that
  ends the run FINISHED removes its resume checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from seqexp.errors import TrackingUnavailableError  # noqa: F401  (defined with every user error)
from seqexp.training.stopping import uninterrupted

log = logging.getLogger("seqexp.tracking")

# Seconds between two delivery attempts while the server is known to be down.
RETRY_EVERY_S = 5.0
# After Ctrl-C / SIGTERM the user is leaving: wait at most this long for the server.
KILLED_WAIT_S = 10.0
FAIL_FAST = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
_TRANSIENT_HTTP = {429, 502, 503, 504}
FORMAT = "seqexp-undelivered-writes/1"
UNDELIVERED_DIR = "seqexp-undelivered"


@contextmanager
def fail_fast() -> Iterator[None]:
    """MLflow HTTP settings that fail a call within seconds, for the duration of seqexp's own writes."""
    added = [key for key in FAIL_FAST if key not in os.environ]
    for key in added:
        os.environ[key] = FAIL_FAST[key]
    pool_log = logging.getLogger("urllib3.connectionpool")  # one "Retrying ..." warning per failed call
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        for key in added:
            os.environ.pop(key, None)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the server could not be reached (worth retrying), not that a write was wrong."""
    import requests

    for err in _chain(exc):
        if isinstance(err, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                            ConnectionError, TimeoutError)):
            return True
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in _TRANSIENT_HTTP:
            return True
    return False


def _reason(exc: BaseException) -> str:
    *_, last = _chain(exc)
    text = f"{type(last).__name__}: {last}"
    return text if len(text) <= 160 else text[:157] + "..."


# -- writes as plain JSON data ---------------------------------------------------------------
def metrics_op(metrics: dict[str, float], step: int) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {"op": "metrics", "metrics": [[k, float(v), now, int(step)] for k, v in metrics.items()]}


def params_op(params: dict[str, Any]) -> dict[str, Any]:
    return {"op": "params", "params": {k: str(v) for k, v in params.items()}}


def tags_op(tags: dict[str, Any]) -> dict[str, Any]:
    return {"op": "tags", "tags": {k: str(v)[:5000] for k, v in tags.items()}}


def text_op(text: str, artifact_file: str) -> dict[str, Any]:
    return {"op": "text", "text": text, "artifact_file": artifact_file}


def inputs_op(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """Dataset inputs (``mlflow.log_input``): ``[{"dataset": Dataset.to_dict(), "context": "training"}]``."""
    return {"op": "inputs", "datasets": datasets}


def terminate_op(status: str) -> dict[str, Any]:
    return {"op": "terminate", "status": status, "end_time": int(time.time() * 1000)}


def _log_inputs(client, run_id: str, datasets: list[dict[str, Any]]) -> None:
    """Dataset inputs. Jobs started together create the experiment's same dataset at once (a unique key in
    MLflow's database): the loser tries again and finds it. Inputs are a view of the run, never its outcome,
    so a write the store still refuses is logged, not raised; an outage is raised (the outbox keeps it)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [DatasetInput(Dataset(**d["dataset"]), tags=[InputTag("mlflow.data.context", d["context"])])
              for d in datasets]
    for attempt in range(4):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as exc:  # noqa: BLE001
            if unreachable(exc):
                raise
            if attempt == 3:
                log.warning("dataset inputs of run %s not logged: %s", run_id, _reason(exc))
                return
            time.sleep(0.2 * (attempt + 1))


def apply(client, run_id: str, op: dict[str, Any]) -> None:
    """Deliver one write. Re-delivering one is harmless (MLflow keeps one copy of equal values)."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    if kind == "metrics":
        items = [Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]]
        for i in range(0, len(items), 500):
            client.log_batch(run_id, metrics=items[i : i + 500], synchronous=True)
    elif kind == "params":
        items = [Param(k, v) for k, v in op["params"].items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100], synchronous=True)
    elif kind == "tags":
        items = [RunTag(k, v) for k, v in op["tags"].items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, tags=items[i : i + 100], synchronous=True)
    elif kind == "text":
        client.log_text(run_id, op["text"], op["artifact_file"])
    elif kind == "inputs":
        _log_inputs(client, run_id, op["datasets"])
    elif kind == "terminate":
        client.set_terminated(run_id, op["status"], end_time=op["end_time"])
    else:
        raise ValueError(f"unknown tracking write {kind!r}")


class Outbox:
    """The ordered writes of one run that the tracking server has not acknowledged yet."""

    def __init__(self, uri: str, experiment: str = ""):
        self.uri = uri
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None
        self.pending: list[dict[str, Any]] = []
        self.down_since: float | None = None  # monotonic time of the last failed attempt, while down
        self.late = 0  # writes delivered after waiting for the server, in the current outage
        self.checkpoint: str | None = None  # the run's resume checkpoint, saved with the writes

    def send(self, op: dict[str, Any]) -> None:
        """Queue ``op`` and deliver the queue, unless the server failed moments ago."""
        self.pending.append(op)
        if self.down_since is not None and time.monotonic() - self.down_since < RETRY_EVERY_S:
            return
        self.deliver()

    def deliver(self, errors: list[BaseException] | None = None) -> bool:
        """Deliver queued writes in order; True once none is left.

        Stops at the first write the server is unreachable for. Any other error drops that
        write and is raised, or, with ``errors`` given, appended there and delivery goes on.
        """
        with fail_fast():
            while self.pending:
                with uninterrupted():  # a signal lets the write end (and leave the queue): see stopping.py
                    try:
                        apply(self.client, self.run_id, self.pending[0])
                    except Exception as exc:
                        if not unreachable(exc):
                            self.pending.pop(0)
                            if errors is None:
                                raise
                            errors.append(exc)
                            continue
                        if self.down_since is None:
                            self.late = 0
                            log.warning("MLflow server %s unreachable (%s): keeping its writes in memory and "
                                        "retrying; training goes on", self.uri, _reason(exc))
                        self.down_since = time.monotonic()
                        return False
                    self.pending.pop(0)
                    self.late += self.down_since is not None
        if self.down_since is not None:
            log.warning("MLflow server %s is back: %d buffered writes delivered", self.uri, self.late)
            self.down_since = None
        return True

    def finish(self, wait_s: float) -> list[BaseException]:
        """Deliver everything, retrying for up to ``wait_s`` s; returns the writes' non-outage errors.

        Raises TrackingUnavailableError, after saving the undelivered writes, when the server
        stays unreachable.
        """
        errors: list[BaseException] = []
        deadline = time.monotonic() + wait_s
        pause, warned = 1.0, False
        try:
            while not self.deliver(errors):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not warned:
                    log.warning("waiting up to %.0f s (tracking.outage_wait_s) for MLflow server %s to "
                                "take %d pending writes", left, self.uri, len(self.pending))
                    warned = True
                time.sleep(min(pause, left))
                pause = min(2 * pause, 5.0)
        finally:
            saved = self.save() if self.pending else None
        if saved is not None:
            raise TrackingUnavailableError(
                f"`tracking.uri`: MLflow server {self.uri} still unreachable after {wait_s:g} s "
                f"(tracking.outage_wait_s): {len(self.pending)} writes to run {self.run_id} not delivered, "
                f"saved to {saved}; deliver them with: python -m seqexp.tracking replay {saved}"
            )
        return errors

    def save(self, path: Path | None = None) -> Path:
        """Write the pending writes to a JSON file (atomically) and return its path."""
        path = (path or Path.cwd() / UNDELIVERED_DIR / f"{self.run_id}.json").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "uri": self.uri, "experiment": self.experiment, "run_id": self.run_id,
                "checkpoint": self.checkpoint, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "writes": self.pending}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return path


def not_yet_delivered(client, run_id: str, writes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``writes`` less what the run already holds: metrics at a step it has for that key, params it
    has, and a final status once the run ended FINISHED. seqexp logs each metric once per step."""
    run = client.get_run(run_id)
    keys = {key for w in writes if w["op"] == "metrics" for key, *_ in w["metrics"]}
    have = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys if key in run.data.metrics}
    out = []
    for w in writes:
        if w["op"] == "metrics":
            w = {**w, "metrics": [m for m in w["metrics"] if m[3] not in have.get(m[0], ())]}
            if not w["metrics"]:
                continue
        elif w["op"] == "params":
            w = {**w, "params": {k: v for k, v in w["params"].items() if k not in run.data.params}}
            if not w["params"]:
                continue
        elif w["op"] == "terminate" and run.info.status == "FINISHED":
            continue
        out.append(w)
    return out


def _remove_checkpoint_of(client, run_id: str, checkpoint: str | None) -> None:
    """A run that ended FINISHED needs its resume checkpoint no more (as after an uninterrupted run)."""
    if not checkpoint or not Path(checkpoint).is_file() or client.get_run(run_id).info.status != "FINISHED":
        return
    from seqexp.training.checkpoints import read_saved_state, remove_checkpoint

    saved = read_saved_state(Path(checkpoint))
    if saved is not None and saved.run_id == run_id:
        remove_checkpoint(Path(checkpoint))
        log.info("run %s is FINISHED: removed its checkpoint %s", run_id, checkpoint)


def replay(path: Path, uri: str | None = None) -> tuple[int, Path]:
    """Deliver a saved file's writes; returns (count, where the file went once delivered)."""
    from seqexp.tracking import client, resolve_uri

    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a file of undelivered seqexp writes (format {data.get('format')!r})")
    box = Outbox(resolve_uri(uri or data["uri"]), data.get("experiment", ""))
    box.client, box.run_id, box.pending = client(box.uri), data["run_id"], list(data["writes"])
    box.checkpoint = data.get("checkpoint")
    total = len(box.pending)
    try:
        with fail_fast():
            box.pending = not_yet_delivered(box.client, box.run_id, box.pending)
            if len(box.pending) < total:
                log.info("%d of %d saved writes are already in run %s", total - len(box.pending), total, box.run_id)
            while box.pending:
                apply(box.client, box.run_id, box.pending[0])  # on any error the write stays in the file
                box.pending.pop(0)
    except Exception as exc:
        if not unreachable(exc):
            raise
        raise TrackingUnavailableError(
            f"MLflow server {box.uri} unreachable ({_reason(exc)}): {len(box.pending)} of {total} writes "
            f"to run {box.run_id} not delivered; they stay in {path}"
        ) from None
    finally:
        if box.pending and len(box.pending) < total:
            box.save(path)  # keep only what is still undelivered
    _remove_checkpoint_of(box.client, box.run_id, box.checkpoint)
    done = path.with_name(path.name + ".delivered")
    os.replace(path, done)
    return total, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqexp.tracking",
                                     description="Deliver MLflow writes saved while the tracking server was down.")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="deliver a seqexp-undelivered/<run id>.json file")
    rp.add_argument("file", type=Path)
    rp.add_argument("--uri", help="tracking URI to deliver to (default: the one saved in the file)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        count, done = replay(args.file, args.uri)
    except (OSError, ValueError, KeyError, TrackingUnavailableError) as exc:
        print(f"seqexp: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an MLflow error on one write, e.g. the run does not exist at --uri
        print(f"seqexp: error: {args.file}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"delivered {count} writes; the file is now {done}")
    return 0
