"""Thread-safe object store with Kubernetes write semantics (validation, defaults, generation,
managedFields / server-side apply, dry run, watch events, CRD registration)."""
from __future__ import annotations

import datetime
import ipaddress
import json
import random
import re
import string
import threading
import uuid
from collections import deque

import jsonpatch

from . import merge as M
from .errors import ApiError, already_exists, bad_request, conflict, invalid, not_found
from .resources import BUILTINS, Resource, crd_resources

CRD_GK = ("apiextensions.k8s.io", "customresourcedefinitions")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_WORKLOADS = {"Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_times(obj: dict) -> dict:
    o = dict(obj)
    md = o["metadata"] = dict(o.get("metadata") or {})
    md["managedFields"] = [{k: v for k, v in e.items() if k != "time"} for e in md.get("managedFields") or []]
    return o


class _Sub:
    def __init__(self, gk, ns, lsel, fsel, deliver):
        self.gk, self.ns, self.lsel, self.fsel, self.deliver = gk, ns, lsel, fsel, deliver

    def match(self, obj) -> bool:
        md = obj.get("metadata") or {}
        return ((self.ns is None or md.get("namespace") == self.ns) and M.labels_match(self.lsel, md.get("labels"))
                and M.fields_match(self.fsel, obj))

    def translate(self, ev):
        _, typ, gk, old, new = ev
        if self.gk is not None and gk != self.gk:
            return None
        ok_new, ok_old = self.match(new), old is not None and self.match(old)
        if typ != "MODIFIED":
            return (typ, new) if ok_new else None
        if ok_new:
            return ("MODIFIED" if ok_old else "ADDED", new)
        return ("DELETED", new) if ok_old else None


class Store:
    def __init__(self, service_cidr: str = "198.19.32.0/20", crd_established_delay: float | None = 0.0,
                 namespace_delete_delay: float = 0.2):
        self.lock = threading.RLock()
        self.rv = 0
        self.service_net = ipaddress.ip_network(service_cidr)
        self.crd_established_delay = crd_established_delay
        self.namespace_delete_delay = namespace_delete_delay
        # True (like a real API server): SSA conflicts with every other manager's fields, Update ones included;
        # False: only with other Apply managers
        self.strict_conflicts = True
        self.resources: dict[tuple, Resource] = {}
        self.objects: dict[tuple, dict] = {}
        self.history: deque = deque(maxlen=50000)
        self.subs: list[_Sub] = []
        self.timers: list[threading.Timer] = []
        for r in BUILTINS:
            self.resources[(r.group, r.version, r.plural)] = r
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.res("v1", "Namespace"), None, {"metadata": {"name": ns}}, manager="k3s")
        self.create(self.res("v1", "Service"), "default", {
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": str(self.service_net[1]), "ports": [{"name": "https", "port": 443,
                                                                        "targetPort": 6443}]}}, manager="k3s")

    # ---- resource registry --------------------------------------------------------------------
    def resource(self, group: str, version: str, plural: str) -> Resource | None:
        return self.resources.get((group, version, plural))

    def res(self, api_version: str, kind: str) -> Resource:
        group, _, version = api_version.rpartition("/")
        with self.lock:
            for r in self.resources.values():
                if r.group == group and r.version == version and r.kind == kind:
                    return r
        raise ApiError(404, "NotFound", f'no matches for kind "{kind}" in version "{api_version}"')

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with self.lock:
            for r in self.resources.values():
                if r.version not in out.setdefault(r.group, []):
                    out[r.group].append(r.version)
        return out

    def group_resources(self, group: str, version: str) -> list[Resource]:
        with self.lock:
            return [r for r in self.resources.values() if r.group == group and r.version == version]

    # ---- reads --------------------------------------------------------------------------------
    @staticmethod
    def _out(res: Resource, obj: dict) -> dict:
        """A shallow copy (stored objects are never changed in place); the public helpers below deep-copy."""
        o = dict(obj)
        o["apiVersion"], o["kind"] = res.api_version, res.kind
        return o

    def _cur(self, res, ns, name):
        return self.objects.get(res.gk, {}).get((ns if res.namespaced else None, name))

    def get_obj(self, res: Resource, ns: str | None, name: str) -> dict:
        with self.lock:
            obj = self._cur(res, ns, name)
            if obj is None:
                raise not_found(res, name)
            return self._out(res, obj)

    def get_obj_or_none(self, res: Resource, ns: str | None, name: str) -> dict | None:
        with self.lock:
            obj = self._cur(res, ns, name)
            return None if obj is None else self._out(res, obj)

    def list_objs(self, res: Resource, ns=None, label_selector=None, field_selector=None) -> tuple[list, str]:
        try:
            sub = _Sub(res.gk, ns, M.parse_label_selector(label_selector), M.parse_field_selector(field_selector),
                       None)
        except ValueError as e:
            raise bad_request(str(e))
        with self.lock:
            items = [self._out(res, o) for o in self.objects.get(res.gk, {}).values() if sub.match(o)]
            return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])), \
                str(self.rv)

    # ---- events -------------------------------------------------------------------------------
    def _emit(self, typ: str, res: Resource, old, new) -> None:
        ev = (self.rv, typ, res.gk, old, new)
        self.history.append(ev)
        for s in list(self.subs):
            t = s.translate(ev)
            if t:
                s.deliver(t[0], t[1])

    def subscribe(self, deliver, res: Resource | None = None, ns=None, label_selector=None, field_selector=None,
                  since: str | None = None, initial: bool = False):
        """deliver(type, obj) is called with the store lock held (must not block, must not change obj).
        Returns unsubscribe()."""
        try:
            sub = _Sub(res.gk if res else None, ns, M.parse_label_selector(label_selector),
                       M.parse_field_selector(field_selector), deliver)
        except ValueError as e:
            raise bad_request(str(e))
        with self.lock:
            if initial:
                for o in (self.objects.get(res.gk, {}).values() if res else []):
                    if sub.match(o):
                        deliver("ADDED", o)
            elif since not in (None, "", "0"):
                try:
                    since_rv = int(since)
                except ValueError:
                    raise bad_request(f"invalid resource version: {since}")
                if since_rv < self.rv and (not self.history or self.history[0][0] > since_rv + 1):
                    raise ApiError(410, "Expired", f"too old resource version: {since_rv} ({self.rv})")
                for ev in self.history:
                    if ev[0] > since_rv and (t := sub.translate(ev)):
                        deliver(t[0], t[1])
            self.subs.append(sub)

        def unsubscribe():
            with self.lock:
                if sub in self.subs:
                    self.subs.remove(sub)
        return unsubscribe

    # ---- writes -------------------------------------------------------------------------------
    def _view(self, res: Resource, obj: dict, sub: str | None) -> dict:
        """The part of an object whose fields are tracked in managedFields."""
        if sub == "status":
            return {"status": obj["status"]} if "status" in obj else {}
        v = {k: val for k, val in obj.items() if k not in ("apiVersion", "kind", "metadata")
             and not (k == "status" and res.status)}
        md = {k: val for k, val in (obj.get("metadata") or {}).items()
              if k in ("labels", "annotations", "finalizers", "ownerReferences")}
        if md:
            v["metadata"] = md
        return v

    @staticmethod
    def _owners(obj: dict) -> list[dict]:
        out = []
        for e in (obj.get("metadata") or {}).get("managedFields") or []:
            paths = M.fields_to_paths(e.get("fieldsV1") or {})
            out.append(dict(e, _paths=paths, _orig=paths))
        return out

    @staticmethod
    def _entries(owners: list[dict], touched: set) -> list[dict]:
        out = []
        for e in owners:
            paths, orig = e.pop("_paths"), e.pop("_orig", None)
            if not paths:
                continue
            if paths != orig or "fieldsV1" not in e:
                e["fieldsType"], e["fieldsV1"] = "FieldsV1", M.paths_to_fields(paths)
            if id(e) in touched or "time" not in e:
                e["time"] = now()
            out.append(e)
        return out

    def _take(self, owners, res, manager, operation, sub, paths, touched, strip_others=True):
        for e in owners if strip_others else ():
            if (e["manager"], e["operation"], e.get("subresource")) != (manager, operation, sub):
                e["_paths"] = e["_paths"] - paths
        e = next((e for e in owners if (e["manager"], e["operation"], e.get("subresource")) ==
                  (manager, operation, sub)), None)
        if e is None:
            e = {"manager": manager, "operation": operation, "apiVersion": res.api_version, "_paths": set()}
            if sub:
                e["subresource"] = sub
            owners.append(e)
        before = e["_paths"]
        e["_paths"] = paths if operation == "Apply" else before | paths
        if e["_paths"] != before:
            touched.add(id(e))

    def _check_ns(self, res, ns, name=""):
        nsobj = self.objects.get(("", "namespaces"), {}).get((None, ns))
        if res.namespaced and nsobj is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found',
                           {"name": ns, "group": "", "kind": "namespaces"})
        if res.namespaced and nsobj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f'{res.plural} "{name}" is forbidden: unable to create new content '
                           f"in namespace {ns} because it is being terminated",
                           {"name": name, "group": res.group, "kind": res.plural})

    def create(self, res: Resource, ns: str | None, body: dict, *, dry_run=False, manager="unknown",
               operation="Update", keep_status=False) -> dict:
        obj = M.clone(body)
        md = obj.setdefault("metadata", {})
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        name = md.get("name") or ""
        if not name:
            raise invalid(res, "", [("metadata.name", "FieldValueRequired", "Required value: name or generateName "
                                                                             "is required")])
        with self.lock:
            if res.namespaced:
                if ns and md.get("namespace") and md["namespace"] != ns:
                    raise bad_request("the namespace of the provided object does not match the namespace sent "
                                      "on the request")
                ns = ns or md.get("namespace") or "default"
                md["namespace"] = ns
                self._check_ns(res, ns, name)
            else:
                md.pop("namespace", None)
            if self._cur(res, ns, name) is not None:
                raise already_exists(res, name)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            # a Node keeps the status it is created with: the kubelet registers its addresses that way
            # (kubernetes pkg/registry/core/node/strategy.go: "Nodes allow *all* fields, including status,
            # to be set on create")
            if res.status and not keep_status and res.gk != ("", "nodes"):
                obj.pop("status", None)
            for k in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
                md.pop(k, None)
            md.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            owned = M.field_paths(self._view(res, obj, None))   # the request's fields, not the defaults
            self._default(res, obj, None)
            self._validate(res, obj, None)
            owners: list = []
            self._take(owners, res, manager, operation, None, owned, set())
            md["managedFields"] = self._entries(owners, set())
            if dry_run:
                return self._out(res, obj)
            self.rv += 1
            md["resourceVersion"] = str(self.rv)
            self.objects.setdefault(res.gk, {})[(ns if res.namespaced else None, name)] = obj
            self._emit("ADDED", res, None, obj)
            if res.gk == CRD_GK:
                self._crd_registered(obj)
            return self._out(res, obj)

    def _commit(self, res, old, new, *, dry_run, owners, touched) -> dict:
        md, omd = new.setdefault("metadata", {}), old["metadata"]
        for k in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "generation",
                  "resourceVersion"):
            if k in omd:
                md[k] = omd[k]
            else:
                md.pop(k, None)
        new["apiVersion"], new["kind"] = old.get("apiVersion", res.api_version), res.kind
        self._default(res, new, old)
        self._validate(res, new, old)
        md["managedFields"] = self._entries(owners, touched)
        strip = (lambda o: {k: v for k, v in o.items() if k not in ("metadata", "apiVersion", "kind")
                            and not (k == "status" and res.status)})
        if strip(new) != strip(old):
            md["generation"] = omd.get("generation", 1) + 1
        if _strip_times(new) == _strip_times(old):
            return self._out(res, old)
        if dry_run:
            return self._out(res, new)
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        key = (md.get("namespace") if res.namespaced else None, md["name"])
        if md.get("deletionTimestamp") and not md.get("finalizers"):
            del self.objects[res.gk][key]
            self._emit("DELETED", res, old, new)
            return self._out(res, new)
        self.objects[res.gk][key] = new
        self._emit("MODIFIED", res, old, new)
        if res.gk == CRD_GK:
            self._crd_registered(new)
        return self._out(res, new)

    def replace(self, res, ns, name, body, *, subresource=None, dry_run=False, manager="unknown",
                raw=False) -> dict:
        with self.lock:
            old = self._cur(res, ns, name)
            if old is None:
                raise not_found(res, name)
            bmd = body.get("metadata") or {}
            if bmd.get("name", name) != name:
                raise bad_request(f"the name of the object ({bmd.get('name')}) does not match the name on the URL "
                                  f"({name})")
            if bmd.get("resourceVersion") and bmd["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise conflict(res, name, f'Operation cannot be fulfilled on {res.plural} "{name}": the object '
                                          "has been modified; please apply your changes to the latest version and "
                                          "try again")
            new = self._merge_sub(res, old, M.clone(body), subresource, raw)
            return self._update_op(res, old, new, subresource, dry_run, manager)

    def _merge_sub(self, res, old, new, subresource, raw=False):
        if subresource == "status":
            out = M.clone(old)
            out.pop("status", None)
            if "status" in new:
                out["status"] = new["status"]
            return out
        if res.status and not raw:
            new.pop("status", None)
            if "status" in old:
                new["status"] = M.clone(old["status"])
        md = new.setdefault("metadata", {})
        md["managedFields"] = (old.get("metadata") or {}).get("managedFields", [])
        return new

    def _update_op(self, res, old, new, subresource, dry_run, manager):
        owners, touched = self._owners(old), set()
        paths = M.changed_paths(self._view(res, old, subresource), self._view(res, new, subresource))
        if paths:
            self._take(owners, res, manager, "Update", subresource, paths, touched)
        return self._commit(res, old, new, dry_run=dry_run, owners=owners, touched=touched)

    def patch(self, res, ns, name, patch, ptype: str, *, subresource=None, dry_run=False, manager=None,
              force=False) -> dict:
        """ptype: merge | json | strategic | apply."""
        with self.lock:
            old = self._cur(res, ns, name)
            if ptype == "apply":
                return self._apply(res, ns, name, old, patch, subresource, dry_run, manager, force)
            if old is None:
                raise not_found(res, name)
            try:
                if ptype == "json":
                    new = jsonpatch.apply_patch(old, patch)
                elif ptype == "merge":
                    new = M.merge_patch(old, patch)
                else:
                    new = M.strategic_merge(old, patch)
                new = M.clone(new)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as e:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                               f"{e}")
            if not isinstance(new, dict):
                raise bad_request("patch did not produce an object")
            new = self._merge_sub(res, old, new, subresource)
            return self._update_op(res, old, new, subresource, dry_run, manager or "unknown")

    def _apply(self, res, ns, name, old, cfg, subresource, dry_run, manager, force):
        if not manager:
            raise bad_request("PATCH /apply requires fieldManager: fieldManager is required for apply requests")
        if not isinstance(cfg, dict) or not cfg.get("apiVersion") or not cfg.get("kind"):
            raise bad_request("apply patch must be an object with apiVersion and kind")
        if cfg["kind"] != res.kind or cfg["apiVersion"].rpartition("/")[0] != res.group:
            raise bad_request(f"the apply patch kind {cfg['apiVersion']}/{cfg['kind']} does not match the "
                              f"resource {res.api_version}/{res.kind}")
        cmd = cfg.get("metadata") or {}
        if cmd.get("name", name) != name:
            raise bad_request("the name of the object does not match the name on the URL")
        if res.namespaced and cmd.get("namespace") not in (None, ns):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        applied = self._view(res, cfg, subresource)
        paths = M.field_paths(applied)
        if old is None:
            if subresource:
                raise not_found(res, name)
            body = M.strategic_merge({}, applied, apply=True)
            body["metadata"] = dict(body.get("metadata") or {}, name=name)
            if res.namespaced:
                body["metadata"]["namespace"] = ns
            return self.create(res, ns, body, dry_run=dry_run, manager=manager, operation="Apply")
        owners, touched = self._owners(old), set()
        conflicts = []
        for e in owners:
            # every other manager counts, whatever subresource it wrote through (`kubectl scale` owns spec.replicas)
            if e["manager"] == manager or (e["operation"] != "Apply" and not self.strict_conflicts):
                continue
            for p in sorted(paths & e["_paths"]):
                if p[-1] != "." and M.get_path(old, p) != M.get_path(applied, p):
                    if force:
                        e["_paths"] = e["_paths"] - {p}
                        touched.add(id(e))
                    else:
                        conflicts.append((e["manager"], e["apiVersion"], p))
        if conflicts:
            msg = "; ".join(f'conflict with "{m}" using {v}: {M.show_path(p)}' for m, v, p in conflicts)
            n = len(conflicts)
            raise conflict(res, name, f"Apply failed with {n} conflict{'s' if n > 1 else ''}: {msg}",
                           [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {v}',
                             "field": M.show_path(p)} for m, v, p in conflicts])
        mine = next((e for e in owners if (e["manager"], e["operation"], e.get("subresource")) ==
                     (manager, "Apply", subresource)), None)
        previous = set(mine["_paths"]) if mine else set()
        new = M.clone(M.strategic_merge(old, applied, apply=True))
        others = set().union(*[e["_paths"] for e in owners if e is not mine] or [set()])
        # whole list items first: once an item's key field is gone the item can no longer be found by it
        for p in sorted(previous - paths - others, key=lambda p: (p[-1] != ".", -len(p))):
            M.remove_path(new, p)
        for e in owners:   # applying takes the fields away from Update managers (they lose them)
            if e is not mine and e["operation"] != "Apply" and e.get("subresource") == subresource:
                changed = {p for p in e["_paths"] & paths if M.get_path(old, p) != M.get_path(applied, p)}
                if changed:
                    e["_paths"] = e["_paths"] - changed
                    touched.add(id(e))
        self._take(owners, res, manager, "Apply", subresource, paths, touched, strip_others=False)
        if subresource != "status" and res.status and "status" in old:
            new["status"] = M.clone(old["status"])
        return self._commit(res, old, new, dry_run=dry_run, owners=owners, touched=touched)

    def delete(self, res, ns, name, *, dry_run=False) -> dict:
        with self.lock:
            old = self._cur(res, ns, name)
            if old is None:
                raise not_found(res, name)
            if old["metadata"].get("finalizers") and res.kind != "Namespace":
                if old["metadata"].get("deletionTimestamp"):
                    return self._out(res, old)
                new = M.clone(old)
                new["metadata"]["deletionTimestamp"] = now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                if dry_run:
                    return self._out(res, new)
                self.rv += 1
                new["metadata"]["resourceVersion"] = str(self.rv)
                self.objects[res.gk][(ns if res.namespaced else None, name)] = new
                self._emit("MODIFIED", res, old, new)
                return self._out(res, new)
            if res.kind == "Namespace" and res.group == "":
                if old["metadata"].get("deletionTimestamp"):
                    return self._out(res, old)
                new = M.clone(old)
                new["metadata"]["deletionTimestamp"] = now()
                new["status"] = {"phase": "Terminating"}
                if dry_run:
                    return self._out(res, new)
                if self.namespace_delete_delay:
                    self.rv += 1
                    new["metadata"]["resourceVersion"] = str(self.rv)
                    self.objects[res.gk][(None, name)] = new
                    self._emit("MODIFIED", res, old, new)
                    t = threading.Timer(self.namespace_delete_delay, self._finish_namespace, args=(name,))
                    t.daemon = True
                    self.timers.append(t)
                    t.start()
                    return self._out(res, new)
                return self._finish_namespace(name)
            if dry_run:
                return self._out(res, old)
            if res.gk == CRD_GK:
                self._crd_removed(old)
            return self._remove(res, (ns if res.namespaced else None, name))

    def _finish_namespace(self, name: str) -> dict | None:
        """Namespace finalization: delete everything in it, then the namespace."""
        with self.lock:
            if (None, name) not in self.objects.get(("", "namespaces"), {}):
                return None
            for gk, bucket in list(self.objects.items()):
                r = next((r for r in self.resources.values() if r.gk == gk), None)
                for key in [k for k in bucket if k[0] == name]:
                    if r is not None:
                        self._remove(r, key)
            return self._remove(self.res("v1", "Namespace"), (None, name))

    def _remove(self, res, key) -> dict:
        old = self.objects[res.gk].pop(key)
        self.rv += 1
        gone = M.clone(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit("DELETED", res, old, gone)
        return self._out(res, gone)

    # ---- CRDs ---------------------------------------------------------------------------------
    def _crd_registered(self, crd: dict) -> None:
        name = crd["metadata"]["name"]
        spec = crd.get("spec") or {}
        gp = (spec.get("group"), (spec.get("names") or {}).get("plural"))
        for key in [k for k, r in self.resources.items() if r.gk == gp]:
            del self.resources[key]
        for r in crd_resources(crd):
            self.resources[(r.group, r.version, r.plural)] = r
        conds = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
        if conds.get("Established", {}).get("status") == "True":
            return
        delay = self.crd_established_delay
        if delay is None:
            return
        if delay <= 0:
            self._set_established(name)
        else:
            t = threading.Timer(delay, self._set_established, args=(name,))
            t.daemon = True
            self.timers.append(t)
            t.start()

    def _set_established(self, name: str) -> None:
        with self.lock:
            crd = self.objects.get(CRD_GK, {}).get((None, name))
            if crd is None:
                return
            status = M.clone(crd.get("status") or {})
            status["conditions"] = [c for c in status.get("conditions", []) if c.get("type") != "Established"] + [
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now()}]
            new = M.clone(crd)
            new["status"] = status
            self.rv += 1
            new["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[CRD_GK][(None, name)] = new
            self._emit("MODIFIED", self.res("apiextensions.k8s.io/v1", "CustomResourceDefinition"), crd, new)

    def _crd_removed(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        gk = (spec.get("group"), (spec.get("names") or {}).get("plural"))
        rs = [r for r in self.resources.values() if r.gk == gk]
        for key in list(self.objects.get(gk, {})):
            self._remove(rs[0], key)
        for r in rs:
            self.resources.pop((r.group, r.version, r.plural), None)

    # ---- defaults and validation ----------------------------------------------------------------
    def _default(self, res: Resource, obj: dict, old: dict | None) -> None:
        kind, spec = res.kind, obj.get("spec")
        if res.group == "" and kind == "Namespace":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif res.group == "" and kind == "Service":
            self._default_service(obj, old)
        elif res.group == "" and kind == "Pod" and old is None:
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif res.group == "apps" and kind == "Deployment" and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("strategy", {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        elif res.gk == CRD_GK and isinstance(spec, dict):
            names = spec.get("names") or {}
            st = obj.setdefault("status", {})
            st["acceptedNames"] = {k: v for k, v in names.items()}
            st.setdefault("acceptedNames", {}).setdefault("singular", names.get("kind", "").lower())
            st["storedVersions"] = sorted({v["name"] for v in spec.get("versions") or [] if v.get("storage")}
                                          | set(st.get("storedVersions") or []))
            conds = [c for c in st.get("conditions") or [] if c.get("type") in ("Established",)]
            if not conds:
                conds = [{"type": "Established", "status": "False", "reason": "Installing",
                          "message": "the initial names have not yet been accepted", "lastTransitionTime": now()}]
            st["conditions"] = [{"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                                 "message": "no conflicts found", "lastTransitionTime":
                                     next((c.get("lastTransitionTime") for c in st.get("conditions") or []
                                           if c.get("type") == "NamesAccepted"), now())}] + conds

    def _default_service(self, obj: dict, old: dict | None) -> None:
        spec = obj.setdefault("spec", {})
        ospec = (old or {}).get("spec") or {}
        typ = spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if typ != "ExternalName":
            if not spec.get("clusterIP") and ospec.get("clusterIP"):
                spec["clusterIP"] = ospec["clusterIP"]
            if not spec.get("clusterIP"):
                used = {s.get("spec", {}).get("clusterIP") for s in self.objects.get(("", "services"), {}).values()}
                spec["clusterIP"] = next(str(ip) for ip in self.service_net.hosts() if str(ip) not in used)
            spec["clusterIPs"] = [spec["clusterIP"]]
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        used_np = {p.get("nodePort") for s in self.objects.get(("", "services"), {}).values()
                   if s is not old and (s["metadata"]["namespace"], s["metadata"]["name"]) !=
                   (obj["metadata"].get("namespace"), obj["metadata"]["name"])
                   for p in (s.get("spec") or {}).get("ports") or []}
        old_np = {p.get("port"): p.get("nodePort") for p in ospec.get("ports") or []}
        for p in spec.get("ports") or []:
            if not isinstance(p, dict):
                continue
            p.setdefault("protocol", "TCP")
            if "port" in p:
                p.setdefault("targetPort", p["port"])
            if typ in ("NodePort", "LoadBalancer") and not p.get("nodePort"):
                p["nodePort"] = old_np.get(p.get("port")) or next(
                    n for n in range(30000 + (hash(obj["metadata"]["name"]) % 2000), 32768) if n not in used_np)
                used_np.add(p["nodePort"])
            elif typ not in ("NodePort", "LoadBalancer"):
                p.pop("nodePort", None)
        if typ in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")

    def _validate(self, res: Resource, obj: dict, old: dict | None) -> None:
        md, name, errs = obj["metadata"], obj["metadata"]["name"], []
        if res.group != "rbac.authorization.k8s.io":
            rx, n = (_LABEL, 63) if res.kind in ("Namespace", "Service") else (_SUBDOMAIN, 253)
            if not rx.match(name) or len(name) > n:
                errs.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC 1123 '
                             f"{'label' if n == 63 else 'subdomain'} must consist of lower case alphanumeric "
                             "characters, '-' or '.'"))
        for k, v in (md.get("labels") or {}).items():
            if not isinstance(v, str) or len(v) > 63:
                errs.append((f"metadata.labels", "FieldValueInvalid", f'Invalid value: "{v}"'))
        spec = obj.get("spec")
        if res.group in ("apps", "batch") and res.kind in _WORKLOADS:
            spec = spec if isinstance(spec, dict) else {}
            sel = spec.get("selector")
            tmpl_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not sel:
                errs.append(("spec.selector", "FieldValueRequired", "Required value"))
            elif any(tmpl_labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
                errs.append(("spec.template.metadata.labels", "FieldValueInvalid",
                             f"Invalid value: {json.dumps(tmpl_labels)}: `selector` does not match template "
                             "`labels`"))
            if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
                errs.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
        elif res.group == "" and res.kind == "Service":
            spec = spec or {}
            if spec.get("type") not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
                errs.append(("spec.type", "FieldValueNotSupported", f'Unsupported value: "{spec.get("type")}"'))
            ip = spec.get("clusterIP")
            if ip and ip != "None" and spec.get("type") != "ExternalName":
                try:
                    if ipaddress.ip_address(ip) not in self.service_net:
                        raise ValueError
                except ValueError:
                    errs.append(("spec.clusterIPs", "FieldValueInvalid", f"Invalid value: \"{ip}\": failed to "
                                 f"allocate IP {ip}: the provided network does not match the current range"))
            if old and (old.get("spec") or {}).get("clusterIP") not in (None, ip):
                errs.append(("spec.clusterIPs[0]", "FieldValueInvalid", "Invalid value: field is immutable"))
            for i, p in enumerate(spec.get("ports") or []):
                port = p.get("port") if isinstance(p, dict) else None
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    errs.append((f"spec.ports[{i}].port", "FieldValueInvalid", f"Invalid value: {port}: must be "
                                 "between 1 and 65535, inclusive"))
                np_ = p.get("nodePort") if isinstance(p, dict) else None
                if np_ is not None and (not isinstance(np_, int) or not 30000 <= np_ <= 32767):
                    errs.append((f"spec.ports[{i}].nodePort", "FieldValueInvalid", f"Invalid value: {np_}: provided "
                                 "port is not in the valid range. The range of valid ports is 30000-32767"))
                elif np_ is not None:
                    for s in self.objects.get(("", "services"), {}).values():
                        if (s["metadata"]["namespace"], s["metadata"]["name"]) != (md.get("namespace"), name) and \
                                np_ in [q.get("nodePort") for q in (s.get("spec") or {}).get("ports") or []]:
                            errs.append((f"spec.ports[{i}].nodePort", "FieldValueInvalid",
                                         f"Invalid value: {np_}: provided port is already allocated"))
        elif res.gk == CRD_GK:
            spec = spec or {}
            names = spec.get("names") or {}
            for f in ("plural", "kind"):
                if not names.get(f):
                    errs.append((f"spec.names.{f}", "FieldValueRequired", "Required value"))
            if not spec.get("group"):
                errs.append(("spec.group", "FieldValueRequired", "Required value"))
            elif name != f"{names.get('plural')}.{spec['group']}":
                errs.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": must be spec.names.'
                             "plural+\".\"+spec.group"))
            if spec.get("scope") not in ("Namespaced", "Cluster"):
                errs.append(("spec.scope", "FieldValueNotSupported", f"Unsupported value: \"{spec.get('scope')}\""))
            vers = spec.get("versions") or []
            if not vers:
                errs.append(("spec.versions", "FieldValueRequired", "Required value"))
            elif sum(1 for v in vers if v.get("storage")) != 1:
                errs.append(("spec.versions", "FieldValueInvalid", "Invalid value: must have exactly one version "
                             "marked as storage version"))
        if errs:
            raise invalid(res, name, errs)

    # ---- persistence (a k3s restart keeps the cluster state) ----------------------------------------
    def snapshot(self) -> dict:
        with self.lock:
            return {"resourceVersion": self.rv,
                    "objects": [o for bucket in self.objects.values() for o in bucket.values()]}

    def restore(self, data: dict) -> None:
        with self.lock:
            self.objects.clear()
            self.history.clear()
            self.rv = int(data["resourceVersion"])
            objs = data.get("objects") or []
            for o in objs:
                if (o.get("apiVersion", "").rpartition("/")[0], o.get("kind")) == (CRD_GK[0],
                                                                                    "CustomResourceDefinition"):
                    for r in crd_resources(o):
                        self.resources[(r.group, r.version, r.plural)] = r
            for o in objs:
                try:
                    res = self.res(o["apiVersion"], o["kind"])
                except ApiError:
                    continue
                md = o["metadata"]
                self.objects.setdefault(res.gk, {})[(md.get("namespace") if res.namespaced else None,
                                                     md["name"])] = o
            for key, ns in list(self.objects.get(("", "namespaces"), {}).items()):
                if ns["metadata"].get("deletionTimestamp"):
                    self._finish_namespace(key[1])

    # ---- convenience API for in-process tests and controllers ----------------------------------
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return M.clone(self.get_obj(self.res(api_version, kind), namespace, name))
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict]:
        try:
            res = self.res(api_version, kind)
        except ApiError:
            return []
        return M.clone(self.list_objs(res, namespace, label_selector, field_selector)[0])

    def put(self, obj: dict, manager: str = "emulator-store") -> dict:
        """Create or replace a whole object, status included (as a controller with full access would)."""
        res = self.res(obj["apiVersion"], obj["kind"])
        md = obj.get("metadata") or {}
        with self.lock:
            if self._cur(res, md.get("namespace"), md["name"]) is None:
                return M.clone(self.create(res, md.get("namespace"), obj, manager=manager, keep_status=True))
            body = M.clone(obj)
            body["metadata"].pop("resourceVersion", None)
            return M.clone(self.replace(res, md.get("namespace"), md["name"], body, manager=manager, raw=True))

    def patch_status(self, api_version: str, kind: str, name: str, status: dict, namespace: str | None = None,
                     manager: str = "emulator-store") -> dict:
        """Strategic-merge `status` into the object's status (conditions merge by type)."""
        return M.clone(self.patch(self.res(api_version, kind), namespace, name, {"status": status}, "strategic",
                                  subresource="status" if self.res(api_version, kind).status else None,
                                  manager=manager))

    def set_status(self, api_version: str, kind: str, name: str, status: dict, namespace: str | None = None,
                   manager: str = "emulator-store", resource_version: str | None = None) -> dict:
        """Replace the whole status through the /status subresource (spec and metadata untouched); with
        `resource_version`, only if the object is still that version (else a 409, as for any client)."""
        res = self.res(api_version, kind)
        if res.status:
            body = {"status": status, "metadata": {"resourceVersion": resource_version} if resource_version else {}}
            return M.clone(self.replace(res, namespace, name, body, subresource="status", manager=manager))
        with self.lock:
            cur = self.get_obj(res, namespace, name)
            cur["status"] = status
            return M.clone(self.replace(res, namespace, name, cur, manager=manager, raw=True))

    def patch_obj(self, api_version: str, kind: str, name: str, patch: dict, namespace: str | None = None,
                  ptype: str = "merge", manager: str = "emulator-store") -> dict:
        return M.clone(self.patch(self.res(api_version, kind), namespace, name, patch, ptype, manager=manager))

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return M.clone(self.delete(self.res(api_version, kind), namespace, name))
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def stop_timers(self) -> None:
        for t in self.timers:
            t.cancel()
