"""The one polling loop: deadline bounds each probe, a holding condition is seen within a second."""

from __future__ import annotations

import pytest

from calicolab.polling import MAX_PAUSE, Check, Transient, poll


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.now += seconds


def test_done_condition_is_seen_within_max_pause():
    clock = FakeClock()
    holds_at = 37.3

    def probe(remaining):
        return Check(clock.now >= holds_at, f"t={clock.now:.1f}")

    check = poll("thing", 600, probe, pause=clock.sleep, clock=clock)
    assert check.done
    assert holds_at <= clock.now <= holds_at + MAX_PAUSE


def test_each_probe_gets_the_remaining_time_and_the_wait_ends_at_the_deadline():
    clock = FakeClock()
    given = []

    def probe(remaining):
        given.append(remaining)
        clock.now += min(remaining, 7.0)  # a slow probe that honours its bound
        return Check(False, "not yet")

    check = poll("thing", 10, probe, pause=clock.sleep, clock=clock)
    assert not check.done and not check.failed and check.message == "not yet"
    assert given[0] == pytest.approx(10)
    assert all(a > b for a, b in zip(given, given[1:]))
    assert clock.now <= 10 + 1.0  # never one more full slow probe past the deadline


def test_failed_check_ends_at_once_and_transient_errors_are_retried():
    clock = FakeClock()
    calls = []

    def probe(remaining):
        calls.append(clock.now)
        if len(calls) < 3:
            raise Transient("API unreachable")
        return Check(False, "Degraded", failed=True)

    logs = []
    check = poll("thing", 100, probe, log=logs.append, pause=clock.sleep, clock=clock)
    assert check.failed and check.message == "Degraded" and len(calls) == 3
    assert logs == ["waiting for thing (0s of 100s): API unreachable"]


def test_a_bug_in_a_probe_is_not_turned_into_a_timeout():
    def probe(remaining):
        raise KeyError("status")

    with pytest.raises(KeyError):
        poll("thing", 300, probe, pause=lambda s: None)
