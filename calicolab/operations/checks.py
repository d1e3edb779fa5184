"""Read-only operations that fill the report card (:mod:`calicolab.checks`) and print it once.

Every operation here is a check: it never yields a command that changes anything, so a run reports
"No changes" for each of them, and ``--dry`` and a real run agree. Observations are taken while the
run executes, after the deploy's earlier phases; what the deploy read while it was planned (the VM
list, each VM's probe) stands only when all its rows passed and no step has changed anything since.
A VM the connector finds not running is never exec'd into (``multipass exec`` would start it): its
rows fail with that reason.

* ``observed(lab)`` — on every host at once: on the workstation ``multipass list`` (one row per VM);
  on each VM one probe script, one round trip (addresses, names, MSS rule, services, FTP; on host1 also
  BIRD, the YaoBank page and ubuntu's kubectl/calicoctl); on control also the Kubernetes reads, from
  the workstation;
* ``report(lab)`` — on every host: prints the table once and fails the run if a row failed.
"""

from __future__ import annotations

import click
from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.context import ctx_state

from calicolab import checks
from calicolab import multipass as mp
from calicolab.connectors.multipass import VmNotRunning
from calicolab.constants import CLIENT, SERVER
from calicolab.kube.client import KubeError
from calicolab.diagnose import list_instances
from calicolab.operations.common import fail_with, reading_stands
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


def _instance_rows(lab) -> list[checks.Row]:
    """One row per lab VM from ``multipass list`` on the workstation: exists and Running. The list taken
    while the run connected stands when every row passed and no step has changed anything since."""
    rows = checks.vm_state_rows(lab, mp.instances_while_planned(ctx_state.get(), lab.multipass_bin))
    if reading_stands(all(row.ok for row in rows)):
        return rows
    instances, error = list_instances(lab)
    return checks.vm_state_rows(lab, instances, error)


def _probe(command: str) -> tuple[str | None, str]:
    """Run a probe as root on the current VM: ``(None, output)``, or ``(state, "")`` when the connector
    finds the VM not running (``state`` None: it does not exist). A probe never fails as a whole."""
    try:
        _ok, output = host.run_shell_command(
            StringCommand(command), print_output=False, print_input=False, _sudo=True, _timeout=PROBE_TIMEOUT
        )
    except Exception as exc:  # a probe that cannot run is an observation, not a crash
        return None, f"probe failed: {type(exc).__name__}: {exc}"
    if isinstance(output, VmNotRunning):
        return output.state or "Absent", ""
    return None, "\n".join(x for x in (getattr(output, "stdout", ""), getattr(output, "stderr", "")) if x)


def _rows_of(lab, output: str) -> list[checks.Row]:
    sections = checks.split_sections(output)
    rows = checks.vm_rows(lab, host.name, sections)
    if host.name == CLIENT:
        rows += checks.client_rows(lab, sections)
    return rows


def _vm_rows(lab, planned_probe: str | None) -> tuple[str, list[checks.Row]]:
    """This VM's state ("Running" or why not) and its rows from one probe script: the one run with the
    deploy's read of the VM while it was planned, when every row passed and nothing changed since,
    else one run now."""
    if planned_probe is not None:
        rows = _rows_of(lab, planned_probe)
        if reading_stands(all(row.ok for row in rows)):
            return "Running", rows
    not_running, output = _probe(checks.vm_probe(lab, host.name))
    if not_running:
        return not_running, checks.not_checked_rows(lab, host.name, f"not checked: the VM is {not_running}")
    return "Running", _rows_of(lab, output)


@operation()
def observed(lab, planned_probe: str | None = None):
    """Take every check of the report card that belongs to this host; call it on every host (one step,
    so all hosts look at the same time):

    * the workstation: ``multipass list``, one row per VM;
    * each VM: one probe script (addresses, names, MSS clamp, k3s/vsftpd/BIRD, host1's tools);
    * control also: the cluster through the run's Kubernetes connection.

    A VM is looked into only when the connector finds it running, as for every other step of the run
    (``multipass exec`` would start a stopped VM): otherwise its rows fail with its state. With
    ``planned_probe``, what the VM's probe printed when the deploy read the VM while it was planned
    (``VmNow.probe``): it stands when every row passed and no step of the run has changed anything
    since, so a converged lab is looked into once per run; otherwise the VM is probed again.

    .. code:: python

        checks.observed(name="Check: VMs, inside each VM, the cluster", lab=lab)
    """
    if _planning():
        return
    if host.name == "@local":
        _record(_instance_rows(lab))
    elif host.name in lab.vms:
        vm_state, rows = _vm_rows(lab, planned_probe)
        _record(rows)
        if host.name == SERVER:
            _record(_cluster_rows_of_control(lab, vm_state))
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
    rows.append(checks.tigerastatus_row(lab, api.list("operator.tigera.io/v1", "TigeraStatus")))
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
    hint = checks.on_vm(lab, SERVER, "sudo systemctl status k3s")
    return [checks.Row((checks.K3S, 1, 0), "Kubernetes API answers", False, why, hint)]


def _cluster_rows_of_control(lab, control_state: str) -> list[checks.Row]:
    """The cluster's rows (nodes, TigeraStatus, Calico's components, the IPPool, YaoBank) through the
    run's Kubernetes connection; none of them when control is not running (the API runs there, and
    the ``k3s kubectl`` way in would start a stopped VM)."""
    from calicolab.operations.kubernetes import kube_session

    if control_state != "Running":
        return _api_down_rows(lab, f"not checked: {SERVER} is {control_state}")
    try:
        return cluster_rows(lab, kube_session(lab, host))
    except KubeError as exc:
        return _api_down_rows(lab, f"not reachable or reading failed: {exc}")


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
