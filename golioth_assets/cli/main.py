"""`golioth-sync`: the command line. Each command group lives in its own module; this file only
mounts them, plus the small `db` and `env` commands.

The command modules are imported when their command runs, not before: `golioth-sync --help` and
the commands that don't run a sync would otherwise pay for pandas, Dagster and every other
command's imports on each call (over a second; docs/benchmarks.md, "CLI and fixed cost").
tests/test_cli_imports.py holds the line."""

from __future__ import annotations

import gc
import importlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class LazyCommand:
    """A command mounted by name: `target` ("module:attribute") is imported only when it runs or
    its own help is asked for. `short_help` is its line in `golioth-sync --help`, kept here so that
    listing the commands imports none of them."""

    target: str
    short_help: str

    def load(self) -> click.Command:
        from golioth_assets.cli.startup import imports_without_gc

        module, _, attribute = self.target.partition(":")
        with imports_without_gc():
            command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


LAZY_COMMANDS = {
    "conflicts": LazyCommand("golioth_assets.cli.conflicts:conflicts", "Review conflicts and choose which value wins."),
    "console": LazyCommand(
        "golioth_assets.cli.console:console", "Serve the web console: status, conflicts, history, inbox."
    ),
    "dev": LazyCommand("golioth_assets.cli.dev:dev", "Start everything on this machine for a first look."),
    "history": LazyCommand(
        "golioth_assets.cli.history:history", "Sync history of an organization, one run, or one device."
    ),
    "local": LazyCommand(
        "golioth_assets.cli.local:local", "Your own device table: check a mapping, install change capture."
    ),
    "services": LazyCommand(
        "golioth_assets.cli.services:services", "Golioth connections: one per organization (device_services)."
    ),
    "simulator": LazyCommand(
        "golioth_assets.simulator.cli:simulator_command", "Run the Golioth API simulator in the foreground."
    ),
    "sync": LazyCommand("golioth_assets.cli.sync:sync", "Run a sync through Dagster and print a summary."),
    "webhooks": LazyCommand(
        "golioth_assets.cli.webhooks:webhooks", "The webhook receiver and its inbox (webhook_events)."
    ),
}


def _out() -> Console:
    from rich.console import Console

    return Console()


class _Cli(click.Group):
    """Commands from LAZY_COMMANDS are loaded on use (beside the ones defined here).

    Failures an operator fixes outside golioth-sync (a database that is down or unreachable, a
    bad DATABASE_URL, an embedded server that won't start) are one line, not a traceback, and exit
    with "could not start" (cli/output.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            return LAZY_COMMANDS[cmd_name].load()
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own listing loads every command for its short help: this one reads the lazy ones'
        # from LAZY_COMMANDS.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name].short_help))
            elif (command := super().get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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

    _out().print(f"database {runtime.describe()} at revision {migrate.current_revision(runtime.engine)}")


@db.command()
def status() -> None:
    """Where the database is, whether it runs, and its schema revision."""
    from golioth_assets.settings import get_settings
    from golioth_assets.store import database, embedded, migrate

    settings = get_settings()
    if settings.database_url:
        url = database.normalize_url(settings.database_url)
        _out().print(f"DATABASE_URL: {database.render(url)}")
    else:
        running = embedded.is_running(settings.pgdata)
        _out().print(f"embedded PostgreSQL in {settings.pgdata}: {'running' if running else 'stopped'}")
        if not running:
            return
        url = database.resolve_urls(settings)[0]
    try:
        engine = database.engine_for(url)
        _out().print(f"schema revision: {migrate.current_revision(engine)} (head {migrate.head_revision()})")
    except Exception as exc:
        from golioth_assets.cli.output import not_started

        raise not_started(f"cannot reach the database: {_first_line(exc)}") from None


@db.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server (it keeps running between commands otherwise)."""
    from golioth_assets.settings import get_settings
    from golioth_assets.store import embedded

    pgdata = get_settings().pgdata
    _out().print("stopped" if embedded.stop(pgdata) else f"no embedded server running in {pgdata}")


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
    from golioth_assets.cli.dev import demo_exports  # the demo simulator's made-up keys, once a demo ran

    for name, value in demo_exports(runtime.app_url).items():
        click.echo(f"export {name}={shlex.quote(value)}")


def main() -> None:  # pragma: no cover - the entry point (pyproject.toml's golioth-sync script)
    try:
        cli()
    finally:
        # The process ends here. Freezing what it holds spares the interpreter's exit from walking
        # every object of pandas, SQLAlchemy and Dagster again in its final garbage collections
        # (about 0.5 s of a `sync`); memory goes back to the OS either way. Not in `cli` itself:
        # tests invoke that many times in one process.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
