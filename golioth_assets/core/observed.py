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
    for column in VALUES:
        if column not in remote:
            continue
        r = remote[column].map(_canonical)
        l_ = local[column].map(_canonical) if column in local else pd.Series("", index=remote.index)
        changed |= r.to_numpy(dtype=object) != l_.to_numpy(dtype=object)
    return changed


def _canonical(value) -> str:
    import json

    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":")) if value else ""
    return str(value)
