"""`golioth-sync sync`: one sync through Dagster, a summary (or `--json`), and an exit code that
says how it went (cli/output.py, docs/operators.md "Scripting")."""

from __future__ import annotations

from typing import Any

import click
import pandas as pd

from golioth_assets.cli.output import CommandFailed, ExitCode, echo_json, json_option, not_started, run_json, verbose
from golioth_assets.cli.render import TerminalConsole
from golioth_assets.core.vocabulary import Direction, Policy, RunStatus, values

out = TerminalConsole()
notes = TerminalConsole(stderr=True)
PLAN_JSON_LIMIT = 1000  # rows of a dry run's plan in its JSON; all of them are in sync_plan


@click.command()
@click.option("--org", "organization_id", required=True, help="The organization to sync.")
@click.option("--direction", type=click.Choice(values(Direction)), help="Override for this run.")
@click.option("--policy", type=click.Choice(values(Policy)), help="Override for this run.")
@click.option("--dry-run", is_flag=True, help="Plan only: print what would change, write nothing.")
@click.option("--device", "device_ids", multiple=True, help="Local or Golioth device id (repeatable): a targeted sync.")
@click.option(
    "--fail-on-conflicts", is_flag=True, help=f"Exit {ExitCode.conflicts.value} when the run found conflicts (CI)."
)
@json_option
def sync(
    organization_id: str,
    direction: str | None,
    policy: str | None,
    dry_run: bool,
    device_ids: tuple[str, ...],
    fail_on_conflicts: bool,
    as_json: bool,
) -> None:
    """Run a sync through Dagster (it appears in the UI's run history) and print a summary.

    Exit status: 0 success, 3 conflicts found (with --fail-on-conflicts), 4 partial (some device
    writes failed), 5 failed, 6 could not start (no service, API key not set, database unreachable)."""
    from golioth_assets.cli.startup import imports_without_gc

    with imports_without_gc():
        from golioth_assets.cli.dagster_run import dead_runs_note, run_sync_job
        from golioth_assets.cli.runtime import prepare
        from golioth_assets.definitions import defs  # noqa: F401  # the jobs run_sync_job runs
        from golioth_assets.defs import storage  # noqa: F401  # Dagster's storage, which the instance loads

    runtime = prepare()
    _check_startable(runtime.engine, organization_id)
    launched = run_sync_job(
        organization_id,
        direction=direction,
        dry_run=dry_run,
        policy=policy,
        device_ids=list(device_ids),
        out=notes if as_json else out,
        verbose=verbose(),
    )
    run = _run_of(runtime.engine, organization_id, launched, dry_run)
    plan, found = _dry_run_findings(runtime.engine, run) if dry_run and launched.success else (None, None)
    if as_json:
        echo_json(sync_json(run, launched.seconds, plan, found))
    else:
        _print_summary(run, plan, found)
    if note := dead_runs_note(launched):
        notes.print(note, style="yellow")
    if verbose() and launched.detail:
        notes.print(launched.detail, markup=False, highlight=False)
    _exit(run, fail_on_conflicts)


def _check_startable(engine, organization_id: str) -> None:
    """What would make the run fail before it does anything: no service, or its key not set here."""
    from golioth_assets.store import services

    with engine.connect() as conn:
        try:
            service = services.service_for_org(conn, organization_id)
        except services.ServiceNotFound as exc:
            raise not_started(f"{exc}; add one with `golioth-sync services add`") from None
    try:
        service.api_key()
    except services.MissingSecret as exc:
        raise not_started(f"could not start: {exc}") from None


def _run_of(engine, organization_id: str, launched, dry_run: bool) -> dict[str, Any]:
    """The run's log row, told the Dagster run's outcome: a run whose step raised may still say
    "running" (the failure sensor closes it later), or have no row at all."""
    from golioth_assets.store import sync_log

    with engine.connect() as conn:
        row = sync_log.latest_run(conn, organization_id, dagster_run_id=launched.run_id)
    run = row or {"id": None, "organization_id": organization_id, "dagster_run_id": launched.run_id, "dry_run": dry_run}
    if not launched.success:
        run = {**run, "status": RunStatus.failed.value, "error": launched.error}
    return run


def _dry_run_findings(engine, run: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    from golioth_assets.actions.sync import dry_run_conflicts, dry_run_plan

    return dry_run_plan(engine, run["id"]), dry_run_conflicts(engine, run["id"])


def sync_json(run: dict, command_seconds: float, plan: pd.DataFrame | None, found: pd.DataFrame | None) -> dict:
    """The run object, plus for a dry run its plan (first PLAN_JSON_LIMIT rows) and the conflicts it found."""
    out = {**run_json(run), "command_seconds": round(command_seconds, 3)}
    if plan is not None:
        out["plan"] = _records(plan.head(PLAN_JSON_LIMIT))
        out["plan_rows"] = len(plan)
    if found is not None:
        keys = ["device_id", "golioth_device_id", "device_name", "field", "conflict_type"]
        keys += ["base_value", "local_value", "remote_value"]
        out["dry_run_conflicts"] = _records(found.reindex(columns=keys))
    return out


def _records(frame: pd.DataFrame) -> list[dict]:
    # Nulls as None (pandas would give NaN), so the JSON says null.
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _print_summary(run: dict, plan: pd.DataFrame | None, found: pd.DataFrame | None) -> None:
    from golioth_assets.cli.conflicts import dry_run_conflicts_table
    from golioth_assets.cli.render import plan_table, summary_table

    if run.get("id") is None:
        out.print(f"the run failed before it was recorded (Dagster run {run['dagster_run_id']})")
        return
    # A dry run writes nothing, so its counters stay 0: show what the plan would do instead.
    planned = (run.get("details") or {}).get("plan", {}) if run.get("dry_run") else {}
    # A failure's cause is the `Error:` line that follows, not a table row as well.
    out.print(summary_table({**run, **planned, "error": None}))
    if plan is not None:
        out.print(plan_table(plan, title="plan (dry run: nothing was written)"))
    if found is not None:
        out.print(dry_run_conflicts_table(found) if not found.empty else "no conflicts")
    out.print(f"Dagster run {run['dagster_run_id']}")


def _exit(run: dict, fail_on_conflicts: bool) -> None:
    status = run.get("status")
    if status == RunStatus.failed:
        raise CommandFailed(run.get("error") or "the sync failed", ExitCode.failed)
    if status == RunStatus.partial:
        raise CommandFailed(
            f"run {run['id']} was partial: {run.get('failures', 0)} device write(s) failed; the next run "
            f"retries them (`golioth-sync history --org {run['organization_id']} --run {run['id']}`)",
            ExitCode.partial,
        )
    conflicts = (run.get("details") or {}).get("plan", {}).get("conflicts", run.get("conflicts", 0))
    if fail_on_conflicts and conflicts:
        raise CommandFailed(
            f"run {run['id']} found {conflicts} conflict(s): "
            f"`golioth-sync conflicts list --org {run['organization_id']}`",
            ExitCode.conflicts,
        )
