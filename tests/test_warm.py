"""tests/warm.py: a child forked from the warm interpreter behaves as a cold ``python`` would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import warm

CASES = {
    "exit code": ["-c", "import sys; sys.exit(3)"],
    "exit message": ["-c", "import sys; sys.exit('no such corpus')"],
    "exception": ["-c", "def f():\n    raise ValueError('bad line 7')\nf()"],
    "argv, cwd, env, path": ["-c", "import os, sys; print(sys.argv, os.getcwd(), os.environ.get('SEQEXP_X'), "
                             "os.environ.get('PYTHONPATH'), sys.path[0], '/opt/x' in sys.path)", "a", "b"],
    "module": ["-m", "json.tool", "--sort-keys"],
    "main module": ["-c", "import sys; print(__name__, sys.modules['__main__'].__name__)"],
    "atexit and threads": ["-c", "import atexit, threading, time\natexit.register(lambda: print('atexit ran'))\n"
                           "threading.Thread(target=lambda: (time.sleep(0.3), print('thread ended'))).start()"],
    "keyboard interrupt": ["-c", "raise KeyboardInterrupt"],
}


@pytest.mark.parametrize("name", CASES)
def test_a_warm_child_exits_prints_and_sees_what_a_cold_one_does(name, tmp_path):
    argv = [sys.executable, *CASES[name]]
    env = {**os.environ, "SEQEXP_X": "42", "PYTHONPATH": "/opt/x"}
    kw = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, input='{"b": 1, "a": 2}')
    cold, hot = subprocess.run(argv, **kw), warm.run(argv, **kw)
    assert (hot.returncode, hot.stdout) == (cold.returncode, cold.stdout)
    # Tracebacks start in the user's code, as python's do (not in tests/warm.py).
    assert hot.stderr.splitlines()[-1:] == cold.stderr.splitlines()[-1:] and "warm.py" not in hot.stderr


def test_a_killed_child_reports_the_signal_and_popen_waits_polls_and_times_out():
    proc = warm.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                      stdout=warm.PIPE, text=True)
    assert proc.stdout.readline() == "up\n" and proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    os.kill(proc.pid, signal.SIGKILL)  # a real process of its own: the tests kill children by pid
    assert proc.wait(timeout=30) == -signal.SIGKILL
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert time.monotonic() - started < 30


def test_a_variable_read_at_import_gets_a_zygote_started_with_it(hub_cache):
    """huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when imported (Lightning imports it): a child whose
    values differ from the session's must still see its own, as the hub-cache tests need. (hub_cache's zygote is
    the one test_hub_cache uses.)"""
    probe = ("import huggingface_hub.constants as c, sys; "
             "print(c.HF_HUB_OFFLINE, c.HF_HUB_CACHE, 'lightning.pytorch' in sys.modules)")
    argv = [sys.executable, "-c", probe]
    hub = warm.run(argv, env={**os.environ, **hub_cache}, capture_output=True, text=True).stdout.split()
    assert hub == ["True", hub_cache["HF_HUB_CACHE"], "True"]  # warm: Lightning was imported before the fork
    session = warm.run(argv, capture_output=True, text=True).stdout.split()
    assert session[1] != hub_cache["HF_HUB_CACHE"]
