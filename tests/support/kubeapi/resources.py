"""Resource descriptions (what discovery serves) and the built-in table."""
from __future__ import annotations

from dataclasses import dataclass, field

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple = ()
    status: bool = False          # has a /status subresource
    categories: tuple = ()
    singular: str = ""
    columns: tuple = field(default=(), compare=False)   # CRD additionalPrinterColumns

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gk(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def discovery(self) -> list[dict]:
        out = [{"name": self.plural, "singularName": self.singular or self.kind.lower(),
                "namespaced": self.namespaced, "kind": self.kind, "verbs": VERBS,
                "storageVersionHash": ""}]
        if self.short_names:
            out[0]["shortNames"] = list(self.short_names)
        if self.categories:
            out[0]["categories"] = list(self.categories)
        if self.kind in ("Deployment", "ReplicaSet", "StatefulSet") and self.group == "apps":
            out.append({"name": f"{self.plural}/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
                        "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
        if self.status:
            out.append({"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced,
                        "kind": self.kind, "verbs": ["get", "patch", "update"]})
        return out


_RBAC = "rbac.authorization.k8s.io"
# group, version, plural, kind, namespaced, shortNames, status, all-category
_TABLE = [
    ("", "v1", "namespaces", "Namespace", False, "ns", True, False),
    ("", "v1", "nodes", "Node", False, "no", True, False),
    ("", "v1", "services", "Service", True, "svc", True, True),
    ("", "v1", "serviceaccounts", "ServiceAccount", True, "sa", False, False),
    ("", "v1", "configmaps", "ConfigMap", True, "cm", False, False),
    ("", "v1", "secrets", "Secret", True, "", False, False),
    ("", "v1", "events", "Event", True, "ev", False, False),
    ("", "v1", "endpoints", "Endpoints", True, "ep", False, False),
    ("", "v1", "pods", "Pod", True, "po", True, True),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, "pvc", True, False),
    ("apps", "v1", "deployments", "Deployment", True, "deploy", True, True),
    ("apps", "v1", "replicasets", "ReplicaSet", True, "rs", True, True),
    ("apps", "v1", "daemonsets", "DaemonSet", True, "ds", True, True),
    ("apps", "v1", "statefulsets", "StatefulSet", True, "sts", True, True),
    ("batch", "v1", "jobs", "Job", True, "", True, True),
    (_RBAC, "v1", "clusterroles", "ClusterRole", False, "", False, False),
    (_RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", False, "", False, False),
    (_RBAC, "v1", "roles", "Role", True, "", False, False),
    (_RBAC, "v1", "rolebindings", "RoleBinding", True, "", False, False),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
     "crd,crds", True, False),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, "netpol", False, False),
    ("coordination.k8s.io", "v1", "leases", "Lease", True, "", False, False),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, "pdb", True, False),
]

BUILTINS = [Resource(g, v, p, k, ns, tuple(s.split(",")) if s else (), st, ("all",) if cat else ())
            for g, v, p, k, ns, s, st, cat in _TABLE]


def crd_resources(crd: dict) -> list[Resource]:
    """Resources served for a CustomResourceDefinition (apiextensions.k8s.io/v1 shape)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    out = []
    for ver in spec.get("versions") or []:
        if not ver.get("served", True):
            continue
        sub = ver.get("subresources") or spec.get("subresources") or {}
        cols = tuple((c.get("name"), c.get("jsonPath"), c.get("type", "string"))
                     for c in ver.get("additionalPrinterColumns") or [])
        out.append(Resource(spec["group"], ver["name"], names["plural"], names["kind"],
                            spec.get("scope", "Namespaced") == "Namespaced",
                            tuple(names.get("shortNames") or ()), "status" in sub,
                            tuple(names.get("categories") or ()), names.get("singular", ""), cols))
    return out
