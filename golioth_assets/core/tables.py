"""A plan's canonical strings turned back into real values: what gets stored, applied and shown."""

from __future__ import annotations

import json

import pandas as pd

from golioth_assets.core.normalize import decode
from golioth_assets.core.plan import Plan
from golioth_assets.core.vocabulary import ConflictType, PlanStatus


def _decode_column(frame: pd.DataFrame, column: str) -> pd.Series:
    # Grouped by field: the decoder depends on the field's kind. Only changed rows get here.
    out = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for field_name, rows in frame.groupby("field", sort=False):
        # Built as an object Series: `Series.map` would infer float64 for [0, None] and turn the
        # desired value 0 into 0.0 and a removed key (None) into NaN.
        decoded = [decode(field_name, v) if isinstance(v, str) else None for v in rows[column]]
        out.loc[rows.index] = pd.Series(decoded, index=rows.index, dtype=object)
    return out


def changes_table(plan: Plan) -> pd.DataFrame:
    """One row per device, field and action, with decoded old and new values and a status."""
    changes = plan.changes.copy()
    changes["old_value"] = _decode_column(changes, "old_value")
    changes["new_value"] = _decode_column(changes, "new_value")
    changes["status"] = changes["blocked"].map({True: PlanStatus.blocked, False: PlanStatus.planned})
    return changes.drop(columns=["blocked"])


def conflicts_table(plan: Plan) -> pd.DataFrame:
    conflicts = plan.conflicts.copy()
    if conflicts.empty:
        return conflicts
    field_conflicts = conflicts["conflict_type"] == ConflictType.field
    for column in ("base_value", "local_value", "remote_value"):
        decoded = (
            _decode_column(conflicts[field_conflicts], column) if field_conflicts.any() else pd.Series(dtype=object)
        )
        other = conflicts.loc[~field_conflicts, column].map(lambda v: json.loads(v) if isinstance(v, str) else None)
        conflicts[column] = pd.concat([decoded, other]).reindex(conflicts.index)
    return conflicts
