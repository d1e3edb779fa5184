"""Fake controllers (deployment controller, tigera-operator, kubelets) that play a k3s + Calico cluster
on top of the emulator's store. Each behaviour is switchable so tests can provoke timeouts and failures.

    cluster = FakeCluster(emu, nodes=[("control", "198.19.0.1"), ("node1", "198.19.0.2")]).start()
    ...
    cluster.stop()
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid

from . import calico_system
from .store import now

log = logging.getLogger(__name__)
OPERATOR = ("tigera-operator", "tigera-operator")
TIGERA = "operator.tigera.io/v1"
CRD_API = "apiextensions.k8s.io/v1"
NOT_READY_MSG = ("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                 "message:Network plugin returns error: cni plugin not initialized")


def _crd(plural: str, kind: str, columns=()) -> dict:
    version = {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    if columns:
        version["additionalPrinterColumns"] = list(columns)
    return {"apiVersion": CRD_API, "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.operator.tigera.io"},
            "spec": {"group": "operator.tigera.io", "scope": "Cluster", "versions": [version],
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"}}}


def operator_crds() -> list[dict]:
    """The two CRDs the operator installs with -manage-crds that the lab relies on."""
    cols = [{"name": t, "type": "string", "jsonPath": f".status.conditions[?(@.type=='{t}')].status"}
            for t in ("Available", "Progressing", "Degraded")]
    cols.append({"name": "Since", "type": "date",
                 "jsonPath": ".status.conditions[?(@.type=='Available')].lastTransitionTime"})
    return [_crd("installations", "Installation"), _crd("tigerastatuses", "TigeraStatus", cols)]


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


class FakeCluster:
    """Switches (all attributes may be changed while running):

    * operator: "rollout" (default) | "never" | "deadline" - what happens to Deployment tigera-operator.
    * manage_crds: True - once the operator is rolled out, create the Installation/TigeraStatus CRDs if missing.
    * calico: "available" (default) | "degraded" | "never" - outcome of TigeraStatus objects after calico_delay
      seconds (they appear with Progressing=True once Installation `default` exists and the operator runs).
    * calico_delay: 0.5; degraded_message: text of the Degraded condition; tigerastatuses: ("calico",).
    * nodes_ready: "calico" (default: Ready once tigerastatus calico is Available) | "always" | "never".
    * deployments: "rollout" (default) | "never" (observed but 0 available) | "deadline"
      (ProgressDeadlineExceeded); deployment_modes: {"ns/name": mode} overrides; rollout_delay: 0.0 seconds.
    * daemonsets: True - DaemonSets roll out on all nodes (follows `deployments`).
    * stopped_kubelets: [] - nodes whose kubelet stopped posting status (Ready=Unknown, NodeStatusUnknown).

    ``calico``, ``nodes_ready``, ``deployments`` and ``stopped_kubelets`` are also read from the file named by
    $KUBEAPI_FAKE_SWITCHES on every pass (see ``_read_switches``).
    """

    def __init__(self, emu, nodes=(("control", "198.19.0.1"), ("node1", "198.19.0.2"), ("node2", "198.19.0.3")),
                 *, operator="rollout", manage_crds=True, calico="available", calico_delay=0.5,
                 degraded_message="calico-node: pod failed (CrashLoopBackOff)", tigerastatuses=("calico",),
                 nodes_ready="calico", deployments="rollout", deployment_modes=None, rollout_delay=0.0,
                 daemonsets=True, interval=0.05, kubelet_version="v1.34.2+k3s1"):
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
        self._switch_defaults = {"calico": calico, "nodes_ready": nodes_ready, "deployments": deployments,
                                 "stopped_kubelets": []}
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
    def _read_switches(self) -> None:
        """Switches from the JSON file named by $KUBEAPI_FAKE_SWITCHES (tests write it to break the cluster while
        it runs, e.g. {"calico": "degraded", "stopped_kubelets": ["node2"]}); a missing key keeps its default."""
        path = os.environ.get("KUBEAPI_FAKE_SWITCHES")
        if not path:
            return
        try:
            text = open(path).read()
        except OSError:
            text = "{}"
        if text == getattr(self, "_switches_text", None):
            return
        self._switches_text = text
        try:
            wanted = json.loads(text or "{}")
        except ValueError:
            log.warning("fake cluster: switches file %s is not JSON", path)
            return
        for key, default in self._switch_defaults.items():
            setattr(self, key, wanted.get(key, default))

    def reconcile(self) -> None:
        self._read_switches()
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
        if mode not in ("never", "deadline") and not self._due(("deploy", md["namespace"], name), gen):
            return
        ok = mode not in ("never", "deadline")
        status = {"observedGeneration": gen, "replicas": n, "updatedReplicas": n,
                  "readyReplicas": n if ok else 0, "availableReplicas": n if ok else 0,
                  "unavailableReplicas": 0 if ok else n}
        status = {k: v for k, v in status.items() if v or k in ("observedGeneration",)}
        rs = f'ReplicaSet "{name}-{abs(hash((name, gen))) % 10**10:010d}"'
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
        self.store.set_status(api_version, kind, md["name"], _keep_times(old, status), md.get("namespace"),
                              manager=f"fake-{kind.lower()}-controller")

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
        calico_system.ensure(self.store, inst)
        first = self._seen.setdefault(("installation", inst["metadata"]["uid"]), time.monotonic())
        done = time.monotonic() - first >= self.calico_delay
        outcome = self.calico if done else "progressing"
        if outcome == "never":
            outcome = "progressing"
        for name in self.tigerastatuses:
            if outcome == "available":
                conds = [_cond("Available", "True", "AllObjectsAvailable", "All objects available"),
                         _cond("Progressing", "False", "AllObjectsAvailable", "All objects available"),
                         _cond("Degraded", "False", "AllObjectsAvailable", "All objects available")]
            elif outcome == "degraded":
                conds = [_cond("Available", "False", "PodFailure", self.degraded_message),
                         _cond("Progressing", "False", "PodFailure", self.degraded_message),
                         _cond("Degraded", "True", "PodFailure", self.degraded_message)]
            else:
                msg = "DaemonSet \"calico-system/calico-node\" is not available"
                conds = [_cond("Available", "False", "ResourceNotReady", msg),
                         _cond("Progressing", "True", "ResourceNotReady", msg),
                         _cond("Degraded", "False", "ResourceNotReady", msg)]
            ts = self.store.get(TIGERA, "TigeraStatus", name)
            if ts is None:
                ts = self.store.put({"apiVersion": TIGERA, "kind": "TigeraStatus", "metadata": {"name": name},
                                     "spec": {}}, manager="tigera-operator")
            if outcome == "degraded" and _conds_of(ts).get("Degraded") != "True":
                self.event(ts, "PodFailure", self.degraded_message, component="tigera-operator")
            self._set_status(TIGERA, "TigeraStatus", ts, {"conditions": conds})
        if outcome == "available":
            self._set_status(TIGERA, "Installation", inst, {
                "variant": "Calico", "calicoVersion": "v3.32.1", "mtu": 1450,
                "computed": inst.get("spec") or {},
                "conditions": [_cond("Ready", "True", "AllObjectsAvailable", "All objects available")]})

    def calico_available(self) -> bool:
        ts = self.store.get(TIGERA, "TigeraStatus", "calico") if self._has_ts_crd() else None
        return any(c.get("type") == "Available" and c.get("status") == "True"
                   for c in ((ts or {}).get("status") or {}).get("conditions") or [])

    def _has_ts_crd(self) -> bool:
        return self.store.get(CRD_API, "CustomResourceDefinition", "tigerastatuses.operator.tigera.io") is not None

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
    nodes from $KUBEAPI_FAKE_NODES ("name=ip,name=ip"), stopped together with the emulator."""
    import os
    spec = os.environ.get("KUBEAPI_FAKE_NODES")
    nodes = [tuple(p.split("=", 1)) for p in spec.split(",") if "=" in p] if spec else \
        [("control", "198.19.0.1"), ("node1", "198.19.0.2"), ("node2", "198.19.0.3")]
    cluster = FakeCluster(emu, nodes=nodes).start()
    emu.on_stop(cluster.stop)
    return cluster


def k3s_lab(emu) -> FakeCluster:
    """`--controllers tests.support.kubeapi.controllers:k3s_lab` hook used by the test lab's fake k3s server:
    the default FakeCluster (operator, kubelets, deployment controller) plus NodePort Services answering like
    kube-proxy in front of the pods (see nodeports.py)."""
    from .nodeports import NodePorts

    cluster = start(emu)
    proxy = NodePorts(emu).start()
    emu.on_stop(proxy.stop)
    return cluster
