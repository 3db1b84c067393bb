"""Turn device values into canonical strings, so that a three-way diff is plain string equality.

Every synced field of every side (local, remote, base) goes through the same functions here, so
"equal" means the same thing everywhere: lists are trimmed, de-duplicated and sorted; strings are
trimmed; JSON is dumped with sorted keys; a missing value is NULL.

Two sentinels can never collide with a canonical value, because canonical values never start with
a space (text and list items are trimmed; JSON is dumped without padding):
- NULL (" null"): the field has no value (e.g. no blueprint).
- NO_BASE (" no-base"): the two sides never agreed on this field, so there is no base to compare with.
(NUL would be the obvious choice, but numpy silently strips trailing NULs from strings.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from golioth_assets.core.fields import FIELD_KIND

NULL = " null"
NO_BASE = " no-base"
LIST_SEP = "\x1f"  # ASCII unit separator: never in a tag name or hardware id

ABSENT = object()
"""A base snapshot without the field (the sides never agreed on it); equal to nothing."""


# Below this many rows, a comprehension beats the fixed cost of a dozen pandas steps (same rules).
_SMALL = 2_000


def dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_text(values: pd.Series) -> pd.Series:
    if len(values) <= _SMALL:
        stripped = [v.strip() if isinstance(v, str) else "" for v in values.to_numpy(dtype=object)]
        return pd.Series([v or NULL for v in stripped], index=values.index, dtype=object)
    stripped = values.astype(object).str.strip()  # non-strings and None become NaN
    return stripped.where(stripped.notna() & (stripped != ""), NULL).astype(object)


def canonical_bool(values: pd.Series) -> pd.Series:
    if len(values) <= _SMALL:
        known = values.notna().to_numpy()
        return pd.Series(
            [("true" if v else "false") if k else NULL for v, k in zip(values.to_numpy(dtype=object), known)],
            index=values.index,
            dtype=object,
        )
    out = pd.Series(NULL, index=values.index, dtype=object)
    known = values.notna()
    out[known] = values[known].astype(bool).map({True: "true", False: "false"})
    return out


def _list_one(value: Any) -> str:
    """canonical_list for one value (the small-input path; the same rules as the vectorized one)."""
    if not pd.api.types.is_list_like(value):
        value = () if pd.isna(value) else (value,)
    items = {str(x).strip() for x in value if not (x is None or (isinstance(x, float) and x != x))}
    items.discard("")
    return LIST_SEP.join(sorted(items))


def canonical_list(values: pd.Series) -> pd.Series:
    """Lists → sorted, unique, trimmed items joined by LIST_SEP; empty or missing → ""."""
    if len(values) <= _SMALL:
        return pd.Series([_list_one(v) for v in values.to_numpy(dtype=object)], index=values.index, dtype=object)
    positions = pd.Series(values.to_numpy(dtype=object), index=pd.RangeIndex(len(values)))
    items = positions.explode().dropna()
    items = items.astype(str).str.strip()
    items = items[items != ""]
    frame = pd.DataFrame({"row": items.index.to_numpy(), "item": items.to_numpy()})
    frame = frame.drop_duplicates().sort_values(["row", "item"], kind="stable")
    # groupby-sum concatenates strings in C; a join aggregate would call Python once per group.
    frame["item"] = frame["item"] + LIST_SEP
    joined = frame.groupby("row", sort=False)["item"].sum().str[:-1]
    out = joined.reindex(positions.index, fill_value="")
    return pd.Series(out.to_numpy(dtype=object), index=values.index)


def _json_object_one(value: Any) -> str:
    if not isinstance(value, dict):
        return "{}"
    return dump_json({k: v for k, v in value.items() if v is not None})


def canonical_json_object(values: pd.Series) -> pd.Series:
    """A JSON object (desired state), None-valued keys dropped, as canonical text; missing → "{}"."""
    return values.map(_json_object_one).astype(object)


def json_value_one(value: Any) -> str:
    """One desired-state key's value as canonical JSON; missing or null → NULL."""
    return NULL if value is None or value is ABSENT or value is pd.NA else dump_json(value)


