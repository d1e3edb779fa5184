"""pyinfra operations that talk to the lab's Kubernetes API (attach them to the ``control`` host).

The API calls run on the workstation (``calicolab.kube.client``); when the API is not routable from
the workstation they run as ``k3s kubectl`` on control through the connector, and say so.

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
import time
from typing import Any, Callable, Iterable

from pyinfra import host, logger, state
from pyinfra.api import FunctionCommand, StringCommand, operation

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
from calicolab.kube.client import KubeApi, KubeError, connect, object_ref
from calicolab.operations.common import print_once

#: seconds a single curl may take in http_answers
CURL_MAX_TIME = 5

# --- helpers -------------------------------------------------------------------------------------


_reasons_told: set[str] = set()


def _why(exc: Exception) -> str:
    """Why the API was not reachable: in full the first time in a run, then by reference."""
    reason = str(exc)
    if reason in _reasons_told:
        return " (same reason as above)"
    _reasons_told.add(reason)
    return f" ({reason})"


def _lab(lab):
    if lab is not None:
        return lab
    from calicolab.model import lab_for_host

    return lab_for_host(host)


def _extra_addresses(the_host) -> list[str]:
    """Further API addresses to probe after the kubeconfig's server and control's management ip:
    the instance's addresses from ``multipass list`` (kept by the multipass connector in
    ``host.connector_data["multipass_ipv4"]``) and host data ``kube_api_addresses`` (a list or a
    comma-separated string)."""
    addresses: list[str] = []
    connector_data = getattr(the_host, "connector_data", None) or {}
    addresses += [str(a) for a in connector_data.get("multipass_ipv4") or []]
    data = getattr(the_host, "data", None)
    value = data.get("kube_api_addresses") if data is not None else None
    if isinstance(value, str):
        addresses += [v.strip() for v in value.split(",") if v.strip()]
    elif value:
        addresses += [str(v) for v in value]
    return addresses


def _connect(the_host, lab) -> KubeApi:
    """Direct API or the k3s kubectl fallback (logged); raises ApiUnreachable."""
    return connect(
        lab,
        host=the_host,
        extra_addresses=_extra_addresses(the_host),
        log=lambda message: the_host.log_styled(message, fg="yellow", log_func=logger.warning),
    )


def kubectl_hint(lab) -> str:
    """How a user runs kubectl against the lab from the workstation, for next-step commands
    (works wherever Multipass does, with no kubeconfig): ``multipass exec control -- sudo k3s kubectl``."""
    return f"{lab.multipass_bin} exec {SERVER} -- sudo k3s kubectl"


def _error(the_host, step: str, cause: Any) -> bool:
    the_host.log_styled(f"{step} failed on {the_host.name}: {cause}", fg="red", log_func=logger.error)
    return False


def _installation(objects: list[dict]) -> dict | None:
    return next((obj for obj in objects if obj.get("kind") == "Installation"), None)


def _apiserver_present(api: KubeApi, lab) -> bool:
    """The operator can change pools through the Calico API server: set Enabled (this run applies it before
    the Installation) or already in the cluster."""
    if lab.calico_apiserver == "Enabled":
        return True
    return api.get("operator.tigera.io/v1", "APIServer", "default") is not None


def _review_pools(api: KubeApi, installation: dict | None, lab) -> tuple[str, bool]:
    """(message, blocked) for the Installation's pools against the live IPPools (see kube.pools)."""
    if installation is None:
        return "", False
    plan = kpools.plan_pools(installation, api.list(kpools.IPPOOL_API, "IPPool"))
    if not plan.needs_apiserver and not plan.block_sizes:
        return "", False
    return kpools.review_message(plan, _apiserver_present(api, lab))


def _log_pool_review(the_host, message: str, blocked: bool) -> None:
    if message:
        the_host.log_styled(message, fg="red" if blocked else "yellow", bold=True, log_func=logger.warning)


# --- applied ----------------------------------------------------------------------------------------


