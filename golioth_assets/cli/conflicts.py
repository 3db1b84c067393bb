"""`golioth-sync conflicts …`: review conflicts and choose which value wins.

A resolution is recorded now and written to both sides by the next sync (`--now` runs a targeted
sync of the affected devices right away, through Dagster, so it shows in the UI's run history).
"""

from __future__ import annotations

import json
from typing import Any

import click
import pandas as pd
from rich.table import Table

from golioth_assets.actions import OperationError
from golioth_assets.actions import conflicts as actions
from golioth_assets.cli.output import echo_json, json_option, verbose
from golioth_assets.cli.render import TerminalConsole, field_label, list_table, shorten
from golioth_assets.cli.services import open_engine, operator_errors

out = TerminalConsole()


def show_value(value: Any, *, limit: int | None = None) -> str:
    if value is None:
        return "∅ (none)"
    # JSON, strings quoted: what --value takes.
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return shorten(text, limit) if limit else text


@click.group()
def conflicts() -> None:
    """Review conflicts and choose which value wins.

    A conflict is a field both sides changed since they last agreed."""


@conflicts.command("list")
@click.option("--org", "organization_id", help="Only this organization's conflicts.")
@click.option("--status", type=click.Choice(actions.STATUSES), default="pending", show_default=True)
@click.option("--all-statuses", is_flag=True, help="Every status (overrides --status).")
@click.option("--limit", default=200, show_default=True, type=int)
@json_option
@operator_errors
def list_(organization_id: str | None, status: str, all_statuses: bool, limit: int, as_json: bool) -> None:
    """Conflicts, newest first."""
    rows = actions.list_conflicts(open_engine(), organization_id, None if all_statuses else status, limit)
    if as_json:
        return echo_json({"conflicts": [conflict_json(r) for r in rows]})
    out.print(
        conflict_list_table(
            rows,
            title=f"{'all' if all_statuses else status} conflicts"
            + (f" of {organization_id}" if organization_id else ""),
            show_org=not organization_id,
        )
    )
    if not rows:
        out.print("no conflicts" + ("" if all_statuses else f" with status {status}"))


@conflicts.command()
@click.argument("conflict_id")
@click.option("--org", "organization_id", help="Fail unless the conflict belongs to this organization.")
@json_option
@operator_errors
def show(conflict_id: str, organization_id: str | None, as_json: bool) -> None:
    """One conflict: base, local and Golioth values side by side."""
    row = actions.get_conflict(open_engine(), conflict_id, organization_id)
    if as_json:
        return echo_json({"conflict": conflict_json(row)})
    out.print(side_by_side(row))
    if row["status"] == "pending":
        out.print(
            f"Resolve: golioth-sync conflicts resolve {row['id']} --use local|remote --by NAME   "
            f"(or --value JSON --by NAME)"
        )