def canonical_json_value(values: pd.Series) -> pd.Series:
    """json_value_one over a column."""
    return values.map(json_value_one).astype(object)


_BY_KIND = {
    "text": canonical_text,
    "list": canonical_list,
    "bool": canonical_bool,
    "json": canonical_json_object,
}


def canonicalize(frame: pd.DataFrame, fields: tuple[str, ...]) -> pd.DataFrame:
    """Canonical strings for `fields` of a frame of raw values (lists, dicts, str, bool)."""
    return pd.DataFrame({f: _BY_KIND[FIELD_KIND[f]](frame[f]) for f in fields}, index=frame.index)


def canonicalize_base(snapshots: pd.Series, fields: tuple[str, ...]) -> pd.DataFrame:
    """Canonical base values from base_snapshot dicts; a field never agreed on → NO_BASE."""
    return pd.DataFrame(
        {f: canonical_base_values(f, base_values(snapshot_dicts(snapshots), f)) for f in fields},
        index=snapshots.index,
    )


def snapshot_dicts(snapshots: Iterable[Any]) -> list[dict[str, Any]]:
    """Base snapshots as dicts (a missing snapshot is an empty one)."""
    return [b if type(b) is dict else {} for b in snapshots]


def base_values(snapshots: list[dict[str, Any]], field: str) -> np.ndarray:
    """One field's raw value from each base snapshot (see snapshot_dicts); ABSENT where the sides
    never agreed on it. map() over the C method: no Python frame per device."""
    return np.fromiter(map(dict.get, snapshots, repeat(field), repeat(ABSENT)), dtype=object, count=len(snapshots))


def _small_values(kind: str, values: np.ndarray) -> list[str]:
    """The small-input rules of canonical_text / _list / _bool / _json_object, on an array: the
    same strings without a Series around them (planning calls this per field on a few values)."""
    if kind == "text":
        return [(v.strip() or NULL) if isinstance(v, str) else NULL for v in values]
    if kind == "list":
        return [_list_one(v) for v in values]
    if kind == "bool":
        return [("true" if v else "false") if known else NULL for v, known in zip(values, ~pd.isna(values))]
    return [_json_object_one(v) for v in values]


def canonical_values(field: str, values: np.ndarray) -> np.ndarray:
    """Canonical strings of one field's raw values (an object array)."""
    kind = FIELD_KIND[field]
    if len(values) <= _SMALL:
        return np.array(_small_values(kind, values), dtype=object) if len(values) else np.array([], dtype=object)
    canonical: np.ndarray = _BY_KIND[kind](pd.Series(values, dtype=object)).to_numpy(dtype=object)
    return canonical


def canonical_base_values(field: str, raw: np.ndarray) -> np.ndarray:
    """Like canonical_values, for raw base values: ABSENT → NO_BASE."""
    absent = np.fromiter((v is ABSENT for v in raw), dtype=bool, count=len(raw))
    known = raw.copy()
    known[absent] = None
    return np.where(absent, NO_BASE, canonical_values(field, known))


def decode(field: str, canonical: str | None) -> Any:
    """A canonical string back to the value written to a side or stored in a base snapshot."""
    if canonical is None or canonical in (NULL, NO_BASE):
        return None
    if field.startswith("desired_state."):
        return json.loads(canonical)
    kind = FIELD_KIND.get(field, "json")
    if kind == "text":
        return canonical
    if kind == "list":
        return canonical.split(LIST_SEP) if canonical else []
    if kind == "bool":
        return canonical == "true"
    return json.loads(canonical)


def encode(field: str, value: Any) -> str:
    """A decoded value (as stored in conflicts or snapshots) back to its canonical string: the
    column-wise rules, for one value. Writers call this per device and field (the check before
    each Golioth write), where a one-row Series cost 120-280 µs a call against a few µs."""
    if field.startswith("desired_state."):
        return json_value_one(value)
    one = np.empty(1, dtype=object)
    one[0] = value  # as an element: np.array([value]) would spread a list over a second axis
    return _small_values(FIELD_KIND.get(field, "json"), one)[0]
