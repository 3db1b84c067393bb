"""`golioth-sync history --org ORG [--device ID] [--limit N]`: what the syncs did.

Without --device: the organization's runs with their counts and status (golioth_sync_log).
With --device (local id, Golioth id or exact name): every change to that device on either side,
field by field, with old and new values, the run, and who chose the value when an operator
resolved a conflict (golioth_sync_log_entries.changed_by).
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich import box
from rich.table import Table

from golioth_assets.cli.services import open_engine, operator_errors
from golioth_assets.ops import history as ops
from golioth_assets.ops.status import dagster_run_url

console = Console()


def _value(value: Any, limit: int = 60) -> str:
    if value is None:
        return "∅"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


@click.command()
@click.option("--org", "organization_id", required=True, help="The organization.")
@click.option("--device", "device", help="A device's local id, Golioth id or exact name: its change history.")
@click.option("--run", "run_id", type=int, help="One run's per-device entries.")
@click.option("--limit", default=20, show_default=True, type=int, help="Runs (or device changes) to show.")
@operator_errors
def history(organization_id: str, device: str | None, run_id: int | None, limit: int) -> None:
    """Sync history of an organization, one run, or one device."""
    engine = open_engine()
    if device and run_id:
        raise click.UsageError("give --device or --run, not both")
    if device:
        found = ops.device_history(engine, organization_id, device, limit=limit)
        console.print(device_table(found))
        if found.conflicts:
            console.print(device_conflicts_table(found.conflicts))
        return
    if run_id is not None:
        run, entries = ops.run_detail(engine, run_id, organization_id, limit=max(limit, 1))
        console.print(runs_table([run], title=f"run {run_id}"))
        console.print(entries_table(entries, title=f"devices changed by run {run_id}"))
        return
    rows = ops.runs(engine, organization_id, limit)
    console.print(runs_table(rows, title=f"sync runs of {organization_id} (newest first)"))
    if not rows:
        console.print(f"no runs yet: `golioth-sync sync --org {organization_id} --dry-run` plans one")


def runs_table(rows: list[dict], *, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("run", "started", "took", "trigger", "kind", "status", "local", "Golioth", "confl", "fail", "Dagster"):
        table.add_column(column, overflow="fold", no_wrap=column in ("run", "started", "Dagster"))
    for r in rows:
        took = f"{(r['finished_at'] - r['started_at']).total_seconds():.1f} s" if r["finished_at"] else "running"
        kind = "dry run" if r["dry_run"] else ("targeted" if r["scope"] is not None else "full")
        table.add_row(
            str(r["id"]),
            r["started_at"].strftime("%Y-%m-%d %H:%M"),
            took,
            r["trigger"],
            kind if r["direction"] == "bidirectional" else f"{kind}, {r['direction']}",
            r["status"] + (f": {r['error'][:60]}" if r.get("error") else ""),
            f"{r['created_local']}/{r['updated_local']}/{r['deleted_local']}",
            f"{r['created_remote']}/{r['updated_remote']}/{r['deleted_remote']}",
            str(r["conflicts"]),
            str(r["failures"]),
            (r["dagster_run_id"] or "")[:8],
        )
    table.caption = "local / Golioth: created/updated/deleted"
    if rows and rows[0]["dagster_run_id"]:
        table.caption += f" · newest in Dagster: {dagster_run_url(rows[0]['dagster_run_id'])}"
    return table


def entries_table(entries: list[dict], *, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("time", "device", "side", "action", "status", "changes", "changed by"):
        table.add_column(column, overflow="fold")
    for e in entries:
        changes = "; ".join(
            f"{f}: {_value((c or {}).get('old'), 30)} → {_value((c or {}).get('new'), 30)}" for f, c in sorted((e["changes"] or {}).items())
        )
        table.add_row(
            _when(e["created_at"]), e["device_name"] or e["device_id"] or e["golioth_device_id"] or "", e["side"],
            e["action"], e["status"], changes or (e["error"] or ""), e["changed_by"] or "",
        )
    return table


def device_table(found: ops.DeviceHistory) -> Table:
    table = Table(title=f"history of {found.label} in {found.organization_id} (newest first)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("time", "run", "side", "action", "field", "old", "new", "status", "changed by"):
        table.add_column(column, overflow="fold", no_wrap=column in ("time", "run", "action", "field"))
    changes = found.changes()
    for c in changes:
        side = {"local": "local", "remote": "Golioth", "none": "link"}.get(c["side"], c["side"])
        table.add_row(
            c["created_at"].strftime("%Y-%m-%d %H:%M"),
            str(c["sync_log_id"]),
            side,
            c["action"],
            c["field"],
            _value(c["old"]) if c["field"] != "*" else "",
            _value(c["new"]) if c["field"] != "*" else "",
            c["status"] + (f": {c['error']}" if c["error"] else ""),
            c["changed_by"] or "sync",
        )
    if not changes:
        table.caption = "no recorded changes yet"
    else:
        runs = {c["dagster_run_id"] for c in changes if c["dagster_run_id"]}
        if len(runs) == 1:
            table.caption = f"Dagster run: {dagster_run_url(next(iter(runs)))}"
    return table


def device_conflicts_table(rows: list[dict]) -> Table:
    table = Table(title="conflicts of this device", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("id", "field", "status", "local", "Golioth", "chosen", "resolved by", "detected"):
        table.add_column(column, overflow="fold")
    for c in rows:
        table.add_row(
            str(c["id"]), c["field"], c["status"], _value(c["local_value"], 40), _value(c["remote_value"], 40),
            _value(c["resolved_value"], 40) if c["resolution"] else "", c["resolved_by"] or "", _when(c["detected_at"]),
        )
    return table
