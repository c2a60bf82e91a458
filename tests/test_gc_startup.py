"""The command's collector tuning (seqexp/gc_startup.py), in fresh interpreters: pytest's own stays as it is."""
import subprocess
import sys

import pytest


def run_python(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_freeze_pins_what_was_imported_and_still_collects_what_jobs_create():
    run_python("""
import gc, weakref
from seqexp import gc_startup
gc_startup.defer()
assert not gc.isenabled()
import json, email.parser  # stand-ins for the heavy imports
gc_startup.freeze_imports()
assert gc.isenabled() and gc.get_freeze_count() > 1000
class Job: pass
job = Job(); job.me = job          # a cycle, as a finished job's trainer and model are
ref = weakref.ref(job); del job
gc.collect()
assert ref() is None, "objects created after the freeze must still be collected"
""")


def test_without_defer_nothing_changes():
    run_python("""
import gc
from seqexp import gc_startup
gc_startup.freeze_imports()
assert gc.isenabled() and gc.get_freeze_count() == 0
""")


@pytest.mark.parametrize("flag", ["", "gc.disable()"])
def test_defer_leaves_a_collector_the_process_had_turned_off_alone(flag):
    run_python(f"""
import gc
{flag}
from seqexp import gc_startup
was = gc.isenabled()
gc_startup.defer()
gc_startup.freeze_imports()
assert gc.isenabled() == was
""")