@conflicts.command(short_help="Choose which value wins, for one conflict or all.")
@click.argument("conflict_ids", nargs=-1)
@click.option(
    "--use", type=click.Choice(["local", "remote"]), help="Keep this database's value (local) or Golioth's (remote)."
)
@click.option(
    "--value", "value_json", metavar="JSON", help="Write this value to both sides instead (JSON, e.g. '\"sensor-1\"')."
)
@click.option("--by", "resolved_by", required=True, metavar="NAME", help="Who decides (recorded as resolved_by).")
@click.option(
    "--org", "organization_id", help="Fail unless the conflicts belong to this organization; with --all, whose."
)
@click.option("--all", "all_pending", is_flag=True, help="Every pending conflict of --org (bulk; needs --use).")
@click.option("--now", is_flag=True, help="Run a targeted sync of the affected devices right away.")
@json_option
@operator_errors
def resolve(
    conflict_ids: tuple[str, ...],
    use: str | None,
    value_json: str | None,
    resolved_by: str,
    organization_id: str | None,
    all_pending: bool,
    now: bool,
    as_json: bool,
) -> None:
    """Choose the winning value of CONFLICT_IDS (or, with --org ORG --all, of every pending conflict).

    The next sync writes it to both sides; --now syncs those devices immediately.
    """
    if (use is None) == (value_json is None):
        raise click.UsageError("choose exactly one of --use local|remote or --value JSON")
    if as_json and now:
        raise click.UsageError("--now prints a sync summary; with --json, run `golioth-sync sync --device … --json`")
    engine = open_engine()
    rows, skipped = _resolve_rows(engine, conflict_ids, use, value_json, resolved_by, organization_id, all_pending)
    if as_json:
        return echo_json(
            {
                "resolved": [conflict_json(r) for r in rows],
                "skipped": [{"id": cid, "reason": reason} for cid, reason in skipped],
            }
        )
    if all_pending:
        out.print(f"resolved {len(rows)} conflict(s) of {organization_id} with {use}, by {resolved_by}")
        for cid, reason in skipped:
            out.print(f"  skipped {cid}: {reason}")
    else:
        for row in rows:
            out.print(
                f"conflict {row['id']} resolved: {row['field']} of {row['device_name'] or row['device_id']} = "
                f"{show_value(row['resolved_value'], limit=80)} ({row['resolution']}, by {row['resolved_by']})"
            )
    if not rows:
        return
    if not now:
        out.print("The next sync applies it; `--now` would sync these devices right away.")
        return
    _sync_now(engine, rows)


def _resolve_rows(
    engine,
    conflict_ids: tuple[str, ...],
    use: str | None,
    value_json: str | None,
    resolved_by: str,
    organization_id: str | None,
    all_pending: bool,
) -> tuple[list[dict], list[tuple[int, str]]]:
    """(resolved rows, skipped (id, reason)): --all resolves every pending conflict of --org."""
    if all_pending:
        if conflict_ids:
            raise click.UsageError("give conflict ids or --all, not both")
        if not organization_id:
            raise click.UsageError("--all needs --org ORG")
        if use is None:  # then --value was given
            raise click.UsageError("--all takes --use local|remote (a value fits one field, not all)")
        result = actions.resolve_all(engine, organization_id, use=use, resolved_by=resolved_by)
        return result.resolved, list(result.skipped)
    if not conflict_ids:
        raise click.UsageError("give at least one conflict id (or --org ORG --all)")
    rows = actions.resolve(
        engine,
        conflict_ids,
        use=use or "value",
        value_json=value_json,
        resolved_by=resolved_by,
        organization_id=organization_id,
    )
    return rows, []


def _sync_now(engine, rows: list[dict]) -> None:
    from golioth_assets.cli.dagster_run import dead_runs_note, run_sync_job
    from golioth_assets.cli.runtime import prepare
    from golioth_assets.store import sync_log

    prepare()  # Dagster's instance and storage
    failures = []
    for org, device_ids in actions.sync_targets(rows).items():
        launched = run_sync_job(org, device_ids=device_ids, trigger="cli", out=out, verbose=verbose())
        with engine.connect() as conn:
            run = sync_log.latest_run(conn, org, dagster_run_id=launched.run_id)
        if run:
            from golioth_assets.cli.render import summary_table

            out.print(summary_table(run))
        out.print(f"Dagster run {launched.run_id}")
        if note := dead_runs_note(launched):
            out.print(note, style="yellow")
        if not launched.success:
            failures.append(f"{org}: {launched.error or 'the sync failed'}")
    if failures:
        raise OperationError("resolved, but the sync failed (the next sync retries): " + "; ".join(failures))
    left = [r["id"] for r in _reload(engine, rows) if r["status"] != "applied"]
    if left:
        out.print(f"not applied yet: {', '.join(map(str, left))} (see `golioth-sync conflicts show ID`)")
    else:
        out.print(f"applied to both sides: {', '.join(str(r['id']) for r in rows)}")


