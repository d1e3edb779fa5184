"""Waiting for the cluster: deployment rollouts (kubectl's exact rule), CRDs Established,
TigeraStatus Available, nodes Ready, and an HTTP answer check.

Every wait polls with a growing interval (works the same over the direct API and the
``k3s kubectl`` fallback), logs progress periodically through ``log`` and, on timeout or failure,
raises :class:`WaitFailed` whose message names the object, its last conditions and related Events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from calicolab.kube.client import KubeApi, KubeError

#: first poll interval, growth factor, cap (seconds)
POLL_INITIAL = 1.0
POLL_FACTOR = 1.5
POLL_MAX = 5.0
#: a progress line at least this often (seconds), and whenever the state changes
PROGRESS_EVERY = 30.0
#: how long TigeraStatus may stay Degraded=True before the wait fails (seconds)
DEGRADED_GRACE = 60.0
#: Events listed in an error message, at most
MAX_EVENTS = 8

TIMED_OUT = "timed out waiting for the condition"


class WaitFailed(KubeError):
    """A wait ended without success (timeout or a definite failure)."""


# --- Pure checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    done: bool
    message: str
    failed: bool = False


def _condition(obj: dict, ctype: str) -> dict | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return cond
    return None


def rollout_status(deployment: dict) -> Check:
    """``kubectl rollout status`` for a Deployment (kubectl DeploymentStatusViewer.Status)."""
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = meta.get("name", "?")
    generation = meta.get("generation") or 0
    observed = status.get("observedGeneration") or 0
    if generation > observed:
        return Check(False, "Waiting for deployment spec update to be observed...")
    progressing = _condition(deployment, "Progressing")
    if progressing and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Check(False, f'deployment "{name}" exceeded its progress deadline', failed=True)
    updated = status.get("updatedReplicas") or 0
    replicas = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    wanted = spec.get("replicas")
    if wanted is not None and updated < wanted:
        return Check(
            False,
            f'Waiting for deployment "{name}" rollout to finish: {updated} out of {wanted} '
            "new replicas have been updated...",
        )
    if replicas > updated:
        return Check(
            False,
            f'Waiting for deployment "{name}" rollout to finish: {replicas - updated} old replicas '
            "are pending termination...",
        )
    if available < updated:
        return Check(
            False,
            f'Waiting for deployment "{name}" rollout to finish: {available} of {updated} updated '
            "replicas are available...",
        )
    return Check(True, f'deployment "{name}" successfully rolled out')


def crd_established(crd: dict | None, name: str) -> Check:
    if crd is None:
        return Check(False, f"customresourcedefinition/{name} does not exist yet")
    cond = _condition(crd, "Established")
    if cond and cond.get("status") == "True":
        return Check(True, f"customresourcedefinition/{name} Established")
    return Check(False, f"customresourcedefinition/{name} not Established yet ({format_conditions(crd)})")


def tigerastatus_check(obj: dict | None, name: str) -> Check:
    """Available ⇔ a condition Available with status "True" (the operator's own test).
    Degraded=True is reported as failed; the caller applies the grace period."""
    if obj is None:
        return Check(False, f"tigerastatus/{name} does not exist yet (the operator creates it)")
    available = _condition(obj, "Available")
    if available and available.get("status") == "True":
        return Check(True, f"tigerastatus/{name} Available")
    degraded = _condition(obj, "Degraded")
    if degraded and degraded.get("status") == "True":
        detail = ": ".join(x for x in (degraded.get("reason"), degraded.get("message")) if x)
        return Check(False, f"tigerastatus/{name} Degraded: {detail or 'no message'}", failed=True)
    return Check(False, f"tigerastatus/{name} not Available yet ({format_conditions(obj)})")


def nodes_check(nodes: list[dict], names: Iterable[str]) -> Check:
    by_name = {(n.get("metadata") or {}).get("name"): n for n in nodes}
    problems = []
    for name in names:
        node = by_name.get(name)
        if node is None:
            problems.append(f"{name} (not registered)")
            continue
        ready = _condition(node, "Ready")
        if not ready or ready.get("status") != "True":
            if ready:
                detail = ", ".join(x for x in (ready.get("reason"), ready.get("message")) if x)
                problems.append(f"{name} (Ready={ready.get('status')}{': ' + detail if detail else ''})")
            else:
                problems.append(f"{name} (no Ready condition yet)")
    names = list(names)
    if problems:
        return Check(False, "nodes not Ready: " + "; ".join(problems))
    return Check(True, f"nodes Ready: {', '.join(names)}")


def http_check(body: str, expect: str) -> bool:
    return expect in (body or "")


# --- Formatting helpers --------------------------------------------------------------------------


def format_conditions(obj: dict | None) -> str:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    if not conds:
        return "no conditions"
    parts = []
    for cond in conds:
        text = f"{cond.get('type')}={cond.get('status')}"
        detail = ": ".join(x for x in (cond.get("reason"), cond.get("message")) if x)
        parts.append(f"{text} ({detail})" if detail else text)
    return "; ".join(parts)


def related_events(
    api: KubeApi, namespace: str | None, match: Callable[[dict], bool], limit: int = MAX_EVENTS
) -> list[str]:
    """The newest Events (any kind) matching ``match`` on their involvedObject, formatted."""
    try:
        events = api.list("v1", "Event", namespace=namespace)
    except KubeError:
        return []
    chosen = [e for e in events if match(e.get("involvedObject") or {})]

    def when(event):
        return event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
            "creationTimestamp"
        ) or ""

    chosen.sort(key=when)
    lines = []
    for event in chosen[-limit:]:
        inv = event.get("involvedObject") or {}
        lines.append(
            f"{event.get('type', 'Normal')} {event.get('reason', '')} "
            f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}: {event.get('message', '')}".strip()
        )
    return lines


def _with_events(message: str, events: list[str]) -> str:
    if not events:
        return message + "; no related events"
    return message + "; events: " + " | ".join(events)


# --- The polling loop ----------------------------------------------------------------------------


class Poller:
    """Calls ``probe()`` (→ Check) with a growing interval until done, failed or timed out."""

    def __init__(
        self,
        what: str,
        timeout: float,
        log: Callable[[str], Any] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what = what
        self.timeout = float(timeout)
        self.log = log or (lambda message: None)
        self.sleep = sleep
        self.clock = clock

    def run(self, probe: Callable[[], Check]) -> Check:
        start = self.clock()
        deadline = start + self.timeout
        interval = POLL_INITIAL
        last_message = None
        last_log = start
        while True:
            try:
                check = probe()
            except KubeError as exc:  # transient API trouble: keep trying until the deadline
                check = Check(False, f"API error: {exc}")
            now = self.clock()
            if check.done or check.failed:
                return check
            if check.message != last_message or now - last_log >= PROGRESS_EVERY:
                self.log(f"waiting for {self.what} ({int(now - start)}s of {int(self.timeout)}s): {check.message}")
                last_message = check.message
                last_log = now
            if now >= deadline:
                return Check(False, check.message, failed=False)
            self.sleep(max(0.0, min(interval, deadline - now)))
            interval = min(interval * POLL_FACTOR, POLL_MAX)


# --- Waits ---------------------------------------------------------------------------------------


def wait_rollouts(
    api: KubeApi, namespace: str, names: Iterable[str], timeout: float, log=None
) -> list[str]:
    """Wait until every Deployment ``names`` in ``namespace`` is rolled out (kubectl's rule).
    Returns the final messages; raises WaitFailed on ProgressDeadlineExceeded or timeout."""
    names = list(names)
    last: dict[str, dict | None] = {}
    poller = Poller(f"deployment(s) {', '.join(names)} -n {namespace}", timeout, log)

    def probe() -> Check:
        pending = []
        for name in names:
            dep = api.get("apps/v1", "Deployment", name, namespace)
            last[name] = dep
            if dep is None:
                pending.append(f'deployment "{name}" not found')
                continue
            check = rollout_status(dep)
            if check.failed:
                return Check(False, check.message, failed=True)
            if not check.done:
                pending.append(check.message)
        if pending:
            return Check(False, "; ".join(pending))
        return Check(True, "; ".join(f'deployment "{n}" successfully rolled out' for n in names))

    check = poller.run(probe)
    if check.done:
        return [f'deployment "{n}" successfully rolled out' for n in names]
    failing = [n for n in names if last.get(n) is None or not rollout_status(last[n]).done] or names
    details = []
    for name in failing:
        dep = last.get(name)
        conditions = format_conditions(dep) if dep else "not found"
        details.append(f"deployment/{name} -n {namespace}: {conditions}")
    prefix = f"error: {check.message}" if check.failed else f"{TIMED_OUT} after {timeout:g}s: {check.message}"
    events = related_events(
        api,
        namespace,
        lambda inv: any(
            inv.get("name") == n or str(inv.get("name", "")).startswith(n + "-") for n in failing
        ),
    )
    raise WaitFailed(_with_events(f"{prefix}; " + "; ".join(details), events))


def wait_crds_established(api: KubeApi, names: Iterable[str], timeout: float, log=None) -> list[str]:
    names = list(names)
    last: dict[str, dict | None] = {}

    def probe() -> Check:
        pending = []
        for name in names:
            crd = api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
            last[name] = crd
            check = crd_established(crd, name)
            if not check.done:
                pending.append(check.message)
        return Check(not pending, "; ".join(pending) or "all Established")

    check = Poller(f"CRD(s) {', '.join(names)} Established", timeout, log).run(probe)
    if check.done:
        return [f"customresourcedefinition/{n} Established" for n in names]
    raise WaitFailed(
        f"{TIMED_OUT} after {timeout:g}s: {check.message} (the tigera-operator installs its CRDs "
        "at startup: check its deployment and logs, `kubectl -n tigera-operator logs deploy/tigera-operator`)"
    )


def wait_tigerastatus(
    api: KubeApi,
    name: str,
    timeout: float,
    log=None,
    degraded_grace: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    grace = DEGRADED_GRACE if degraded_grace is None else degraded_grace
    state: dict[str, Any] = {"degraded_since": None, "obj": None}

    def probe() -> Check:
        obj = api.get("operator.tigera.io/v1", "TigeraStatus", name)
        state["obj"] = obj
        check = tigerastatus_check(obj, name)
        if check.failed:
            now = clock()
            if state["degraded_since"] is None:
                state["degraded_since"] = now
            if now - state["degraded_since"] < grace:
                return Check(False, check.message + f" (failing if it lasts {int(grace)}s)")
            return check
        state["degraded_since"] = None
        return check

    check = Poller(f"tigerastatus/{name} Available", timeout, log, clock=clock).run(probe)
    if check.done:
        return check.message
    obj = state["obj"]
    if check.failed:
        message = f"{check.message} (Degraded for more than {int(grace)}s; conditions: {format_conditions(obj)})"
    else:
        conditions = format_conditions(obj) if obj else "the object does not exist"
        message = f"{TIMED_OUT} after {timeout:g}s: tigerastatus/{name} not Available; conditions: {conditions}"
    events = related_events(
        api, "calico-system", lambda inv: inv.get("kind") in ("Pod", "DaemonSet", "Deployment")
    ) if obj else []
    if obj:
        message = _with_events(message, [e for e in events if e.startswith("Warning")])
    raise WaitFailed(message)


def wait_nodes_ready(api: KubeApi, names: Iterable[str], timeout: float, log=None) -> str:
    names = list(names)
    state: dict[str, Any] = {"nodes": []}

    def probe() -> Check:
        state["nodes"] = api.list("v1", "Node")
        return nodes_check(state["nodes"], names)

    check = Poller(f"nodes {', '.join(names)} Ready", timeout, log).run(probe)
    if check.done:
        registered = sorted((n.get("metadata") or {}).get("name") for n in state["nodes"])
        extra = [n for n in registered if n not in names]
        return check.message + (f" (also registered: {', '.join(extra)})" if extra else "")
    not_ready = [n for n in names if f"{n} (" in check.message]
    events = related_events(api, None, lambda inv: inv.get("kind") == "Node" and inv.get("name") in not_ready)
    raise WaitFailed(_with_events(f"{TIMED_OUT} after {timeout:g}s: {check.message}", events))
