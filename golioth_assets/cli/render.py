"""Rich tables the CLI prints: a run's summary and a plan."""

from __future__ import annotations

import json

import pandas as pd
from rich.table import Table

SUMMARY_ROWS = [
    ("Golioth devices fetched", "fetched_remote"),
    ("Local devices read", "fetched_local"),
    ("Created locally", "created_local"),
    ("Updated locally", "updated_local"),
    ("Deleted locally", "deleted_local"),
    ("Created in Golioth", "created_remote"),
    ("Updated in Golioth", "updated_remote"),
    ("Deleted in Golioth", "deleted_remote"),
    ("Conflicts", "conflicts"),
    ("Failures", "failures"),
    ("Skipped (edited during sync)", "skipped"),
    ("Golioth API requests", "api_requests"),
    ("Retries", "api_retries"),
]


def summary_table(run: dict, *, seconds: float | None = None) -> Table:
    table = Table(title=f"sync #{run['id']} of {run['organization_id']}: {run['status']}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("Direction / policy", f"{run['direction']} / {run['policy']}" + (" (dry run)" if run["dry_run"] else ""))
    for label, key in SUMMARY_ROWS:
        table.add_row(label, str(run.get(key, 0)))
    if seconds is not None:
        table.add_row("Time taken", f"{seconds:.1f} s")
    if run.get("error"):
        table.add_row("Error", str(run["error"]))
    return table


def _short(value) -> str:
    if value is None:
        return "∅"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 48 else text[:45] + "..."


def plan_table(plan: pd.DataFrame, *, title: str, limit: int = 50) -> Table:
    table = Table(title=title)
    for column in ("device", "field", "action", "side", "old", "new", "status"):
        table.add_column(column)
    for row in plan.head(limit).itertuples(index=False):
        device = row.device_id or row.golioth_device_id or ""
        table.add_row(str(device)[:36], row.field, row.action, row.side, _short(row.old_value), _short(row.new_value), row.status)
    if len(plan) > limit:
        table.caption = f"{len(plan) - limit} more rows in sync_plan"
    return table
