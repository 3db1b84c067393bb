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
from rich.table import Table

from golioth_assets.actions import history as actions
from golioth_assets.actions.status import dagster_run_url
from golioth_assets.cli.output import echo_json, json_option, run_json
from golioth_assets.cli.render import SIDES, TerminalConsole, list_table, shorten, summary_table
from golioth_assets.cli.services import open_engine, operator_errors

out = TerminalConsole()


def _value(value: Any, limit: int = 60) -> str:
    if value is None:
        return "∅"
    return shorten(json.dumps(value, sort_keys=True, ensure_ascii=False), limit)


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


@click.command()
@click.option("--org", "organization_id", required=True, help="The organization.")
@click.option("--device", "device", help="A device's local id, Golioth id or exact name: its change history.")
@click.option("--run", "run_id", type=int, help="One run in full, with its per-device entries.")
@click.option("--limit", default=20, show_default=True, type=int, help="Runs (or device changes) to show.")
@json_option
@operator_errors
def history(organization_id: str, device: str | None, run_id: int | None, limit: int, as_json: bool) -> None:
    """Sync history of an organization, one run, or one device."""
    engine = open_engine()
    if device and run_id:
        raise click.UsageError("give --device or --run, not both")
    if as_json:
        return echo_json(history_json(engine, organization_id, device, run_id, limit))
    if device:
        found = actions.device_history(engine, organization_id, device, limit=limit)
        out.print(device_table(found))
        if found.conflicts:
            out.print(device_conflicts_table(found.conflicts))
        return
    if run_id is not None:
        run, entries = actions.run_detail(engine, run_id, organization_id, limit=max(limit, 1))
        out.print(run_table(run))
        if run["dagster_run_id"]:
            out.print(f"Dagster run: {dagster_run_url(run['dagster_run_id'])}")  # whole, to click or copy
        out.print(entries_table(entries, title=f"devices changed by run {run_id}"))
        return
    rows = actions.runs(engine, organization_id, limit)
    out.print(runs_table(rows, title=f"sync runs of {organization_id} (newest first)"))
    if not rows:
        out.print(f"no runs yet: `golioth-sync sync --org {organization_id} --dry-run` plans one")
    for r in rows:
        if r.get("error"):
            out.print(f"run {r['id']} {r['status']}: {shorten(r['error'])} (full text: --run {r['id']})")


ENTRY_KEYS = (
    "id",
    "sync_log_id",
    "dagster_run_id",
    "device_id",
    "golioth_device_id",
    "device_name",
    "side",
    "action",
    "status",
    "changes",
    "error",
    "changed_by",
    "created_at",
)
CHANGE_KEYS = (
    "created_at",
    "sync_log_id",
    "dagster_run_id",
    "trigger",
    "side",
    "action",
    "field",
    "old",
    "new",
    "status",
    "error",
    "changed_by",
)


def history_json(engine, organization_id: str, device: str | None, run_id: int | None, limit: int) -> dict:
    """The three forms of `history --json` (docs/operators.md): runs, one run, one device."""
    from golioth_assets.cli.conflicts import conflict_json

    if device:
        found = actions.device_history(engine, organization_id, device, limit=limit)
        return {
            "organization_id": organization_id,
            "device": {"label": found.label, "local_ids": found.local_ids, "golioth_ids": found.golioth_ids},
            "changes": [{k: c.get(k) for k in CHANGE_KEYS} for c in found.changes()],
            "conflicts": [conflict_json(c) for c in found.conflicts],
        }
    if run_id is not None:
        run, entries = actions.run_detail(engine, run_id, organization_id, limit=max(limit, 1))
        return {"run": run_json(run), "entries": [{k: e.get(k) for k in ENTRY_KEYS} for e in entries]}
    rows = actions.runs(engine, organization_id, limit)
    return {"organization_id": organization_id, "runs": [run_json(r) for r in rows]}


def _kind(run: dict) -> str:
    kind = "dry run" if run["dry_run"] else ("targeted" if run["scope"] is not None else "full")
    return kind if run["direction"] == "bidirectional" else f"{kind} ({run['direction']})"


