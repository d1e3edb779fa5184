"""What the tigera-operator creates for an Installation, as far as the lab's checks look at it.

The fake operator (controllers.FakeCluster) calls :func:`ensure` once the Installation exists: the
``calico-system`` namespace, the ``calico-node`` DaemonSet, the ``calico-kube-controllers`` and
``calico-typha`` Deployments (the fake workload controllers give them a status), the IPPool CRD
(``crd.projectcalico.org/v1``, the storage of Calico's own API) and one IPPool per Installation pool,
labelled as owned by the operator. Existing objects are left alone (creation only).
"""
from __future__ import annotations

CALICO_NS = "calico-system"
CRD_API = "apiextensions.k8s.io/v1"
IPPOOL_API = "crd.projectcalico.org/v1"
MANAGER = "tigera-operator"
# Installation encapsulation -> (ipipMode, vxlanMode), as the operator converts it
ENCAPSULATION = {"None": ("Never", "Never"), "IPIP": ("Always", "Never"), "IPIPCrossSubnet": ("CrossSubnet", "Never"),
                 "VXLAN": ("Never", "Always"), "VXLANCrossSubnet": ("Never", "CrossSubnet")}


def ippool_crd() -> dict:
    version = {"name": "v1", "served": True, "storage": True,
               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    return {"apiVersion": CRD_API, "kind": "CustomResourceDefinition", "metadata": {"name": "ippools.crd.projectcalico.org"},
            "spec": {"group": "crd.projectcalico.org", "scope": "Cluster", "versions": [version],
                     "names": {"plural": "ippools", "singular": "ippool", "kind": "IPPool", "listKind": "IPPoolList"}}}


def _workload(kind: str, name: str, replicas: int | None = None) -> dict:
    labels = {"k8s-app": name}
    spec = {"selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": name, "image": f"quay.io/calico/{name.split('-', 1)[1]}"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": CALICO_NS}, "spec": spec}


def ippool(pool: dict) -> dict:
    """An Installation pool as the crd.projectcalico.org IPPool the operator creates."""
    ipip, vxlan = ENCAPSULATION.get(pool.get("encapsulation", "IPIP"), ("Always", "Never"))
    return {"apiVersion": IPPOOL_API, "kind": "IPPool",
            "metadata": {"name": pool.get("name") or "default-ipv4-ippool",
                         "labels": {"app.kubernetes.io/managed-by": "tigera-operator"}},
            "spec": {"cidr": pool["cidr"], "blockSize": pool.get("blockSize", 26), "ipipMode": ipip, "vxlanMode": vxlan,
                     "natOutgoing": pool.get("natOutgoing", "Enabled") == "Enabled",
                     "nodeSelector": pool.get("nodeSelector", "all()"), "allowedUses": ["Workload", "Tunnel"]}}


def ensure(store, installation: dict) -> None:
    """Create what is missing (never changes an existing object)."""
    def create(obj: dict) -> None:
        md = obj["metadata"]
        if store.get(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace")) is None:
            store.put(obj, manager=MANAGER)

    create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CALICO_NS}})
    create(_workload("DaemonSet", "calico-node"))
    create(_workload("Deployment", "calico-kube-controllers", 1))
    create(_workload("Deployment", "calico-typha", 1))
    create(ippool_crd())
    for pool in ((installation.get("spec") or {}).get("calicoNetwork") or {}).get("ipPools") or []:
        if pool.get("cidr"):
            create(ippool(pool))
