"""pyinfra operations that talk to the lab's Kubernetes API (attach them to the ``control`` host).

The API calls run on the workstation through the run's one connection (:func:`kube_session`, kept on
pyinfra's ``state``, made at the first request and reused by every operation, in planning and in
execution); when the API is not routable from the workstation they run as ``k3s kubectl`` on control
through the connector, and the run says so once.

* ``applied(manifest_yaml, lab, manifest=...)`` — server-side apply of a multi-document manifest;
  change detection by server-side dry run, unified diffs with ``--diff``.
* ``crds_established(names, timeout=None, lab=None)``
* ``tigerastatus_available(status="calico", timeout=None, lab=None)``
* ``pools_as_set(installation_yaml, timeout=None, lab=None)`` — the operator-owned IPPools match the
  Installation and ``tigerastatus/ippools`` is Available.
* ``live_pool_problems(lab, installation_yaml)`` — not an operation: settings the live cluster cannot take
  (a pool's block size), for the deploy to refuse before anything changes.
* ``nodes_ready(names=None, timeout=None, lab=None)``
* ``rolled_out(namespace, names, timeout=None, lab=None)``
* ``http_answers(url, expect, timeout=None, lab=None)`` — attach to host1: ``curl`` must return a
  page containing ``expect``.

Each op decides "change" before its first yield; satisfied → ``host.noop``. Work happens in one
FunctionCommand that returns False (a clean "Error" for the host) after logging step, host and cause.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state

from calicolab import multipass as mp
from calicolab.constants import SERVER
from calicolab.kube import pools as kpools
from calicolab.kube import waits
from calicolab.kube.apply import (
    ApplyFailed,
    apply_objects,
    order_objects,
    parse_manifest,
    plan_apply,
)
from calicolab.kube.client import REQUEST_TIMEOUT, ApiUnreachable, KubeApi, KubeError, Session, connect, object_ref
from calicolab.model import lab_for_host
from calicolab.operations.common import fail_with, print_once, reading_stands
from calicolab.polling import Check, Transient, poll

#: seconds a single curl may take in http_answers
CURL_MAX_TIME = 5

# --- the run's connection ---------------------------------------------------------------------------


@dataclass
class KubeRun:
    """What a run keeps about the Kubernetes API (on pyinfra's ``state``): the connection, whether it was
    made while executing, and the reasons for "not reachable" already told in full."""

    session: Session
    executing: bool
    told: set[str] = field(default_factory=set)


def control_addresses(lab) -> list[str]:
    """Control's IPv4 addresses as ``multipass list`` reports them (its DHCP address first), the ones the
    workstation can route to; ``[]`` when Multipass cannot tell (then the kubeconfig's server and the
    management ip are tried alone)."""
    try:
        instances = mp.planned_instances(ctx_state.get(), lab.multipass_bin)
    except mp.MultipassUnavailable:
        return []
    return [str(address) for address in (instances.get(SERVER) or {}).get("ipv4") or []]


def _kube_run(lab, the_host=None) -> KubeRun:
    runs: dict[str, KubeRun] | None = getattr(state, "calicolab_kube", None)
    if runs is None:
        runs = {}
        state.calicolab_kube = runs
    key = str(lab.state_path)
    run = runs.get(key)
    if run is None:
        control = the_host if the_host is not None else ctx_host.get()  # the Host itself, not the proxy
        run = KubeRun(
            Session(
                lambda: connect(lab, host=control, addresses=control_addresses(lab)),
                log=lambda message: control.log_styled(message, fg="yellow", log_func=logger.warning),
            ),
            state.is_executing,
        )
        runs[key] = run
    if run.executing != state.is_executing:  # execution may find what planning could not reach
        run.executing = state.is_executing
        run.session.forget_failure()
    return run


def kube_session(lab, the_host=None) -> Session:
    """The run's connection to the lab's API: made on first use (direct, else ``k3s kubectl`` on
    ``the_host``, control), then shared by every operation, wait and the report card.

    Example: ``kube_session(lab).get("v1", "Node", "control")``
    """
    return _kube_run(lab, the_host).session


def _why(lab, exc: Exception) -> str:
    """Why the API was not reachable: in full the first time in a run, then by reference."""
    reason = str(exc)
    told = _kube_run(lab).told
    if reason in told:
        return " (same reason as above)"
    told.add(reason)
    return f" ({reason})"


def kubectl_hint(lab) -> str:
    """How a user runs kubectl against the lab from the workstation, for next-step commands
    (works wherever Multipass does, with no kubeconfig): ``multipass exec control -- sudo k3s kubectl``."""
    return f"{mp.typed_client(lab.multipass_bin)} exec {SERVER} -- sudo k3s kubectl"


def _error(the_host, step: str, cause: Any) -> bool:
    return fail_with(f"{step} failed on {the_host.name}: {cause}")(state, the_host)


def _installation(objects: list[dict]) -> dict | None:
    return next((obj for obj in objects if obj.get("kind") == "Installation"), None)


def _review_pools(api: KubeApi, installation: dict | None, lab) -> tuple[str, bool]:
    """(message, blocked) for the Installation's pools against the live IPPools (see kube.pools)."""
    if installation is None:
        return "", False
    plan = kpools.plan_pools(installation, api.list(kpools.IPPOOL_API, "IPPool"))
    if not plan.needs_apiserver and not plan.block_sizes:
        return "", False
    # the operator can change pools through the Calico API server: set Enabled (this run applies it before
    # the Installation) or already in the cluster
    apiserver = lab.calico_apiserver == "Enabled" or (
        api.get("operator.tigera.io/v1", "APIServer", "default") is not None
    )
    return kpools.review_message(plan, apiserver)


# --- applied ----------------------------------------------------------------------------------------


def _apply_now(state, host, manifest_yaml: str, lab, manifest: str) -> bool:
    step = f"apply {manifest} manifest"
    try:
        objects = parse_manifest(manifest_yaml)
        api = kube_session(lab, host)
        # Decided on the live pools now: an Installation the operator cannot apply is not applied at all.
        message, blocked = _review_pools(api, _installation(objects), lab)
        if blocked:
            return _error(host, step, message)
        api.current()
        host.log(f"{step}: {len(objects)} object(s) via {api.description}")
        result = apply_objects(api, objects, log=lambda message: host.log(f"  {message}"))
    except ApplyFailed as exc:
        return _error(host, f"{step} ({exc.ref})", f"{exc.cause} [{exc.result.summary()}]")
    except KubeError as exc:
        return _error(host, step, exc)
    host.log(f"{step}: {result.summary()}")
    return True


@operation()
def applied(manifest_yaml: str, lab=None, manifest: str = "manifest"):
    """Server-side apply every object of ``manifest_yaml`` (field manager ``calicolab``).

    + manifest_yaml: multi-document YAML (e.g. ``render_manifest(lab, "tigera-operator")``)
    + lab: the Lab (default: ``lab_for_host(host)``)
    + manifest: a short label for messages, e.g. ``"tigera-operator"``
    """
    lab = lab or lab_for_host(host)
    objects = order_objects(parse_manifest(manifest_yaml))
    refs = [object_ref(obj) for obj in objects]
    command = FunctionCommand(_apply_now, (manifest_yaml, lab, manifest), {})
    api = kube_session(lab)
    try:
        plans = plan_apply(api, objects)
        pool_message, pool_blocked = _review_pools(api, _installation(objects), lab)
    except ApiUnreachable as exc:
        host.log(f"API not reachable: {len(objects)} object(s) will be applied: {', '.join(refs)}{_why(lab, exc)}")
        yield command
        return
    except KubeError as exc:
        host.log(f"cannot compare {manifest} with the cluster ({exc}): assuming {len(objects)} object(s) will be applied")
        yield command
        return

    # The body runs in planning and again in execution: both the dry and the real run say it.
    if pool_message:
        host.log_styled(pool_message, fg="red" if pool_blocked else "yellow", bold=True, log_func=logger.warning)
    first_look = print_once()
    for plan in plans:
        if plan.action == "conflict" and first_look:
            host.log_styled(plan.note, fg="red", log_func=logger.warning)

    changed = [p for p in plans if p.action != "unchanged"]
    if not changed:
        host.noop(f"{manifest}: {len(plans)} object(s) unchanged")
        return

    if state.config.DIFF and first_look:
        for plan in changed:
            if plan.diff:
                host.log(f"{manifest}: {plan.action} {plan.ref}\n{plan.diff.rstrip()}")
    if first_look:
        summary = ", ".join(f"{p.action} {p.ref}" for p in changed)
        host.log(f"{manifest}: {len(changed)} of {len(plans)} object(s) will change: {summary}")
    yield command


# --- waits -------------------------------------------------------------------------------------


def _wait_command(step: str, lab, wait: Callable[[KubeApi, Callable[[str], Any]], Any]) -> FunctionCommand:
    def wait_now(state, host, step: str, lab) -> bool:
        try:
            result = wait(kube_session(lab, host), host.log)
        except KubeError as exc:
            return _error(host, step, exc)
        for line in result if isinstance(result, list) else [result]:
            host.log(line)
        return True

    wait_now.__name__ = "wait_" + step.split()[0].replace("/", "_")
    return FunctionCommand(wait_now, (step, lab), {})


def _wait_op(step: str, lab, probe: Callable[[KubeApi], waits.Watched], wait) -> Iterable:
    """Shared body: one look with the wait's own probe; satisfied → noop, else yield the waiting command."""
    command = _wait_command(step, lab, wait)
    try:
        check = probe(kube_session(lab))(REQUEST_TIMEOUT)
    except Transient as exc:
        host.log(f"API not reachable: will wait for {step}{_why(lab, exc)}")
        yield command
        return
    except KubeError as exc:
        check = Check(False, f"cannot check: {exc}")
    if check.done:
        host.noop(check.message)
        return
    host.log(f"will wait for {step}: {check.message}")
    yield command


@operation()
def crds_established(names: list[str], timeout: float | None = None, lab=None):
    """Wait until the CustomResourceDefinitions ``names`` are Established."""
    lab = lab or lab_for_host(host)
    names = list(names)
    timeout = lab.timeout_operator_ready if timeout is None else timeout
    yield from _wait_op(
        f"CRDs {', '.join(names)} Established",
        lab,
        lambda api: waits.crds_probe(api, names),
        lambda api, log: waits.wait_crds_established(api, names, timeout, log, kubectl=kubectl_hint(lab)),
    )


@operation()
def tigerastatus_available(status: str = "calico", timeout: float | None = None, lab=None):
    """Wait until ``tigerastatus/<status>`` is Available=True (Degraded too long → error)."""
    lab = lab or lab_for_host(host)
    timeout = lab.timeout_calico_available if timeout is None else timeout
    yield from _wait_op(
        f"tigerastatus/{status} Available",
        lab,
        lambda api: waits.tigerastatus_probe(api, status),
        lambda api, log: waits.wait_tigerastatus(api, status, timeout, log, kubectl=kubectl_hint(lab)),
    )


@operation()
def pools_as_set(installation_yaml: str, timeout: float | None = None, lab=None):
    """Wait until the operator-owned IPPools match the Installation of ``installation_yaml`` (CIDR, block
    size, natOutgoing, encapsulation) and ``tigerastatus/ippools`` is Available.

    + installation_yaml: the rendered Installation, e.g. ``render_manifest(lab, "installation")``
    + timeout: seconds (default ``lab.timeout_calico_available``)
    + lab: the Lab (default: ``lab_for_host(host)``)
    """
    lab = lab or lab_for_host(host)
    timeout = lab.timeout_calico_available if timeout is None else timeout
    installation = _installation(parse_manifest(installation_yaml)) or {}
    yield from _wait_op(
        "the IP pools as set (tigerastatus/ippools Available)",
        lab,
        lambda api: waits.pools_probe(api, installation),
        lambda api, log: waits.wait_pools(api, installation, timeout, log),
    )


def live_pool_problems(lab, installation_yaml: str, the_host=None) -> list[str]:
    """Pool settings the live cluster cannot take (an existing pool's block size), each naming the setting
    and the fix; ``[]`` when the API is not reachable (nothing is installed to compare with).

    Example: ``live_pool_problems(lab, render_manifest(lab, "installation"))`` →
    ``["calico_pool_block_size: 24 differs from the live IPPool default-ipv4-ippool ..."]``"""
    the_host = the_host if the_host is not None else ctx_host.get()
    try:
        installation = _installation(parse_manifest(installation_yaml)) or {}
        live = kube_session(lab, the_host).list(kpools.IPPOOL_API, "IPPool")
    except ApiUnreachable:
        return []
    except KubeError as exc:
        the_host.log(f"cannot compare the pool settings with the cluster ({exc}); the Calico phase checks again")
        return []
    return kpools.block_size_problems(kpools.plan_pools(installation, live))


def default_node_names(lab) -> list[str]:
    return [vm.name for vm in lab.vms.values() if vm.role in ("server", "agent")]


@operation()
def nodes_ready(names: list[str] | None = None, timeout: float | None = None, lab=None):
    """Wait until the nodes ``names`` (default: control and the agents) are registered and Ready."""
    lab = lab or lab_for_host(host)
    names = list(names) if names else default_node_names(lab)
    timeout = lab.timeout_nodes_ready if timeout is None else timeout
    yield from _wait_op(
        f"nodes {', '.join(names)} Ready",
        lab,
        lambda api: waits.nodes_probe(api, names),
        lambda api, log: waits.wait_nodes_ready(api, names, timeout, log, kubectl=kubectl_hint(lab)),
    )


@operation()
def rolled_out(
    namespace: str,
    names: list[str],
    timeout: float | None = None,
    lab=None,
    image_setting: str | None = None,
):
    """Wait until each Deployment ``names`` in ``namespace`` is rolled out (kubectl's rule).

    + image_setting: the setting that names the deployments' images, named when an image cannot be
      pulled (e.g. ``"yaobank_images"``)

    A failure names each pod's reason (ImagePullBackOff, CrashLoopBackOff, Pending with the
    scheduler's message), its events and the next command to run.
    """
    lab = lab or lab_for_host(host)
    names = list(names)
    timeout = lab.timeout_rollout if timeout is None else timeout
    yield from _wait_op(
        f"rollout of {', '.join(names)} -n {namespace}",
        lab,
        lambda api: waits.rollouts_probe(api, namespace, names),
        lambda api, log: waits.wait_rollouts(
            api, namespace, names, timeout, log, kubectl=kubectl_hint(lab), image_setting=image_setting
        ),
    )


# --- HTTP answer (run on host1) --------------------------------------------------------------------


def _curl(the_host, url: str, max_time: float) -> tuple[bool, str]:
    """(answered, page or curl's error). A connector that cannot run the command is ``Transient``."""
    max_time = max(1, min(CURL_MAX_TIME, int(max_time)))
    command = StringCommand(f"curl -fsS --max-time {max_time:g} {shlex.quote(url)}")
    try:
        ok, output = the_host.run_shell_command(
            command, print_output=False, print_input=False, _timeout=max_time + 10
        )
    except (OSError, TimeoutError, PyinfraError) as exc:
        raise Transient(f"cannot run curl on {the_host.name}: {type(exc).__name__}: {exc}") from exc
    text = getattr(output, "stdout", "") or ""
    if not ok:
        text = (getattr(output, "stderr", "") or text).strip()
    return bool(ok), text


def _http_check(the_host, url: str, expect: str, remaining: float = CURL_MAX_TIME) -> Check:
    ok, text = _curl(the_host, url, remaining)
    if ok and waits.http_check(text, expect):
        return Check(True, f"{url} answers with {expect!r}")
    if ok:
        return Check(False, f"{url} answered without {expect!r}")
    return Check(False, f"curl {url}: {text.splitlines()[-1] if text else 'failed'}")


def _wait_http(state, host, url: str, expect: str, timeout: float) -> bool:
    check = poll(f"{url} to answer", timeout, lambda remaining: _http_check(host, url, expect, remaining), host.log)
    if check.done:
        host.log(check.message)
        return True
    return _error(host, f"check {url} answers", f"{waits.TIMED_OUT} after {timeout:g}s: {check.message}")


@operation()
def http_answers(url: str, expect: str, timeout: float | None = None, lab=None, answered_when_read: bool = False):
    """Read-only check from this host: ``curl -fsS --max-time 5 URL`` must contain ``expect``.
    Already answering → no change; else one FunctionCommand retries until ``timeout``
    (default ``lab.timeout_app_answer``). ``answered_when_read``: the page answered when the deploy
    read this host while it was planned; that stands while no step of the run has changed anything.
    """
    if reading_stands(answered_when_read):
        host.noop(f"{url} answered with {expect!r} when the deploy read {host.name}; nothing changed since")
        return
    if timeout is None:
        timeout = (lab or lab_for_host(host)).timeout_app_answer
    try:
        check = _http_check(host, url, expect)
    except Transient as exc:
        check = Check(False, str(exc))
    if check.done:
        host.noop(check.message)
        return
    host.log(f"will wait up to {int(timeout)}s for {url} to answer with {expect!r}")
    yield FunctionCommand(_wait_http, (url, expect, timeout), {})