def _reload(engine, rows: list[dict]) -> list[dict]:
    return [actions.get_conflict(engine, r["id"]) for r in rows]


# -- rendering -----------------------------------------------------------------------------------------

CONFLICT_KEYS = (
    "id",
    "organization_id",
    "device_id",
    "golioth_device_id",
    "device_name",
    "field",
    "local_column",
    "conflict_type",
    "status",
    "base_value",
    "local_value",
    "remote_value",
    "resolution",
    "resolved_value",
    "resolved_by",
    "resolved_at",
    "applied_at",
    "detected_at",
)


def conflict_json(row: dict) -> dict:
    """A conflict in the documented shape (docs/operators.md): values are JSON, as --value takes them."""
    return {key: row.get(key) for key in CONFLICT_KEYS}


def conflict_list_table(rows: list[dict], *, title: str, show_org: bool = True) -> Table:
    # Pending conflicts have nobody in "resolved by": leave the column out rather than narrow the rest.
    show_resolver = any(row["resolved_by"] for row in rows)
    columns = ["id", "org", "device", "field", "type", "local", "Golioth", "status", "detected", "resolved by"]
    columns = [c for c in columns if (c != "org" or show_org) and (c != "resolved by" or show_resolver)]
    # A long value ends in "…" rather than fold into fragments: `conflicts show ID` has all of it.
    table = list_table(title, columns, cut=("device", "field", "type", "local", "Golioth", "resolved by"))
    for row in rows:
        cells = {
            "id": str(row["id"]),
            "org": row["organization_id"],
            "device": row["device_name"] or row["device_id"] or row["golioth_device_id"] or "",
            "field": field_label(row),
            "type": row["conflict_type"],
            "local": show_value(row["local_value"], limit=40),
            "Golioth": show_value(row["remote_value"], limit=40),
            "status": row["status"],
            "detected": row["detected_at"].strftime("%Y-%m-%d %H:%M"),
            "resolved by": row["resolved_by"] or "",
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def side_by_side(row: dict) -> Table:
    device = row["device_name"] or "(unnamed)"
    table = Table(
        title=f"conflict {row['id']} · {row['organization_id']} · {device} · field {field_label(row)}",
        caption=(
            f"type {row['conflict_type']} · status {row['status']} · detected {row['detected_at']:%Y-%m-%d %H:%M:%S} · "
            f"local id {row['device_id'] or '-'} · Golioth id {row['golioth_device_id'] or '-'}"
        ),
        show_lines=True,
    )
    table.add_column("base (last agreed)", overflow="fold")
    table.add_column("local (this database)", overflow="fold")
    table.add_column("remote (Golioth)", overflow="fold")
    table.add_row(show_value(row["base_value"]), show_value(row["local_value"]), show_value(row["remote_value"]))
    if row["status"] != "pending":
        table.add_row(
            f"resolved: {row['resolution']}",
            f"value: {show_value(row['resolved_value'])}",
            f"by {row['resolved_by']}"
            + (f" · applied {row['applied_at']:%Y-%m-%d %H:%M:%S}" if row["applied_at"] else ""),
        )
    return table


def dry_run_conflicts_table(frame: pd.DataFrame, *, limit: int = 50) -> Table:
    """The conflicts a dry run found (not recorded: a dry run writes nothing)."""
    table = list_table(
        "conflicts (dry run: not recorded)",
        ("device", "field", "type", "base", "local", "Golioth"),
        wrap=("base", "local", "Golioth"),
        cut=("device", "field", "type"),
    )
    for row in frame.head(limit).itertuples(index=False):
        device = getattr(row, "device_name", None) or row.device_id or row.golioth_device_id or ""
        table.add_row(
            str(device),
            field_label(row),
            row.conflict_type,
            show_value(row.base_value, limit=40),
            show_value(row.local_value, limit=40),
            show_value(row.remote_value, limit=40),
        )
    if len(frame) > limit:
        table.caption = f"{len(frame) - limit} more"
    return table
