"""
A barrier: an operation every host runs, so pyinfra orders the deploy's phases across hosts, and a
failed host ends the run there.

pyinfra orders operations per host only; the k-th operation of two hosts may run together whatever
their line numbers. An operation called unconditionally on every host shares one op hash and joins
every host's chain, so nothing after it starts before everything before it finished on all hosts
(default lock-step mode only: do not use ``--serial`` or ``--no-wait``).

pyinfra itself goes on with the hosts that did not fail, so later steps would wait out their
timeouts for a VM that is gone (control waiting for node2 to register, host1's check waiting for
the app). Instead, once any host has failed, the next barrier fails on every remaining host: the
run ends at that phase boundary with one summary naming the first failure as the cause and the
failures after it as its likely consequences. Every wait that involves another host (nodes
registered, nodes Ready, the final check) runs in a phase of its own after a barrier, so no wait
starts for a host that has failed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, operation
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ctx_state

#: pyinfra's own per-operation error line, which says nothing about the cause
_GENERIC_ERROR = re.compile(r"^Error(: executed \d+ commands.*)?$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HOST_LINE = re.compile(r"^\[(?P<host>[^\]]+)\]\s*(?:nested\s+)?(?P<text>.*)$", re.DOTALL)


@dataclass
class HostFailure:
    """One operation that failed on one host, with the error lines it logged."""

    host: str
    operation: str
    op_hash: str
    messages: list[str] = field(default_factory=list)


class FailureLog(BaseStateCallback):
    """Records, in order, every operation that fails during execution and what it logged."""

    def __init__(self, known_failed: set[str]):
        self.failures: list[HostFailure] = []
        self.reported = False
        self._known_failed = known_failed  # failed before execution (connect): not ours to judge
        self._current: dict[str, str] = {}  # host -> op hash running on it
        self._lines: dict[tuple[str, str], list[str]] = {}  # (host, op hash) -> error lines, in order

    def operation_host_start(self, state, host, op_hash):
        self._current[host.name] = op_hash
        self._lines.setdefault((host.name, op_hash), [])

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        if state.get_op_data_for_host(host, op_hash).global_arguments.get("_ignore_errors"):
            return  # pyinfra reports ignored errors here too; they stop nothing
        self.failures.append(self._failure(state, host.name, op_hash))

    def _failure(self, state, host_name: str, op_hash: str) -> HostFailure:
        names = ", ".join(sorted(state.get_op_meta(op_hash).names)) or op_hash
        lines = [line for line in self._lines.get((host_name, op_hash), []) if not _GENERIC_ERROR.match(line)]
        return HostFailure(host_name, names, op_hash, lines)

    def error_line(self, text: str) -> None:
        match = _HOST_LINE.match(_ANSI.sub("", text))
        if match and match["host"] in self._current:
            self._lines[(match["host"], self._current[match["host"]])].append(match["text"].strip())

    def failed_hosts(self, state) -> list[str]:
        """Hosts failed since execution began, in order.

        Besides failed operations this counts hosts pyinfra failed itself (a fact that could not
        be loaded fails the host, not the operation); those are recorded with the first
        operation in which they logged an error.
        """
        names = list(dict.fromkeys(f.host for f in self.failures))
        for name in sorted(h.name for h in state.failed_hosts):
            if name in names or name in self._known_failed:
                continue
            names.append(name)
            logged = [op for (host_name, op), lines in self._lines.items() if host_name == name and lines]
            if logged:
                self.failures.append(self._failure(state, name, logged[0]))
        return names

    def summary(self, boundary: str, failed: list[str]) -> list[str]:
        """The lines that end the run: the first failure as the cause, later ones as consequences."""
        lines = [f'Run stopped at "{boundary}": {", ".join(failed)} failed, so nothing after this '
                 "phase boundary was started (later steps would only wait for it)."]
        cause_hash = self.failures[0].op_hash if self.failures else None
        for failure in self.failures:
            role = "cause" if failure.op_hash == cause_hash else "then (likely a consequence)"
            # one line per failure: a multi-line message (Multipass' "errors occurred:" list) joined up
            detail = "; ".join(" ".join(part.strip() for part in message.splitlines() if part.strip())
                               for message in failure.messages) or "see its error above"
            lines.append(f"    {role}: [{failure.host}] {failure.operation}: {detail}")
        if not self.failures:
            lines.append(f"    cause: {', '.join(failed)} (see the errors above)")
        lines.append("    Fix the cause and re-run the deploy: it resumes where it stopped "
                     "(pyinfra ends with \"No hosts remaining!\" because every host stopped here).")
        return lines


class _ErrorLines(logging.Handler):
    """Hands pyinfra's error lines to the running deploy's ``FailureLog``."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR:
            return
        failure_log = _failure_log(ctx_state.get()) if ctx_state.isset() else None
        if failure_log is not None:
            try:
                failure_log.error_line(record.getMessage())
            except Exception:  # noqa: BLE001 - a log handler must never break the run
                self.handleError(record)


_ERROR_LINES = _ErrorLines()


def _failure_log(current_state) -> FailureLog | None:
    for handler in getattr(current_state, "callback_handlers", None) or []:
        if isinstance(handler, FailureLog):
            return handler
    return None


def watch_failures(current_state) -> FailureLog:
    """The state's ``FailureLog``, registered on first use (idempotent, once per state).

    Example: ``watch_failures(state).failed_hosts(state)`` -> ``["node2"]``
    """
    failure_log = _failure_log(current_state)
    if failure_log is None:
        failure_log = FailureLog({h.name for h in current_state.failed_hosts})
        current_state.add_callback_handler(failure_log)
    if _ERROR_LINES not in logging.getLogger("pyinfra").handlers:
        logging.getLogger("pyinfra").addHandler(_ERROR_LINES)
    return failure_log


def _stop_run(state, host, boundary: str) -> bool:
    failure_log = watch_failures(state)
    if not failure_log.reported:
        failure_log.reported = True
        for line in failure_log.summary(boundary, failure_log.failed_hosts(state)):
            logger.error(line)
    return False


@operation()
def _phase_boundary(boundary: str):
    failure_log = _failure_log(state) if state.is_executing else None
    if failure_log is not None and failure_log.failed_hosts(state):
        yield FunctionCommand(_stop_run, (boundary,), {})
        return
    host.noop("barrier")


def barrier(name: str) -> None:
    """
    Order the deploy: nothing after this starts on any host before everything before it is done;
    if any host has failed by then, the run ends here with a summary of the failures.

    Call it on every host, outside any host-specific ``if``, with ``name=`` naming the phase.
    "No change" while every host is fine.

    **Example:**

    .. code:: python

        from calicolab.operations.barrier import barrier

        barrier(name="── phase: VMs running ──")
    """
    watch_failures(state)
    _phase_boundary(name=name, boundary=name)
