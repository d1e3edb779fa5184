"""Waiting for the cluster: deployment rollouts (kubectl's exact rule), CRDs Established,
TigeraStatus Available, the IP pools as set, nodes Ready, and an HTTP answer check.

Each wait is a :class:`Watched` probe (one list of one kind, judged) run by :func:`calicolab.polling.poll`;
the same probe, called once, tells an operation in planning whether it has to wait at all. Between probes
a watch on the listed kind (from the list's resourceVersion) ends the pause as soon as something changes;
over the ``k3s kubectl`` fallback, which cannot watch, the pause just sleeps. An API that does not answer
is retried until the deadline (``Transient``); any other error ends the wait. On timeout or failure a
wait raises :class:`WaitFailed` whose message names the object, its last conditions and related Events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from calicolab.kube.client import ApiUnreachable, KubeApi, KubeError
from calicolab.polling import Check, Transient, poll

#: how long TigeraStatus may stay Degraded=True before the wait fails (seconds)
DEGRADED_GRACE = 60.0
#: Events listed in an error message, at most
MAX_EVENTS = 8

TIMED_OUT = "timed out waiting for the condition"


class WaitFailed(KubeError):
    """A wait ended without success (timeout or a definite failure)."""


# --- Pure checks ---------------------------------------------------------------------------------


def condition(obj: dict, ctype: str) -> dict | None:
    """The status condition of type ``ctype``, or None.

    Example: ``condition(node, "Ready")["status"]`` → ``"True"``
    """
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
    progressing = condition(deployment, "Progressing")
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
    cond = condition(crd, "Established")
    if cond and cond.get("status") == "True":
        return Check(True, f"customresourcedefinition/{name} Established")
    return Check(False, f"customresourcedefinition/{name} not Established yet ({format_conditions(crd)})")


def tigerastatus_check(obj: dict | None, name: str) -> Check:
    """Available ⇔ a condition Available with status "True" (the operator's own test).
    Degraded=True is reported as failed; the caller applies the grace period."""
    if obj is None:
        return Check(False, f"tigerastatus/{name} does not exist yet (the operator creates it)")
    available = condition(obj, "Available")
    if available and available.get("status") == "True":
        return Check(True, f"tigerastatus/{name} Available")
    degraded = condition(obj, "Degraded")
    if degraded and degraded.get("status") == "True":
        detail = ": ".join(x for x in (degraded.get("reason"), degraded.get("message")) if x)
        return Check(False, f"tigerastatus/{name} Degraded: {detail or 'no message'}", failed=True)
    return Check(False, f"tigerastatus/{name} not Available yet ({format_conditions(obj)})")


def nodes_check(nodes: list[dict], names: Iterable[str]) -> Check:
    found = by_name(nodes)
    problems = []
    for name in names:
        node = found.get(name)
        if node is None:
            problems.append(f"{name} (not registered)")
            continue
        ready = condition(node, "Ready")
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
    api: KubeApi,
    namespace: str | None,
    match: Callable[[dict], bool],
    warnings_only: bool = False,
) -> list[str]:
    """The newest Events (any kind) matching ``match`` on their involvedObject, formatted; the same
    reason and message on several objects is listed once."""
    try:
        events = api.list("v1", "Event", namespace=namespace)
    except KubeError as exc:  # the failure is being reported: say why its events are missing
        return [f"(events not readable: {exc})"]
    chosen = [
        e for e in events
        if match(e.get("involvedObject") or {}) and (not warnings_only or e.get("type") == "Warning")
    ]

    def when(event):
        return event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
            "creationTimestamp"
        ) or ""

    chosen.sort(key=when)
    lines, seen = [], set()
    for event in reversed(chosen):
        said = (event.get("reason"), event.get("message"))
        if said in seen:
            continue
        seen.add(said)
        inv = event.get("involvedObject") or {}
        lines.append(
            f"{event.get('type', 'Normal')} {event.get('reason', '')} "
            f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}: {event.get('message', '')}".strip()
        )
        if len(lines) == MAX_EVENTS:
            break
    return lines[::-1]


def _with_events(message: str, events: list[str]) -> str:
    if not events:
        return message + "; no related events"
    return message + "; events: " + " | ".join(events)


def _with_next(message: str, steps: list[str]) -> str:
    """The failure, then what to try next (one step a line)."""
    return message + "".join(f"\nNext: {step}" for step in dict.fromkeys(steps))


# --- Why pods are not ready ----------------------------------------------------------------------

#: container waiting reasons that only mean "still starting"
STARTING_REASONS = ("ContainerCreating", "PodInitializing")
#: waiting reasons caused by the image reference or its registry
IMAGE_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
#: pods described per deployment, at most
MAX_PODS = 3


@dataclass(frozen=True)
class PodProblem:
    """Why one pod is not ready: ``reason`` as kubectl shows it in STATUS, ``detail`` its message."""

    pod: str
    reason: str
    detail: str = ""
    container: str = ""
    image: str = ""

    def describe(self) -> str:
        """Example: ``pod customer-6d9c-x2k4p: ImagePullBackOff (container customer): Back-off pulling image ...``"""
        where = f" (container {self.container})" if self.container else ""
        return f"pod {self.pod}: {self.reason}{where}" + (f": {self.detail}" if self.detail else "")


def _container_problem(pod: str, spec_images: dict, status: dict) -> PodProblem | None:
    state = status.get("state") or {}
    name = status.get("name", "")
    image = spec_images.get(name) or status.get("image", "")
    waiting, terminated = state.get("waiting"), state.get("terminated")
    last = (status.get("lastState") or {}).get("terminated") or {}
    if waiting and waiting.get("reason") not in STARTING_REASONS:
        detail = waiting.get("message") or ""
        if last:
            detail = ", ".join(x for x in (
                f"last exit code {last.get('exitCode')}" + (f" ({last['reason']})" if last.get("reason") else ""),
                f"{status.get('restartCount', 0)} restarts",
                detail,
            ) if x)
        return PodProblem(pod, waiting.get("reason") or "Waiting", detail, name, image)
    if terminated and terminated.get("exitCode", 0) != 0:
        detail = f"exit code {terminated.get('exitCode')}" + (
            f": {terminated['message']}" if terminated.get("message") else ""
        )
        return PodProblem(pod, terminated.get("reason") or "Error", detail, name, image)
    return None


def pod_problems(pod: dict) -> list[PodProblem]:
    """Why ``pod`` is not ready, from its status as the kubelet and the scheduler report it.

    Containers waiting for a reason other than starting (``ImagePullBackOff``, ``CrashLoopBackOff`` with
    the last exit code, ...) or terminated with an error come first; a pod that was never scheduled
    gives ``Pending`` with the scheduler's message; a ready pod gives ``[]``.

    Example: ``pod_problems(pod)[0].describe()`` →
    ``'pod summary-7f9c-b2x4q: Pending (Unschedulable): 0/3 nodes are available: 3 Insufficient memory.'``
    """
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    name = meta.get("name", "?")
    images = {c.get("name"): c.get("image", "") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])}
    problems = []
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        problem = _container_problem(name, images, container)
        if problem:
            problems.append(problem)
    if problems:
        return problems
    scheduled = condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False":
        reason = scheduled.get("reason") or "not scheduled"
        return [PodProblem(name, f"Pending ({reason})", scheduled.get("message") or "")]
    ready = condition(pod, "Ready")
    if status.get("phase") in ("Pending", "Failed", "Unknown") or (ready and ready.get("status") != "True"):
        detail = ": ".join(x for x in ((ready or {}).get("reason"), (ready or {}).get("message")) if x)
        return [PodProblem(name, status.get("phase") or "NotReady", detail)]
    return []


def label_selector(deployment: dict) -> str | None:
    """A Deployment's ``spec.selector.matchLabels`` as a label selector string (``app=customer``)."""
    labels = (((deployment or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or None


def deployment_pod_problems(api: KubeApi, deployment: dict) -> list[PodProblem]:
    """The problems of the Deployment's pods that are not ready (at most MAX_PODS pods)."""
    meta = deployment.get("metadata") or {}
    selector = label_selector(deployment)
    if not selector:
        return []
    try:
        pods = api.list("v1", "Pod", namespace=meta.get("namespace"), label_selector=selector)
    except KubeError as exc:  # the failure is being reported: say why its pods are not described
        return [PodProblem("?", "pods not readable", str(exc))]
    problems: list[PodProblem] = []
    troubled = 0
    for pod in sorted(pods, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        found = pod_problems(pod)
        if found and troubled < MAX_PODS:
            troubled += 1
            problems += found
    return problems


def pod_next_steps(problems: list[PodProblem], namespace: str, kubectl: str, image_setting: str | None) -> list[str]:
    """What to run or change next for these pod problems (commands use ``kubectl``, e.g.
    ``multipass exec control -- sudo k3s kubectl``).

    Example: an ImagePullBackOff of pod customer-x in yaobank →
    ``['check the image "calico/yaobank-customer:multiarch" (setting yaobank_images) ...',
    '`kubectl -n yaobank describe pod customer-x`']``
    """
    steps: list[str] = []
    for problem in problems:
        if problem.reason in IMAGE_REASONS:
            where = f" (setting {image_setting})" if image_setting else ""
            steps.append(
                f'check that the image "{problem.image}"{where} exists and that the VMs reach its registry; '
                "fix the name with --data and re-run"
            )
        if problem.reason == "CrashLoopBackOff" or problem.reason.startswith("Error"):
            container = f" -c {problem.container}" if problem.container else ""
            steps.append(f"`{kubectl} -n {namespace} logs {problem.pod}{container} --previous`")
        steps.append(f"`{kubectl} -n {namespace} describe pod {problem.pod}`")
    return steps


# --- Probes --------------------------------------------------------------------------------------


@dataclass
class Watched:
    """A probe for :func:`calicolab.polling.poll`: lists one kind (bounded by the seconds that remain) and
    judges the objects; :meth:`pause` watches that kind from the list's resourceVersion, so a change ends
    the pause at once. ``items`` keeps the last objects seen, for the failure message.

    Example::

        probe = Watched(api, "v1", "Node", None, lambda nodes, remaining: nodes_check(nodes, ["control"]))
        check = probe(5.0)                       # one look (planning)
        check = probe.wait("nodes Ready", 300)   # until done, failed or 300 s
    """

    api: KubeApi
    api_version: str
    kind: str
    namespace: str | None
    judge: Callable[[list[dict], float], Check]
    items: list[dict] = field(default_factory=list)
    version: str | None = None

    def __call__(self, remaining: float) -> Check:
        try:
            self.items, self.version = self.api.snapshot(self.api_version, self.kind, self.namespace, timeout=remaining)
            return self.judge(self.items, remaining)
        except ApiUnreachable as exc:
            raise Transient(f"API not reachable: {exc}") from None

    def pause(self, seconds: float) -> bool:
        return self.api.wait_for_change(self.api_version, self.kind, self.namespace, self.version, seconds)

    def wait(self, what: str, timeout: float, log=None) -> Check:
        return poll(what, timeout, self, log, pause=self.pause)


def by_name(items: list[dict]) -> dict[str, dict]:
    return {(item.get("metadata") or {}).get("name"): item for item in items}


class DegradedGrace:
    """Tolerates a failed (Degraded) Check for ``seconds``: the operator retries, e.g. once the API server
    it waited for is Ready."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.since: float | None = None

    def __call__(self, check: Check) -> Check:
        if not check.failed:
            self.since = None
            return check
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        if now - self.since < self.seconds:
            return Check(False, check.message + f" (failing if it lasts {int(self.seconds)}s)")
        return check


def rollouts_probe(api: KubeApi, namespace: str, names: list[str]) -> Watched:
    """Done when every Deployment ``names`` in ``namespace`` is rolled out (kubectl's rule); failed at
    the first ProgressDeadlineExceeded."""

    def judge(items: list[dict], _remaining: float) -> Check:
        found = by_name(items)
        pending = []
        for name in names:
            if name not in found:
                pending.append(f'deployment "{name}" not found')
                continue
            check = rollout_status(found[name])
            if check.failed:
                return check
            if not check.done:
                pending.append(check.message)
        return Check(not pending, "; ".join(pending) or "rolled out: " + ", ".join(names))

    return Watched(api, "apps/v1", "Deployment", namespace, judge)


def crds_probe(api: KubeApi, names: list[str]) -> Watched:
    def judge(items: list[dict], _remaining: float) -> Check:
        found = by_name(items)
        pending = [c.message for c in (crd_established(found.get(n), n) for n in names) if not c.done]
        return Check(not pending, "; ".join(pending) or f"CRDs Established: {', '.join(names)}")

    return Watched(api, "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, judge)


def tigerastatus_probe(api: KubeApi, name: str, grace: DegradedGrace | None = None) -> Watched:
    grace = grace or DegradedGrace(DEGRADED_GRACE)
    return Watched(api, "operator.tigera.io/v1", "TigeraStatus", None,
                   lambda items, _remaining: grace(tigerastatus_check(by_name(items).get(name), name)))


def nodes_probe(api: KubeApi, names: list[str]) -> Watched:
    return Watched(api, "v1", "Node", None, lambda items, _remaining: nodes_check(items, names))


def pools_probe(api: KubeApi, installation: dict) -> Watched:
    """Done when the operator-owned IPPools match ``installation`` and tigerastatus/ippools is Available
    (watched: the operator updates it when it has reconciled the pools)."""
    from calicolab.kube import pools as kpools

    grace = DegradedGrace(DEGRADED_GRACE)

    def judge(items: list[dict], remaining: float) -> Check:
        live = api.list(kpools.IPPOOL_API, "IPPool", timeout=remaining)
        return grace(kpools.pools_check(installation, live, by_name(items).get("ippools")))

    return Watched(api, "operator.tigera.io/v1", "TigeraStatus", None, judge)


# --- Waits ---------------------------------------------------------------------------------------


def wait_rollouts(
    api: KubeApi,
    namespace: str,
    names: Iterable[str],
    timeout: float,
    log=None,
    kubectl: str = "kubectl",
    image_setting: str | None = None,
) -> list[str]:
    """Wait until every Deployment ``names`` in ``namespace`` is rolled out (kubectl's rule).
    Returns the final messages; raises WaitFailed on ProgressDeadlineExceeded or timeout, naming
    each failing deployment's conditions, its pods' reasons (ImagePullBackOff, CrashLoopBackOff,
    Pending with the scheduler's message), their Warning events and the next command to run
    (``kubectl``: how the user runs kubectl; ``image_setting``: the setting naming the images)."""
    names = list(names)
    probe = rollouts_probe(api, namespace, names)
    check = probe.wait(f"deployment(s) {', '.join(names)} -n {namespace}", timeout, log)
    if check.done:
        return [f'deployment "{n}" successfully rolled out' for n in names]
    last = by_name(probe.items)
    failing = [n for n in names if n not in last or not rollout_status(last[n]).done] or names
    lines = [f"error: {check.message}" if check.failed else f"{TIMED_OUT} after {timeout:g}s: {check.message}"]
    steps = []
    for name in failing:
        dep = last.get(name)
        conditions = format_conditions(dep) if dep else "not found"
        lines.append(f"  deployment/{name} -n {namespace}: {conditions}")
        problems = deployment_pod_problems(api, dep) if dep else []
        lines += [f"    {problem.describe()}" for problem in problems]
        steps += pod_next_steps(problems, namespace, kubectl, image_setting)
        if not problems:
            steps.append(f"`{kubectl} -n {namespace} describe deployment {name}`")
    events = related_events(
        api,
        namespace,
        lambda inv: any(
            inv.get("name") == n or str(inv.get("name", "")).startswith(n + "-") for n in failing
        ),
        warnings_only=True,
    )
    lines += [f"  event: {event}" for event in events] or ["  no related warning events"]
    raise WaitFailed(_with_next("\n".join(lines), steps))


def operator_steps(kubectl: str) -> list[str]:
    """Where the tigera-operator says what it is doing: its deployment and its log."""
    return [
        f"`{kubectl} -n tigera-operator describe deployment tigera-operator`",
        f"`{kubectl} -n tigera-operator logs deployment/tigera-operator --tail=50`",
    ]


def wait_crds_established(
    api: KubeApi, names: Iterable[str], timeout: float, log=None, kubectl: str = "kubectl"
) -> list[str]:
    names = list(names)
    check = crds_probe(api, names).wait(f"CRD(s) {', '.join(names)} Established", timeout, log)
    if check.done:
        return [f"customresourcedefinition/{n} Established" for n in names]
    raise WaitFailed(
        _with_next(
            f"{TIMED_OUT} after {timeout:g}s: {check.message} (the tigera-operator installs its CRDs at startup)",
            operator_steps(kubectl),
        )
    )


def wait_tigerastatus(
    api: KubeApi,
    name: str,
    timeout: float,
    log=None,
    degraded_grace: float | None = None,
    kubectl: str = "kubectl",
) -> str:
    """Wait until ``tigerastatus/<name>`` is Available; Degraded for longer than the grace period or
    the timeout raise WaitFailed with the conditions, Calico's Warning events and the next steps."""
    grace = DegradedGrace(DEGRADED_GRACE if degraded_grace is None else degraded_grace)
    probe = tigerastatus_probe(api, name, grace)
    check = probe.wait(f"tigerastatus/{name} Available", timeout, log)
    if check.done:
        return check.message
    obj = by_name(probe.items).get(name)
    if check.failed:
        message = f"{check.message} (Degraded for more than {int(grace.seconds)}s; conditions: {format_conditions(obj)})"
    else:
        conditions = format_conditions(obj) if obj else "the object does not exist"
        message = f"{TIMED_OUT} after {timeout:g}s: tigerastatus/{name} not Available; conditions: {conditions}"
    if obj:
        # Warnings only, chosen before the newest are kept: busy Normal events would push them out
        calico_objects = ("Pod", "DaemonSet", "Deployment")
        message = _with_events(message, related_events(
            api, "calico-system", lambda inv: inv.get("kind") in calico_objects, warnings_only=True))
    steps = [f"`{kubectl} describe tigerastatus {name}`"] if obj else []
    steps += [f"`{kubectl} -n calico-system get pods`"] + operator_steps(kubectl)[1:]
    raise WaitFailed(_with_next(message, steps))


def wait_pools(api: KubeApi, installation: dict, timeout: float, log=None) -> str:
    """Wait until the pools are as set; a Degraded ``ippools`` may last ``DEGRADED_GRACE`` seconds."""
    from calicolab.kube import pools as kpools

    check = pools_probe(api, installation).wait("the IP pools as set", timeout, log)
    if check.done:
        return check.message
    prefix = "" if check.failed else f"{TIMED_OUT} after {timeout:g}s: "
    hint = f". {kpools.WAYS_FORWARD}" if "API server is unavailable" in check.message else ""
    raise WaitFailed(f"{prefix}{check.message}{hint}")


def wait_nodes_ready(
    api: KubeApi, names: Iterable[str], timeout: float, log=None, kubectl: str = "kubectl"
) -> str:
    names = list(names)
    probe = nodes_probe(api, names)
    check = probe.wait(f"nodes {', '.join(names)} Ready", timeout, log)
    if check.done:
        registered = sorted(by_name(probe.items))
        extra = [n for n in registered if n not in names]
        return check.message + (f" (also registered: {', '.join(extra)})" if extra else "")
    not_ready = [n for n in names if f"{n} (" in check.message]
    events = related_events(api, None, lambda inv: inv.get("kind") == "Node" and inv.get("name") in not_ready)
    steps = [f"`{kubectl} describe node {n}`" for n in not_ready] + [f"`{kubectl} -n calico-system get pods -o wide`"]
    raise WaitFailed(_with_next(_with_events(f"{TIMED_OUT} after {timeout:g}s: {check.message}", events), steps))

