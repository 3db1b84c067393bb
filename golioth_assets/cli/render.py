"""Rich tables the CLI prints: a run's summary and a plan, and the style of every list view."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # a plan is a DataFrame, but listing services or history needs no pandas
    import pandas as pd


class TerminalConsole(Console):
    """The console a command module prints to. Its width follows the terminal (or COLUMNS) at
    print time, like any Console made without COLUMNS set. A plain Console freezes COLUMNS when it
    is made, and command modules are imported on first use (cli/main.py), inside a command that
    may run with its own COLUMNS (tests do)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "width" not in kwargs:
            self._width = None
        if "height" not in kwargs:
            self._height = None


SUMMARY_ROWS = [
    ("Golioth devices fetched", "fetched_remote"),
    ("Local devices read", "fetched_local"),
    ("Created locally", "created_local"),
    ("Updated locally", "updated_local"),
    ("Deleted locally", "deleted_local"),
    ("Observed fields updated locally", "observed_local"),
    ("Created in Golioth", "created_remote"),
    ("Updated in Golioth", "updated_remote"),
    ("Deleted in Golioth", "deleted_remote"),
    ("Conflicts", "conflicts"),
    ("Failures", "failures"),
    ("Skipped (edited during sync)", "skipped"),
    ("Golioth API requests", "api_requests"),
    ("Retries", "api_retries"),
]

# How the CLI names the two sides (the database says local/remote).
SIDES = {"local": "local", "remote": "Golioth", "none": "link"}


def list_table(title: str, columns: Iterable[str], *, wrap: Collection[str] = (), cut: Collection[str] = ()) -> Table:
    """A list view that stays readable at 80 columns or piped: ids, times, statuses and counts never
    wrap. When space runs out only `wrap` columns (free text, values) give way, over several lines,
    and `cut` columns (names, long ids) end in "…" rather than break into fragments."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for name in columns:
        header = Text(name, overflow="ellipsis")  # a header is never split mid-word, even over a `wrap` column
        table.add_column(
            header, no_wrap=name not in wrap and name not in cut, overflow="fold" if name in wrap else "ellipsis"
        )
    return table


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_table(run: dict, *, seconds: float | None = None, details: Sequence[tuple[str, str]] = ()) -> Table:
    """A run's summary. Counters the run never reached are left out rather than shown as 0: a run
    that failed before planning says so, and requests it made before counting them are "not counted"."""
    from golioth_assets.cli.output import requests_counted, run_seconds

    # The id is golioth_sync_log's, global rather than a count per organization: "run 10", as
    # `history --run 10` takes it.
    table = Table(title=f"run {run['id']} ({run['organization_id']}): {run['status']}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "Direction / policy", f"{run['direction']} / {run['policy']}" + (" (dry run)" if run["dry_run"] else "")
    )
    for label, value in details:
        table.add_row(label, value)
    planned = "plan" in (run.get("details") or {})
    if not planned and run["status"] == "failed":
        table.add_row("Outcome", "failed before planning: nothing was written")
    for label, key in SUMMARY_ROWS:
        if key in ("api_requests", "api_retries"):
            table.add_row(label, str(run.get(key, 0)) if requests_counted(run) else "not counted (failed first)")
        elif planned or run["status"] != "failed":
            table.add_row(label, str(run.get(key, 0)))
    seconds = run_seconds(run) if seconds is None else seconds
    if seconds is not None:
        table.add_row("Time taken", f"{seconds:.1f} s")
    if run.get("error"):
        table.add_row("Error", str(run["error"]))
    return table


def _short(value) -> str:
    if value is None:
        return "∅"
    return shorten(value if isinstance(value, str) else json.dumps(value, sort_keys=True), 48)


def plan_table(plan: pd.DataFrame, *, title: str, limit: int = 50) -> Table | str:
    """The plan's rows, or one line when it changes nothing."""
    if plan.empty:
        return "no changes planned"
    table = list_table(
        title, ("device", "field", "action", "side", "old", "new", "status"), wrap=("old", "new"), cut=("device",)
    )
    for row in plan.head(limit).itertuples(index=False):
        device = row.device_id or row.golioth_device_id or ""
        side = SIDES.get(row.side, row.side)
        table.add_row(
            str(device), field_label(row), row.action, side, _short(row.old_value), _short(row.new_value), row.status
        )
    if len(plan) > limit:
        table.caption = f"{len(plan) - limit} more rows in sync_plan"
    return table


def field_label(row) -> str:
    """A plan or conflict row's field, with the local table's own column where it is named otherwise
    (`name → display_name`), so that operators of a product table read their column names."""
    local = getattr(row, "local_column", None) if not isinstance(row, dict) else row.get("local_column")
    return row_field(row) if not local or local == row_field(row) else f"{row_field(row)} → {local}"


def row_field(row) -> str:
    return str(row["field"] if isinstance(row, dict) else row.field)
