"""Normalising live objects and server-side-apply dry-run results, and diffing them as YAML."""

from __future__ import annotations

import difflib
import json

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
    """``obj`` without status and server-owned metadata (see SERVER_METADATA): a new top level and
    metadata; everything else is shared with ``obj`` (read it, do not change it)."""
    if obj is None:
        return None
    obj = {key: value for key, value in obj.items() if key != "status"}
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta = obj["metadata"] = {key: value for key, value in meta.items() if key not in SERVER_METADATA}
        annotations = meta.get("annotations")
        if isinstance(annotations, dict):
            annotations = {key: value for key, value in annotations.items() if key not in SERVER_ANNOTATIONS}
            if annotations:
                meta["annotations"] = annotations
            else:
                meta.pop("annotations")
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
    before, after = normalise(before), normalise(after)
    # the same JSON (types included) is the same YAML: a converged object costs no YAML dump
    if json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True):
        return ""
    old, new = to_yaml(before), to_yaml(after)
    if old == new:
        return ""
    fromfile = f"live {ref}" if before is not None else f"live {ref} (absent: will create)"
    tofile = "applied"
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=fromfile, tofile=tofile
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
