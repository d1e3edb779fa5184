"""Remove the lab: delete and purge the four lab VMs and the local state folder.

    pyinfra inventory.py teardown.py            # the whole lab (asks before executing)
    pyinfra inventory.py teardown.py --dry      # show what would be removed, change nothing
    pyinfra inventory.py teardown.py --limit node1   # just that VM (state folder kept)

Only instances named in the lab settings are touched (never ``multipass delete --all``); other
Multipass instances on the machine stay. The state folder (``lab.state_path``: join token,
kubeconfig) is emptied of calicolab's files only when the whole lab is removed, and only when it
carries calicolab's marker; it is removed when nothing else is left in it. The workstation's
download cache (``calicolab.downloads``) is not part of the lab and stays for the next build.
"""

from pyinfra import host, state

from calicolab.model import lab_for_host
from calicolab.operations import local_state, multipass
from calicolab.operations.barrier import barrier

lab = lab_for_host(host)
active = {h.name for h in state.inventory.get_active_hosts()}
lab_vms = list(lab.vms)
limited_vms = [name for name in lab_vms if name in active]
whole_lab = "@local" in active and (not limited_vms or limited_vms == lab_vms)

if host.name == "@local":
    targets = lab_vms if whole_lab else limited_vms
    multipass.absent(
        name=f"Delete and purge lab VMs ({', '.join(targets)})",
        names=targets,
        multipass_bin=lab.multipass_bin,
    )
    if whole_lab:
        local_state.removed(
            name=f"Remove the lab state in {lab.state_path}",
            path=str(lab.state_path),
        )
elif host.name in lab.vms and "@local" not in active:
    # `--limit NAME` without the workstation: the VM host removes itself (runs multipass locally)
    multipass.absent(
        name=f"Delete and purge {host.name}",
        names=[host.name],
        multipass_bin=lab.multipass_bin,
    )

barrier(name="── teardown done ──")
