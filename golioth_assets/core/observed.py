"""Observed fields (last seen, firmware, settings status): Golioth owns them, so they flow to the
local table only and never conflict. Webhooks may already have written newer activity locally, so a
sync only moves activity timestamps forward and never back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

TIMESTAMPS = ("last_seen_online", "last_seen_offline", "last_report")
VALUES = ("firmware_versions", "settings_status")


def observed_changes(local: pd.DataFrame, remote: pd.DataFrame) -> np.ndarray:
    """Per row (aligned by position): does Golioth know something newer or different?"""
    changed = np.zeros(len(local), dtype=bool)
    for column in TIMESTAMPS:
        if column not in remote:
            continue
        r = _utc(remote[column])
        l_ = _utc(local[column]) if column in local else None
        r_known = ~pd.isna(r)
        if l_ is None:
            changed |= r_known
            continue
        l_known = ~pd.isna(l_)
        newer = np.zeros(len(r), dtype=bool)
        both = r_known & l_known
        newer[both] = r[both] > l_[both]
        changed |= newer | (r_known & ~l_known)
    for column, empty in (("firmware_versions", {}), ("settings_status", None)):
        if column not in remote:
            continue
        r = remote[column].to_numpy(dtype=object)
        l_ = local[column].to_numpy(dtype=object) if column in local else np.full(len(r), None, dtype=object)
        # Element-wise == on object arrays: dicts compare by content, whatever their key order.
        # Identical values are unchanged; only the others need their missing values filled.
        maybe = np.flatnonzero(~_equal(r, l_))
        if len(maybe):
            changed[maybe] |= _filled(pd.Series(r[maybe], dtype=object), empty) != _filled(
                pd.Series(l_[maybe], dtype=object), empty
            )
    return changed


def _utc(values: pd.Series) -> np.ndarray:
    """datetime64 in UTC (a tz-aware Series' to_numpy() would build one Timestamp object per row)."""
    stamps: np.ndarray = pd.to_datetime(values, utc=True, errors="coerce").dt.tz_convert(None).to_numpy()
    return stamps


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        same = a == b
    except (TypeError, ValueError):
        return np.zeros(len(a), dtype=bool)
    return same if isinstance(same, np.ndarray) and same.dtype == bool else np.zeros(len(a), dtype=bool)


def _filled(values: pd.Series, empty: dict[str, Any] | None) -> np.ndarray:
    out: np.ndarray = values.to_numpy(dtype=object).copy()
    out[pd.isna(values).to_numpy() if empty is None else ~values.map(lambda v: isinstance(v, dict)).to_numpy()] = empty
    return out
