"""
Create, start and remove the lab's Multipass VMs (on the workstation, ``@local``) and wait for their
first-boot cloud-init (on the ``@multipass/NAME`` hosts).

Nothing here changes anything before pyinfra executes the deploy: ``--dry`` only runs
``multipass list`` and read-only commands. Failures at execution time end the operation with a clear
message (a ``FunctionCommand`` returning ``False``), never with a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import gevent

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation

from calicolab import multipass as mp
from calicolab.connectors.multipass import NOT_RUNNING_MARKER
from calicolab.constants import USER_DATA_FINGERPRINT_PATH
from calicolab.facts.multipass import (
    FINGERPRINT_MISSING,
    CloudInitStatus,
    MultipassInstances,
    UserDataFingerprint,
)
from calicolab.operations.common import print_once

DEFAULT_LAUNCH_TIMEOUT = 900
CLOUD_INIT_POLL = 5
#: seconds between ``multipass exec NAME -- true`` tries after a start
ANSWER_POLL = 2


def _bin(multipass_bin: str | None) -> str:
    if multipass_bin:
        return multipass_bin
    data = getattr(host, "data", None)
    value = data.get("multipass_bin") if data is not None else None
    return value or mp.DEFAULT_BIN


def _log(message: str, error: bool = False, warning: bool = False) -> None:
    host.log(message, log_func=logger.error if error else logger.warning if warning else logger.info)


def _workstation_instances(multipass_bin: str) -> dict[str, Any]:
    """``MultipassInstances`` as seen from the workstation, whichever host this operation runs on."""
    local = host
    if getattr(host, "name", "@local") != "@local":
        inventory = getattr(state, "inventory", None)
        local_host = inventory.get_host("@local", None) if inventory is not None else None
        if local_host is not None:
            local = local_host
        else:  # no @local in the inventory: ask Multipass directly
            return _list_now(multipass_bin)
    return local.get_fact(MultipassInstances, multipass_bin=multipass_bin) or {}


# --- callbacks (run at execution time only) ----------------------------------------------------


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
        result = results[name]
        if isinstance(result, FileNotFoundError):
            host.log(mp.not_installed_hint(multipass_bin), log_func=logger.error)
            ok = False
            continue
        if isinstance(result, BaseException):
            failure = mp.MultipassFailure("other", str(result))
            host.log(mp.explain_failure("launch", name, failure, multipass_bin), log_func=logger.error)
            ok = False
            continue
        if result.ok:
            host.log(f"Launched {name}")
            continue
        failure = mp.classify_error(result.returncode, result.stdout, result.stderr)
        if failure.kind == "timeout":
            timed_out.append(name)
            continue
        host.log(mp.explain_failure("launch", name, failure, multipass_bin), log_func=logger.error)
        ok = False

    if timed_out:
        # canonical/multipass#1757: launch can give up while the VM is fine and cloud-init still runs
        current = _list_now(multipass_bin)
        for name in timed_out:
            vm_state = (current.get(name) or {}).get("state")
            if vm_state in (mp.RUNNING, "Starting", "Restarting"):
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
                    f"`{mp.shell_join(mp.bin_argv(multipass_bin))} info {name}`; on slow links raise "
                    "timeout_cloud_init (e.g. --data timeout_cloud_init=1800), then re-run the deploy",
                    log_func=logger.error,
                )
                ok = False
    return ok


def _list_now(multipass_bin: str) -> dict[str, Any]:
    try:
        result = mp.run_process(mp.list_argv(multipass_bin), timeout=mp.LIST_TIMEOUT)
        return mp.parse_list(result.stdout) if result.ok else {}
    except (OSError, mp.MultipassOutputError):
        return {}


def _run_each(state, host, action: str, names: list[str], multipass_bin: str, timeout: int) -> bool:
    """Run ``multipass <action> NAME`` for every name at the same time; report each failure."""
    builders = {
        "start": lambda name: mp.start_argv(multipass_bin, [name], timeout=timeout),
        "cancel-stop": lambda name: mp.stop_argv(multipass_bin, [name], cancel=True),
        "stop": lambda name: mp.stop_argv(multipass_bin, [name]),
        "delete": lambda name: mp.delete_argv(multipass_bin, [name], purge=True),
    }
    jobs = {name: (builders[action](name), None) for name in names}
    results = mp.run_parallel(jobs, timeout=timeout + 60)
    ok = True
    for name in names:
        result = results[name]
        if isinstance(result, FileNotFoundError):
            host.log(mp.not_installed_hint(multipass_bin), log_func=logger.error)
            ok = False
        elif isinstance(result, BaseException):
            failure = mp.MultipassFailure("other", str(result))
            host.log(mp.explain_failure(action, name, failure, multipass_bin), log_func=logger.error)
            ok = False
        elif not result.ok:
            failure = mp.classify_error(result.returncode, result.stdout, result.stderr)
            if action == "delete" and failure.kind == "does-not-exist":
                continue  # already gone: that is what we wanted
            host.log(mp.explain_failure(action, name, failure, multipass_bin), log_func=logger.error)
            ok = False
        else:
            host.log(f"{action}: {name} done")
    return ok


def _wait_answering(state, host, names: list[str], multipass_bin: str, timeout: int) -> bool:
    """After ``multipass start``: wait until every named VM runs a command, or fail naming it.

    A VM resumed from Suspended (the laptop slept) is Running before its network and sshd are
    back, and ``multipass exec`` fails until then (canonical/multipass#1365); the steps after the
    start would fail on it.
    """
    deadline = time.monotonic() + timeout
    waiting, last, reported = list(names), {}, float("-inf")
    while True:
        jobs = {name: (mp.exec_argv(multipass_bin, name, "true"), None) for name in waiting}
        for name, result in mp.run_parallel(jobs, timeout=60).items():
            if isinstance(result, mp.ProcessResult) and result.ok:
                waiting.remove(name)
            else:
                last[name] = (mp.clean_message(result.stdout, result.stderr)
                              if isinstance(result, mp.ProcessResult) else str(result))
        if not waiting:
            return True
        if time.monotonic() >= deadline:
            for name in waiting:
                client = mp.shell_join(mp.bin_argv(multipass_bin))
                host.log(
                    f"{name} was started but does not answer `multipass exec` after {timeout}s "
                    f"({last[name]}). Next: check `{client} info {name}`; if it stays unreachable run "
                    f"`{client} restart {name}`, then re-run the deploy",
                    log_func=logger.error,
                )
            return False
        if time.monotonic() - reported >= 30:
            host.log(f"waiting for {', '.join(waiting)} to answer ({last[waiting[0]]})")
            reported = time.monotonic()
        gevent.sleep(ANSWER_POLL)


def _fail(state, host, messages: list[str]) -> bool:
    for message in messages:
        host.log(message, log_func=logger.error)
    return False


# --- operations --------------------------------------------------------------------------------


def _instances_commands(specs: list[mp.InstanceSpec], present, running, multipass_bin, launch_timeout):
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate instance names in {names}")
    current = host.get_fact(MultipassInstances, multipass_bin=multipass_bin) or {}
    plan = mp.plan_instances(names, current, present=present, running=running)

    if not plan.changes:
        host.noop(f"Multipass instances {', '.join(names)} are {'running' if running else 'present'}")
        return

    by_name = {spec.name: spec for spec in specs}
    if not state.is_executing:  # at execution time _fail reports them
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
    if plan.stop:
        yield FunctionCommand(_run_each, ("stop", plan.stop, multipass_bin, 300), {})
    if plan.delete:
        yield FunctionCommand(_run_each, ("delete", plan.delete, multipass_bin, 300), {})
    if plan.errors:
        # after the others were launched/started: one broken VM does not block the rest
        yield FunctionCommand(_fail, ([plan.errors[n] for n in plan.errors],), {})


@operation()
def instances(
    specs: list[mp.InstanceSpec | Mapping[str, Any]],
    present: bool = True,
    running: bool = True,
    launch_timeout: int = DEFAULT_LAUNCH_TIMEOUT,
    multipass_bin: str | None = None,
):
    """
    Make several Multipass instances exist and run, launching the missing ones in parallel.

    + specs: ``calicolab.multipass.InstanceSpec`` objects (or dicts with ``name``, ``image``, ``cpus``,
      ``memory``, ``disk``, ``cloud_init``: the rendered user-data text, fed on stdin)
    + present: ``False`` deletes and purges the named instances instead
    + running: ``False`` stops running instances (never launches)
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
    yield from _instances_commands(specs, present, running, _bin(multipass_bin), launch_timeout)


@operation()
def instance(
    instance_name: str,
    image: str,
    cpus: int,
    memory: str,
    disk: str,
    cloud_init: str,
    present: bool = True,
    running: bool = True,
    launch_timeout: int = DEFAULT_LAUNCH_TIMEOUT,
    multipass_bin: str | None = None,
):
    """
    Make one Multipass instance exist and run (see ``multipass.instances`` for several at once).

    + instance_name: the instance (``name=`` is pyinfra's operation name)
    + image, cpus, memory, disk: ``multipass launch`` settings (used only when launching)
    + cloud_init: rendered user-data text, fed to ``multipass launch --cloud-init -`` on stdin
    + present / running / launch_timeout / multipass_bin: as for ``multipass.instances``

    **Example:**

    .. code:: python

        multipass.instance(
            name="control exists and runs",
            instance_name="control",
            image="24.04", cpus=2, memory="2G", disk="10G",
            cloud_init=render_cloud_init(lab, "control"),
        )
    """
    spec = mp.InstanceSpec(instance_name, image, cpus, memory, disk, cloud_init)
    yield from _instances_commands([spec], present, running, _bin(multipass_bin), launch_timeout)


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
    current = _workstation_instances(multipass_bin)
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


def _status_text(value: Any) -> str:
    return value if isinstance(value, str) else "unknown (VM not reachable)"


def _cloud_init_status_now(host) -> dict[str, Any] | None:
    """``cloud-init status --long`` parsed, or None while the VM does not answer (e.g. rebooting).

    ``{"gone": message}`` when the connector says the VM is not running at all (absent, stopped,
    deleted): waiting would not help.
    """
    try:
        ok, output = host.run_shell_command(StringCommand(CloudInitStatus().command()), _timeout=60)
    except (OSError, TimeoutError) as e:
        logger.debug("cloud-init status on %s failed: %s", host.name, e)
        return None
    if not ok:
        if NOT_RUNNING_MARKER in output.stderr:
            return {"gone": output.stderr.strip()}
        return None
    parsed = mp.parse_cloud_init_status(output.stdout_lines)
    if parsed is not None:
        parsed["raw"] = output.stdout
    return parsed


def _wait_cloud_init(state, host, timeout: int) -> bool:
    """Poll ``cloud-init status`` until done/error or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    last = None
    last_report = 0.0
    started = time.monotonic()
    while True:
        details = _cloud_init_status_now(host)
        if isinstance(details, dict) and "gone" in details:
            host.log(
                f"cannot wait for cloud-init: {details['gone']} (see the VM operation's errors above)",
                log_func=logger.error,
            )
            return False
        status = details.get("status") if isinstance(details, dict) else None
        if status:
            last = details
        if status == "done":
            host.log("cloud-init finished")
            return True
        if status == "error":
            multipass_bin = host.data.get("multipass_bin") or mp.DEFAULT_BIN
            host.log(mp.cloud_init_error_message(host.name, details, multipass_bin), log_func=logger.error)
            return False
        if status == "disabled":
            host.log(f"cloud-init is disabled in {host.name}: the lab's user-data never ran",
                     log_func=logger.error)
            return False
        now = time.monotonic()
        if now >= deadline:
            shown = last.get("raw") if isinstance(last, dict) else "no answer from the VM"
            host.log(
                f"cloud-init in {host.name} not done after {timeout}s (last status: "
                f"{_status_text(status)}).\n{_indent(shown)}\nRaise timeout_cloud_init on slow links and re-run",
                log_func=logger.error,
            )
            return False
        if now - last_report >= 60:
            host.log(f"waiting for cloud-init ({_status_text(status)}, {int(now - started)}s)")
            last_report = now
        gevent.sleep(CLOUD_INIT_POLL)


@operation()
def cloud_init_done(timeout: int = 900):
    """
    Wait until the VM's first-boot cloud-init has finished (``cloud-init status --wait`` with a timeout).

    + timeout: seconds to wait before failing with the VM's name and cloud-init status

    No change when cloud-init is already ``done``. Fails with ``cloud-init status --long`` output when
    the status is ``error``. Run it on the ``@multipass/NAME`` hosts.

    **Example:**

    .. code:: python

        multipass.cloud_init_done(name="cloud-init finished", timeout=900)
    """
    status = host.get_fact(CloudInitStatus)
    if status == "done":
        host.noop("cloud-init is done")
        return
    yield FunctionCommand(_wait_cloud_init, (timeout,), {})


def _recreate_hint(name: str) -> str:
    return (
        f"recreate the VM: `pyinfra inventory.py teardown.py --limit {name}` (or "
        f"`multipass delete --purge {name}`), then re-run the deploy"
    )


@operation()
def user_data_current(fingerprint: str):
    """
    Warn when the VM was created from a different cloud-init user-data than the one rendered now.

    + fingerprint: ``calicolab.render.cloud_init_fingerprint(lab, vm)``, the sha256 that the
      current user-data writes to ``USER_DATA_FINGERPRINT_PATH`` in the VM

    Compares what calicolab's own user-data wrote into the VM, never the user-data Multipass passed
    on (Multipass adds users, keys and packages to it, differently per version). Cloud-init runs
    only on first boot, so a changed user-data needs a new VM: this never recreates anything, it
    logs a warning naming the VM and how to recreate it, and reports no change. A VM without the
    file (created before calicolab wrote it) gets one note saying so. Run it on the
    ``@multipass/NAME`` hosts after ``cloud_init_done``.

    **Example:**

    .. code:: python

        multipass.user_data_current(
            name="cloud-init user-data unchanged", fingerprint=cloud_init_fingerprint(lab, "node1"),
        )
    """
    stored = host.get_fact(UserDataFingerprint)
    if stored is None:
        host.noop("cloud-init has not finished yet: nothing to compare")
        return
    if stored == fingerprint:
        host.noop("user-data unchanged")
        return
    if stored == FINGERPRINT_MISSING:
        if print_once():
            _log(
                f"{host.name} has no calicolab fingerprint ({USER_DATA_FINGERPRINT_PATH}): it was created "
                "before calicolab recorded one, so whether its cloud-init matches the current settings is "
                f"unknown. To be sure, {_recreate_hint(host.name)}",
                warning=True,
            )
        host.noop(f"{host.name} has no user-data fingerprint (note only)")
        return
    if print_once():
        _log(
            f"{host.name} was created from a different cloud-init user-data than the current settings "
            "render; cloud-init only runs on first boot, so the change is NOT applied. To apply it, "
            f"{_recreate_hint(host.name)}",
            warning=True,
        )
    host.noop(f"user-data of {host.name} differs (warning only)")
    yield from ()  # an operation is a generator; this one yields no command
