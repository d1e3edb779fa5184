"""Operations on the local state folder of the workstation (``lab.state_path``)."""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, operation

from calicolab.operations.common import print_once
from calicolab.state import LabState, StateError


@operation()
def removed(path: str):
    """
    Remove calicolab's files from the state folder, then the folder when nothing else is left in it.

    + path: the state folder (``lab.state_path``)

    Only a folder that carries calicolab's marker is touched, and in it only the files calicolab
    writes (join token, kubeconfig, lock, marker). A file of anyone else's stays, and so does the
    folder, with a warning that names what was kept.

    **Example:**

    .. code:: python

        local_state.removed(name="Remove the lab state", path=str(lab.state_path))
    """
    lab_state = LabState(path)
    files = lab_state.own_files()
    if not files:
        host.noop(f"no calicolab state in {path}")
        return
    if print_once():
        host.log(f"will remove {', '.join(f.name for f in files)} from {path}")

    def remove(state, host):
        try:
            kept = lab_state.remove()
        except (StateError, OSError) as error:
            host.log_styled(f"removing the lab state failed: {error}", fg="red", log_func=logger.error)
            return False
        if kept:
            host.log_styled(f"kept {path}: it also holds {', '.join(kept)}, which calicolab did not write",
                            fg="yellow", log_func=logger.warning)
        return True

    yield FunctionCommand(remove, (), {})
