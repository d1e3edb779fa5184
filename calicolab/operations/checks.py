"""Read-only operations that fill the report card (:mod:`calicolab.checks`) and print it once.

Every operation here is a check: it never yields a command that changes anything, so a run reports
"No changes" for each of them, and ``--dry`` and a real run agree. Observations are taken while the
run executes (after the deploy's earlier phases, never from the planning pass). A VM that is not
Running is never exec'd into (``multipass exec`` would start it): its rows fail with that reason.

* ``instances_checked(lab)`` — on the workstation: ``multipass list``, one row per VM;
* ``vm_checked(lab)`` — on each VM: one probe script, one round trip (addresses, names, MSS rule,
  services, FTP; on host1 also BIRD, the YaoBank page and ubuntu's kubectl/calicoctl);
* ``cluster_checked(lab)`` — on control: the Kubernetes reads, from the workstation;
* ``report(lab)`` — on every host: prints the table once and fails the run if a row failed.
"""

from __future__ import annotations

import click
from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation

from calicolab import checks
from calicolab.constants import CLIENT, SERVER
from calicolab.kube.client import KubeError
from calicolab.diagnose import list_instances
from calicolab.operations.common import fail_with
from calicolab.render import render_manifest

PROBE_TIMEOUT = 90
YAOBANK_DEPLOYMENTS = ("customer", "summary", "database")
CALICO_DEPLOYMENTS = ("calico-kube-controllers", "calico-typha")
IPPOOL_API_VERSIONS = ("crd.projectcalico.org/v1", "projectcalico.org/v3")


def _planning() -> bool:
    """True in pyinfra's planning pass: checks observe only while the run executes."""
    if state.is_executing:
        return False
    host.noop("checked while the run executes")
    return True


