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


def reading_stands(passed: bool) -> bool:
    """Whether a reading taken while the deploy was planned (a VM's probe, the VM list, host1's YaoBank
    page) stands for one taken now: it passed, and no step of this run has changed anything since
    (every step finished on any host ran no command and succeeded; nothing of ours ran in between).
    A failed reading is always taken again.

    Example: ``if reading_stands(all(row.ok for row in rows)): return rows``
    """
    if not passed:
        return False
    for ops in state.ops.values():
        for op_data in ops.values():
            meta = op_data.operation_meta
            if meta.is_complete() and (meta.executed or not meta.did_succeed()):
                return False
    return True
