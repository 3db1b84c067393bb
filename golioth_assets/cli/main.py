"""`golioth-sync`: the command line. Each command group lives in its own module; this file only
mounts them, plus the small `db` and `sync` commands."""

from __future__ import annotations

import logging
import os
import sys

import click
from rich.console import Console

from golioth_assets.cli.conflicts import conflicts
from golioth_assets.cli.dev import dev
from golioth_assets.cli.history import history
from golioth_assets.cli.local import local
from golioth_assets.cli.services import services
from golioth_assets.console.cli import console as console_command
from golioth_assets.core.vocabulary import Direction, Policy, values
from golioth_assets.simulator.cli import simulator_command
from golioth_assets.webhooks.cli import webhooks

console = Console()


class _Cli(click.Group):
    """Failures an operator fixes outside golioth-sync (a database that is down or unreachable, a
    bad DATABASE_URL, an embedded server that won't start) are one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy import exc as sa_exc

        from golioth_assets.store.database import DatabaseConfigError
        from golioth_assets.store.embedded import EmbeddedPostgresError

        try:
            return super().invoke(ctx)
        except (DatabaseConfigError, EmbeddedPostgresError) as exc:
            raise click.ClickException(str(exc)) from None
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise click.ClickException(
                f"cannot reach the database: {_first_line(exc)} (`golioth-sync db status` says which one)"
            ) from None


def _first_line(exc: Exception) -> str:
    # The driver's own message (psycopg2 names host and port, never the password), minus
    # SQLAlchemy's wrapping and its "Background on this error" link.
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


@click.group(cls=_Cli)
@click.option("-v", "--verbose", is_flag=True, help="Log more (never secrets).")
def cli(verbose: bool) -> None:
    """Keep a PostgreSQL device table and the Golioth device registry in two-way sync."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# -- database ---------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The PostgreSQL database: embedded by default, or DATABASE_URL."""


@db.command()
def upgrade() -> None:
    """Apply migrations (starting the embedded server if needed)."""
    from golioth_assets.cli.runtime import prepare

    runtime = prepare(dagster=False)
    from golioth_assets.store import migrate

    console.print(f"database {runtime.describe()} at revision {migrate.current_revision(runtime.engine)}")


@db.command()
def status() -> None:
    """Where the database is, whether it runs, and its schema revision."""
    from golioth_assets.settings import get_settings
    from golioth_assets.store import database, embedded, migrate

    settings = get_settings()
    if settings.database_url:
        url = database.normalize_url(settings.database_url)
        console.print(f"DATABASE_URL: {database.render(url)}")
    else:
        running = embedded.is_running(settings.pgdata)
        console.print(f"embedded PostgreSQL in {settings.pgdata}: {'running' if running else 'stopped'}")
        if not running:
            return
        url = database.resolve_urls(settings)[0]
    try:
        engine = database.engine_for(url)
        console.print(f"schema revision: {migrate.current_revision(engine)} (head {migrate.head_revision()})")
    except Exception as exc:
        raise click.ClickException(f"cannot reach the database: {_first_line(exc)}") from None


@db.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server (it keeps running between commands otherwise)."""
    from golioth_assets.settings import get_settings
    from golioth_assets.store import embedded

    pgdata = get_settings().pgdata
    console.print("stopped" if embedded.stop(pgdata) else f"no embedded server running in {pgdata}")


@cli.command(short_help="Print shell exports for plain `dagster` commands.")
def env() -> None:
    """Print shell exports for running plain `dagster` commands against this deployment:
    eval "$(golioth-sync env)" && dagster dev -w workspace.yaml"""
    import shlex

    from golioth_assets.cli.runtime import DAGSTER_PG_ENV, prepare
    from golioth_assets.settings import get_settings

    runtime = prepare()
    # Embedded: export the data folder, not the server's socket URL, so that the shell keeps
    # following the embedded server (a later command restarts it after `db stop`).
    names = ["GOLIOTH_SYNC_HOME"] if runtime.embedded else ["DATABASE_URL", "DAGSTER_DATABASE_URL"]
    os.environ["GOLIOTH_SYNC_HOME"] = str(get_settings().home)
    for name in [*names, "DAGSTER_HOME", DAGSTER_PG_ENV]:
        click.echo(f"export {name}={shlex.quote(os.environ[name])}")


# -- sync ---------------------------------------------------------------------------------------------


@cli.command(short_help="Run a sync through Dagster and print a summary.")
@click.option("--org", "organization_id", required=True, help="The organization to sync.")
@click.option("--direction", type=click.Choice(values(Direction)), help="Override for this run.")
@click.option("--policy", type=click.Choice(values(Policy)), help="Override for this run.")
@click.option("--dry-run", is_flag=True, help="Plan only: print what would change, write nothing.")
@click.option("--device", "device_ids", multiple=True, help="Local or Golioth device id (repeatable): a targeted sync.")
def sync(
    organization_id: str, direction: str | None, policy: str | None, dry_run: bool, device_ids: tuple[str, ...]
) -> None:
    """Run a sync through Dagster (it appears in the UI's run history) and print a summary."""
    from golioth_assets.cli.dagster_run import run_sync_job
    from golioth_assets.cli.render import plan_table, summary_table
    from golioth_assets.cli.runtime import prepare
    from golioth_assets.store import services, sync_log

    runtime = prepare()
    with runtime.engine.connect() as conn:
        try:
            services.service_for_org(conn, organization_id)
        except services.ServiceNotFound as exc:
            raise click.ClickException(f"{exc}; add one with `golioth-sync services add`") from None
    launched = run_sync_job(
        organization_id,
        direction=direction,
        dry_run=dry_run,
        policy=policy,
        device_ids=list(device_ids),
        console=console,
    )
    with runtime.engine.connect() as conn:
        run = sync_log.latest_run(conn, organization_id, dagster_run_id=launched.run_id)
        plan = sync_log.load_plan(conn, run["id"]) if run else None
    if run:
        # A dry run writes nothing, so its counters stay 0: show what the plan would do instead.
        planned = (run.get("details") or {}).get("plan", {}) if dry_run else {}
        console.print(summary_table({**run, **planned}, seconds=launched.seconds))
    if dry_run and plan is not None:
        visible = plan[plan["action"] != "agree"]
        console.print(plan_table(visible, title="plan (dry run: nothing was written)"))
        if launched.success:
            from golioth_assets.actions.sync import dry_run_conflicts
            from golioth_assets.cli.conflicts import dry_run_conflicts_table

            found = dry_run_conflicts(runtime.engine, run["id"])
            console.print(dry_run_conflicts_table(found) if not found.empty else "no conflicts")
    console.print(f"Dagster run {launched.run_id}")
    if not launched.success:
        raise click.ClickException(launched.error or "the sync failed")


cli.add_command(dev)
cli.add_command(simulator_command)
cli.add_command(webhooks)
cli.add_command(services)
cli.add_command(conflicts)
cli.add_command(history)
cli.add_command(local)
cli.add_command(console_command)


def main() -> None:  # pragma: no cover - console script shim
    sys.exit(cli())


if __name__ == "__main__":  # pragma: no cover
    main()
