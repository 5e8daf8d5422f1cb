"""A wall-clock cap on a stretch of the harness, enforced from inside the job's process.

A candidate whose constructor or forward never returns would otherwise hold a
trainer slot until the pool's wall-clock deadline kills the process. Here a
real-time interval timer (SIGALRM) raises `DeadlineExceeded` in the main
thread at the cap, and again every `repeat_s` after, so code that swallows the
first one gets another. That ends Python loops (the usual case) with a clean
`timeout` result; a single long native call, or code that keeps swallowing,
is still ended by the pool's deadline, which is the wall that always holds.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agentnas.trainer_daemon.job import JobFailed

__all__ = ["DeadlineExceeded", "wall_deadline"]


class DeadlineExceeded(JobFailed):
    """The wall-clock cap of a job ran out."""


@contextmanager
def wall_deadline(seconds: float | None, reason: str, repeat_s: float = 1.0) -> Iterator[None]:
    """Raise DeadlineExceeded("timeout", reason) in the block after `seconds` of wall-clock time.

    No-op with `seconds` None, off the main thread (signals go to the main thread only) or without
    setitimer. An interval timer already running (pytest-timeout's, say) is paused and re-armed
    with what was left of it.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return
    armed = [True]

    def expire(signum: int, frame: object) -> None:
        if armed[0]:
            raise DeadlineExceeded("timeout", reason)

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3), repeat_s)
    try:
        yield
    finally:
        _disarm(armed)
        signal.signal(signal.SIGALRM, previous)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - started), 1e-3), old_interval)


def _disarm(armed: list[bool]) -> None:
    """Stop the timer; an expiry that lands in here (the block ended at the cap) is dropped."""
    while True:
        try:
            armed[0] = False  # from here on a late signal does nothing
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        except DeadlineExceeded:
            continue
