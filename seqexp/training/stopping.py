"""How a run stops: Ctrl-C and SIGTERM end it KILLED; where and why training stopped is logged.

Lightning 2.6, left alone, treats the two signals differently: Ctrl-C
(KeyboardInterrupt) is caught in ``trainer.fit``/``test``, which calls the
callbacks' ``on_exception`` and then ``sys.exit(1)``; SIGTERM only sets a flag
and raises ``SIGTERMException`` (a ``SystemExit`` with exit status 0, Lightning
issue #19916) after the current batch, and a SIGTERM outside ``fit`` kills the
process before MLflow hears of it. :func:`interruptible` makes both one path for the whole run: the
first SIGINT or SIGTERM raises :class:`Interrupted` (a ``KeyboardInterrupt``)
at once, whatever the run is doing (except inside an :func:`uninterrupted` block, a
tracking store transaction or an atomic file write, which it lets end first), so the MLflow run ends KILLED with the
metrics logged so far, and the command exits ``128 + signal`` (130, 143).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger("seqexp")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (Ctrl-C or SIGTERM)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Guard:
    signum: int | None = None
    held = 0  # depth of uninterrupted() blocks running now
    pending = False  # a signal came inside one: raise it when the outermost ends

    def handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal while the run records its end: let it finish
            log.warning("%s received again; still recording the interrupted run", signal.Signals(signum).name)
            return
        self.signum = signum
        if self.held:
            self.pending = True
            return
        raise Interrupted(signum)


_guards: list[_Guard] = []  # the guard of the interruptible() block running now (main thread), innermost last


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block that a signal must not cut in half: a SIGINT or SIGTERM that arrives inside it raises
    :class:`Interrupted` when it ends, not at once.

    For the tracking store's transactions: an exception raised inside the sqlite driver mid-commit or
    mid-fetch left a connection holding the database lock (kept alive by the traceback), and recording
    the run KILLED then waited 20 s for that lock on every attempt (a sweep's SIGTERM took 91 s once).
    For atomic file writes (``seqexp.disk.guarded_write``): see there. Outside :func:`interruptible`,
    or off the main thread, it changes nothing."""
    guard = _guards[-1] if _guards and threading.current_thread() is threading.main_thread() else None
    if guard is None:
        yield
        return
    guard.held += 1
    try:
        yield
    finally:
        guard.held -= 1
        if not guard.held and guard.pending:
            guard.pending = False
            raise Interrupted(guard.signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """For the duration of a run, SIGINT and SIGTERM raise :class:`Interrupted`.

    Lightning turns the KeyboardInterrupt into ``sys.exit(1)`` inside ``fit``/``test``;
    leaving this block, that exit becomes :class:`Interrupted` again, naming the signal.
    Signal handlers can only be set in the main thread; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _Guard()
    previous = {s: signal.signal(s, guard.handle) for s in SIGNALS}
    _guards.append(guard)
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        if guard.signum is None or isinstance(exc, Interrupted):
            raise
        raise Interrupted(guard.signum) from exc
    finally:
        _guards.remove(guard)
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(s, handler)


def stop_reason(trainer) -> str:
    """Why ``trainer.fit`` returned: ``max_time``, ``max_steps``, ``early_stopping`` or ``max_epochs``."""
    from lightning.pytorch.callbacks import Timer

    for callback in trainer.callbacks:
        if isinstance(callback, Timer):
            remaining = callback.time_remaining()
            if remaining is not None and remaining <= 0:
                return "max_time"
    if 0 <= trainer.max_steps <= trainer.global_step:
        return "max_steps"
    from seqexp.training.selection import early_stopped

    if early_stopped(trainer):
        return "early_stopping"
    return "max_epochs"


@contextlib.contextmanager
def recorded_stop(trainer, tracker) -> Iterator[None]:
    """Around ``trainer.fit``: log ``stopped_at_step``/``stopped_at_epoch`` and a ``stop_reason`` tag.

    ``stop_reason`` is ``max_epochs``, ``max_steps``, ``max_time`` or ``early_stopping`` after a normal end,
    ``interrupted`` after Ctrl-C/SIGTERM and ``error`` after an exception (NaN loss included).
    """
    def record(reason: str) -> None:
        tracker.log_metrics({"stopped_at_step": trainer.global_step, "stopped_at_epoch": trainer.current_epoch},
                            step=0)  # one value per run (a bar per run in MLflow's charts)
        tracker.set_tags({"stop_reason": reason})

    try:
        yield
    except BaseException as exc:
        try:
            record("interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "error")
        except Exception as log_error:  # the original error is what the user needs to see
            log.warning("could not record where training stopped: %s", log_error)
        raise
    reason = stop_reason(trainer)
    record(reason)
    if reason == "max_time":
        log.info("training stopped at trainer.max_time: epoch %d, step %d", trainer.current_epoch, trainer.global_step)
