"""``python -m seqexp.server``: an MLflow tracking server for many writers, backed by PostgreSQL.

    make server                                   # or: python -m seqexp.server --dir .seqexp-server --port 5000
    python -m seqexp.run -m tracking.uri=http://HOST:5000 ...

sqlite (``tracking.uri=sqlite:///mlruns.db``) stays the embedded default for one machine. Jobs on many machines
(SLURM, Ray) or many processes at once log through an MLflow server instead:

- **Backend store:** PostgreSQL, when its server programs are installed (Debian: ``apt-get install postgresql``).
  A database cluster is made in ``<dir>/postgres`` on first use (``initdb``, password authentication, the
  password in ``<dir>/pgpass``, mode 0600) and started on 127.0.0.1 for the time the MLflow server runs.
  Without PostgreSQL (or with ``--backend sqlite``) the store is ``<dir>/mlflow.db``.
- **Artifacts:** one root for every writer, ``<dir>/artifacts``: the server stores what clients upload over
  HTTP (``--artifacts-destination``), so writers need no shared folder for them.
- **Where:** ``--host 127.0.0.1`` (the default) serves this machine only; ``--host 0.0.0.0`` serves the
  cluster's nodes (MLflow's server has no authentication: do that only on a trusted network).

Run as root (CI), PostgreSQL's programs run as the ``postgres`` user, which owns ``<dir>/postgres``.
The tests (tests/cluster) and ``.ci/run`` start servers through :class:`Postgres` and :func:`mlflow_server`.
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DB_USER = "seqexp"
DB_NAME = "mlflow"


class ServerError(RuntimeError):
    """A server that could not be started; the message says why and where its log is."""


WORKER_HEALTHCHECK_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Folder of PostgreSQL's server programs (initdb, postgres), newest version first, or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links them into /usr/local/bin from its own folder
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A PostgreSQL cluster in ``folder`` serving one database on 127.0.0.1:``port``."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder = Path(folder).resolve()
        self.data = self.folder / "postgres"
        self.pgpass = self.folder / "pgpass"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        bindir = postgres_bindir()
        if bindir is None:
            raise ServerError("PostgreSQL's server programs (initdb, postgres) are not installed; "
                              "apt-get install postgresql (Debian), or use --backend sqlite")
        self.bindir = bindir

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI MLflow's server opens (the password is read from ``PGPASSFILE``)."""
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSFILE": str(self.pgpass)}

    def _as_owner(self, *cmd: str) -> list[str]:
        """PostgreSQL refuses to run as root: there, its programs run as the ``postgres`` user."""
        if os.geteuid() != 0:
            return list(cmd)
        if shutil.which("runuser") is None:
            raise ServerError("running as root needs runuser (util-linux) to start PostgreSQL as `postgres`")
        return ["runuser", "-u", "postgres", "--", *cmd]

    def _init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        pwfile = self.folder / "initdb.pw"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            self.data.mkdir(mode=0o700)
            shutil.chown(self.data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        try:
            done = subprocess.run(self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data), "-U", DB_USER,
                                                 "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync",
                                                 "--encoding=UTF8", "--locale=C"),
                                  capture_output=True, text=True)
        finally:
            pwfile.unlink()
        if done.returncode != 0:
            raise ServerError(f"initdb {self.data} failed: {done.stderr.strip()[-2000:]}")
        self.pgpass.write_text(f"127.0.0.1:*:*:{DB_USER}:{password}\n")
        self.pgpass.chmod(0o600)

    def start(self, timeout: float = 60) -> "Postgres":
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> "Postgres":
        if not (self.data / "PG_VERSION").exists():
            self._init()
        log = open(self.folder / "postgres.log", "a")  # noqa: SIM115 -- the server's log, kept open while it runs
        # The socket folder is the data folder (owned by the server's user); clients use TCP on 127.0.0.1.
        self.proc = subprocess.Popen(
            self._as_owner(str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                           "-p", str(self.port), "-k", str(self.data), "-c", "max_connections=200",
                           "-c", "fsync=on"),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"postgres exited ({self.proc.returncode}); see {self.folder / 'postgres.log'}:\n"
                                  f"{(self.folder / 'postgres.log').read_text()[-2000:]}")
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                break
            time.sleep(0.3)
        else:
            raise ServerError(f"postgres did not accept connections on 127.0.0.1:{self.port} within {timeout:.0f} s")
        self._create_database()
        return self

    def _create_database(self) -> None:
        psql = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", "postgres",
                "-tAc"]
        exists = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"],
                                capture_output=True, text=True, env=self.env)
        if exists.returncode != 0:
            raise ServerError(f"psql on 127.0.0.1:{self.port} failed: {exists.stderr.strip()}")
        if exists.stdout.strip() != "1":
            made = subprocess.run([*psql, f"CREATE DATABASE {DB_NAME}"], capture_output=True, text=True, env=self.env)
            if made.returncode != 0:
                raise ServerError(f"CREATE DATABASE {DB_NAME} failed: {made.stderr.strip()}")

    def stop(self) -> None:
        """A "fast" shutdown (SIGINT: sessions end, a checkpoint is written). The signal goes to the server's
        process group: as root, ``runuser`` stands between us and the postmaster and does not pass SIGINT on."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"mlflow server exited ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer on {url} within {timeout:.0f} s; see {log}")


def mlflow_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for an ``mlflow server``/``mlflow ui`` that seqexp starts: ``env`` (default: this
    process's) with MLflow's job execution off unless the user set ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``.
    Those jobs serve MLflow's GenAI features (scorers, prompt optimisation), which no seqexp run uses, and
    with them on each server start also starts a pool of huey worker processes, each importing MLflow."""
    env = dict(os.environ if env is None else env)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def mlflow_server(folder: Path, backend_uri: str, port: int | None = None, host: str = "127.0.0.1",
                  workers: int = 2, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on ``backend_uri`` with the artifact root ``<folder>/artifacts``; wait until
    it answers. Returns the process (its own session: stop it with :func:`stop`) and its URL."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = folder / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--backend-store-uri", backend_uri, "--artifacts-destination", str(folder / "artifacts"),
           "--workers", str(workers),
           # uvicorn kills a worker that misses a health ping for 5 s; one still importing MLflow on a loaded
           # machine misses it, and is killed and restarted until the server gives up (seen in CI: no answer
           # in 120 s, a worker "died" after 90 s).
           "--uvicorn-opts", f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}"]
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=mlflow_env(env),
                                start_new_session=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    try:
        wait_healthy(url, proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session (its workers with it)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqexp.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".seqexp-server"),
                        help="where the database, the artifacts and the logs live (default .seqexp-server)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend", choices=("auto", "postgres", "sqlite"), default="auto",
                        help="auto (default): PostgreSQL where it is installed, else sqlite")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    backend = args.backend
    if backend == "auto":
        backend = "postgres" if postgres_bindir() is not None else "sqlite"
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops both servers as Ctrl-C does, even while starting
    pg = proc = None
    try:
        env = None
        if backend == "postgres":
            pg = Postgres(args.dir).start()
            uri, env = pg.uri, pg.env
        else:
            args.dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(args.dir / 'mlflow.db').resolve()}"
        proc, url = mlflow_server(args.dir, uri, port=args.port, host=args.host, workers=args.workers, env=env)
        where = f"PostgreSQL on 127.0.0.1:{pg.port} ({pg.data})" if pg is not None else uri
        print(f"MLflow server on {url}: backend {where}, artifacts {(args.dir / 'artifacts').resolve()}\n"
              f"log to it with tracking.uri={url}; Ctrl-C stops it", flush=True)
        proc.wait()
    except ServerError as exc:
        print(f"seqexp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            stop(proc)
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
