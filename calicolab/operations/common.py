"""Small pieces every calicolab operation module uses."""

from __future__ import annotations

from typing import Callable

from pyinfra import logger, state


def print_once() -> bool:
    """Whether to print a diff or a plan line now, so it appears once per run.

    Operation bodies run in planning and again in execution. Print in planning, or in execution
    when planning skipped change detection (``-y``).
    """
    return not (state.is_executing and state.should_check_for_changes())


def fail_with(message: str) -> Callable:
    """A FunctionCommand body that logs ``message`` in red and fails the operation cleanly."""

    def fail(state, host):
        host.log_styled(message, fg="red", log_func=logger.error)
        return False

    return fail


def nothing_changed_yet() -> bool:
    """Whether no step of this run has changed anything so far: every step finished on any host ran
    no command and succeeded. Then what the deploy read while it was planned still holds (nothing of
    ours ran in between).

    Example: ``if nothing_changed_yet(): rows = rows_read_while_planning``
    """
    for ops in state.ops.values():
        for op_data in ops.values():
            meta = op_data.operation_meta
            if meta.is_complete() and (meta.executed or not meta.did_succeed()):
                return False
    return True
