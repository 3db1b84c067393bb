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

from golioth_assets.core.fields import FIELD_KIND
from golioth_assets.store import database
from golioth_assets.store.local_table.introspect import ColumnInfo, TableInfo, TableNotFound, describe_table
from golioth_assets.store.local_table.mapping import FieldMapping, TableMapping, builtin_mapping
from golioth_assets.store.local_table.sql import OBSERVED_KIND
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
    except TableNotFound as exc:
        raise LocalTableError(f"local table: {exc}") from None
    problems = fits(mapping, info)
    if problems:
        raise LocalTableError(f"the mapping no longer fits {mapping.table}: " + "; ".join(problems))
    return LocalSide(LocalTable(mapping, service.organization_id, info), engine, same)


# -- does the mapping fit the live table? -----------------------------------------------------------


def fits(mapping: TableMapping, info: TableInfo) -> list[str]:
    """Every reason the mapping cannot be read and written as it stands, one line each, naming the
    column: missing columns, types that can't hold the field, enum labels a value map lacks, NOT NULL
    columns an insert would leave empty. (`golioth-sync local check` reports these and more.)"""
    problems: list[str] = []
    for field_name, m in {**mapping.fields, **mapping.observed}.items():
        problems += _field_fits(field_name, m, info)
    for role, name in (
        ("key", mapping.key),
        ("link", mapping.link),
        ("soft_delete", mapping.soft_delete),
        ("updated_at", mapping.updated_at),
        ("observed_at", mapping.observed_at),
        ("tenant", mapping.tenant.column if mapping.tenant else None),
        *(("insert_defaults", c) for c in mapping.insert_defaults),
    ):
        if name is not None and name not in info.columns:
            problems.append(f"column {name} ({role}) does not exist")
    for role, name in (("soft_delete", mapping.soft_delete), ("updated_at", mapping.updated_at)):
        if name in info.columns and not info.columns[name].is_timestamp:
            problems.append(f"column {name} ({role}) is {info.columns[name].type_sql}, not a timestamp")
    if mapping.key in info.columns and not info.is_unique(mapping.key):
        problems.append(f"column {mapping.key} (key) is not unique")
    problems += _unfilled_on_insert(mapping, info)
    return problems


def _field_fits(name: str, m: FieldMapping, info: TableInfo) -> list[str]:
    c = info.columns.get(m.column)
    label = f"column {m.describe()} ({name})"
    if c is None:
        return [f"column {m.column} ({name}) does not exist"]
    if c.generated:
        return [f"{label} is a generated column: it cannot be written"]
    if m.path:
        return [] if c.is_json else [f"{label} has a JSON path but is {c.type_sql}, not json/jsonb"]
    kind = FIELD_KIND.get(name) or OBSERVED_KIND.get(name, "text")
    problems = []
    if m.values is not None and c.enum_labels:
        missing = sorted({v for values in m.values.entries.values() for v in values} - set(c.enum_labels))
        if missing:
            problems.append(f"{label}: value(s) {', '.join(missing)} are not labels of enum {c.type_sql}")
    if not _kind_fits(kind, c, m):
        problems.append(f"{label} is {c.type_sql}, which cannot hold a {kind} value")
    return problems


def _kind_fits(kind: str, c: ColumnInfo, m: FieldMapping) -> bool:
    if kind == "list":
        return c.is_array or c.is_json or c.is_text
    if kind == "json":
        return c.is_json or (m.package is not None and (c.is_text or c.category == "E"))
    if kind == "timestamp":
        return c.is_timestamp or c.is_text
    if kind == "bool":
        return c.base_type == "boolean" or (m.values is not None and (c.is_text or c.category == "E"))
    return not c.is_array and not c.is_json and c.category in ("S", "E", "N", "U")


def _unfilled_on_insert(mapping: TableMapping, info: TableInfo) -> list[str]:
    written = mapping.columns_written()
    return [
        f"column {c.name} is NOT NULL without a default and the mapping gives it no value (add it to insert_defaults)"
        for c in info.columns.values()
        if not c.nullable and not c.has_default and not c.identity and not c.generated and c.name not in written
    ]


def builtin_table(conn, organization_id: str) -> LocalTable:
    """The built-in `devices` table of one organization, on a connection to golioth-sync's database."""
    mapping = builtin_mapping(organization_id)
    return LocalTable(mapping, organization_id, describe_table(conn, mapping.table))
