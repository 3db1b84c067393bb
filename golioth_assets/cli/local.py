"""`golioth-sync local …`: the product's own device table. Check a mapping against the live table,
and install or remove change capture.

Each command takes the mapping from a file (`--mapping FILE`: check one before attaching it) or
from the organization's service (`--org ORG`: the stored mapping, else the built-in table). The
table's database URL comes from the variable the mapping names and is shown without its password.
Exit codes of `check`: 0 fits, 1 misfits (or bad input), 2 the database could not be reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from golioth_assets.store.local_table.mapping import TableMapping

COULD_NOT_CONNECT = 2


class CouldNotConnect(click.ClickException):
    exit_code = COULD_NOT_CONNECT


@dataclass
class Target:
    mapping: TableMapping
    url: URL

    def describe(self) -> str:
        from golioth_assets.store import database

        return f"{self.mapping.table} in {database.render(self.url)}"

    def engine(self):
        from golioth_assets.store import database

        return database.engine_for(self.url)


def _load_file(path: str) -> TableMapping:
    from pydantic import ValidationError

    from golioth_assets.store.local_table.mapping import load_mapping

    try:
        return load_mapping(path)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'mapping'}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"{path}: {details}") from None
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def _app_url() -> URL:
    """golioth-sync's own database (embedded or DATABASE_URL), migrated."""
    from sqlalchemy import exc as sa_exc

    from golioth_assets.cli.runtime import prepare
    from golioth_assets.store.database import DatabaseConfigError
    from golioth_assets.store.embedded import EmbeddedPostgresError

    try:
        return prepare(dagster=False).app_url
    except (DatabaseConfigError, EmbeddedPostgresError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        from golioth_assets.store.local_table.connect import first_line

        raise CouldNotConnect(f"cannot reach golioth-sync's database: {first_line(exc)}") from None


def _service_mapping(organization_id: str, app_url: URL) -> TableMapping:
    from golioth_assets.store import database, services
    from golioth_assets.store.local_table.mapping import builtin_mapping

    with database.engine_for(app_url).connect() as conn:
        try:
            service = services.service_for_org(conn, organization_id)
        except services.ServiceNotFound as exc:
            raise click.ClickException(f"{exc}; add one with `golioth-sync services add`") from None
    # A service without a mapping of its own syncs the built-in `devices` table.
    return getattr(service, "local_table", None) or builtin_mapping(organization_id)


def resolve_target(mapping_file: str | None, organization_id: str | None) -> Target:
    from golioth_assets.store.local_table.connect import TableConnectionError, table_url

    if (mapping_file is None) == (organization_id is None):
        raise click.UsageError("give exactly one of --mapping FILE or --org ORG")
    if mapping_file is not None:
        mapping = _load_file(mapping_file)
        app_url = None if mapping.connection_env else _app_url()
    else:
        app_url = _app_url()
        mapping = _service_mapping(organization_id, app_url)  # type: ignore[arg-type]
    try:
        return Target(mapping, table_url(mapping, default=app_url))
    except TableConnectionError as exc:
        raise CouldNotConnect(str(exc)) from None


def connect(target: Target):
    """A connection to the table's database; failing to connect is one line and exit code 2."""
    from sqlalchemy import exc as sa_exc

    from golioth_assets.store.local_table.connect import first_line

    try:
        return target.engine().connect()
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise CouldNotConnect(f"cannot connect to {target.describe()}: {first_line(exc)}") from None


def _mapping_options(fn):
    fn = click.option("--org", "organization_id", metavar="ORG", help="Use this organization's stored mapping.")(fn)
    return click.option(
        "--mapping",
        "mapping_file",
        type=click.Path(exists=True, dir_okay=False),
        metavar="FILE",
        help="Use this mapping file (YAML).",
    )(fn)


@click.group()
def local() -> None:
    """Your own device table: check a mapping against it, install change capture."""


@local.command()
@_mapping_options
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def check(mapping_file: str | None, organization_id: str | None, as_json: bool) -> None:
    """Check the mapping against the live table. Writes nothing. Exit 0: fits, 1: misfits, 2: no connection."""
    from golioth_assets.store.local_table.check import run_check

    target = resolve_target(mapping_file, organization_id)
    from sqlalchemy import exc as sa_exc

    from golioth_assets.store.local_table.connect import first_line

    with connect(target) as conn:
        try:
            report = run_check(conn, target.mapping)
        except sa_exc.DBAPIError as exc:  # what the checks do not foresee is still one line
            raise click.ClickException(f"could not check {target.describe()}: {first_line(exc)}") from None
    if as_json:
        from golioth_assets.store import database

        click.echo(json.dumps({**report.as_json(), "database": database.render(target.url)}, indent=2))
    else:
        for line in report.lines():
            click.echo(line)
        verdict = "fits the mapping" if report.ok else "does not fit the mapping"
        click.echo(f"{target.describe()} {verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    if not report.ok:
        raise SystemExit(1)


def _capture_command(install: bool):
    verb = "install" if install else "uninstall"

    @_mapping_options
    @click.option("--dry-run", is_flag=True, help="Print the exact SQL and run nothing.")
    def command(mapping_file: str | None, organization_id: str | None, dry_run: bool) -> None:
        from golioth_assets.store.local_table import capture

        target = resolve_target(mapping_file, organization_id)
        statements = (capture.install_statements if install else capture.uninstall_statements)(target.mapping)
        if dry_run:
            click.echo(f"-- {verb} change capture on {target.describe()} (dry run: nothing was run)")
            click.echo(capture.script(statements))
            return
        from sqlalchemy import exc as sa_exc

        from golioth_assets.store.local_table.connect import first_line

        with connect(target) as conn:
            try:
                with conn.begin():
                    (capture.install_capture if install else capture.uninstall_capture)(conn, target.mapping)
            except capture.CaptureError as exc:
                raise click.ClickException(str(exc)) from None
            except sa_exc.DBAPIError as exc:
                message = f"could not {verb} change capture on {target.describe()}: {first_line(exc)}"
                if "must be owner" in message:  # DROP TRIGGER needs the table's owner, not a privilege
                    message += "; run it with --dry-run and have the table's owner run that SQL"
                raise click.ClickException(message) from None
        click.echo(f"change capture {verb}ed on {target.describe()}")

    return command


local.command(
    "install-capture",
    help="Install change capture: a trigger on the table and a side table in schema golioth_sync.",
)(_capture_command(install=True))
local.command(
    "uninstall-capture",
    help="Remove change capture: exactly what install-capture created.",
)(_capture_command(install=False))
