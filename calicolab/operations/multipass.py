"""
Create, start and remove the lab's Multipass VMs (on the workstation, ``@local``) and wait for their
first-boot cloud-init (on the ``@multipass/NAME`` hosts).

Nothing here changes anything before pyinfra executes the deploy: ``--dry`` only runs
``multipass list`` and read-only commands. Failures at execution time end the operation with a clear
message (a ``FunctionCommand`` returning ``False``), never with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import gevent

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation

from calicolab import multipass as mp
from calicolab.connectors.multipass import VmNotRunning
from calicolab.constants import USER_DATA_FINGERPRINT_PATH
from calicolab.facts.multipass import (
    FINGERPRINT_MISSING,
    FirstBoot,
    MultipassInstances,
    first_boot_command,
    parse_first_boot,
)
from calicolab.operations.common import fail_with, print_once
from calicolab.polling import Check, Transient, poll

DEFAULT_LAUNCH_TIMEOUT = 900
#: longest single ``multipass exec`` while waiting (a VM that hangs is asked again, within the deadline)
PROBE_TIMEOUT = 60


def _bin(multipass_bin: str | None) -> str:
    return multipass_bin or host.data.get("multipass_bin") or mp.DEFAULT_BIN


def _log(message: str, error: bool = False) -> None:
    host.log(message, log_func=logger.error if error else logger.info)


def _workstation_instances(multipass_bin: str) -> dict[str, Any]:
    """``MultipassInstances`` as seen from the workstation, whichever host this operation runs on.

    Raises ``mp.MultipassUnavailable`` when there is no ``@local`` host and Multipass does not answer.
    """
    local = host
    if host.name != "@local":
        local = state.inventory.get_host("@local", None)
        if local is None:  # no @local in the inventory: ask Multipass directly
            return mp.list_instances(multipass_bin)
    return local.get_fact(MultipassInstances, multipass_bin=multipass_bin) or {}


# --- callbacks (run at execution time only) ----------------------------------------------------


def _failure(result: mp.ProcessResult | BaseException) -> mp.MultipassFailure | None:
    """None when a ``run_parallel`` call succeeded, else what failed (kind ``not-installed``: no client)."""
    if isinstance(result, FileNotFoundError):
        return mp.MultipassFailure("not-installed", str(result))
    if isinstance(result, BaseException):
        return mp.MultipassFailure("other", str(result))
    return None if result.ok else mp.classify_error(result.returncode, result.stdout, result.stderr)


def _log_failure(host, action: str, name: str, failure: mp.MultipassFailure, multipass_bin: str) -> None:
    if failure.kind == "not-installed":
        host.log(mp.not_installed_hint(multipass_bin), log_func=logger.error)
    else:
        host.log(mp.explain_failure(action, name, failure, multipass_bin), log_func=logger.error)


def _launch_all(state, host, specs: list[mp.InstanceSpec], multipass_bin: str, launch_timeout: int) -> bool:
    """Launch every spec at the same time (one ``multipass launch`` process each) and wait for all."""
    names = [spec.name for spec in specs]
    host.log(f"Launching {', '.join(names)} (in parallel, cloud-init on stdin)")
    jobs = {
        spec.name: (
            mp.launch_argv(multipass_bin, spec.name, spec.image, spec.cpus, spec.memory, spec.disk, launch_timeout),
            spec.cloud_init.encode("utf-8"),
        )
        for spec in specs
    }
    # launch waits for start and for initialisation, each up to --timeout
    results = mp.run_parallel(jobs, timeout=2 * launch_timeout + 120)

    ok = True
    timed_out: list[str] = []
    for name in names:
        failure = _failure(results[name])
        if failure is None:
            host.log(f"Launched {name}")
        elif failure.kind == "timeout":
            timed_out.append(name)
        else:
            _log_failure(host, "launch", name, failure, multipass_bin)
            ok = False

    if timed_out:
        # canonical/multipass#1757: launch can give up while the VM is fine and cloud-init still runs
        try:
            current = mp.list_instances(multipass_bin)
        except mp.MultipassUnavailable as e:
            host.log(f"launch {', '.join(timed_out)} timed out, and `multipass list` cannot say whether "
                     f"they run: {e}", log_func=logger.error)
            return False
        for name in timed_out:
            vm_state = (current.get(name) or {}).get("state")
            if vm_state == mp.RUNNING or vm_state in mp.TRANSITIONAL_STATES:
                host.log(
                    f"launch {name}: Multipass timed out waiting for initialisation but {name} is "
                    f"{vm_state}; continuing (cloud-init is waited for later)",
                    log_func=logger.warning,
                )
            elif vm_state == mp.SUSPENDED:
                host.log(
                    f"launch {name} failed: timed out and {name} is Suspended (did the computer sleep?). "
                    f"Next: re-run the deploy: it resumes {name} and waits for its cloud-init",
                    log_func=logger.error,
                )
                ok = False
            else:
                host.log(
                    f"launch {name} failed: timed out (state now: {vm_state or 'absent'}). Next: check "
                    f"`{mp.typed_client(multipass_bin)} info {name}`; on slow links raise "
                    "timeout_cloud_init (e.g. --data timeout_cloud_init=1800), then re-run the deploy",
                    log_func=logger.error,
                )
                ok = False
    return ok


def _run_each(state, host, action: str, names: list[str], multipass_bin: str, timeout: int) -> bool:
    """Run ``multipass <action> NAME`` for every name at the same time; report each failure."""
    builders = {
        "start": lambda name: mp.start_argv(multipass_bin, [name], timeout=timeout),
        "cancel-stop": lambda name: mp.cancel_stop_argv(multipass_bin, [name]),
        "delete": lambda name: mp.delete_argv(multipass_bin, [name]),
    }
    jobs = {name: (builders[action](name), None) for name in names}
    results = mp.run_parallel(jobs, timeout=timeout + 60)
    ok = True
    for name in names:
        failure = _failure(results[name])
        if failure is None:
            host.log(f"{action}: {name} done")
        elif not (action == "delete" and failure.kind == "does-not-exist"):  # already gone: what we wanted
            _log_failure(host, action, name, failure, multipass_bin)
            ok = False
    return ok


def _wait_answering(state, host, names: list[str], multipass_bin: str, timeout: int) -> bool:
    """After ``multipass start``: wait until every named VM runs a command, or fail naming it.

    A VM resumed from Suspended (the laptop slept) is Running before its network and sshd are
    back, and ``multipass exec`` fails until then (canonical/multipass#1365); the steps after the
    start would fail on it.
    """
    waiting, last = list(names), {}

    def probe(remaining: float) -> Check:
        jobs = {name: (mp.exec_argv(multipass_bin, name, "true"), None) for name in waiting}
        for name, result in mp.run_parallel(jobs, timeout=min(remaining, PROBE_TIMEOUT)).items():
            if isinstance(result, mp.ProcessResult) and result.ok:
                waiting.remove(name)
            else:
                last[name] = (mp.clean_message(result.stdout, result.stderr)
                              if isinstance(result, mp.ProcessResult) else str(result))
        return Check(not waiting, f"{', '.join(waiting)}: {last[waiting[0]]}" if waiting else "all answer")

    if poll(f"{', '.join(names)} to answer", timeout, probe, log=host.log, pause=gevent.sleep).done:
        return True
    client = mp.typed_client(multipass_bin)
    for name in waiting:
        host.log(
            f"{name} was started but does not answer `multipass exec` after {timeout}s "
            f"({last[name]}). Next: check `{client} info {name}`; if it stays unreachable run "
            f"`{client} restart {name}`, then re-run the deploy",
            log_func=logger.error,
        )
    return False


# --- operations --------------------------------------------------------------------------------


@operation()
def instances(
    specs: list[mp.InstanceSpec | Mapping[str, Any]],
    launch_timeout: int = DEFAULT_LAUNCH_TIMEOUT,
    multipass_bin: str | None = None,
):
    """
    Make several Multipass instances exist and run, launching the missing ones in parallel.

    + specs: ``calicolab.multipass.InstanceSpec`` objects (or dicts with ``name``, ``image``, ``cpus``,
      ``memory``, ``disk``, ``cloud_init``: the rendered user-data text, fed on stdin)
    + launch_timeout: ``multipass launch --timeout`` (seconds for start and for initialisation)
    + multipass_bin: Multipass client (default: host data ``multipass_bin`` or ``multipass``)

    Decides from ``MultipassInstances``: missing -> ``multipass launch -n NAME -c .. -m .. -d ..
    --cloud-init - --timeout T IMAGE`` (all missing ones at once), Stopped/Suspended -> ``start``
    (a suspended one resumes) and wait until it answers ``multipass exec`` (up to launch_timeout),
    Delayed Shutdown -> ``stop --cancel``, Running -> no change, Deleted/Unknown -> fails with what
    to do. Run it on ``@local``.

    **Example:**

    .. code:: python

        from calicolab.multipass import InstanceSpec
        from calicolab.operations import multipass

        multipass.instances(
            name="Lab VMs exist and run",
            specs=[
                InstanceSpec("control", "24.04", 2, "2G", "10G", cloud_init=control_user_data),
                InstanceSpec("node1", "24.04", 1, "1G", "8G", cloud_init=node1_user_data),
            ],
        )
    """
    specs = [mp.InstanceSpec.coerce(spec) for spec in specs]
    multipass_bin = _bin(multipass_bin)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate instance names in {names}")
    current = host.get_fact(MultipassInstances, multipass_bin=multipass_bin) or {}
    plan = mp.plan_instances(names, current, multipass_bin)

    if not plan.changes:
        host.noop(f"Multipass instances {', '.join(names)} are running")
        return

    by_name = {spec.name: spec for spec in specs}
    if not state.is_executing:  # at execution time the last command reports them
        for name, problem in plan.errors.items():
            _log(problem, error=True)
    if print_once():
        for name in plan.launch:
            _log(f"{name} will be launched ({by_name[name].image}, {by_name[name].cpus} CPU, "
                 f"{by_name[name].memory} memory, {by_name[name].disk} disk)")
            if state.config.DIFF:
                for line in by_name[name].cloud_init.splitlines():
                    logger.info(f"    {name} cloud-init + {line}")
        for name in plan.start:
            _log(f"{name} is {current[name]['state']}: it will be started")

    if plan.launch:
        yield FunctionCommand(
            _launch_all, ([by_name[n] for n in plan.launch], multipass_bin, launch_timeout), {}
        )
    if plan.start:
        yield FunctionCommand(_run_each, ("start", plan.start, multipass_bin, launch_timeout), {})
        yield FunctionCommand(_wait_answering, (plan.start, multipass_bin, launch_timeout), {})
    if plan.cancel_stop:
        yield FunctionCommand(_run_each, ("cancel-stop", plan.cancel_stop, multipass_bin, 120), {})
    if plan.errors:
        # after the others were launched/started: one broken VM does not block the rest
        yield FunctionCommand(fail_with("\n".join(plan.errors.values())), (), {})


@operation()
def absent(names: Iterable[str], multipass_bin: str | None = None):
    """
    Delete and purge the named Multipass instances (only those: never ``--all``).

    + names: instance names to remove; others are never touched
    + multipass_bin: Multipass client (default: host data ``multipass_bin`` or ``multipass``)

    Runs ``multipass delete --purge NAME`` on the workstation for every named instance that exists
    (also Deleted-but-not-purged ones). Normally called on ``@local``; on a VM host it still acts on
    the workstation (so ``--limit control`` removes just that VM).

    **Example:**

    .. code:: python

        multipass.absent(name="Remove the lab VMs", names=["control", "node1", "node2", "host1"])
    """
    names = [mp.check_instance_name(n) for n in names]
    multipass_bin = _bin(multipass_bin)
    try:
        current = _workstation_instances(multipass_bin)
    except mp.MultipassUnavailable as e:
        yield FunctionCommand(fail_with(f"cannot tell which of {', '.join(names)} exist: {e}"), (), {})
        return
    existing = [n for n in names if n in current]
    if not existing:
        host.noop(f"no instance among {', '.join(names)} exists")
        return
    if print_once():
        for name in existing:
            _log(f"{name} ({current[name]['state']}) will be deleted and purged")
    yield FunctionCommand(_run_each, ("delete", existing, multipass_bin, 300), {})


def _indent(text: str) -> str:
    return "\n".join(f"        {line}" for line in (text or "").splitlines())


def _recreate_hint(vm_host) -> str:
    delete = mp.delete_argv(vm_host.data.get("multipass_bin"), [vm_host.name])
    return (
        f"recreate the VM: `pyinfra inventory.py teardown.py --limit {vm_host.name}` (or "
        f"`{mp.shell_join(delete)}`), then re-run the deploy"
    )


def warn_if_created_differently(host, stored: str | None, fingerprint: str, always: bool = False) -> None:
    """Warn (never recreate) when the VM was created from another user-data than the one rendered now.

    Example: a node1 launched with ``vm_memory: 1G``, now set to ``2G`` -> "node1 was created from a
    different cloud-init user-data ... recreate the VM: ..."
    """
    if stored is None or stored == fingerprint or not (always or print_once()):
        return
    if stored == FINGERPRINT_MISSING:
        host.log(
            f"{host.name} has no calicolab fingerprint ({USER_DATA_FINGERPRINT_PATH}): it was created "
            "before calicolab recorded one, so whether its cloud-init matches the current settings is "
            f"unknown. To be sure, {_recreate_hint(host)}",
            log_func=logger.warning,
        )
        return
    host.log(
        f"{host.name} was created from a different cloud-init user-data than the current settings "
        "render; cloud-init only runs on first boot, so the change is NOT applied. To apply it, "
        f"{_recreate_hint(host)}",
        log_func=logger.warning,
    )


def _first_boot_judged(host, boot: dict[str, Any], fingerprint: str, timeout: int) -> bool:
    """The verdict on a finished wait (or a fact read): True when cloud-init is done; errors logged."""
    status = boot.get("status")
    if status == "done":
        warn_if_created_differently(host, boot.get("fingerprint"), fingerprint, always=True)  # only execution gets here
        return True
    if status == "error":
        multipass_bin = host.data.get("multipass_bin") or mp.DEFAULT_BIN
        host.log(mp.cloud_init_error_message(host.name, boot, multipass_bin), log_func=logger.error)
    elif status == "disabled":
        host.log(f"cloud-init is disabled in {host.name}: the lab's user-data never ran", log_func=logger.error)
    else:
        host.log(
            f"cloud-init in {host.name} not done after {timeout}s (last status: "
            f"{status or 'unknown (VM not reachable)'}).\n{_indent(boot.get('raw') or 'no answer from the VM')}\n"
            "Raise timeout_cloud_init on slow links and re-run",
            log_func=logger.error,
        )
    return False


def _wait_cloud_init(state, host, timeout: int, fingerprint: str) -> bool:
    """Run ``cloud-init status --wait --long`` in the VM, each try bounded by the time left.

    A VM that does not answer (rebooting, sshd not up) is asked again until ``timeout``; a VM that
    is not running (the connector answers ``VmNotRunning``) fails at once.
    """
    last: dict[str, Any] = {"status": None, "raw": ""}
    gone: list[str] = []

    def probe(remaining: float) -> Check:
        wait = max(1, int(min(remaining, PROBE_TIMEOUT)))
        try:
            ok, output = host.run_shell_command(StringCommand(first_boot_command(wait=wait)), _timeout=wait + 30)
        except (OSError, TimeoutError) as e:  # the connector's own timeout: the VM hangs
            raise Transient(f"{host.name} does not answer: {e}") from e
        if not ok:
            if isinstance(output, VmNotRunning):
                gone.append(output.stderr)
                return Check(False, output.stderr, failed=True)
            raise Transient(f"{host.name} does not answer: {output.stderr.strip() or 'no message'}")
        boot = parse_first_boot(output.stdout_lines)
        if boot["status"] is not None:
            last.update(boot)
        status = boot["status"] or "no status yet"
        return Check(status == "done", status, failed=status in ("error", "disabled"))

    check = poll(f"cloud-init in {host.name}", timeout, probe, log=host.log, pause=gevent.sleep)
    if gone:
        host.log(f"cannot wait for cloud-init: {gone[0]} (see the VM operation's errors above)", log_func=logger.error)
        return False
    if check.done:
        host.log("cloud-init finished")
    return _first_boot_judged(host, last, fingerprint, timeout)


@operation()
def cloud_init_done(fingerprint: str, timeout: int = 900):
    """
    Wait until the VM's first-boot cloud-init has finished, and warn when the VM was created from a
    different cloud-init user-data than the one rendered now.

    + fingerprint: ``calicolab.render.cloud_init_fingerprint(lab, vm)``, the sha256 that the current
      user-data writes to ``USER_DATA_FINGERPRINT_PATH`` in the VM
    + timeout: seconds to wait before failing with the VM's name and cloud-init status

    Reads the ``FirstBoot`` fact (one command in the VM). No change when cloud-init is ``done``.
    Otherwise (also when the VM does not answer), at execution, runs ``cloud-init status --wait --long`` in the VM under ``timeout``
    (asked again while the VM does not answer, within ``timeout`` in all), which returns as soon as
    cloud-init has finished. Fails with the failing module and the ``cloud-init status --long``
    output when the status is ``error``, at once when the VM is not running.

    The fingerprint is what calicolab's own user-data wrote into the VM, never the user-data Multipass
    passed on (Multipass adds users, keys and packages to it, differently per version). Cloud-init runs
    only on first boot, so a changed user-data needs a new VM: this never recreates anything, it logs a
    warning naming the VM and how to recreate it. A VM without the file (created before calicolab
    wrote it) gets one note saying so. Run it on the ``@multipass/NAME`` hosts.

    **Example:**

    .. code:: python

        multipass.cloud_init_done(
            name="cloud-init finished", fingerprint=cloud_init_fingerprint(lab, "node1"), timeout=900,
        )
    """
    # a VM that does not answer right now (rebooting) is the wait's business, not a failed host
    boot = host.get_fact(FirstBoot, _ignore_errors=True)
    if boot["status"] == "done":
        warn_if_created_differently(host, boot["fingerprint"], fingerprint)
        host.noop("cloud-init is done")
        return
    yield FunctionCommand(_wait_cloud_init, (timeout, fingerprint), {})