def _record(rows: list[checks.Row]) -> None:
    checks.report_of(state).add(rows)
    failed = [row.check for row in rows if not row.ok]
    host.noop(f"{len(rows) - len(failed)} of {len(rows)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))


@operation()
def instances_checked(lab):
    """Check that every lab VM exists and is Running (``multipass list`` on the workstation).

    .. code:: python

        checks.instances_checked(name="Check: VMs Running", lab=lab)
    """
    if _planning():
        return
    instances, error = list_instances(lab)
    checks.report_of(state).vm_states.update(
        {name: (instances or {}).get(name, {}).get("state", "Unknown" if instances is None else "Absent") for name in lab.vms}
    )
    _record(checks.vm_state_rows(lab, instances, error))
    yield from ()  # a check yields no command


def _run(command: str, sudo: bool = True) -> str:
    """Run a probe on the current host; its combined output (a probe never fails as a whole)."""
    try:
        _ok, output = host.run_shell_command(
            StringCommand(command), print_output=False, print_input=False, _sudo=sudo, _timeout=PROBE_TIMEOUT
        )
    except Exception as exc:  # a probe that cannot run is an observation, not a crash
        return f"probe failed: {type(exc).__name__}: {exc}"
    return "\n".join(x for x in (getattr(output, "stdout", ""), getattr(output, "stderr", "")) if x)


@operation()
def vm_checked(lab):
    """Check one VM from inside: addresses, lab names, MSS clamp, k3s/vsftpd/BIRD, host1's tools.

    .. code:: python

        checks.vm_checked(name="Check: inside the VM", lab=lab)
    """
    if _planning():
        return
    vm_state = checks.report_of(state).vm_states.get(host.name, "Running")
    if vm_state != "Running":
        _record(checks.not_checked_rows(lab, host.name, f"not checked: the VM is {vm_state}"))
        return
    sections = checks.split_sections(_run(checks.vm_probe(lab, host.name)))
    rows = checks.vm_rows(lab, host.name, sections)
    if host.name == CLIENT:
        rows += checks.client_rows(lab, sections)
    _record(rows)
    yield from ()  # a check yields no command


def _list_pools(api) -> tuple[list[dict], str]:
    errors = []
    for api_version in IPPOOL_API_VERSIONS:
        try:
            return api.list(api_version, "IPPool"), ""
        except KubeError as exc:
            errors.append(f"{api_version}: {exc}")
    return [], "; ".join(errors)


def cluster_rows(lab, api) -> list[checks.Row]:
    """Every row read from the Kubernetes API (nodes, Calico, the pool, YaoBank)."""
    namespace = checks.CALICO_NAMESPACE
    rows = checks.node_rows(lab, api.list("v1", "Node"))
    rows.append(checks.tigerastatus_row(api.list("operator.tigera.io/v1", "TigeraStatus")))
    rows += checks.calico_component_rows(
        lab,
        api.get("apps/v1", "DaemonSet", "calico-node", namespace),
        {name: api.get("apps/v1", "Deployment", name, namespace) for name in CALICO_DEPLOYMENTS},
    )
    pools, error = _list_pools(api)
    rows.append(checks.ippool_row(lab, pools, error))
    deployments = {name: api.get("apps/v1", "Deployment", name, lab.yaobank_namespace) for name in YAOBANK_DEPLOYMENTS}
    rows += checks.yaobank_rows(lab, deployments, checks.expected_replicas(render_manifest(lab, "yaobank")))
    return rows


def _api_down_rows(lab, why: str) -> list[checks.Row]:
    hint = checks.on_vm(SERVER, "sudo systemctl status k3s")
    return [checks.Row((checks.K3S, 1, 0), "Kubernetes API answers", False, why, hint)]


@operation()
def cluster_checked(lab):
    """Check the cluster through its API: nodes, TigeraStatus, Calico's components, the IPPool,
    YaoBank, through the run's Kubernetes connection. Attach to control (its ``k3s kubectl`` is the
    fallback way in; a control that is not Running is not checked).

    .. code:: python

        checks.cluster_checked(name="Check: the cluster", lab=lab)
    """
    if _planning():
        return
    from calicolab.operations.kubernetes import kube_session

    control_state = checks.report_of(state).vm_states.get(SERVER, "Running")
    if control_state != "Running":  # the API runs on control; its k3s kubectl would start a stopped VM
        _record(_api_down_rows(lab, f"not checked: {SERVER} is {control_state}"))
        return
    try:
        rows = cluster_rows(lab, kube_session(lab, host))
    except KubeError as exc:
        rows = _api_down_rows(lab, f"not reachable or reading failed: {exc}")
    _record(rows)
    yield from ()  # a check yields no command


def _not_checked_rows(lab) -> list[checks.Row]:
    """A failing row for each lab host that failed earlier in the run: its checks never ran, so the
    table must not read as a pass."""
    failed = {h.name for h in state.failed_hosts}
    return [
        checks.Row((0, index, 0), f"{name}: checks ran", False, "not checked: an earlier step failed on this host",
                   "fix the error shown above, then: " + checks.DEPLOY_COMMAND)
        for index, name in enumerate(["@local", *lab.vms])
        if name in failed
    ]


def _print_card(lab) -> checks.Report | None:
    """Print the report card on the first host that gets here; None on every other host."""
    card = checks.report_of(state)
    if card.printed:
        host.noop("printed by another host")
        return None
    card.printed = True
    card.add(_not_checked_rows(lab))
    click.echo("\n" + checks.render_table(card.sorted_rows()) + "\n", err=True)
    return card


@operation()
def report(lab):
    """Print the report card once (plain text on stderr, so ``--json`` output stays JSON) and fail
    the run when a check failed. Call it on every host, last.

    .. code:: python

        checks.report(name="Report card", lab=lab)
    """
    if _planning():
        return
    card = _print_card(lab)
    if card is None:
        return
    failed, total = len(card.failures()), len(card.rows)
    if failed:
        yield FunctionCommand(fail_with(f"report card: {failed} of {total} check(s) failed"), (), {})
        return
    host.noop(f"all {total} checks passed")


@operation()
def bundle_written(lab):
    """Print the report card and write a diagnostics bundle (whatever the checks found); print its
    path. Call it on every host, last (``diagnose.py``). Never a change: the bundle lives in the
    local state folder, like a log.

    .. code:: python

        checks.bundle_written(name="Diagnostics bundle", lab=lab)
    """
    if _planning():
        return
    card = _print_card(lab)
    if card is None:
        return
    from calicolab.diagnose import collect_bundle

    handler = getattr(state, "calicolab_collect_on_failure", None)
    path = collect_bundle(lab, card, handler.run_log.lines if handler else (), reason="requested with diagnose.py")
    logger.warning(f"--> Diagnostics bundle (secrets masked): {path}")
    host.noop(f"bundle written to {path}")
    yield from ()  # a check yields no command
