"""The workloads the tigera-operator runs for an Installation, as far as the lab's checks look at them.

The fake operator (controllers.FakeCluster) calls :func:`ensure` once the Installation exists: the
``calico-system`` namespace, the ``calico-node`` DaemonSet, the ``calico-kube-controllers`` and
``calico-typha`` Deployments (the fake workload controllers give them a status). Existing objects are
left alone (creation only). The IPPools are the fake IP-pool controller's (controllers.py).
"""
from __future__ import annotations

CALICO_NS = "calico-system"
MANAGER = "tigera-operator"


def _workload(kind: str, name: str, replicas: int | None = None) -> dict:
    labels = {"k8s-app": name}
    spec = {"selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": name, "image": f"quay.io/calico/{name.split('-', 1)[1]}"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": CALICO_NS}, "spec": spec}


def ensure(store) -> None:
    """Create what is missing (never changes an existing object)."""
    def create(obj: dict) -> None:
        md = obj["metadata"]
        if store.get(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace")) is None:
            store.put(obj, manager=MANAGER)

    create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CALICO_NS}})
    create(_workload("DaemonSet", "calico-node"))
    create(_workload("Deployment", "calico-kube-controllers", 1))
    create(_workload("Deployment", "calico-typha", 1))
