"""Normalising live objects and server-side-apply dry-run results, and diffing them as YAML."""

from __future__ import annotations

import copy
import difflib

import yaml

#: metadata keys the server owns; they always differ and never mean "we changed something".
SERVER_METADATA = (
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
#: annotations written by controllers or by client-side kubectl.
SERVER_ANNOTATIONS = (
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
    "kubectl.kubernetes.io/restartedAt",
)


def normalise(obj: dict | None) -> dict | None:
    """A copy of ``obj`` without status and server-owned metadata (see SERVER_METADATA)."""
    if obj is None:
        return None
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in SERVER_METADATA:
            meta.pop(key, None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            for key in SERVER_ANNOTATIONS:
                annotations.pop(key, None)
            if not annotations:
                meta.pop("annotations", None)
        if meta.get("labels") == {}:
            meta.pop("labels")
    return obj


def to_yaml(obj: dict | None) -> str:
    if obj is None:
        return ""
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False)


def unified_diff(before: dict | None, after: dict | None, ref: str) -> str:
    """Unified diff of the normalised objects; empty when they are equal.

    ``before`` None means the object does not exist (the diff is a creation)."""
    old = to_yaml(normalise(before))
    new = to_yaml(normalise(after))
    if old == new:
        return ""
    fromfile = f"live {ref}" if before is not None else f"live {ref} (absent: will create)"
    tofile = "applied"
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=fromfile, tofile=tofile
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
