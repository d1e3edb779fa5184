"""The one polling loop of calicolab: every wait (VM state, cloud-init, Kubernetes, HTTP) runs here.

A wait is a *probe* called again and again until it reports done or failed, or the deadline passes.
The deadline bounds each probe too: the probe is handed the seconds that remain and must not block
longer (pass them on as the timeout of the command or request it makes). So a 10 s wait ends after
about 10 s, never after one more slow probe.

The pause between probes starts short and grows to at most ``MAX_PAUSE`` (1 s), so a condition that
holds is seen within about a second. A probe that can block until something changes (a Kubernetes
watch, ``cloud-init status --wait``) is given a ``pause`` that returns early on the change.

Example::

    def probe(remaining: float) -> Check:
        state = read_state(timeout=remaining)
        return Check(state == "Running", f"state {state}")

    check = poll("node1 to run", timeout=300, probe=probe, log=host.log)
    if not check.done:
        ...  # check.message says what was last seen
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

#: first pause between probes (seconds); doubles up to MAX_PAUSE
FIRST_PAUSE = 0.1
#: longest pause between probes (seconds): a condition that holds is seen within about this long
MAX_PAUSE = 1.0
#: a progress line at least this often (seconds), and whenever the observed state changes
PROGRESS_EVERY = 30.0
#: a probe is never given less than this (seconds), so the last probe before the deadline can answer
MIN_PROBE_TIME = 1.0


@dataclass(frozen=True)
class Check:
    """One observation: ``done`` (the condition holds), ``failed`` (it never will), and what was seen."""

    done: bool
    message: str
    failed: bool = False


class Transient(Exception):
    """Raised by a probe for trouble worth retrying until the deadline (API unreachable, VM restarting).

    Anything else a probe raises is a bug or a hard fault and ends the wait at once.
    """


def poll(
    what: str,
    timeout: float,
    probe: Callable[[float], Check],
    log: Callable[[str], Any] | None = None,
    pause: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """Call ``probe(remaining_seconds)`` until it is done or failed, or ``timeout`` seconds pass.

    Returns the last ``Check``; on timeout it is the last observation with ``done=False`` and
    ``failed=False``. ``log`` gets a progress line when the observation changes and every
    ``PROGRESS_EVERY`` seconds. ``Transient`` errors become observations; other errors propagate.
    """
    start = clock()
    deadline = start + float(timeout)
    wait = FIRST_PAUSE
    last_message = None
    last_log = start
    while True:
        remaining = max(MIN_PROBE_TIME, deadline - clock())
        try:
            check = probe(remaining)
        except Transient as exc:
            check = Check(False, str(exc))
        now = clock()
        if check.done or check.failed:
            return check
        if log and (check.message != last_message or now - last_log >= PROGRESS_EVERY):
            log(f"waiting for {what} ({int(now - start)}s of {int(timeout)}s): {check.message}")
            last_message = check.message
            last_log = now
        if now >= deadline:
            return Check(False, check.message)
        pause(max(0.0, min(wait, deadline - now)))
        wait = min(wait * 2, MAX_PAUSE)
