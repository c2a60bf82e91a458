"""Python child processes for the tests, forked from a warm interpreter instead of started cold.

A cold ``python -m seqexp.run`` spends most of a tiny test run importing torch, Lightning (with
torchmetrics and transformers) and MLflow. ``run`` and ``Popen`` here take the same arguments as
``subprocess.run``/``subprocess.Popen`` for ``[sys.executable, "-m" | "-c" | script, ...]`` and run
the command in a process forked from a *zygote*: an interpreter of this test session that imported
those libraries once and then waits on a Unix socket. The child is a real, separate process (its own
pid, exit status, signals, stdin/stdout/stderr, cwd and environment): it sets ``sys.argv``,
``sys.path``, ``os.environ`` and the working directory as a fresh interpreter would, runs the module or
code as ``__main__``, runs the interpreter's exit steps (threads, ``atexit``, flushing) and exits
with the same status ``python`` would give.

What a fork cannot redo is what the libraries read from the environment *when imported* (the Hugging
Face cache location, ``HF_HUB_OFFLINE``, thread counts, ``PYTHON*`` start-up options). A command whose
environment differs from a zygote's in any such variable (``IMPORT_TIME_ENV``) gets a zygote of its
own, started with that environment. Anything else (other interpreter options, another executable)
runs as a plain subprocess. Tests whose subject is interpreter start-up itself (the gc freeze, the
glibc malloc state, what a run imports, DDP, SLURM, Ray) start their processes with ``subprocess``.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Imported by the zygote before it forks: the slow imports of every seqexp process (measured on a tiny
# head-only run: 6.7 s in a child that had only torch, Lightning and MLflow, 2.3 s with all of these).
# Nothing of seqexp itself: its modules read the clock and the environment when imported, as in a cold process.
PRELOAD = ("torch", "lightning.pytorch", "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
           "mlflow.store.db_migrations", "alembic.command", "sqlalchemy", "hydra", "omegaconf", "optuna", "git",
           "boto3", "accelerate", "peft", "seqeval.metrics", "transformers.modeling_utils",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "transformers.models.bert.modeling_bert", "transformers.models.roberta.modeling_roberta",
           "transformers.models.albert.modeling_albert")
# Variables read when those libraries (or the interpreter) start: a child needs a zygote started with
# the same values. PYTHONPATH is not among them: the child rebuilds sys.path from its own.
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_",
                   "OPENBLAS_", "CUDA_", "PL_", "LIGHTNING_", "MALLOC_", "GLIBC_", "LD_", "PYTHON")
_NOT_IMPORT_TIME = ("PYTHONPATH",)

PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL


def _import_time_env(env: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items()
                        if k.startswith(IMPORT_TIME_ENV) and k not in _NOT_IMPORT_TIME))


# ---------------------------------------------------------------------------------------------------------
# The zygote (runs in its own interpreter: python -c "from tests.warm import serve; serve(path)")

def serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional extra that is not installed: its importers pay for it, as when cold
            pass
    base_path = [p for p in sys.path[1:] if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}  # child pid -> the client's connection
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return  # the test session ended (its end of our stdin closed)
        if listener in readable:
            conn, _ = listener.accept()
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(msg)
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in waiting.values():
                    other.close()
                conn.close()
                _child(request, fds, base_path)  # never returns
            for fd in fds:
                os.close(fd)
            conn.sendall(f"pid {pid}\n".encode())
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass  # the client is gone
                conn.close()


def _child(request: dict, fds: list[int], base_path: list[str]) -> None:
    import atexit as child_atexit
    import random
    import runpy
    import signal
    import traceback
    import types

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        if request["new_session"]:
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # a fresh interpreter seeds from the OS; a forked one would repeat its parent's stream
        kind, target, *rest = request["argv"]
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        first = os.getcwd() if kind == "-m" else "" if kind == "-c" else os.path.dirname(os.path.abspath(target))
        sys.path[:] = [first, *extra, *base_path]
        code = 0
        try:
            if kind == "-m":
                sys.argv = ["-m", *rest]
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            elif kind == "-c":
                sys.argv = ["-c", *rest]
                main = types.ModuleType("__main__")
                sys.modules["__main__"] = main
                exec(compile(target, "<string>", "exec"), main.__dict__)
            else:
                sys.argv = [target, *rest]
                runpy.run_path(target, run_name="__main__")
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException as exc:  # printed from the user's code on, as python does
            user_tb = exc.__traceback__.tb_next
            sys.excepthook(type(exc), exc.with_traceback(user_tb), user_tb)
            # an uncaught KeyboardInterrupt: python dies by SIGINT
            code = -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
        # The interpreter's own exit steps: join non-daemon threads, atexit callbacks, flush.
        threading._shutdown()
        child_atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if code < 0:  # as CPython does for an uncaught KeyboardInterrupt: die by the signal
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)


# ---------------------------------------------------------------------------------------------------------
# The test session's side

class _Zygote:
    def __init__(self, env: dict):
        self.folder = tempfile.mkdtemp(prefix="seqexp-warm-")
        self.path = os.path.join(self.folder, "socket")
        repo = str(Path(__file__).resolve().parents[1])
        zenv = {**env, "PYTHONPATH": os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-c", f"from tests.warm import serve; serve({self.path!r})"],
                                     stdin=PIPE, stdout=PIPE, env=zenv, cwd=repo)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the warm interpreter did not start (exit {self.proc.wait()})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)


_zygotes: dict[tuple, _Zygote] = {}
_lock = threading.Lock()


def _zygote(env: dict) -> _Zygote:
    key = _import_time_env(env)
    with _lock:
        if key not in _zygotes or _zygotes[key].proc.poll() is not None:
            _zygotes[key] = _Zygote(env)
        return _zygotes[key]


@atexit.register
def _close_all() -> None:
    for z in _zygotes.values():
        z.close()
    _zygotes.clear()


def _warmable(args) -> bool:
    args = [str(a) for a in args]
    return (len(args) >= 2 and os.path.realpath(args[0]) == os.path.realpath(sys.executable)
            and (args[1] in ("-m", "-c") and len(args) >= 3 or not args[1].startswith("-")))


def _fd(stream, default: int, stdout_fd: int | None = None) -> tuple[int, object]:
    """(the file descriptor to hand the child, what to keep here): our own end of a pipe, or None."""
    if stream is None:
        return default, None
    if stream == PIPE:
        read, write = os.pipe()
        return (read, write) if default == 0 else (write, read)
    if stream == DEVNULL:
        return os.open(os.devnull, os.O_RDWR), "close"
    if stream == STDOUT:
        return stdout_fd, None
    return (stream if isinstance(stream, int) else stream.fileno()), None


def Popen(args, **kw):
    """``subprocess.Popen`` for ``[sys.executable, ...]``, forked from a warm zygote (see the module);
    anything else starts as usual."""
    if set(kw) - {"cwd", "env", "stdin", "stdout", "stderr", "text", "start_new_session"} or not _warmable(args):
        return subprocess.Popen(args, **kw)
    return _Forked(args, **kw)


class _Forked:
    """A child of a zygote, with the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
                 start_new_session=False):
        self.args = [str(a) for a in args]
        self.returncode = None
        env = dict(os.environ if env is None else env)
        opened = []
        in_fd, self._in = _fd(stdin, 0)
        out_fd, self._out = _fd(stdout, 1)
        err_fd, self._err = _fd(stderr, 2, stdout_fd=out_fd)
        zygote = _zygote(env)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(zygote.path)
        request = {"argv": self.args[1:], "env": env, "cwd": str(Path(cwd or os.getcwd()).resolve()),
                   "new_session": bool(start_new_session)}
        socket.send_fds(self._sock, [json.dumps(request).encode()], [in_fd, out_fd, err_fd])
        for fd, mine in ((in_fd, self._in), (out_fd, self._out), (err_fd, self._err)):
            if mine is not None and fd not in opened:  # our copy of the child's end of a pipe or of devnull
                opened.append(fd)
                os.close(fd)
        self._buffer = b""
        self.pid = int(self._line().split()[1])
        mode = "r" if text else "rb"
        self.stdin = os.fdopen(self._in, "w" if text else "wb") if isinstance(self._in, int) else None
        self.stdout = os.fdopen(self._out, mode) if isinstance(self._out, int) else None
        self.stderr = os.fdopen(self._err, mode) if isinstance(self._err, int) else None

    def _line(self, timeout: float | None = None) -> str | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._sock], [], [], left)[0]:
                return None
            chunk = self._sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"the warm interpreter died while running {self.args}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self):
        if self.returncode is None:
            line = self._line(timeout=0)
            if line is not None:
                self.returncode = int(line.split()[1])
                self._sock.close()
        return self.returncode

    def wait(self, timeout: float | None = None):
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = int(line.split()[1])
            self._sock.close()
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):
        results: dict[str, bytes | str] = {}

        def drain(name, stream):
            results[name] = stream.read()

        readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
                   for n, s in (("out", self.stdout), ("err", self.stderr)) if s is not None]
        for r in readers:
            r.start()
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        self.wait(timeout)
        for r in readers:
            r.join()
        return results.get("out"), results.get("err")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None:
                stream.close()
        self.wait()


