"""`golioth-sync`: the command line. Each command group lives in its own module; this file only
mounts them, plus the small `db` and `sync` commands."""

from __future__ import annotations

import logging
import os
import sys

import click
from rich.console import Console

from golioth_assets.cli.conflicts import conflicts
from golioth_assets.cli.console import console as console_command
from golioth_assets.cli.dev import dev
from golioth_assets.cli.history import history
from golioth_assets.cli.local import local
from golioth_assets.cli.services import services
from golioth_assets.cli.sync import sync
from golioth_assets.cli.webhooks import webhooks
from golioth_assets.simulator.cli import simulator_command

out = Console()


class _Cli(click.Group):
    """Failures an operator fixes outside golioth-sync (a database that is down or unreachable, a
    bad DATABASE_URL, an embedded server that won't start) are one line, not a traceback, and exit
    with "could not start" (cli/output.py)."""

    def invoke(self, ctx: click.Context):
        from sqlalchemy import exc as sa_exc

        from golioth_assets.cli.output import not_started
        from golioth_assets.store.database import DatabaseConfigError
        from golioth_assets.store.embedded import EmbeddedPostgresError

        try:
            return super().invoke(ctx)
        except (DatabaseConfigError, EmbeddedPostgresError) as exc:
            raise not_started(str(exc)) from None
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise not_started(
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

    out.print(f"database {runtime.describe()} at revision {migrate.current_revision(runtime.engine)}")


@db.command()
def status() -> None:
    """Where the database is, whether it runs, and its schema revision."""
    from golioth_assets.settings import get_settings
    from golioth_assets.store import database, embedded, migrate

    settings = get_settings()
    if settings.database_url:
        url = database.normalize_url(settings.database_url)
        out.print(f"DATABASE_URL: {database.render(url)}")
    else:
        running = embedded.is_running(settings.pgdata)
        out.print(f"embedded PostgreSQL in {settings.pgdata}: {'running' if running else 'stopped'}")
        if not running:
            return
        url = database.resolve_urls(settings)[0]
    try:
        engine = database.engine_for(url)
        out.print(f"schema revision: {migrate.current_revision(engine)} (head {migrate.head_revision()})")
    except Exception as exc:
        from golioth_assets.cli.output import not_started

        raise not_started(f"cannot reach the database: {_first_line(exc)}") from None


@db.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server (it keeps running between commands otherwise)."""
    from golioth_assets.settings import get_settings
    from golioth_assets.store import embedded

    pgdata = get_settings().pgdata
    out.print("stopped" if embedded.stop(pgdata) else f"no embedded server running in {pgdata}")


@cli.command(short_help="Print shell exports for plain `dagster` commands.")
def env() -> None:
    """Print shell exports for running plain `dagster` commands against this deployment:
    eval "$(golioth-sync env)" && dagster dev -w workspace.yaml

    After `golioth-sync dev`, this also exports the demo simulator's API key, so a second shell's
    CLI reaches the demo."""
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
    from golioth_assets.cli.dev import demo_exports

    for name, value in demo_exports(runtime.app_url).items():  # the demo simulator's made-up keys, once a demo ran
        click.echo(f"export {name}={shlex.quote(value)}")


cli.add_command(dev)
cli.add_command(sync)
cli.add_command(simulator_command)
cli.add_command(webhooks)
cli.add_command(services)
cli.add_command(conflicts)
cli.add_command(history)
cli.add_command(local)
cli.add_command(console_command)


def main() -> None:  # pragma: no cover - the entry point's shim
    sys.exit(cli())


if __name__ == "__main__":  # pragma: no cover
    main()
