"""wall_deadline: a wall-clock cap raised inside the job's process, leaving other timers as they were."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from agentnas.trainer_daemon.deadline import DeadlineExceeded, wall_deadline


def test_a_loop_past_the_cap_is_interrupted():
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        with wall_deadline(0.2, "too slow"):
            while True:
                pass
    assert caught.value.status == "timeout" and caught.value.reason == "too slow"
    assert 0.15 < time.monotonic() - started < 2


def test_a_swallowed_expiry_comes_again():
    swallowed = 0
    with pytest.raises(DeadlineExceeded):
        with wall_deadline(0.1, "too slow", repeat_s=0.1):
            while True:
                try:
                    while True:
                        pass
                except DeadlineExceeded:
                    swallowed += 1
                    if swallowed == 1:
                        continue  # swallow the first one only
                    raise
    assert swallowed == 2


def test_work_within_the_cap_is_untouched_and_the_timer_is_gone():
    previous, before = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0]
    with wall_deadline(5.0, "too slow"):
        total = sum(range(1000))
    assert total == 499500
    after = signal.getitimer(signal.ITIMER_REAL)[0]  # 0, or what is left of pytest-timeout's own timer
    assert after == 0 if before == 0 else 0 < after <= before
    assert signal.getsignal(signal.SIGALRM) is previous


def test_an_outer_timer_is_paused_and_rearmed():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 30.0)
    try:
        with wall_deadline(1.0, "too slow"):
            time.sleep(0.2)
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 29.0 < remaining < 29.9
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_no_cap_and_other_threads_do_nothing():
    with wall_deadline(None, "never"):
        pass
    outcome = []

    def worker() -> None:
        with wall_deadline(0.01, "off the main thread"):
            time.sleep(0.1)
        outcome.append("done")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert outcome == ["done"]
