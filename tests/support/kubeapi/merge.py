"""Patch flavours, SSA field sets and selectors."""
from __future__ import annotations

import json
import re

LIST_KEYS = ("name", "containerPort", "port", "type", "mountPath", "ip", "devicePath")
_MISSING = object()


def clone(obj):
    """Deep copy of JSON data (much faster than copy.deepcopy for big CRDs)."""
    if isinstance(obj, (dict, list)):
        return json.loads(json.dumps(obj))
    return obj


def list_key(items) -> str | None:
    """The merge key of a list of objects (first candidate that every item carries), None = atomic list."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for k in LIST_KEYS:
        if all(k in i for i in items):
            return k
    return None


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch. The result shares structure with its inputs: clone it before changing it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge(target, patch, *, apply=False):
    """Simplified strategic merge: maps merge, lists of objects merge by key, other lists replace.
    `$patch: delete|replace` and null-deletes are honoured (not with apply=True); other `$` directives ignored.
    The result shares structure with its inputs: clone it before changing it."""
    if not isinstance(patch, dict):
        return patch
    if not apply and patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            if not apply:
                out.pop(k, None)
            continue
        cur = out.get(k)
        if isinstance(v, dict):
            out[k] = strategic_merge(cur if isinstance(cur, dict) else {}, v, apply=apply)
        elif isinstance(v, list) and isinstance(cur, list) and (key := list_key(
                [i for i in v if not (isinstance(i, dict) and i.get("$patch") == "delete")] + cur) or
                list_key(v)):
            merged = list(cur)
            for item in v:
                idx = next((n for n, c in enumerate(merged) if isinstance(c, dict) and c.get(key) == item.get(key)),
                           None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        merged.pop(idx)
                elif idx is None:
                    merged.append(strategic_merge({}, item, apply=apply))
                else:
                    merged[idx] = strategic_merge(merged[idx], item, apply=apply)
            out[k] = merged
        else:
            out[k] = v
    return out


# ---- server-side apply field sets -------------------------------------------------------------
# A path is a tuple of fieldsV1 path elements: "f:<field>", "k:<json key>", "." (the list item itself).

def field_paths(obj: dict, prefix: tuple = ()) -> set:
    out = set()
    for k, v in obj.items():
        p = prefix + ("f:" + k,)
        if isinstance(v, dict) and v:
            out |= field_paths(v, p)
        elif isinstance(v, list) and (key := list_key(v)):
            for item in v:
                kp = p + ("k:" + json.dumps({key: item[key]}, separators=(",", ":")),)
                out.add(kp + (".",))
                out |= field_paths(item, kp)
        else:
            out.add(p)
    return out


def get_path(obj, path):
    cur = obj
    for el in path:
        if el == ".":
            return cur
        if el.startswith("f:"):
            if not isinstance(cur, dict) or el[2:] not in cur:
                return _MISSING
            cur = cur[el[2:]]
        else:
            (key, val), = json.loads(el[2:]).items()
            if not isinstance(cur, list):
                return _MISSING
            cur = next((i for i in cur if isinstance(i, dict) and i.get(key) == val), _MISSING)
            if cur is _MISSING:
                return cur
    return cur


def remove_path(obj, path) -> None:
    parent = get_path(obj, path[:-1]) if path[-1] != "." else get_path(obj, path[:-2])
    if path[-1] == ".":
        (key, val), = json.loads(path[-2][2:]).items()
        if isinstance(parent, list):
            parent[:] = [i for i in parent if not (isinstance(i, dict) and i.get(key) == val)]
    elif isinstance(parent, dict):
        parent.pop(path[-1][2:], None)


def paths_to_fields(paths) -> dict:
    tree: dict = {}
    for p in sorted(paths):
        node = tree
        for el in p:
            node = node.setdefault(el, {})
    return tree


def fields_to_paths(tree: dict, prefix=()) -> set:
    out = set()
    for k, v in (tree or {}).items():
        if v:
            out |= fields_to_paths(v, prefix + (k,))
        else:
            out.add(prefix + (k,))
    return out


def show_path(path) -> str:
    s = ""
    for el in path:
        if el.startswith("f:"):
            s += "." + el[2:]
        elif el.startswith("k:"):
            (k, v), = json.loads(el[2:]).items()
            s += f"[{k}={json.dumps(v)}]"
    return s


def changed_paths(old, new, prefix=()) -> set:
    """Leaf paths of `new` whose value differs from `old` (ownership taken by an Update)."""
    out = set()
    if not isinstance(new, dict):
        return out
    for k, v in new.items():
        p = prefix + ("f:" + k,)
        o = old.get(k, _MISSING) if isinstance(old, dict) else _MISSING
        if o is not _MISSING and o == v:
            continue
        key = list_key(v) if isinstance(v, list) else None
        if isinstance(v, dict) and v:
            out |= changed_paths(o, v, p) if isinstance(o, dict) else field_paths(v, p)
        elif key:
            olds = o if isinstance(o, list) else []
            for item in v:
                kp = p + ("k:" + json.dumps({key: item[key]}, separators=(",", ":")),)
                oi = next((i for i in olds if isinstance(i, dict) and i.get(key) == item[key]), _MISSING)
                if oi is _MISSING:
                    out.add(kp + (".",))
                    out |= field_paths(item, kp)
                elif oi != item:
                    out |= changed_paths(oi, item, kp)
        else:
            out.add(p)
    return out


# ---- selectors ---------------------------------------------------------------------------------

_TERM = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=|\s+in\s+|\s+notin\s+)\s*(.*?))?\s*$")


def _split_terms(sel: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in sel:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        terms.append(cur)
    return [t for t in terms if t.strip()]


def parse_label_selector(sel: str | None):
    """-> list of (key, op, values); op in = != in notin exists !exists. Raises ValueError."""
    out = []
    for term in _split_terms(sel or ""):
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"unable to parse requirement: {term!r}")
        neg, key, op, val = m.groups()
        if op is None:
            out.append((key, "!exists" if neg else "exists", ()))
            continue
        op = op.strip()
        if op in ("in", "notin"):
            val = val.strip()
            if not (val.startswith("(") and val.endswith(")")):
                raise ValueError(f"unable to parse requirement: {term!r}")
            out.append((key, op, tuple(v.strip() for v in val[1:-1].split(",") if v.strip())))
        else:
            out.append((key, "!=" if op == "!=" else "=", (val,)))
    return out


def labels_match(reqs, labels: dict | None) -> bool:
    labels = labels or {}
    for key, op, vals in reqs:
        have = key in labels
        if op == "exists" and not have or op == "!exists" and have:
            return False
        if op in ("=", "in") and (not have or labels[key] not in vals):
            return False
        if op in ("!=", "notin") and have and labels[key] in vals:
            return False
    return True


def parse_field_selector(sel: str | None):
    out = []
    for term in _split_terms(sel or ""):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise ValueError(f"invalid field selector: {term!r}")
        out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def fields_match(reqs, obj: dict) -> bool:
    for path, op, val in reqs:
        cur = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        cur = "" if cur is None else str(cur)
        if (cur == val) != (op == "="):
            return False
    return True
