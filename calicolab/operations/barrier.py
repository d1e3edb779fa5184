"""
A barrier: an operation every host runs, so pyinfra orders the deploy's phases across hosts.

pyinfra orders operations per host only; the k-th operation of two hosts may run together whatever
their line numbers. An operation called unconditionally on every host shares one op hash and joins
every host's chain, so nothing after it starts before everything before it finished on all hosts
(default lock-step mode only: do not use ``--serial`` or ``--no-wait``).
"""

from pyinfra import host
from pyinfra.api import operation


@operation()
def barrier():
    """
    Order the deploy: nothing after this starts on any host before everything before it is done.

    Call it on every host, outside any host-specific ``if``, with ``name=`` naming the phase.
    Always "No change".

    **Example:**

    .. code:: python

        from calicolab.operations.barrier import barrier

        barrier(name="── phase: VMs running ──")
    """
    host.noop("barrier")
    return
    yield  # pragma: no cover - makes this a generator