def _apply_now(state, host, manifest_yaml: str, lab, manifest: str) -> bool:
    step = f"apply {manifest} manifest"
    try:
        objects = parse_manifest(manifest_yaml)
        api = _connect(host, lab)
    except KubeError as exc:
        return _error(host, step, exc)
    try:
        # Decided on the live pools now: an Installation the operator cannot apply is not applied at all.
        message, blocked = _review_pools(api, _installation(objects), lab)
        if blocked:
            return _error(host, step, message)
        host.log(f"{step}: {len(objects)} object(s) via {api.description}")
        result = apply_objects(api, objects, log=lambda message: host.log(f"  {message}"))
    except ApplyFailed as exc:
        return _error(host, f"{step} ({exc.ref})", f"{exc.cause} [{exc.result.summary()}]")
    except KubeError as exc:
        return _error(host, step, exc)
    except Exception as exc:  # never let a bug abort the whole run
        return _error(host, step, f"unexpected {type(exc).__name__}: {exc}")
    finally:
        api.close()
    host.log(f"{step}: {result.summary()}")
    return True


@operation()
def applied(manifest_yaml: str, lab=None, manifest: str = "manifest"):
    """Server-side apply every object of ``manifest_yaml`` (field manager ``calicolab``).

    + manifest_yaml: multi-document YAML (e.g. ``render_manifest(lab, "tigera-operator")``)
    + lab: the Lab (default: ``lab_for_host(host)``)
    + manifest: a short label for messages, e.g. ``"tigera-operator"``
    """
    lab = _lab(lab)
    objects = order_objects(parse_manifest(manifest_yaml))
    refs = [object_ref(obj) for obj in objects]
    command = FunctionCommand(_apply_now, (manifest_yaml, lab, manifest), {})
    try:
        api = _connect(host, lab)
    except KubeError as exc:
        host.log(f"API not reachable: {len(objects)} object(s) will be applied: {', '.join(refs)}{_why(exc)}")
        yield command
        return
    try:
        plans = plan_apply(api, objects)
        pool_message, pool_blocked = _review_pools(api, _installation(objects), lab)
    except KubeError as exc:
        host.log(f"cannot compare {manifest} with the cluster ({exc}): assuming {len(objects)} object(s) will be applied")
        yield command
        return
    finally:
        api.close()

    # The body runs in planning and again in execution: both the dry and the real run say it.
    _log_pool_review(host, pool_message, pool_blocked)
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
            api = _connect(host, lab)
        except KubeError as exc:
            return _error(host, step, exc)
        try:
            result = wait(api, host.log)
        except KubeError as exc:
            return _error(host, step, exc)
        except Exception as exc:  # never let a bug abort the whole run
            return _error(host, step, f"unexpected {type(exc).__name__}: {exc}")
        finally:
            api.close()
        for line in result if isinstance(result, list) else [result]:
            host.log(line)
        return True

    wait_now.__name__ = "wait_" + step.split()[0].replace("/", "_")
    return FunctionCommand(wait_now, (step, lab), {})


def _wait_op(step: str, lab, probe: Callable[[KubeApi], waits.Check], wait) -> Iterable:
    """Shared body: satisfied now → noop; else yield the waiting FunctionCommand."""
    command = _wait_command(step, lab, wait)
    try:
        api = _connect(host, lab)
    except KubeError as exc:
        host.log(f"API not reachable: will wait for {step}{_why(exc)}")
        yield command
        return
    try:
        check = probe(api)
    except KubeError as exc:
        check = waits.Check(False, f"cannot check: {exc}")
    finally:
        api.close()
    if check.done:
        host.noop(check.message)
        return
    host.log(f"will wait for {step}: {check.message}")
    yield command


