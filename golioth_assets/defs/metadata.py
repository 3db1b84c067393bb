"""Small, readable run metadata: counts plus a Markdown preview of at most ~20 rows.

Full diffs and conflicts live in our own tables (sync_plan, device_conflicts); Dagster's event log
only gets what an operator reads at a glance.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dagster as dg
import pandas as pd

from golioth_assets.engine.run import PREVIEW_ROWS  # the engine picks the rows a preview shows


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, sort_keys=True, default=str)
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def markdown_table(frame: pd.DataFrame, columns: list[str], *, limit: int = PREVIEW_ROWS) -> str:
    """A Markdown table of the first `limit` rows, with a note of how many were left out."""
    if frame.empty:
        return "_nothing_"
    shown = frame.head(limit)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for _, row in shown.iterrows()]
    if len(frame) > limit:
        lines.append(f"\n_…and {len(frame) - limit} more rows (see the table in PostgreSQL)_")
    return "\n".join(lines)


def preview(frame: pd.DataFrame, columns: list[str]) -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md(markdown_table(frame, [c for c in columns if c in frame]))


def counts(values: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    return {k: dg.MetadataValue.int(int(v)) for k, v in values.items() if isinstance(v, (int, float))}


def duration(started: float) -> dg.FloatMetadataValue:
    """Seconds since `started` (a time.perf_counter() reading), for a step's metadata."""
    return dg.MetadataValue.float(round(time.perf_counter() - started, 3))
