"""``python -m seqexp.ui``: the MLflow UI over a seqexp store, opened on the runs table (``make ui``).

MLflow 3's UI opens an experiment in its GenAI view (traces, tokens, cost) unless the URL asks for
the model-training one (``?workflowType=machine_learning``; the choice is then remembered by the
browser). So this prints, for each experiment, the URL that lands on its runs table, marks every
experiment with MLflow's own experiment kind (``mlflow.experimentKind=custom_model_development``) and
gives it a description, then starts ``mlflow ui`` on 127.0.0.1. A server URI (``http://...``) is not
started, only its URLs are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Mapping

from seqexp import tracking
from seqexp.server import free_port, mlflow_env, wait_healthy

# Headless Chromium as root in a sandbox without a network (the browser tests, experiments/screenshots.py):
# no sandboxing, and none of Chromium's own connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def landing_urls(uri: str, base: str, only: str | None = None) -> list[tuple[str, str, str]]:
    """(experiment name, URL of its runs table, URL of its saved comparison) for each experiment with
    runs (or only ``only``)."""
    client = tracking.client(uri)
    out = []
    for exp in client.search_experiments():
        if (only and exp.name != only) or (not only and not client.search_runs([exp.experiment_id], max_results=1)):
            continue
        tracking.describe_experiment(client, exp.experiment_id)
        out.append((exp.name, tracking.ui_url(base, exp.experiment_id),
                    tracking.ui_url(base, exp.experiment_id, compare=True)))
    return out


@contextlib.contextmanager
def serve(uri: str, log: Path, experiment: str | None = None, env: Mapping[str, str] | None = None,
          port: int | None = None, timeout_s: float = 180) -> Iterator[dict[str, str]]:
    """``python -m seqexp.ui`` on ``port`` (default: a free one) of 127.0.0.1, in its own process group
    (stopped on exit), once it answers. Yields ``base`` and the first experiment's ``runs table`` and
    ``comparison`` URLs, and ``pgid``, the UI's process group."""
    port = port or free_port()
    with open(log, "w") as out:
        ui = subprocess.Popen([sys.executable, "-m", "seqexp.ui", "--uri", uri, "--port", str(port),
                               *(["--experiment", experiment] if experiment else [])],
                              env=dict(env) if env is not None else None, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)  # mlflow ui and its workers: one process group to stop
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, ui, log, timeout_s)
            urls = {"base": base, "pgid": str(ui.pid)}
            for key in ("runs table", "comparison"):
                found = re.search(rf"{key}:\s+open (\S+)", log.read_text())
                if found is not None:
                    urls[key] = found.group(1)
            yield urls
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seqexp.ui", description=__doc__.splitlines()[0])
    p.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"),
                   help="the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    p.add_argument("--experiment", default=None, help="print only this experiment's URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (default 1: one user's local UI; MLflow's own default is 4)")
    p.add_argument("--print-only", action="store_true", help="print the URLs, do not start the UI")
    args = p.parse_args(argv)
    uri = tracking.resolve_uri(args.uri)
    server = uri.startswith(("http://", "https://"))
    base = uri if server else f"http://{args.host}:{args.port}"
    try:
        tracking.check_reachable(uri)
        urls = landing_urls(uri, base, args.experiment)
    except tracking.ConfigError as exc:
        print(f"seqexp.ui: error: {exc}", file=sys.stderr)
        return 2
    if not urls:
        print(f"seqexp.ui: no experiment with runs in {uri}" + (f" named {args.experiment!r}" if args.experiment
                                                                  else "") + f"; the UI is at {base}", flush=True)
    for name, url, compare in urls:
        print(f"experiment {name}:\n  runs table:  open {url}\n  comparison:  open {compare}", flush=True)
    if server or args.print_only:
        return 0
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port),
           "--workers", str(args.workers)]
    os.execve(sys.executable, cmd, mlflow_env())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
