"""Where an organization's local table lives, and whether its mapping still fits it.

`open_local_table` is how every step gets its `LocalTable`: it resolves the mapping (the built-in
table when the service has none), connects to the table's database (golioth-sync's own unless the
mapping names a variable holding another URL: read here, at run time, never stored or printed),
describes the live table, and refuses a mapping that no longer fits, naming the column, before
anything is read or written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.engine import URL, Engine, make_url

from golioth_assets.store import database
from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.fit import fit_report
from golioth_assets.store.local_table.introspect import TableInfo, TableNotFound, describe_table
from golioth_assets.store.local_table.mapping import TableMapping, builtin_mapping
from golioth_assets.store.local_table.table import LocalTable, LocalTableError


@dataclass
class LocalSide:
    """An organization's local table and the engine of the database it lives in."""

    table: LocalTable
    engine: Engine
    same_database: bool
    """True when the table is in golioth-sync's own database (one transaction can hold both)."""

    @property
    def where(self) -> str:
        """host/database of the table, password hidden: safe to print."""
        url = self.engine.url
        return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database} {self.table.name}"


class TableConnectionError(LocalTableError):
    """The mapping's connection variable is unset or holds no usable PostgreSQL URL."""


def mapping_of(service) -> TableMapping:
    return service.local_table or builtin_mapping(service.organization_id)


def table_url(mapping: TableMapping, *, default: URL | None = None) -> URL:
    """The URL of the database holding the mapped table; `default` (our own database) when the
    mapping names no variable. Error messages name the variable, never its value."""
    if mapping.connection_env is None:
        if default is None:
            raise TableConnectionError(f"the mapping of {mapping.table} names no connection_env")
        return default
    raw = os.environ.get(mapping.connection_env, "").strip()
    if not raw:
        raise TableConnectionError(
            f"{mapping.connection_env} is not set: it should hold the PostgreSQL URL of the database with {mapping.table}"
        )
    try:
        # make_url's own message repeats the whole string, password included: say less.
        url = make_url(raw)
    except Exception:
        raise TableConnectionError(f"{mapping.connection_env} does not hold a valid PostgreSQL URL") from None
    try:
        return database.normalize_url(url, variable=mapping.connection_env)
    except database.DatabaseConfigError as exc:
        raise TableConnectionError(str(exc)) from None


def first_line(exc: BaseException) -> str:
    """The driver's own message (psycopg2 names host and port, never the password), one line."""
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def table_engine(db: Engine, mapping: TableMapping) -> tuple[Engine, bool]:
    """The engine of the table's database, and whether that is golioth-sync's own database."""
    if mapping.connection_env is None:
        return db, True
    url = table_url(mapping)
    same = url.set(drivername=db.url.drivername) == db.url
    return (db, True) if same else (database.engine_for(url), False)


def open_local_table(db: Engine, service) -> LocalSide:
    """The service's local table, described and checked (raises LocalTableError on a misfit)."""
    mapping = mapping_of(service)
    engine, same = table_engine(db, mapping)
    try:
        with engine.connect() as conn:
            info = describe_table(conn, mapping.table)
            # Without an updated_at column, capture's per-row change times date local edits.
            captured = mapping.updated_at is None and capture.capture_installed(conn, mapping)
    except TableNotFound as exc:
        raise LocalTableError(f"local table: {exc}") from None
    problems = fits(mapping, info)
    if problems:
        raise LocalTableError(f"the mapping no longer fits {mapping.table}: " + "; ".join(problems))
    return LocalSide(LocalTable(mapping, service.organization_id, info, captured=captured), engine, same)


# -- does the mapping fit the live table? ----------------------------------------------------------


def fits(mapping: TableMapping, info: TableInfo) -> list[str]:
    """Every reason the mapping cannot be read and written as it stands, one line each, naming the
    column: fit.py's errors, the same rules `golioth-sync local check` applies (it adds the probes
    that need the database, and the warnings)."""
    return [p.message for p in fit_report(mapping, info).errors]


def builtin_table(conn, organization_id: str) -> LocalTable:
    """The built-in `devices` table of one organization, on a connection to golioth-sync's database."""
    mapping = builtin_mapping(organization_id)
    return LocalTable(mapping, organization_id, describe_table(conn, mapping.table))
