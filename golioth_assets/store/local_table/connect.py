"""Where an organization's local table lives, and whether its mapping still fits it.

`open_local_table` is how every step gets its `LocalTable`: it resolves the mapping (the built-in
table when the service has none), connects to the table's database (golioth-sync's own unless the
mapping names a variable holding another URL: read here, at run time, never stored or printed),
describes the live table, and refuses a mapping that no longer fits, naming the column, before
anything is read or written.

One organization's sync opens its table five or six times (scope, plan, Golioth writes, local
writes, the convergence check, the counts), and each description is five catalog queries. So a
sync holds its description (`described_for_sync`): the table is described and checked once, when
the sync starts (a table changed since the last sync is refused there, with the same message), and
every `open_local_table` of that sync, on that service object, gets the same `LocalSide`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


# id(service) -> (the service, the engine, its described side), for the syncs holding one.
_held: dict[int, tuple[object, Engine, LocalSide]] = {}
_held_lock = threading.Lock()


@contextmanager
def described_for_sync(db: Engine, service) -> Iterator[LocalSide]:
    """Describe and check the service's local table now (LocalTableError on a misfit), and let
    every `open_local_table(db, service)` within the block, from any thread, reuse that description.
    Keyed by the service object itself: another sync of the organization (with its own service
    object, as every sync loads one) describes the table afresh."""
    side = describe_local_table(db, service)
    key = id(service)
    with _held_lock:
        _held[key] = (service, db, side)
    try:
        yield side
    finally:
        with _held_lock:
            _held.pop(key, None)


def open_local_table(db: Engine, service) -> LocalSide:
    """The service's local table, described and checked (raises LocalTableError on a misfit); the
    sync's own description when a sync of this service object holds one (described_for_sync)."""
    held = _held.get(id(service))
    if held is not None and held[0] is service and held[1] is db:
        return held[2]
    return describe_local_table(db, service)


def describe_local_table(db: Engine, service) -> LocalSide:
    """The service's local table, described from the catalog and checked, always afresh."""
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