@operation()
def crds_established(names: list[str], timeout: float | None = None, lab=None):
    """Wait until the CustomResourceDefinitions ``names`` are Established."""
    lab = _lab(lab)
    names = list(names)
    timeout = lab.timeout_operator_ready if timeout is None else timeout

    def probe(api):
        checks = [
            waits.crd_established(api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", n), n)
            for n in names
        ]
        pending = [c.message for c in checks if not c.done]
        return waits.Check(not pending, "; ".join(pending) or f"CRDs Established: {', '.join(names)}")

    yield from _wait_op(
        f"CRDs {', '.join(names)} Established",
        lab,
        probe,
        lambda api, log: waits.wait_crds_established(api, names, timeout, log, kubectl=kubectl_hint(lab)),
    )


@operation()
def tigerastatus_available(status: str = "calico", timeout: float | None = None, lab=None):
    """Wait until ``tigerastatus/<status>`` is Available=True (Degraded too long → error)."""
    lab = _lab(lab)
    timeout = lab.timeout_calico_available if timeout is None else timeout

    def probe(api):
        return waits.tigerastatus_check(api.get("operator.tigera.io/v1", "TigeraStatus", status), status)

    yield from _wait_op(
        f"tigerastatus/{status} Available",
        lab,
        probe,
        lambda api, log: waits.wait_tigerastatus(api, status, timeout, log, kubectl=kubectl_hint(lab)),
    )


def _pools_probe(installation: dict, api: KubeApi) -> waits.Check:
    return kpools.pools_check(
        installation,
        api.list(kpools.IPPOOL_API, "IPPool"),
        api.get("operator.tigera.io/v1", "TigeraStatus", "ippools"),
    )


def _wait_pools(api: KubeApi, installation: dict, timeout: float, log) -> str:
    """Poll until the pools are as set; a Degraded ``ippools`` may last ``waits.DEGRADED_GRACE`` seconds
    (the operator retries once the API server it waited for is Ready)."""
    degraded_since: dict[str, float] = {}

    def probe() -> waits.Check:
        check = _pools_probe(installation, api)
        if not check.failed:
            degraded_since.clear()
            return check
        since = degraded_since.setdefault("ippools", time.monotonic())
        if time.monotonic() - since < waits.DEGRADED_GRACE:
            return waits.Check(False, check.message)
        return check

    check = waits.Poller("the IP pools as set", timeout, log).run(probe)
    if check.done:
        return check.message
    prefix = "" if check.failed else f"{waits.TIMED_OUT} after {timeout:g}s: "
    hint = f". {kpools.WAYS_FORWARD}" if "API server is unavailable" in check.message else ""
    raise waits.WaitFailed(f"{prefix}{check.message}{hint}")


@operation()
def pools_as_set(installation_yaml: str, timeout: float | None = None, lab=None):
    """Wait until the operator-owned IPPools match the Installation of ``installation_yaml`` (CIDR, block
    size, natOutgoing, encapsulation) and ``tigerastatus/ippools`` is Available.

    + installation_yaml: the rendered Installation, e.g. ``render_manifest(lab, "installation")``
    + timeout: seconds (default ``lab.timeout_calico_available``)
    + lab: the Lab (default: ``lab_for_host(host)``)
    """
    lab = _lab(lab)
    timeout = lab.timeout_calico_available if timeout is None else timeout
    installation = _installation(parse_manifest(installation_yaml)) or {}
    yield from _wait_op(
        "the IP pools as set (tigerastatus/ippools Available)",
        lab,
        lambda api: _pools_probe(installation, api),
        lambda api, log: _wait_pools(api, installation, timeout, log),
    )


def live_pool_problems(lab, installation_yaml: str, the_host=None) -> list[str]:
    """Pool settings the live cluster cannot take (an existing pool's block size), each naming the setting
    and the fix; ``[]`` when the API is not reachable (nothing is installed to compare with).

    Example: ``live_pool_problems(lab, render_manifest(lab, "installation"))`` →
    ``["calico_pool_block_size: 24 differs from the live IPPool default-ipv4-ippool ..."]``"""
    the_host = the_host or host
    try:
        api = _connect(the_host, lab)
    except KubeError:
        return []
    try:
        installation = _installation(parse_manifest(installation_yaml)) or {}
        return kpools.block_size_problems(kpools.plan_pools(installation, api.list(kpools.IPPOOL_API, "IPPool")))
    except KubeError as exc:
        the_host.log(f"cannot compare the pool settings with the cluster ({exc}); the Calico phase checks again")
        return []
    finally:
        api.close()


def default_node_names(lab) -> list[str]:
    return [vm.name for vm in lab.vms.values() if vm.role in ("server", "agent")]


@operation()
def nodes_ready(names: list[str] | None = None, timeout: float | None = None, lab=None):
    """Wait until the nodes ``names`` (default: control and the agents) are registered and Ready."""
    lab = _lab(lab)
    names = list(names) if names else default_node_names(lab)
    timeout = lab.timeout_nodes_ready if timeout is None else timeout
    yield from _wait_op(
        f"nodes {', '.join(names)} Ready",
        lab,
        lambda api: waits.nodes_check(api.list("v1", "Node"), names),
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
    lab = _lab(lab)
    names = list(names)
    timeout = lab.timeout_rollout if timeout is None else timeout

    def probe(api):
        pending = []
        for n in names:
            dep = api.get("apps/v1", "Deployment", n, namespace)
            if dep is None:
                pending.append(f'deployment "{n}" not found')
                continue
            check = waits.rollout_status(dep)
            if not check.done:
                pending.append(check.message)
        return waits.Check(not pending, "; ".join(pending) or "rolled out: " + ", ".join(names))

    yield from _wait_op(
        f"rollout of {', '.join(names)} -n {namespace}",
        lab,
        probe,
        lambda api, log: waits.wait_rollouts(
            api, namespace, names, timeout, log, kubectl=kubectl_hint(lab), image_setting=image_setting
        ),
    )


# --- HTTP answer (run on host1) --------------------------------------------------------------------


def curl_command(url: str) -> StringCommand:
    return StringCommand(f"curl -fsS --max-time {CURL_MAX_TIME} {shlex.quote(url)}")


def _curl(the_host, url: str) -> tuple[bool, str]:
    try:
        ok, output = the_host.run_shell_command(
            curl_command(url), print_output=False, print_input=False, _timeout=CURL_MAX_TIME + 10
        )
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    text = getattr(output, "stdout", "") or ""
    if not ok:
        text = (getattr(output, "stderr", "") or text).strip()
    return bool(ok), text


def _wait_http(state, host, url: str, expect: str, timeout: float) -> bool:
    step = f"check {url} answers"
    detail = {"text": ""}

    def probe():
        ok, text = _curl(host, url)
        detail["text"] = text
        if ok and waits.http_check(text, expect):
            return waits.Check(True, f"{url} answers with {expect!r}")
        if ok:
            return waits.Check(False, f"{url} answered without {expect!r}")
        return waits.Check(False, f"curl {url}: {text.splitlines()[-1] if text else 'failed'}")

    check = waits.Poller(f"{url} to answer", timeout, host.log).run(probe)
    if check.done:
        host.log(check.message)
        return True
    return _error(host, step, f"{waits.TIMED_OUT} after {timeout:g}s: {check.message}")


@operation()
def http_answers(url: str, expect: str, timeout: float | None = None, lab=None):
    """Read-only check from this host: ``curl -fsS --max-time 5 URL`` must contain ``expect``.
    Already answering → no change; else one FunctionCommand retries until ``timeout``
    (default ``lab.timeout_app_answer``)."""
    if timeout is None:
        timeout = _lab(lab).timeout_app_answer
    ok, text = _curl(host, url)
    if ok and waits.http_check(text, expect):
        host.noop(f"{url} answers with {expect!r}")
        return
    host.log(f"will wait up to {int(timeout)}s for {url} to answer with {expect!r}")
    yield FunctionCommand(_wait_http, (url, expect, timeout), {})
