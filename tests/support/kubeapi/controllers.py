"""Fake controllers (deployment controller, tigera-operator, kubelets) that play a k3s + Calico cluster
on top of the emulator's store. Each behaviour is switchable so tests can provoke timeouts and failures.

    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1"), ("node1", "198.19.0.2")]).start()
    ...
    cluster.stop()
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid

from . import calico_system
from .errors import ApiError
from .store import now

log = logging.getLogger(__name__)
OPERATOR = ("tigera-operator", "tigera-operator")
TIGERA = "operator.tigera.io/v1"
CRD_API = "apiextensions.k8s.io/v1"
CALICO_CRD = "crd.projectcalico.org/v1"
MANAGED_BY = ("app.kubernetes.io/managed-by", "tigera-operator")
NOT_READY_MSG = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                 "message:Network plugin returns error: cni plugin not initialized")


def _crd(plural: str, kind: str, columns=(), group: str = "operator.tigera.io") -> dict:
    version = {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    if columns:
        version["additionalPrinterColumns"] = list(columns)
    return {"apiVersion": CRD_API, "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Cluster", "versions": [version],
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"}}}


def operator_crds() -> list[dict]:
    """The CRDs the operator installs with -manage-crds that the lab relies on."""
    cols = [{"name": t, "type": "string", "jsonPath": f".status.conditions[?(@.type=='{t}')].status"}
            for t in ("Available", "Progressing", "Degraded")]
    cols.append({"name": "Since", "type": "date",
                 "jsonPath": ".status.conditions[?(@.type=='Available')].lastTransitionTime"})
    return [_crd("installations", "Installation"), _crd("tigerastatuses", "TigeraStatus", cols),
            _crd("apiservers", "APIServer"), _crd("ippools", "IPPool", group="crd.projectcalico.org")]


#: pod faults a deployment mode can show (see FakeCluster)
POD_FAULTS = ("image-pull", "crash-loop", "unschedulable")
FAULT_ANNOTATION = "netlab.test/pod-fault"
_HASH_LETTERS = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' pod-template-hash


def _template_hash(*parts) -> str:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return "".join(_HASH_LETTERS[b % len(_HASH_LETTERS)] for b in digest[:10])


def _pod_fault(pod: dict, fault: str, node_count: int) -> tuple[dict, list[tuple[str, str, str, str]]]:
    """Status and Events (type, reason, message, component) of a pod showing ``fault``, worded like the kubelet
    (containerd) and the default scheduler."""
    md, spec = pod["metadata"], pod["spec"]
    where = f"{md['namespace']}/{md['name']}"
    containers = spec.get("containers") or [{"name": "app", "image": "busybox"}]
    if fault == "unschedulable":
        message = (f"0/{node_count} nodes are available: {node_count} Insufficient memory. preemption: "
                   f"0/{node_count} nodes are available: {node_count} No preemption victims found for incoming pod.")
        return ({"phase": "Pending", "qosClass": "Burstable",
                 "conditions": [_cond("PodScheduled", "False", "Unschedulable", message)]},
                [("Warning", "FailedScheduling", message, "default-scheduler")])
    events = [("Normal", "Scheduled", f"Successfully assigned {where} to {spec.get('nodeName')}", "default-scheduler")]
    statuses = []
    for container in containers:
        image, cname = container.get("image", ""), container.get("name", "")
        if fault == "image-pull":
            ref = image if "/" in image.split(":")[0] and "." in image.split("/")[0] else f"docker.io/{image}"
            pull_error = (f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
                          f"{ref}: not found")
            events += [("Normal", "Pulling", f'Pulling image "{image}"', "kubelet"),
                       ("Warning", "Failed", f'Failed to pull image "{image}": rpc error: code = NotFound desc = '
                                             f"{pull_error}", "kubelet"),
                       ("Warning", "Failed", "Error: ErrImagePull", "kubelet"),
                       ("Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet"),
                       ("Warning", "Failed", "Error: ImagePullBackOff", "kubelet")]
            state = {"waiting": {"reason": "ImagePullBackOff",
                                 "message": f'Back-off pulling image "{image}": ErrImagePull: {pull_error}'}}
            statuses.append({"name": cname, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                             "started": False, "state": state})
        else:  # crash-loop
            events += [("Normal", "Pulled", f'Container image "{image}" already present on machine', "kubelet"),
                       ("Normal", "Started", f"Started container {cname}", "kubelet"),
                       ("Warning", "BackOff", f"Back-off restarting failed container {cname} in pod "
                                              f"{md['name']}_{md['namespace']}", "kubelet")]
            state = {"waiting": {"reason": "CrashLoopBackOff",
                                 "message": f"back-off 40s restarting failed container={cname} "
                                            f"pod={md['name']}_{md['namespace']}"}}
            statuses.append({"name": cname, "image": image, "imageID": f"{image}@sha256:" + "0" * 64,
                             "ready": False, "restartCount": 3, "started": False, "state": state,
                             "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}})
    unready = f"containers with unready status: [{' '.join(c.get('name', '') for c in containers)}]"
    conditions = [_cond("PodScheduled", "True", ""), _cond("Initialized", "True", ""),
                  _cond("Ready", "False", "ContainersNotReady", unready),
                  _cond("ContainersReady", "False", "ContainersNotReady", unready)]
    for c in conditions:
        if not c["reason"]:
            del c["reason"], c["message"]
    phase = "Pending" if fault == "image-pull" else "Running"
    return {"phase": phase, "qosClass": "Burstable", "conditions": conditions, "containerStatuses": statuses}, events


def _cond(typ, status, reason, message="", ts=None) -> dict:
    return {"type": typ, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": ts or now()}


def _same(a: dict | None, b: dict) -> bool:
    """Compare statuses ignoring condition timestamps."""
    strip = lambda s: {k: ([{ck: cv for ck, cv in c.items() if "Time" not in ck} for c in v]  # noqa: E731
                           if k == "conditions" else v) for k, v in (s or {}).items()}
    return strip(a) == strip(b)


def _conds_of(obj: dict) -> dict:
    return {c.get("type"): c.get("status") for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _keep_times(old: dict | None, new: dict) -> dict:
    """Keep lastTransitionTime of conditions whose status did not change."""
    prev = {c.get("type"): c for c in (old or {}).get("conditions") or []}
    for c in new.get("conditions") or []:
        p = prev.get(c["type"])
        if p and p.get("status") == c["status"]:
            for k in ("lastTransitionTime", "lastUpdateTime"):
                if k in p:
                    c[k] = p[k]
    return new


ENCAPSULATION_MODES = {"None": ("Never", "Never"), "IPIP": ("Always", "Never"), "IPIPCrossSubnet": ("CrossSubnet", "Never"),
                       "VXLAN": ("Never", "Always"), "VXLANCrossSubnet": ("Never", "CrossSubnet")}


def ippool_from_installation(pool: dict) -> dict:
    """The crd.projectcalico.org/v1 IPPool the operator writes for one Installation pool (its defaults:
    IPIP, natOutgoing Enabled, blockSize 26, nodeSelector all())."""
    ipip, vxlan = ENCAPSULATION_MODES[pool.get("encapsulation", "IPIP")]
    return {"apiVersion": CALICO_CRD, "kind": "IPPool",
            "metadata": {"name": pool.get("name") or "default-ipv4-ippool", "labels": dict([MANAGED_BY])},
            "spec": {"cidr": pool["cidr"], "blockSize": pool.get("blockSize", 26), "ipipMode": ipip,
                     "vxlanMode": vxlan, "natOutgoing": pool.get("natOutgoing", "Enabled") == "Enabled",
                     "nodeSelector": pool.get("nodeSelector", "all()"), "allowedUses": ["Workload", "Tunnel"]}}


def _owned(pool: dict) -> bool:
    return ((pool.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]


class FakeCluster:
    """Switches (all attributes may be changed while running):

    * operator: "rollout" (default) | "never" | "deadline" - what happens to Deployment tigera-operator.
    * manage_crds: True - once the operator is rolled out, create the Installation/TigeraStatus CRDs if missing.
    * calico: "available" (default) | "degraded" | "never" - outcome of TigeraStatus objects after calico_delay
      seconds (they appear with Progressing=True once Installation `default` exists and the operator runs).
    * calico_delay: 0.5; degraded_message: text of the Degraded condition; tigerastatuses: ("calico",).
    * nodes_ready: "calico" (default: Ready once tigerastatus calico is Available) | "always" | "never".
    * deployments: "rollout" (default) | "never" (observed but 0 available) | "deadline"
      (ProgressDeadlineExceeded) | a pod fault from POD_FAULTS ("image-pull", "crash-loop", "unschedulable": the
      deployment stays unavailable and its pods show the fault in their status, with the kubelet's or the
      scheduler's Events); deployment_modes: {"ns/name": mode} overrides; rollout_delay: 0.0 seconds.
    * daemonsets: True - DaemonSets roll out on all nodes (follows `deployments`).
    * stopped_kubelets: [] - nodes whose kubelet stopped posting status (Ready=Unknown, NodeStatusUnknown).
    * switches_file: a JSON file of switches ({"deployment_modes": {...}, "calico": ...}) re-read whenever it
      changes, so a test can turn faults on and off in a running cluster (the test lab's fake k3s sets it).
    """

    def __init__(self, emu, nodes=(("control", "198.19.0.1"), ("node1", "198.19.0.2"), ("node2", "198.19.0.3")),
                 *, operator="rollout", manage_crds=True, calico="available", calico_delay=0.5,
                 degraded_message="calico-node: pod failed (CrashLoopBackOff)", tigerastatuses=("calico",),
                 nodes_ready="calico", deployments="rollout", deployment_modes=None, rollout_delay=0.0,
                 daemonsets=True, interval=0.05, kubelet_version="v1.34.2+k3s1", switches_file=None):
        self.emu, self.store = emu, emu.store
        self.nodes = list(nodes)
        self.operator, self.manage_crds = operator, manage_crds
        self.calico, self.calico_delay, self.degraded_message = calico, calico_delay, degraded_message
        self.tigerastatuses = tuple(tigerastatuses)
        self.nodes_ready, self.deployments = nodes_ready, deployments
        self.deployment_modes = dict(deployment_modes or {})
        self.rollout_delay, self.daemonsets, self.interval = rollout_delay, daemonsets, interval
        self.kubelet_version = kubelet_version
        self.stopped_kubelets: list[str] = []
        self.switches_file, self._switches_mtime = switches_file, None
        self._seen: dict[tuple, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unwatch = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "FakeCluster":
        for name, ip in self.nodes:
            self.add_node(name, ip)
        self._unwatch = self.emu.add_watcher(lambda *_: self._wake.set())
        self._thread = threading.Thread(target=self._loop, name="fake-cluster", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._unwatch:
            self._unwatch()
        if self._thread:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - a controller keeps running
                log.exception("fake cluster reconcile failed")

    # ---- nodes --------------------------------------------------------------------------------
    def add_node(self, name: str, ip: str) -> dict:
        if (name, ip) not in self.nodes:
            self.nodes.append((name, ip))
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64"}
        if name == self.nodes[0][0]:
            labels.update({"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"})
        existing = self.store.get("v1", "Node", name)
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                "spec": {"podCIDR": f"10.42.{len(self.nodes) - 1}.0/24"},
                "status": (existing or {}).get("status") or {
                    "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                    "nodeInfo": {"kubeletVersion": self.kubelet_version, "kubeProxyVersion": self.kubelet_version,
                                 "operatingSystem": "linux", "architecture": "amd64",
                                 "containerRuntimeVersion": "containerd://2.0.5-k3s1",
                                 "osImage": "Ubuntu 24.04.3 LTS", "kernelVersion": "6.8.0-71-generic",
                                 "bootID": str(uuid.uuid5(uuid.NAMESPACE_DNS, "boot." + name)),
                                 "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, "machine." + name).hex,
                                 "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, "system." + name))},
                    "capacity": {"cpu": "2", "memory": "2030000Ki", "pods": "110"},
                    "allocatable": {"cpu": "2", "memory": "2030000Ki", "pods": "110"},
                    "conditions": [_cond("Ready", "False", "KubeletNotReady", NOT_READY_MSG)]}}
        if existing:
            return existing
        return self.store.put(node, manager="k3s")

    # ---- one reconcile pass -------------------------------------------------------------------
    SWITCHES = ("operator", "manage_crds", "calico", "calico_delay", "degraded_message", "nodes_ready",
                "deployments", "deployment_modes", "rollout_delay", "daemonsets", "stopped_kubelets")

    def _load_switches(self) -> None:
        """Apply the switches file when it changed (a missing file means: no change)."""
        try:
            mtime = os.stat(self.switches_file).st_mtime_ns
        except OSError:
            return
        if mtime == self._switches_mtime:
            return
        self._switches_mtime = mtime
        try:
            with open(self.switches_file) as f:
                switches = json.load(f)
        except (OSError, ValueError):
            log.warning("unreadable switches file %s", self.switches_file)
            return
        for key, value in switches.items():
            if key in self.SWITCHES:
                setattr(self, key, value)

    def reconcile(self) -> None:
        if self.switches_file:
            self._load_switches()
        for d in self.store.list("apps/v1", "Deployment"):
            key = (d["metadata"]["namespace"], d["metadata"]["name"])
            mode = self.operator if key == OPERATOR else self.deployment_modes.get("/".join(key), self.deployments)
            self._deployment(d, mode)
        if self.daemonsets:
            for ds in self.store.list("apps/v1", "DaemonSet"):
                self._daemonset(ds, self.deployment_modes.get(
                    f"{ds['metadata']['namespace']}/{ds['metadata']['name']}", self.deployments))
        op = self.store.get("apps/v1", "Deployment", OPERATOR[1], OPERATOR[0])
        running = op is not None and self._rolled_out(op)
        if running and self.manage_crds:
            for crd in operator_crds():
                if self.store.get(CRD_API, "CustomResourceDefinition", crd["metadata"]["name"]) is None:
                    self.store.put(crd, manager="tigera-operator")
        if running:
            self._calico()
        self._nodes()

    @staticmethod
    def _rolled_out(d: dict) -> bool:
        st, spec = d.get("status") or {}, d.get("spec") or {}
        n = spec.get("replicas", 1)
        return (st.get("observedGeneration", 0) >= d["metadata"].get("generation", 1)
                and st.get("updatedReplicas", 0) >= n and st.get("availableReplicas", 0) >= n)

    def _due(self, key, gen) -> bool:
        first = self._seen.setdefault((key, gen), time.monotonic())
        return time.monotonic() - first >= self.rollout_delay

    def _deployment(self, d: dict, mode: str) -> None:
        md, n = d["metadata"], (d.get("spec") or {}).get("replicas", 1)
        gen, name = md.get("generation", 1), md["name"]
        fault = mode in POD_FAULTS
        if mode not in ("never", "deadline") and not fault and not self._due(("deploy", md["namespace"], name), gen):
            return
        ok = mode not in ("never", "deadline") and not fault
        self._fault_pods(d, mode if fault else None)
        status = {"observedGeneration": gen, "replicas": n, "updatedReplicas": n,
                  "readyReplicas": n if ok else 0, "availableReplicas": n if ok else 0,
                  "unavailableReplicas": 0 if ok else n}
        status = {k: v for k, v in status.items() if v or k in ("observedGeneration",)}
        rs = f'ReplicaSet "{name}-{_template_hash(name, gen)}"'
        conds = [_cond("Available", "True" if ok else "False",
                       "MinimumReplicasAvailable" if ok else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if ok else
                       "Deployment does not have minimum availability.")]
        if mode == "deadline":
            conds.append(_cond("Progressing", "False", "ProgressDeadlineExceeded", f"{rs} has timed out progressing."))
        else:
            conds.append(_cond("Progressing", "True", "NewReplicaSetAvailable" if ok else "ReplicaSetUpdated",
                               f"{rs} has successfully progressed." if ok else f"{rs} is progressing."))
        for c in conds:
            c["lastUpdateTime"] = c["lastTransitionTime"]
        status["conditions"] = conds
        if mode == "deadline" and not _same(d.get("status"), status):
            self.event(d, "ProgressDeadlineExceeded", f"{rs} has timed out progressing.",
                       component="deployment-controller")
        self._set_status("apps/v1", "Deployment", d, status)

    # ---- pods of a deployment that cannot become ready --------------------------------------------
    def _fault_pods(self, d: dict, fault: str | None) -> None:
        """Keep one pod per replica showing ``fault`` (none: remove the pods a fault left behind)."""
        md, spec = d["metadata"], d.get("spec") or {}
        ns, name = md["namespace"], md["name"]
        template_hash = _template_hash(name, md.get("generation", 1))
        replica_set = f"{name}-{template_hash}"
        pods = [p for p in self.store.list("v1", "Pod", ns)
                if any(o.get("kind") == "ReplicaSet" and o.get("name", "").rsplit("-", 1)[0] == name
                       for o in p["metadata"].get("ownerReferences") or [])]
        for pod in pods:
            if fault is None or (pod["metadata"].get("annotations") or {}).get(FAULT_ANNOTATION) != fault:
                self.store.remove("v1", "Pod", pod["metadata"]["name"], ns)
                pods = [p for p in pods if p is not pod]
        if fault is None:
            return
        nodes = [nd["metadata"]["name"] for nd in self.store.list("v1", "Node")] or ["control"]
        template = spec.get("template") or {}
        for index in range(len(pods), spec.get("replicas", 1)):
            pod_name = f"{replica_set}-{_template_hash(replica_set, index, fault)[:5]}"
            pod_spec = dict(template.get("spec") or {})
            if fault != "unschedulable":
                pod_spec["nodeName"] = nodes[(index + 1) % len(nodes)]
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns,
                             "labels": dict((template.get("metadata") or {}).get("labels") or {},
                                            **{"pod-template-hash": template_hash}),
                             "annotations": {FAULT_ANNOTATION: fault},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set,
                                                  "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, replica_set)),
                                                  "controller": True, "blockOwnerDeletion": True}]},
                "spec": pod_spec}
            pod["status"], events = _pod_fault(pod, fault, len(nodes))
            pod = self.store.put(pod, manager="fake-kubelet")  # with its status: never seen without one
            for type_, reason, message, component in events:
                self.event(pod, reason, message, type_=type_, component=component)

    def _daemonset(self, ds: dict, mode: str) -> None:
        md, n = ds["metadata"], len(self.store.list("v1", "Node"))
        ready = n if mode == "rollout" and self._due(("ds", md["namespace"], md["name"]), md.get("generation", 1)) \
            else 0
        status = {"observedGeneration": md.get("generation", 1), "desiredNumberScheduled": n,
                  "currentNumberScheduled": n, "updatedNumberScheduled": n, "numberReady": ready,
                  "numberAvailable": ready, "numberMisscheduled": 0}
        if ready < n:
            status["numberUnavailable"] = n - ready
        self._set_status("apps/v1", "DaemonSet", ds, status)

    def _set_status(self, api_version, kind, obj, status) -> None:
        old = obj.get("status")
        if _same(old, status):
            return
        md = obj["metadata"]
        try:  # against the version read, as a real controller does: a status another client wrote meanwhile
            # (a kubelet's addresses) is not overwritten; the next pass works from the new version
            self.store.set_status(api_version, kind, md["name"], _keep_times(old, status), md.get("namespace"),
                                  manager=f"fake-{kind.lower()}-controller",
                                  resource_version=md.get("resourceVersion"))
        except ApiError as e:
            if e.code != 409:
                raise

    def event(self, obj: dict, reason: str, message: str, type_: str = "Warning",
              component: str = "fake-controller") -> dict:
        """Record a core/v1 Event about obj (cluster-scoped objects: namespace default)."""
        md = obj["metadata"]
        ns = md.get("namespace") or "default"
        ts = now()
        return self.store.put({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{md['name']}.{time.time_ns():x}", "namespace": ns},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": md["name"],
                               "namespace": md.get("namespace", ""), "uid": md.get("uid")},
            "reason": reason, "message": message, "type": type_, "count": 1, "source": {"component": component},
            "firstTimestamp": ts, "lastTimestamp": ts, "reportingComponent": component}, manager=component)

    def _calico(self) -> None:
        inst = self.store.get(TIGERA, "Installation", "default")
        if inst is None or self.store.get(CRD_API, "CustomResourceDefinition",
                                          "tigerastatuses.operator.tigera.io") is None:
            return
        calico_system.ensure(self.store)
        first = self._seen.setdefault(("installation", inst["metadata"]["uid"]), time.monotonic())
        done = time.monotonic() - first >= self.calico_delay
        outcome = self.calico if done else "progressing"
        if outcome == "never":
            outcome = "progressing"
        for name in self.tigerastatuses:
            if outcome == "available":
                self._tigerastatus(name, "available")
            elif outcome == "degraded":
                self._tigerastatus(name, "degraded", "PodFailure", self.degraded_message)
            else:
                self._tigerastatus(name, "progressing", "ResourceNotReady",
                                   "DaemonSet \"calico-system/calico-node\" is not available")
        self._ippools(inst)
        self._apiserver(calico_up=outcome == "available")
        if outcome == "available":
            self._set_status(TIGERA, "Installation", inst, {
                "variant": "Calico", "calicoVersion": "v3.32.1", "mtu": 1450,
                "computed": inst.get("spec") or {},
                "conditions": [_cond("Ready", "True", "AllObjectsAvailable", "All objects available")]})

    def _tigerastatus(self, name: str, outcome: str, reason: str = "AllObjectsAvailable",
                      message: str = "All objects available") -> None:
        """Set tigerastatus/<name> to "available", "degraded" (an Event when it turns Degraded) or "progressing"."""
        if outcome == "available":
            conds = [_cond("Available", "True", reason, message), _cond("Progressing", "False", reason, message),
                     _cond("Degraded", "False", reason, message)]
        elif outcome == "degraded":
            conds = [_cond("Available", "False", reason, message), _cond("Progressing", "False", reason, message),
                     _cond("Degraded", "True", reason, message)]
        else:
            conds = [_cond("Available", "False", reason, message), _cond("Progressing", "True", reason, message),
                     _cond("Degraded", "False", reason, message)]
        ts = self.store.get(TIGERA, "TigeraStatus", name)
        if ts is None:
            ts = self.store.put({"apiVersion": TIGERA, "kind": "TigeraStatus", "metadata": {"name": name},
                                 "spec": {}}, manager="tigera-operator")
        if outcome == "degraded" and _conds_of(ts).get("Degraded") != "True":
            self.event(ts, reason, message, component="tigera-operator")
        self._set_status(TIGERA, "TigeraStatus", ts, {"conditions": conds})

    # ---- the APIServer controller -------------------------------------------------------------
    def _apiserver(self, calico_up: bool) -> None:
        """APIServer `default` → tigerastatus/apiserver (Available once Calico is) and status.state Ready;
        without it, no tigerastatus/apiserver (the operator removes it)."""
        if self.store.get(CRD_API, "CustomResourceDefinition", "apiservers.operator.tigera.io") is None:
            return
        apiserver = self.store.get(TIGERA, "APIServer", "default")
        if apiserver is None:
            self.store.remove(TIGERA, "TigeraStatus", "apiserver")
            return
        if not calico_up:
            self._tigerastatus("apiserver", "progressing", "ResourceNotReady",
                               "Deployment \"calico-system/calico-apiserver\" is not available")
            return
        self._tigerastatus("apiserver", "available")
        self._set_status(TIGERA, "APIServer", apiserver, {"state": "Ready", "conditions": [
            _cond("Ready", "True", "AllObjectsAvailable", "All Objects are available")]})

    def apiserver_ready(self) -> bool:
        apiserver = self.store.get(TIGERA, "APIServer", "default") if self._has_crd("apiservers.operator.tigera.io") \
            else None
        return ((apiserver or {}).get("status") or {}).get("state") == "Ready"

    # ---- the IP-pool controller (tigera/operator v1.34+, as in v1.42) ---------------------------
    def _ippools(self, inst: dict) -> None:
        """Reconcile spec.calicoNetwork.ipPools into the IPPools the operator owns (label managed-by, keyed by
        CIDR; an unlabelled pool identical to an Installation pool is adopted). While no IPPool exists at all the
        pools are created through the CRD API (bootstrap); every later create, update or delete goes through the
        Calico API server (APIServer `default` Ready), else tigerastatus/ippools is Degraded and the pools stay as
        they are. Writes are by name, as the operator's component handler does, and the v3 API refuses to change
        a pool's CIDR or block size."""
        if not self._has_crd("ippools.crd.projectcalico.org"):
            return
        network = (inst.get("spec") or {}).get("calicoNetwork") or {}
        wanted = [ippool_from_installation(p) for p in network.get("ipPools") or []]
        current = self.store.list(CALICO_CRD, "IPPool")
        ours, not_ours = {}, set()
        for pool in current:
            cidr = pool["spec"].get("cidr")
            if _owned(pool) or any(w["spec"] == pool["spec"] for w in wanted):
                ours[cidr] = pool
            else:
                not_ours.add(cidr)
        api = self.apiserver_ready()
        for pool in wanted:
            cidr = pool["spec"]["cidr"]
            if cidr in not_ours:
                return self._tigerastatus("ippools", "degraded", "ResourceValidationError",
                                          "Cannot update an IP pool not owned by the operator")
            have = ours.get(cidr)
            if have is not None and have["spec"] == pool["spec"] and (_owned(have) or not api):
                continue  # unchanged (with the API server an adopted pool gets the label)
            if not current:
                self.store.put(pool, manager="tigera-operator")
            elif api:
                refused = self._v3_write(pool)
                if refused:
                    return self._tigerastatus("ippools", "degraded", "ResourceUpdateError",
                                              f"Error creating / updating IPPools: {refused}")
            else:
                return self._tigerastatus("ippools", "degraded", "ResourceNotReady",
                                          "Unable to modify IP pools while Calico API server is unavailable")
        wanted_cidrs = {pool["spec"]["cidr"] for pool in wanted}
        for cidr, pool in ours.items():
            if cidr in wanted_cidrs:
                continue
            if not api:
                return self._tigerastatus("ippools", "degraded", "ResourceNotReady",
                                          "Unable to delete IP pools while Calico API server is unavailable")
            self.store.remove(CALICO_CRD, "IPPool", pool["metadata"]["name"])
        self._tigerastatus("ippools", "available")

    def _v3_write(self, pool: dict) -> str:
        """Create or update the pool by name through the "v3 API"; the refusal text, or "" when written."""
        live = self.store.get(CALICO_CRD, "IPPool", pool["metadata"]["name"])
        if live is not None:
            for field, label in (("cidr", "CIDR"), ("blockSize", "BlockSize")):
                if live["spec"].get(field) != pool["spec"][field]:
                    return (f"error with field IPPool.Spec.{label} = '{pool['spec'][field]}' "
                            f"(IPPool {label} cannot be modified)")
            live["spec"] = pool["spec"]
            live["metadata"].setdefault("labels", {}).update(pool["metadata"]["labels"])
            pool = live
        self.store.put(pool, manager="tigera-operator")
        return ""

    def calico_available(self) -> bool:
        ts = self.store.get(TIGERA, "TigeraStatus", "calico") if self._has_ts_crd() else None
        return any(c.get("type") == "Available" and c.get("status") == "True"
                   for c in ((ts or {}).get("status") or {}).get("conditions") or [])

    def _has_ts_crd(self) -> bool:
        return self._has_crd("tigerastatuses.operator.tigera.io")

    def _has_crd(self, name: str) -> bool:
        return self.store.get(CRD_API, "CustomResourceDefinition", name) is not None

    def _nodes(self) -> None:
        ready = self.nodes_ready == "always" or (self.nodes_ready == "calico" and self.calico_available())
        for node in self.store.list("v1", "Node"):
            st = node.get("status") or {}
            conds = [c for c in st.get("conditions") or [] if c.get("type") != "Ready"]
            if node["metadata"]["name"] in self.stopped_kubelets:  # what the node lifecycle controller reports
                conds.append(_cond("Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."))
            else:
                conds.append(_cond("Ready", "True", "KubeletReady", "kubelet is posting ready status") if ready
                             else _cond("Ready", "False", "KubeletNotReady", NOT_READY_MSG))
            self._set_status("v1", "Node", node, dict(st, conditions=conds))


def start(emu) -> FakeCluster:
    """`--controllers tests.support.kubeapi.controllers:start` hook: a FakeCluster with default switches,
    nodes from $KUBEAPI_FAKE_NODES ("name=ip,name=ip"), switches file from $KUBEAPI_FAKE_SWITCHES, stopped
    together with the emulator."""
    spec = os.environ.get("KUBEAPI_FAKE_NODES")
    nodes = [tuple(p.split("=", 1)) for p in spec.split(",") if "=" in p] if spec else \
        [("control", "198.19.0.1"), ("node1", "198.19.0.2"), ("node2", "198.19.0.3")]
    cluster = FakeCluster(emu, nodes=nodes, switches_file=os.environ.get("KUBEAPI_FAKE_SWITCHES")).start()
    emu.on_stop(cluster.stop)
    if os.environ.get("KUBEAPI_FAKE_DELAYS"):
        emu.on_stop(follow_lab_delays(cluster, os.environ["KUBEAPI_FAKE_DELAYS"]))
    return cluster


#: the test lab's benchmark waits (tests/support/netlab/lab.py REALISTIC_DELAYS) -> FakeCluster switches
LAB_DELAY_SWITCHES = {"pod_start": "rollout_delay", "calico_available": "calico_delay"}


def apply_lab_delays(cluster: FakeCluster, delays: dict, defaults: dict) -> None:
    """Set the cluster's waits from the lab's delays, e.g. ``{"pod_start": 5, "calico_available": 15}``: every
    Deployment/DaemonSet rolls out ``pod_start`` s after it changed, TigeraStatus turns Available
    ``calico_available`` s after the Installation appeared. A delay that is off restores the default."""
    for delay, switch in LAB_DELAY_SWITCHES.items():
        setattr(cluster, switch, float(delays.get(delay) or defaults[switch]))


def follow_lab_delays(cluster: FakeCluster, path: str, interval: float = 0.2):
    """Keep the cluster's waits in line with the lab's delays file (re-read when it changes; the lab turns
    delays on and off in a running VM). Returns the function that stops following."""
    defaults = {switch: getattr(cluster, switch) for switch in LAB_DELAY_SWITCHES.values()}
    stop = threading.Event()

    def follow() -> None:
        seen = None
        while True:
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                mtime = None
            if mtime != seen:
                seen = mtime
                try:
                    with open(path) as f:
                        delays = json.load(f)
                except (OSError, ValueError):
                    delays = {}
                apply_lab_delays(cluster, delays if isinstance(delays, dict) else {}, defaults)
            if stop.wait(interval):
                return

    threading.Thread(target=follow, name="lab-delays", daemon=True).start()
    return stop.set


def k3s_lab(emu) -> FakeCluster:
    """`--controllers tests.support.kubeapi.controllers:k3s_lab` hook used by the test lab's fake k3s server:
    the default FakeCluster (operator, kubelets, deployment controller) plus NodePort Services answering like
    kube-proxy in front of the pods (see nodeports.py)."""
    from .nodeports import NodePorts

    cluster = start(emu)
    proxy = NodePorts(emu).start()
    emu.on_stop(proxy.stop)
    return cluster
