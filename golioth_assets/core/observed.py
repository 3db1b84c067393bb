"""Observed fields (last seen, firmware, settings status): Golioth owns them, so they flow to the
local table only and never conflict. Webhooks may already have written newer activity locally, so a
sync only moves activity timestamps forward and never back."""

from __future__ import annotations

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
        r = pd.to_datetime(remote[column], utc=True, errors="coerce").to_numpy()
        l_ = pd.to_datetime(local[column], utc=True, errors="coerce").to_numpy() if column in local else None
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
        r = _filled(remote[column], empty)
        l_ = _filled(local[column], empty) if column in local else np.full(len(r), empty, dtype=object)
        # Element-wise == on object arrays: dicts compare by content, whatever their key order.
        changed |= r != l_
    return changed


def _filled(values: pd.Series, empty) -> np.ndarray:
    out = values.to_numpy(dtype=object).copy()
    out[pd.isna(values).to_numpy() if empty is None else ~values.map(lambda v: isinstance(v, dict)).to_numpy()] = empty
    return out
