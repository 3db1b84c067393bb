"""LightDB State paths: `desired/led` addresses into a device's JSON tree."""

from __future__ import annotations

import copy
from typing import Any

_MISSING = object()


def split_path(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part]


def get_at(root: Any, path: str, default: Any = _MISSING) -> Any:
    node = root
    for part in split_path(path):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def has_path(root: Any, path: str) -> bool:
    return get_at(root, path) is not _MISSING


def set_at(root: dict | None, path: str, value: Any, *, merge: bool) -> dict:
    """Return the new root with `value` written at `path`.

    merge=True merges objects at the top level of the addressed node (PATCH);
    otherwise the node is replaced (PUT). Intermediate non-objects are replaced by
    objects, as LightDB does when a device writes below a leaf.
    """
    parts = split_path(path)
    root = {} if not isinstance(root, dict) else root
    value = copy.deepcopy(value)
    if not parts:
        if merge and isinstance(value, dict):
            root.update(value)
            return root
        return value if isinstance(value, dict) else root
    node = root
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    leaf = parts[-1]
    if merge and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf].update(value)
    else:
        node[leaf] = value
    return root


def delete_at(root: dict | None, path: str) -> dict | None:
    parts = split_path(path)
    if not isinstance(root, dict):
        return root
    if not parts:
        return None
    node: Any = root
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return root
        node = node[part]
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    return root or None
