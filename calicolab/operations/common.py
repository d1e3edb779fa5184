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
