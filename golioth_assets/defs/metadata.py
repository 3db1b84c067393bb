"""Small, readable run metadata: counts plus a Markdown preview of at most ~20 rows.

Full diffs and conflicts live in our own tables (sync_plan, device_conflicts); Dagster's event log
only gets what an operator reads at a glance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd

from golioth_assets.core.vocabulary import Side
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
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown[columns].itertuples(index=False)]
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


# -- one line per materialization: what changed ------------------------------------------------
# The first metadata entry of each asset (`summary`), so the latest materialization says at a
# glance what the run did: "+12 / ~40 / −0 local, +0 / ~3 / −0 Golioth; 3 conflicts". The counts
# are those of the asset's own metadata, so the line and the numbers below it never disagree.

SUMMARY = "summary"
SIDE_NAMES = {Side.local: "local", Side.remote: "Golioth"}


def _count(counts: Mapping[str, Any], key: str) -> int:
    value = counts.get(key, 0)
    return int(value) if isinstance(value, (int, float)) else 0


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {plural or word + 's'}"


def change_counts(counts: Mapping[str, Any], side: Side) -> str:
    """ "+created / ~updated / −deleted side", from `created_<side>`, `updated_<side>`, `deleted_<side>`."""
    created, updated, deleted = (_count(counts, f"{verb}_{side.value}") for verb in ("created", "updated", "deleted"))
    return f"+{created:,} / ~{updated:,} / −{deleted:,} {SIDE_NAMES[side]}"


def _with_extras(line: str, counts: Mapping[str, Any], extras: Mapping[str, str]) -> str:
    """`line`, then "; 3 conflicts"-style notes for the extra counts that are not zero."""
    notes = [_plural(n, word) for key, word in extras.items() if (n := _count(counts, key))]
    return "; ".join([line, *notes])


def plan_summary(counts: Mapping[str, Any], *, dry_run: bool) -> str:
    """The plan: what each side would get, and the conflicts found."""
    local = change_counts(counts, Side.local)
    observed = _count(counts, "observed_local")
    if observed:
        local += f" ({observed:,} observed)"
    line = f"{local}, {change_counts(counts, Side.remote)}; {_plural(_count(counts, 'conflicts'), 'conflict')}"
    line = _with_extras(line, counts, {"blocked": "blocked write"})
    return f"dry run, planned {line}" if dry_run else line


def golioth_writes_summary(counts: Mapping[str, Any], *, dry_run: bool) -> str:
    if dry_run:
        return "dry run: nothing written to Golioth"
    return _with_extras(
        change_counts(counts, Side.remote), counts, {"failures": "failed write", "skipped": "skipped write"}
    )


def local_writes_summary(counts: Mapping[str, Any], *, status: str, dry_run: bool) -> str:
    if dry_run:
        return f"dry run: nothing written locally; run {status}"
    line = change_counts(counts, Side.local)
    observed = _count(counts, "observed_local")
    if observed:
        line += f", {observed:,} observed"
    return f"{_with_extras(line, counts, {'skipped': 'skipped write'})}; run {status}"


def inventory_summary(devices: int, *, targeted: bool, requests: int, retries: int) -> str:
    what = f"{_plural(devices, 'device')} (targeted)" if targeted else f"{_plural(devices, 'device')} listed"
    line = f"{what}; {_plural(requests, 'request')}"
    return f"{line}, {_plural(retries, 'retry', 'retries')}" if retries else line


def local_devices_summary(live: int, soft_deleted: int) -> str:
    line = _plural(live, "device")
    return f"{line}, {soft_deleted:,} soft-deleted" if soft_deleted else line


def conflicts_summary(pending: int, devices: int) -> str:
    if not pending:
        return "no pending conflicts"
    share = f" ({pending / devices:.2%} of {devices:,} devices)" if devices else ""
    return f"{_plural(pending, 'pending conflict')}{share}"


def summary(line: str) -> dict[str, dg.TextMetadataValue]:
    """The `summary` entry, to put first in an asset's metadata."""
    return {SUMMARY: dg.MetadataValue.text(line)}
