"""Fault injection and how runs stop, in process: real Hydra config, real Lightning, real MLflow sqlite.

The subprocess versions (signals from outside, SIGKILL, faults inside a ``-m`` sweep) are in
tests/test_faults_e2e.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
import traceback
from pathlib import Path

import pytest
from mlflow import MlflowClient

from seqexp.errors import ConfigError
from tests.conftest import compose, tiny_overrides

# The mini corpus has 150 training sentences: 10 batches of 16, so 10 training steps per epoch.
STEPS_PER_EPOCH = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow sqlite store for the module (creating one costs seconds); each test has its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def experiment(request) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


def config(store: str, experiment: str, mini_conll: Path, **extra: str):
    overrides = tiny_overrides(**{"dataset.data_dir": str(mini_conll), "dataset.max_train_sentences": "null",
                                  "tracking.uri": store, "tracking.experiment": experiment,
                                  "trainer.num_threads": "1", **extra})
    return compose(overrides)


def the_run(store: str, experiment: str):
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


@pytest.mark.parametrize("override, key", [
    ("fault.kind=bogus", "`fault.kind`"),
    ("fault.kind=-inf", "`fault.kind`"),
    ("fault.step=-1", "`fault.step`"),
    ("fault.step=two", "`fault.step`"),
    ("trainer.max_time=5s", "`trainer.max_time`"),
])
def test_bad_fault_and_max_time_settings_name_the_key(override, key):
    from seqexp.config import validate

    cfg = compose(["model=tiny-bert", override])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    assert str(caught.value).startswith(key), caught.value


def test_fault_is_off_by_default_and_nan_inf_from_the_command_line_are_names():
    from seqexp.training.faults import kind_of

    assert compose([]).fault.kind is None
    # Hydra reads nan and inf as floats; they still name the faults.
    assert kind_of(compose(["fault.kind=nan"]).fault) == "nan"
    assert kind_of(compose(["fault.kind=inf"]).fault) == "inf"
    assert kind_of(compose(["fault.kind=error"]).fault) == "error"


@pytest.mark.parametrize("kind, freeze", [("nan", "last"), ("inf", "unfreeze")])
def test_non_finite_loss_ends_the_run_failed_with_the_reason(store, experiment, mini_conll, kind, freeze):
    # freeze=last trains on cached encoder features, unfreeze runs the encoder: both paths stop.
    from seqexp.models.tagger import NonFiniteLossError
    from seqexp.run import run

    cfg = config(store, experiment, mini_conll, **{"fault.kind": kind, "fault.step": "3", "freeze": freeze})
    with pytest.raises(NonFiniteLossError, match=rf"training loss is {kind} at epoch 0, step 3"):
        run(cfg)
    client, mlrun = the_run(store, experiment)
    assert mlrun.info.status == "FAILED"
    assert mlrun.data.tags["error"].startswith(f"NonFiniteLossError: training loss is {kind} at epoch 0, step 3")
    assert mlrun.data.tags["stop_reason"] == "error"
    assert mlrun.data.metrics["stopped_at_step"] == 3
    assert mlrun.data.params["fault.kind"] == kind
    assert "test_f1" not in mlrun.data.metrics


def test_error_fault_ends_the_run_failed_with_a_traceback(tmp_path, store, experiment, mini_conll):
    from seqexp.run import run

    cfg = config(store, experiment, mini_conll,
                 **{"fault.kind": "error", "fault.step": "12", "trainer.max_epochs": "2"})
    with pytest.raises(RuntimeError, match="injected fault at training step 12"):
        run(cfg)
    client, mlrun = the_run(store, experiment)
    assert mlrun.info.status == "FAILED"
    assert mlrun.data.tags["error"] == "RuntimeError: injected fault at training step 12 (fault.kind=error)"
    traceback = Path(client.download_artifacts(mlrun.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "Traceback" in traceback and "faults.py" in traceback
    # Epoch 0 finished before the fault: its dev metrics stay.
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "val_f1")] == [0]
    assert mlrun.data.metrics["stopped_at_step"] == 12 and mlrun.data.metrics["stopped_at_epoch"] == 1


def test_sigterm_mid_run_ends_it_killed_keeping_epoch_metrics(store, experiment, mini_conll):
    # The process SIGTERMs itself in epoch 1; Lightning's own handling would exit 0 after the batch.
    from seqexp.run import run
    from seqexp.training.stopping import Interrupted

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cfg = config(store, experiment, mini_conll, **{"fault.kind": "sigterm", "fault.step": str(STEPS_PER_EPOCH + 5),
                                          "trainer.max_epochs": "3", "freeze": "last"})
    with pytest.raises(Interrupted) as caught:
        run(cfg)
    assert caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
    client, mlrun = the_run(store, experiment)
    assert mlrun.info.status == "KILLED"
    assert mlrun.data.tags["error"] == "Interrupted: interrupted by SIGTERM"
    assert mlrun.data.tags["stop_reason"] == "interrupted"
    assert mlrun.data.metrics["stopped_at_step"] == STEPS_PER_EPOCH + 5
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "val_f1")] == [0]
    assert "test_f1" not in mlrun.data.metrics
    # Our handlers are gone again (Lightning also leaves SIGINT ignored after a KeyboardInterrupt).
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interruptible_turns_both_signals_into_interrupted(signum):
    from seqexp.training.stopping import Interrupted, interruptible

    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as caught:
        with interruptible():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises before this ends
    assert caught.value.signum == signum and caught.value.exit_code == 128 + signum
    assert signal.getsignal(signum) is before

    # Lightning catches the KeyboardInterrupt in fit() and calls sys.exit(1): that becomes Interrupted too.
    with pytest.raises(Interrupted) as caught:
        with interruptible():
            try:
                os.kill(os.getpid(), signum)
                time.sleep(5)
            except KeyboardInterrupt:
                os.kill(os.getpid(), signum)  # a second signal during clean-up is ignored
                raise SystemExit(1)
    assert caught.value.signum == signum

    # Without a signal, SystemExit is left alone.
    with pytest.raises(SystemExit), interruptible():
        raise SystemExit(3)


def test_a_signal_inside_an_uninterrupted_block_is_raised_when_the_block_ends():
    from seqexp.training.stopping import Interrupted, interruptible, uninterrupted

    done = []
    with pytest.raises(Interrupted) as caught, interruptible():
        with uninterrupted():
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the handler has run by now, and did not raise
                done.append("inner")
            done.append("outer")  # still inside the outermost block
        done.append("after")  # never: raised as the outermost block ended
    assert done == ["inner", "outer"] and caught.value.signum == signal.SIGTERM
    with uninterrupted():  # outside interruptible(): nothing to hold
        done.append("alone")
    assert done[-1] == "alone"


@pytest.mark.parametrize("inside", ["_commit_impl", "_fetchall_impl"])
def test_a_signal_during_a_tracking_write_lets_it_end_and_the_run_ends_killed_at_once(store, experiment, inside):
    """SIGTERM inside SQLAlchemy's commit (or a fetch) of a metric write: raised in the sqlite driver, it left a
    connection holding the database lock, and recording the run KILLED waited 20 s for it (measured)."""
    import sys
    import threading

    from seqexp.tracking import RunTracker, client, experiment_id
    from seqexp.training.stopping import Interrupted, interruptible

    tracker = RunTracker(store, experiment)
    sent: list[float] = []

    def signal_inside(frame, event, arg):  # a trace hook: the signal arrives inside the store's own code
        if event == "call" and frame.f_code.co_name == inside and not sent and threading.current_thread() is \
                threading.main_thread():
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as caught:
        with tracker, interruptible():
            tracker.client = client(tracker.uri)
            tracker.run_id = tracker.client.create_run(experiment_id(tracker.client, experiment, store)).info.run_id
            sys.settrace(signal_inside)
            try:
                for step in range(5):
                    tracker.log_metrics({"loss": float(step)}, step=step)
            finally:
                sys.settrace(None)
    ended = time.monotonic()
    assert sent and ended - sent[0] < 5, f"recording the run KILLED took {ended - sent[0]:.1f} s"
    assert not any("sqlalchemy" in f.filename for f in traceback.extract_tb(caught.value.__traceback__)), \
        "raised inside the store's code"
    _, run = the_run(store, experiment)
    assert run.info.status == "KILLED"
    # The write the signal came in is delivered once; none after it.
    assert [m.step for m in MlflowClient(store).get_metric_history(run.info.run_id, "loss")] == [0]


def test_max_time_stops_training_in_time_and_the_run_still_tests(store, experiment, mini_conll):
    from seqexp.run import run

    cfg = config(store, experiment, mini_conll, **{"trainer.max_epochs": "100000", "trainer.max_time": "00:00:00:03",
                                                   "trainer.early_stopping": "false", "freeze": "last"})
    started = time.monotonic()
    f1 = run(cfg)
    elapsed = time.monotonic() - started
    client, mlrun = the_run(store, experiment)
    assert mlrun.info.status == "FINISHED"
    metrics = mlrun.data.metrics
    history = client.get_metric_history(mlrun.info.run_id, "val_f1")
    assert f1 == max((m.value for m in history), default=None)  # run() returns the best dev F1, never test's
    for key in ("test_accuracy", "test_precision", "test_recall", "test_f1"):
        assert key in metrics
    assert mlrun.data.tags["stop_reason"] == "max_time"
    # Training stops at the first batch end past 3 s: well before 100,000 epochs, within a few seconds.
    assert 3.0 <= metrics["train_time_s"] < 10.0, metrics["train_time_s"]
    assert 0 < metrics["stopped_at_epoch"] < 100000
    assert elapsed < 120