def run(args, *, cwd=None, env=None, capture_output=False, stdout=None, stderr=None, text=False,
        timeout: float | None = None, check=False, input=None, **unsupported):
    """``subprocess.run`` for ``[sys.executable, ...]`` through a warm zygote; anything else runs as usual."""
    if unsupported or not _warmable(args):
        return subprocess.run(args, cwd=cwd, env=env, capture_output=capture_output, stdout=stdout,
                              stderr=stderr, text=text, timeout=timeout, check=check, input=input, **unsupported)
    if capture_output:
        stdout = stderr = PIPE
    # Captured output goes through files (no pipe can fill up while we wait).
    files = {name: tempfile.TemporaryFile() for name, s in (("out", stdout), ("err", stderr)) if s == PIPE}
    proc = _Forked(args, cwd=cwd, env=env, stdin=PIPE if input is not None else None,
                 stdout=files.get("out", stdout), stderr=files.get("err", stderr), text=text)
    try:
        proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise

    def read(name):
        if name not in files:
            return None
        files[name].seek(0)
        data = files[name].read()
        files[name].close()
        return data.decode(errors="replace") if text else data

    done = subprocess.CompletedProcess(proc.args, proc.returncode, read("out"), read("err"))
    if check:
        done.check_returncode()
    return done
