"""Observed fields (last seen, firmware, settings status): Golioth owns them, so they flow to the
local table only and never conflict. Webhooks may already have written newer activity locally, so a
sync only moves activity timestamps forward and never back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

TIMESTAMPS = ("last_seen_online", "last_seen_offline", "last_report")
VALUES = ("firmware_versions", "settings_status")


def observed_changes(local: Mapping[str, Any], remote: Mapping[str, Any], rows: int) -> np.ndarray:
    """Per row (aligned by position): does Golioth know something newer or different?
    local, remote: column → values (a Series or an array), the observed columns each side has."""
    changed = np.zeros(rows, dtype=bool)
    for column in TIMESTAMPS:
        if column not in remote:
            continue
        r = utc_naive(remote[column])
        l_ = utc_naive(local[column]) if column in local else None
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
        r = np.asarray(remote[column], dtype=object)
        l_ = np.asarray(local[column], dtype=object) if column in local else np.full(len(r), None, dtype=object)
        # Element-wise == on object arrays: dicts compare by content, whatever their key order.
        # Identical values are unchanged; only the others need their missing values filled.
        maybe = np.flatnonzero(~_equal(r, l_))
        if len(maybe):
            changed[maybe] |= _filled(pd.Series(r[maybe], dtype=object), empty) != _filled(
                pd.Series(l_[maybe], dtype=object), empty
            )
    return changed


def utc_naive(values: Any) -> np.ndarray:
    """Timestamps as naive UTC datetime64 (a tz-aware Series' to_numpy() would build one Timestamp
    object per row). The columns a sync loads are tz-aware or naive datetime64 already: converting
    those directly skips to_datetime's parsing machinery, a fixed ~0.1 ms per call."""
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, pd.DatetimeTZDtype) and isinstance(values, pd.Series):
        return np.asarray(values.array.tz_convert(None))
    if isinstance(dtype, np.dtype) and dtype.kind == "M":
        return np.asarray(values)  # naive: taken as UTC, as to_datetime(utc=True) does
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    stamps: np.ndarray = pd.to_datetime(series, utc=True, errors="coerce").dt.tz_convert(None).to_numpy()
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
