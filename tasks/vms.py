"""Phase 1: the four lab VMs exist, run, and have finished their first-boot cloud-init.

Call ``vms_running(lab)`` from the deploy on every host (it picks what to do per host):

1. on the workstation (``@local``): launch the missing VMs in parallel with their rendered
   cloud-init, start stopped ones (one operation for all four);
2. a barrier, so no VM operation starts before that;
3. on each VM: wait for cloud-init, then warn if the VM was created from a different user-data,
   judged by the fingerprint calicolab's user-data wrote into it (cloud-init only runs on first
   boot; recreating is left to the user).
"""

from pyinfra import host

from calicolab.model import lab_for_host
from calicolab.multipass import InstanceSpec
from calicolab.operations import multipass
from calicolab.operations.barrier import barrier
from calicolab.render import cloud_init_fingerprint, render_cloud_init


def is_workstation(current_host) -> bool:
    return current_host.name == "@local"


def vm_specs(lab) -> list[InstanceSpec]:
    """One launch specification per lab VM, in the lab's order (control, node1, node2, host1)."""
    return [
        InstanceSpec(
            name=vm.name,
            image=lab.ubuntu_image,
            cpus=vm.cpus,
            memory=vm.memory,
            disk=vm.disk,
            cloud_init=render_cloud_init(lab, vm.name),
        )
        for vm in lab.vms.values()
    ]


def vms_running(lab=None) -> None:
    lab = lab or lab_for_host(host)

    if is_workstation(host):
        multipass.instances(
            name="Lab VMs exist and are running",
            specs=vm_specs(lab),
            launch_timeout=lab.timeout_cloud_init,
            multipass_bin=lab.multipass_bin,
        )

    barrier(name="── phase: VMs running ──")

    if host.name in lab.vms:
        multipass.cloud_init_done(
            name="cloud-init finished",
            timeout=lab.timeout_cloud_init,
        )
        multipass.user_data_current(
            name="VM created from the current cloud-init",
            fingerprint=cloud_init_fingerprint(lab, host.name),
        )
