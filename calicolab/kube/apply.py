"""Parsing, ordering, planning (server-side dry run + diff) and applying manifests (server-side apply)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from calicolab.kube.client import ApplyConflict, KubeApi, KubeError, NotFound, object_ref
from calicolab.kube.diff import normalise, unified_diff
from calicolab.polling import Check, Transient, poll

#: the apply order of kinds that others need: Namespaces and CRDs, cluster-scoped RBAC, ServiceAccounts
#: (any other kind: 3)
APPLY_ORDER = {"Namespace": 0, "CustomResourceDefinition": 0, "ClusterRole": 1, "ClusterRoleBinding": 1,
               "ServiceAccount": 2}


#: libyaml's parser where PyYAML's wheel has it (all the wheels install.py takes do): the pure-Python
#: one spends about 50 ms per run on the manifests.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestError(KubeError):
    """The rendered manifest is not a list of Kubernetes objects."""


def parse_manifest(text: str) -> list[dict]:
    """All non-empty documents of a multi-document YAML string, each checked for
    apiVersion, kind and metadata.name."""
    try:
        documents = list(yaml.load_all(text, Loader=_YAML_LOADER))
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest is not valid YAML: {exc}") from exc
    objects = []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestError(f"document {index} is not a mapping")
        if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
            objects.extend(item for item in doc["items"] if item)
            continue
        missing = [key for key in ("apiVersion", "kind") if not doc.get(key)]
        if not (doc.get("metadata") or {}).get("name"):
            missing.append("metadata.name")
        if missing:
            raise ManifestError(f"document {index} ({doc.get('kind', '?')}) lacks {', '.join(missing)}")
        objects.append(doc)
    return objects


def order_objects(objects: list[dict]) -> list[dict]:
    """Namespaces and CRDs, cluster-scoped RBAC, ServiceAccounts, the rest; stable within a class."""
    return sorted(objects, key=lambda obj: APPLY_ORDER.get(obj.get("kind"), 3))


def _coords(obj: dict) -> tuple[str, str, str, str | None]:
    meta = obj.get("metadata") or {}
    return obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")


@dataclass
class ObjectPlan:
    obj: dict
    ref: str
    action: str  # "create" | "update" | "unchanged" | "conflict"
    diff: str = ""
    note: str = ""


def plan_object(api: KubeApi, obj: dict) -> ObjectPlan:
    """Compare the live object with a server-side-apply dry run of ``obj``."""
    ref = object_ref(obj)
    api_version, kind, name, namespace = _coords(obj)
    live = api.get(api_version, kind, name, namespace)
    if live is None:
        return ObjectPlan(obj, ref, "create", unified_diff(None, obj, ref))
    try:
        dry = api.apply(obj, dry_run=True)
    except NotFound as exc:
        # the namespace or the CRD of the kind does not exist yet
        return ObjectPlan(obj, ref, "create", unified_diff(None, obj, ref), note=str(exc))
    except ApplyConflict as exc:
        return ObjectPlan(obj, ref, "conflict", "", note=str(exc))
    text = unified_diff(live, dry, ref)
    return ObjectPlan(obj, ref, "update" if text else "unchanged", text)


def plan_apply(api: KubeApi, objects: list[dict]) -> list[ObjectPlan]:
    return [plan_object(api, obj) for obj in order_objects(objects)]


@dataclass
class ApplyResult:
    created: list[str] = field(default_factory=list)
    configured: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.created)} created, {len(self.configured)} configured, "
            f"{len(self.unchanged)} unchanged"
        )


class ApplyFailed(KubeError):
    def __init__(self, ref: str, cause: KubeError, result: ApplyResult):
        self.ref = ref
        self.cause = cause
        self.result = result
        super().__init__(f"applying {ref} failed: {cause} (before it: {result.summary()})")


#: seconds to keep retrying an object whose kind is not served yet, after this batch applied CRDs
CRD_SETTLE_TIMEOUT = 30.0


def _kind_not_served(exc: NotFound) -> bool:
    return "does not serve kind" in str(exc) or "no matches for kind" in str(exc)


def _apply_settling(api: KubeApi, obj: dict, crds_applied: bool) -> dict:
    """Apply; right after CRDs of the same batch, a kind that is not served yet is retried for up to
    ``CRD_SETTLE_TIMEOUT`` seconds (the CRD becomes Established and discoverable within moments)."""
    if not crds_applied:
        return api.apply(obj)
    applied: dict[str, dict] = {}

    def probe(remaining: float) -> Check:
        try:
            applied["obj"] = api.apply(obj, timeout=remaining)
        except NotFound as exc:
            if not _kind_not_served(exc):
                raise
            raise Transient(str(exc)) from None
        return Check(True, "applied")

    check = poll(f"{object_ref(obj)} to be served", CRD_SETTLE_TIMEOUT, probe)
    if not check.done:
        raise NotFound(f"{object_ref(obj)}: {check.message} (still after {CRD_SETTLE_TIMEOUT:g}s)")
    return applied["obj"]


def apply_objects(
    api: KubeApi, objects: list[dict], log: Callable[[str], Any] | None = None
) -> ApplyResult:
    """Server-side apply each object in order; stops at the first failure (ApplyFailed)."""
    result = ApplyResult()
    crds_applied = False
    for obj in order_objects(objects):
        ref = object_ref(obj)
        api_version, kind, name, namespace = _coords(obj)
        try:
            before = api.get(api_version, kind, name, namespace)
            after = _apply_settling(api, obj, crds_applied)
        except KubeError as exc:
            raise ApplyFailed(ref, exc, result) from None
        crds_applied = crds_applied or kind == "CustomResourceDefinition"
        verb = "created" if before is None else "configured" if normalise(before) != normalise(after) else "unchanged"
        getattr(result, verb).append(ref)  # the list of that name
        if log and verb != "unchanged":
            log(f"{ref} {verb}")
    return result

