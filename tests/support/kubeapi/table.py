"""Server-side printing (meta.k8s.io/v1 Table) for `kubectl get`: the common built-in columns and CRD
additionalPrinterColumns (simple JSONPath: .a.b, [n], [?(@.k=='v')])."""
from __future__ import annotations

import datetime
import re


def age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<invalid>"
    s = max(0, int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 3600 * 3:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400 * 2:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


_STEP = re.compile(r"\.([\w-]+)|\[(\d+)\]|\[\?\(@\.([\w.-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")


def jsonpath(obj, path: str):
    cur = [obj]
    for m in _STEP.finditer(path.strip().lstrip("$").strip("{}")):
        key, idx, fkey, fval = m.groups()
        nxt = []
        for c in cur:
            if key is not None and isinstance(c, dict) and key in c:
                nxt.append(c[key])
            elif idx is not None and isinstance(c, list) and int(idx) < len(c):
                nxt.append(c[int(idx)])
            elif fkey is not None and isinstance(c, list):
                nxt += [i for i in c if isinstance(i, dict) and str(jsonpath(i, "." + fkey)) == fval]
        cur = nxt
    return cur[0] if len(cur) == 1 else (None if not cur else cur)


def _cond(obj, typ):
    return next((c.get("status") for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == typ), "Unknown")


def _ports(svc):
    out = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        s = str(p.get("port"))
        if p.get("nodePort"):
            s += f":{p['nodePort']}"
        out.append(f"{s}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _roles(node):
    roles = sorted(k.split("/", 1)[1] for k in (node["metadata"].get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/"))
    return ",".join(roles) or "<none>"


def _node_status(node):
    s = {"True": "Ready", "False": "NotReady"}.get(_cond(node, "Ready"), "Unknown")
    return s + (",SchedulingDisabled" if (node.get("spec") or {}).get("unschedulable") else "")


def _internal_ip(node):
    return next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP"), "<none>")


def _st(o, *keys, default=0):
    cur = o.get("status") or {}
    for k in keys:
        cur = cur.get(k, default) if isinstance(cur, dict) else default
    return cur


def _pod_ready(p):
    cs = (p.get("status") or {}).get("containerStatuses") or []
    total = len((p.get("spec") or {}).get("containers") or [])
    return f"{sum(1 for c in cs if c.get('ready'))}/{total}"


# kind -> [(column, type, priority, fn)]; Name first and Age are added around these.
_S, _I = "string", "integer"
COLUMNS = {
    "Namespace": [("Status", _S, 0, lambda o: _st(o, "phase", default=""))],
    "Node": [("Status", _S, 0, _node_status), ("Roles", _S, 0, _roles), ("@age", "", 0, None),
             ("Version", _S, 0, lambda o: _st(o, "nodeInfo", "kubeletVersion", default="")),
             ("Internal-IP", _S, 1, _internal_ip),
             ("OS-Image", _S, 1, lambda o: _st(o, "nodeInfo", "osImage", default="")),
             ("Container-Runtime", _S, 1, lambda o: _st(o, "nodeInfo", "containerRuntimeVersion", default=""))],
    "Pod": [("Ready", _S, 0, _pod_ready), ("Status", _S, 0, lambda o: _st(o, "phase", default="")),
            ("Restarts", _I, 0, lambda o: sum(c.get("restartCount", 0) for c in _st(o, "containerStatuses",
                                                                                       default=[]))),
            ("@age", "", 0, None), ("IP", _S, 1, lambda o: _st(o, "podIP", default="<none>")),
            ("Node", _S, 1, lambda o: (o.get("spec") or {}).get("nodeName", "<none>"))],
    "Service": [("Type", _S, 0, lambda o: o["spec"].get("type")),
                ("Cluster-IP", _S, 0, lambda o: o["spec"].get("clusterIP", "<none>")),
                ("External-IP", _S, 0, lambda o: ",".join(o["spec"].get("externalIPs") or []) or "<none>"),
                ("Port(s)", _S, 0, _ports)],
    "Deployment": [("Ready", _S, 0, lambda o: f"{_st(o, 'readyReplicas')}/{o['spec'].get('replicas', 1)}"),
                   ("Up-to-date", _I, 0, lambda o: _st(o, "updatedReplicas")),
                   ("Available", _I, 0, lambda o: _st(o, "availableReplicas")), ("@age", "", 0, None),
                   ("Containers", _S, 1, lambda o: ",".join(c["name"] for c in o["spec"]["template"]["spec"]
                                                            ["containers"])),
                   ("Images", _S, 1, lambda o: ",".join(c.get("image", "") for c in o["spec"]["template"]["spec"]
                                                        ["containers"])),
                   ("Selector", _S, 1, lambda o: ",".join(f"{k}={v}" for k, v in (o["spec"]["selector"].get(
                       "matchLabels") or {}).items()))],
    "DaemonSet": [(n, _I, 0, (lambda k: lambda o: _st(o, k))(k)) for n, k in (
        ("Desired", "desiredNumberScheduled"), ("Current", "currentNumberScheduled"), ("Ready", "numberReady"),
        ("Up-to-date", "updatedNumberScheduled"), ("Available", "numberAvailable"))],
    "ReplicaSet": [("Desired", _I, 0, lambda o: o["spec"].get("replicas", 1)),
                   ("Current", _I, 0, lambda o: _st(o, "replicas")),
                   ("Ready", _I, 0, lambda o: _st(o, "readyReplicas"))],
    "ConfigMap": [("Data", _I, 0, lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}))],
    "Secret": [("Type", _S, 0, lambda o: o.get("type", "Opaque")),
               ("Data", _I, 0, lambda o: len(o.get("data") or {}))],
    "CustomResourceDefinition": [("Created At", "date", 0, lambda o: o["metadata"].get("creationTimestamp"))],
}


def _crd_col(path, typ):
    def get(o):
        v = jsonpath(o, path)
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        if typ == "date":
            return age(v) if v else "<unknown>"
        return "<none>" if v is None else v
    return get


def table(res, items: list[dict], rv: str, include_object: str = "Metadata") -> dict:
    if res.columns:
        cols = [(n, "string" if t == "date" else t, 0, _crd_col(p, t)) for n, p, t in res.columns]
    else:
        cols = COLUMNS.get(res.kind if res.group in ("", "apps", "apiextensions.k8s.io") else "", [])
        if res.kind != "CustomResourceDefinition" and not any(c[0] == "@age" for c in cols):
            cols = cols + [("@age", "", 0, None)]
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    for name, typ, prio, _ in cols:
        defs.append({"name": "Age", "type": "string", "format": "", "description": "age", "priority": 0}
                    if name == "@age" else {"name": name, "type": typ or "string", "format": "", "description": name,
                                            "priority": prio})
    rows = []
    for o in items:
        cells = [o["metadata"]["name"]]
        for name, _, _, fn in cols:
            try:
                cells.append(age(o["metadata"].get("creationTimestamp")) if name == "@age" else fn(o))
            except (KeyError, TypeError, AttributeError):
                cells.append("<unknown>")
        if include_object == "Object":
            obj = o
        elif include_object == "None":
            obj = None
        else:
            obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
        rows.append({"cells": cells, "object": obj})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": defs, "rows": rows}