def runs_table(rows: list[dict], *, title: str) -> Table:
    # Errors are printed under the table, the duration and Dagster run are in `--run N`, and the
    # year is left out: with them the table no longer fits 80 columns.
    table = list_table(
        title, ("run", "started", "trigger", "kind", "status", "local", "Golioth", "confl", "fail"), cut=("kind",)
    )
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["started_at"].strftime("%m-%d %H:%M"),
            r["trigger"],
            _kind(r),
            r["status"],
            f"{r['created_local']}/{r['updated_local']}/{r['deleted_local']}",
            f"{r['created_remote']}/{r['updated_remote']}/{r['deleted_remote']}",
            str(r["conflicts"]),
            str(r["failures"]),
        )
    table.caption = "local / Golioth: created/updated/deleted"
    if rows and rows[0]["dagster_run_id"]:
        table.caption += f" · newest in Dagster: {dagster_run_url(rows[0]['dagster_run_id'])}"
    return table


def run_table(run: dict) -> Table:
    """One run in full: the summary a sync prints, with when and why it ran."""
    details = [("Started", _when(run["started_at"])), ("Trigger / kind", f"{run['trigger']} / {_kind(run)}")]
    return summary_table(run, details=details)


def entries_table(entries: list[dict], *, title: str) -> Table:
    table = list_table(
        title,
        ("time", "device", "side", "action", "status", "changes", "changed by"),
        wrap=("changes",),
        cut=("device", "changed by"),
    )
    for e in entries:
        changes = "; ".join(
            f"{f}: {_value((c or {}).get('old'), 30)} → {_value((c or {}).get('new'), 30)}"
            for f, c in sorted((e["changes"] or {}).items())
        )
        table.add_row(
            _when(e["created_at"]),
            e["device_name"] or e["device_id"] or e["golioth_device_id"] or "",
            SIDES.get(e["side"], e["side"]),
            e["action"],
            e["status"],
            changes or (e["error"] or ""),
            e["changed_by"] or "",
        )
    if not entries:
        table.caption = "no device changes"
    return table


def device_table(found: actions.DeviceHistory) -> Table:
    changes = found.changes()
    columns = ["time", "run", "side", "action", "field", "old", "new", "status", "changed by"]
    errors = any(c["error"] for c in changes)
    if errors:
        columns.append("error")
    table = list_table(
        f"history of {found.label} in {found.organization_id} (newest first)",
        columns,
        wrap=("old", "new", "error"),
        cut=("field", "changed by"),
    )
    for c in changes:
        row = [
            c["created_at"].strftime("%Y-%m-%d %H:%M"),
            str(c["sync_log_id"]),
            SIDES.get(c["side"], c["side"]),
            c["action"],
            c["field"],
            _value(c["old"]) if c["field"] != "*" else "",
            _value(c["new"]) if c["field"] != "*" else "",
            c["status"],
            c["changed_by"] or "sync",
        ]
        if errors:
            row.append(shorten(c["error"] or ""))  # all of it: `history --run N`
        table.add_row(*row)
    if not changes:
        table.caption = "no recorded changes yet"
    else:
        runs = {c["dagster_run_id"] for c in changes if c["dagster_run_id"]}
        if len(runs) == 1:
            table.caption = f"Dagster run: {dagster_run_url(next(iter(runs)))}"
    return table


def device_conflicts_table(rows: list[dict]) -> Table:
    table = list_table(
        "conflicts of this device",
        ("id", "field", "status", "local", "Golioth", "chosen", "resolved by", "detected"),
        wrap=("local", "Golioth", "chosen"),
        cut=("field", "resolved by"),
    )
    for c in rows:
        table.add_row(
            str(c["id"]),
            c["field"],
            c["status"],
            _value(c["local_value"], 40),
            _value(c["remote_value"], 40),
            _value(c["resolved_value"], 40) if c["resolution"] else "",
            c["resolved_by"] or "",
            f"{c['detected_at']:%Y-%m-%d %H:%M}",
        )
    return table
