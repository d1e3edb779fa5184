"""Phase 1: the four lab VMs exist, run, and have finished their first-boot cloud-init.

Call ``vms_running(lab)`` from the deploy on every host (it picks what to do per host):

1. on the workstation (``@local``): launch the missing VMs in parallel with their rendered
   cloud-init, start stopped ones (one operation for all four; none when all four were Running
   when the run connected);
2. a barrier, so no VM operation starts before that;
3. on each VM: wait for cloud-init, and warn if the VM was created from a different user-data,
   judged by the fingerprint calicolab's user-data wrote into it (cloud-init only runs on first
   boot; recreating is left to the user). A VM whose first boot the deploy's one read of it
   (``now``, :mod:`calicolab.facts.vm`) found finished gets the warning now and no operation.
"""

from pyinfra import host, state
from pyinfra.api.exceptions import PyinfraError

from calicolab.facts.vm import VmNow
from calicolab.model import lab_for_host
from calicolab.multipass import RUNNING, InstanceSpec
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


def _states_at_connect(lab, run_state, in_run) -> dict[str, str | None]:
    """The state the connector read for each lab VM host that ``in_run(host)`` keeps (None: not created)."""
    return {vm_host.name: vm_host.connector_data.get("multipass_state")
            for vm_host in run_state.inventory if vm_host.name in lab.vms and in_run(vm_host)}


def vms_left_down(lab, run_state=None) -> list[str]:
    """The lab VMs in this run that are not running while the workstation, which launches and starts
    them, is left out (``--limit node2``, ``--exclude @local``); ``[]`` when the workstation takes part.

    Example: ``--limit node2`` with node2 stopped → ``["node2 is Stopped"]``.
    """
    run_state = run_state or state
    workstation = run_state.inventory.get_host("@local", None)
    if workstation is not None and run_state.is_host_in_limit(workstation):
        return []
    states = _states_at_connect(lab, run_state, run_state.is_host_in_limit)
    return [f"{name} is {vm_state or 'not created yet'}" for name, vm_state in states.items() if vm_state != RUNNING]


def all_running(lab, run_state=None) -> bool:
    """Whether every lab VM was Running when the run connected to it (False when one is not in the run)."""
    run_state = run_state or state
    states = _states_at_connect(lab, run_state, lambda vm_host: vm_host in run_state.activated_hosts)
    return all(states.get(name) == RUNNING for name in lab.vms)


def require_workstation_for(down: list[str]) -> None:
    """Stop before anything runs when VMs must be started but the workstation is not in the run."""
    if down:
        raise PyinfraError(
            f"{'; '.join(down)}: the run leaves out the workstation (@local), which launches and starts the "
            "lab VMs. Run the deploy without --limit, or add the workstation: --limit @local (it then starts "
            "every lab VM that is not running)"
        )


def vms_running(lab=None, now: VmNow | None = None) -> None:
    lab = lab or lab_for_host(host)
    now = now or VmNow()
    require_workstation_for(vms_left_down(lab))

    # Every lab VM Running when the run connected: nothing to launch or start.
    if is_workstation(host) and not all_running(lab):
        multipass.instances(
            name="Lab VMs exist and are running",
            specs=vm_specs(lab),
            launch_timeout=lab.timeout_cloud_init,
            multipass_bin=lab.multipass_bin,
        )

    barrier(name="── phase: VMs running ──")

    if host.name not in lab.vms:
        return
    fingerprint = cloud_init_fingerprint(lab, host.name)
    if now.first_boot_done():  # cloud-init runs once per VM: done stays done
        multipass.warn_if_created_differently(host, now.first_boot.get("fingerprint"), fingerprint)
    else:
        multipass.cloud_init_done(
            name="cloud-init finished",
            fingerprint=fingerprint,
            timeout=lab.timeout_cloud_init,
        )
