"""`golioth-sync local check`: does a mapping fit the live table? Read-only, every misfit one line.

Errors are what would make a sync fail or write something the table refuses: a missing table or
column, a type that cannot hold the Golioth field, a NOT NULL column that an insert leaves empty, a
value an enum or a CHECK constraint rejects, a tenant that selects nothing, a key that is not unique,
a privilege the role lacks. Warnings are what works but may surprise (no hardware ids, no deletes,
no change tracking). Each line begins with the column at fault (`column lifecycle: …`).

The caller owns the transaction and makes it read-only (`run_check` does both); candidate values
are tried inside savepoints, so a value a type refuses does not end the check.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.connect import first_line
from golioth_assets.store.local_table.introspect import (
    ColumnInfo,
    TableInfo,
    TableNotFound,
    describe_table,
    quote_ident,
    quote_table,
)
from golioth_assets.store.local_table.mapping import FieldMapping, TableMapping, TableName
from golioth_assets.store.local_table.tenant import TenantError, lookup_tenant


class Severity(StrEnum):
    error = "error"
    warning = "warning"


class Misfit(StrEnum):
    """What kind of problem a line reports (the `code` in --json), so callers can filter."""

    table_missing = "table_missing"
    column_missing = "column_missing"
    column_type = "column_type"
    value_map = "value_map"
    not_writable = "not_writable"
    not_null = "not_null"
    value_not_allowed = "value_not_allowed"
    check_not_evaluated = "check_not_evaluated"
    tenant = "tenant"
    tenant_empty = "tenant_empty"
    key = "key"
    link = "link"
    privilege = "privilege"
    may_be_empty = "may_be_empty"
    no_hardware_ids = "no_hardware_ids"
    no_soft_delete = "no_soft_delete"
    no_change_tracking = "no_change_tracking"
    capture_stale = "capture_stale"


@dataclass(frozen=True)
class Problem:
    severity: Severity
    code: Misfit
    column: str | None
    message: str
    """The whole line, starting with `column <name>:` when a column is at fault."""


@dataclass
class CheckReport:
    table: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity is Severity.warning]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, code: Misfit, column: str | None, message: str) -> None:
        self.problems.append(Problem(Severity.error, code, column, _prefixed(column, message)))

    def warn(self, code: Misfit, column: str | None, message: str) -> None:
        self.problems.append(Problem(Severity.warning, code, column, _prefixed(column, message)))

    def lines(self) -> list[str]:
        """What `local check` prints, errors first: `error: column x: …`, `warning: …`."""
        return [f"{p.severity}: {p.message}" for p in (*self.errors, *self.warnings)]

    def as_json(self) -> dict:
        return {
            "table": self.table,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [{k: str(v) if v is not None else None for k, v in asdict(p).items()} for p in self.problems],
        }


def _prefixed(column: str | None, message: str) -> str:
    return f"column {column}: {message}" if column else message


# -- what each Golioth field accepts ---------------------------------------------------------------

# A column's kind, as the rules below speak of it.
TEXT, TEXT_ARRAY, JSON, BOOLEAN, TIMESTAMP, ENUM = "text", "text[]", "jsonb", "boolean", "timestamp", "enum"

ACCEPTS: dict[str, tuple[frozenset[str], str]] = {
    "name": (frozenset({TEXT}), "a text column"),
    "hardware_ids": (frozenset({TEXT, TEXT_ARRAY, JSON}), "text, text[] or jsonb (an array)"),
    "tags": (frozenset({TEXT_ARRAY, JSON}), "text[], jsonb (an array) or a JSON path"),
    "blueprint": (frozenset({TEXT}), "a text column or a JSON path"),
    "cohort": (frozenset({TEXT}), "a text column or a JSON path"),
    "enabled": (frozenset({BOOLEAN, TEXT, ENUM}), "boolean, or text/enum with a value map"),
    "desired_state": (frozenset({JSON}), "jsonb or a JSON path"),
    "status": (frozenset({TEXT, ENUM}), "text or an enum"),
    "last_seen_online": (frozenset({TIMESTAMP}), "a timestamp"),
    "last_seen_offline": (frozenset({TIMESTAMP}), "a timestamp"),
    "last_report": (frozenset({TIMESTAMP}), "a timestamp"),
    "firmware_versions": (frozenset({JSON}), "jsonb or a JSON path"),
    "firmware_version": (frozenset({TEXT}), "a text column"),
    "settings_status": (frozenset({TEXT, ENUM}), "text or an enum"),
    "reported_state": (frozenset({JSON}), "jsonb or a JSON path"),
}

# Fields with a closed set of Golioth values: the only ones a value map applies to.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "enabled": ("true", "false"),
    "status": ("online", "offline"),
    "settings_status": ("no-settings", "in-sync", "out-of-sync"),
}

# Golioth fields that are often empty (no blueprint, never seen, …): a NOT NULL column for one
# refuses those devices.
MAY_BE_EMPTY: tuple[str, ...] = ("blueprint", "cohort", "status", "last_seen_online", "last_seen_offline")
MAY_BE_EMPTY += ("last_report", "firmware_version", "settings_status")

# Fields whose values are open-ended: a CHECK on their column cannot be tried in advance.
OPEN_ENDED = ("name", "hardware_ids", "tags", "blueprint", "cohort", "desired_state")


def kind_of(column: ColumnInfo) -> str:
    if column.is_array:
        return TEXT_ARRAY if column.category == "S" else column.type_sql
    if column.is_json:
        return JSON
    if column.is_timestamp:
        return TIMESTAMP
    return {"S": TEXT, "B": BOOLEAN, "E": ENUM}.get(column.category, column.type_sql)


# -- the check --------------------------------------------------------------------------------------


def run_check(conn: Connection, mapping: TableMapping) -> CheckReport:
    """Check in a read-only transaction that is rolled back: nothing is ever written."""
    with conn.begin() as transaction:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
        report = check_mapping(conn, mapping)
        transaction.rollback()
    return report


def check_mapping(conn: Connection, mapping: TableMapping) -> CheckReport:
    report = CheckReport(str(mapping.table))
    info = _describe(conn, report, mapping.table)
    if info is None:
        return report
    _columns_exist(report, mapping, info)
    _field_types(report, mapping, info)
    _key_and_link(report, mapping, info)
    _timestamps(report, mapping, info)
    _insert_coverage(report, mapping, info)
    _allowed_values(conn, report, mapping, info)
    _tenant(conn, report, mapping, info)
    _privileges(conn, report, mapping, info)
    _warnings(conn, report, mapping)
    return report


def _describe(conn: Connection, report: CheckReport, table: TableName, role: str = "") -> TableInfo | None:
    try:
        with conn.begin_nested():
            return describe_table(conn, table)
    except TableNotFound:
        report.error(Misfit.table_missing, None, f"table {table}: does not exist (or this role cannot see it){role}")
    except sa.exc.DBAPIError as exc:  # no USAGE on its schema, say
        report.error(Misfit.privilege, None, f"table {table}: this role cannot read it: {first_line(exc)}{role}")
    return None


def usages(mapping: TableMapping) -> Iterator[tuple[str, str]]:
    """(column, what the mapping uses it for), for every column the mapping names."""
    yield mapping.key, "key"
    if mapping.tenant:
        yield mapping.tenant.column, "tenant"
    if mapping.link:
        yield mapping.link, "link"
    for group, mappings in (("fields", mapping.fields), ("observed", mapping.observed)):
        for name, m in mappings.items():
            yield m.column, f"{group}.{name}"
    for column in mapping.insert_defaults:
        yield column, "insert_defaults"
    if mapping.soft_delete:
        yield mapping.soft_delete, "soft_delete"
    if mapping.updated_at:
        yield mapping.updated_at, "updated_at"


def _columns_exist(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    named = {column for column, _ in usages(mapping)}
    unmapped = [c for c in info.columns if c not in named]
    for column, role in usages(mapping):
        if column in info.columns:
            continue
        hint = difflib.get_close_matches(column, unmapped, n=1, cutoff=0.6)
        suffix = f"; did you mean {hint[0]}?" if hint else ""
        report.error(Misfit.column_missing, column, f"does not exist in {mapping.table} ({role}){suffix}")


def _field_types(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    for name, m in {**mapping.fields, **mapping.observed}.items():
        column = info.columns.get(m.column)
        if column is not None:
            _field_type(report, name, m, column)


def _field_type(report: CheckReport, name: str, m: FieldMapping, column: ColumnInfo) -> None:
    if column.generated or column.identity == "a":
        report.error(Misfit.not_writable, m.column, f"is generated by the database and cannot hold {name}")
        return
    if m.path:
        if column.base_type != "jsonb" or column.is_array:
            report.error(
                Misfit.column_type, m.column, f"{name} at a JSON path needs jsonb, but it is {column.type_sql}"
            )
        return
    accepted, wording = ACCEPTS[name]
    kind = kind_of(column)
    if kind not in accepted:
        report.error(Misfit.column_type, m.column, f"{name} needs {wording}, but it is {column.type_sql}")
        return
    if name == "firmware_version" and not m.package:
        report.error(Misfit.value_map, m.column, "firmware_version needs `package:` (the firmware package, e.g. main)")
    _value_map(report, name, m, kind)


def _value_map(report: CheckReport, name: str, m: FieldMapping, kind: str) -> None:
    if m.values is None:
        if name == "enabled" and kind in (TEXT, ENUM):
            report.error(
                Misfit.value_map,
                m.column,
                "enabled on a text or enum column needs a value map (values: {true: …, false: …})",
            )
        return
    if name not in VOCABULARY or kind == BOOLEAN:
        report.error(
            Misfit.value_map,
            m.column,
            f"{name} takes no value map here (value maps are for text or enum columns of {', '.join(VOCABULARY)})",
        )
        return
    unknown = sorted(set(m.values.entries) - set(VOCABULARY[name]))
    if unknown:
        report.error(
            Misfit.value_map,
            m.column,
            f"the value map for {name} has Golioth value(s) {', '.join(unknown)}; {name} is one of {', '.join(VOCABULARY[name])}",
        )
    uncovered = [v for v in VOCABULARY[name] if m.values.written(v) is None]
    if uncovered:
        report.error(Misfit.value_map, m.column, f"the value map for {name} has no entry for {', '.join(uncovered)}")


def _unique_within_tenant(mapping: TableMapping, info: TableInfo, column: str) -> bool:
    scopes = [{column}] + ([{column, mapping.tenant.column}] if mapping.tenant else [])
    return any(set(u) in scopes for u in info.unique)


def _key_and_link(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    key = info.columns.get(mapping.key)
    if key is not None:
        if not _unique_within_tenant(mapping, info, mapping.key):
            report.error(Misfit.key, mapping.key, f"the key is neither the primary key nor unique in {mapping.table}")
        if not (key.has_default or key.identity or key.generated):
            report.error(
                Misfit.key,
                mapping.key,
                "the key has no default or identity, so new devices cannot be inserted (add DEFAULT gen_random_uuid() or an identity)",
            )
    link = info.columns.get(mapping.link) if mapping.link else None
    if link is not None:
        if kind_of(link) != TEXT:
            report.error(
                Misfit.link, mapping.link, f"the link holds Golioth device ids (text), but it is {link.type_sql}"
            )
        elif not _unique_within_tenant(mapping, info, link.name):
            report.warn(
                Misfit.link,
                link.name,
                "the link is not unique: two rows could claim one Golioth device (add a unique constraint)",
            )


def _timestamps(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    for role, name in (("soft_delete", mapping.soft_delete), ("updated_at", mapping.updated_at)):
        column = info.columns.get(name) if name else None
        if column is None:
            continue
        if not column.is_timestamp:
            report.error(Misfit.column_type, column.name, f"{role} needs a timestamp, but it is {column.type_sql}")
        elif role == "soft_delete" and not column.nullable:
            report.error(Misfit.column_type, column.name, "soft_delete must be nullable (NULL marks a live row)")


def _insert_coverage(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    written = mapping.columns_written()
    for info_column in info.columns.values():
        if info_column.nullable or info_column.has_default or info_column.identity or info_column.generated:
            continue
        if info_column.name in written:
            continue
        report.error(
            Misfit.not_null,
            info_column.name,
            "NOT NULL without a default, and the mapping gives it no value on insert (map it, or add it to insert_defaults)",
        )
    for name, m in {**mapping.fields, **mapping.observed}.items():
        column = info.columns.get(m.column)
        if name in MAY_BE_EMPTY and not m.path and column is not None and not column.nullable:
            report.warn(
                Misfit.may_be_empty,
                m.column,
                f"NOT NULL, but Golioth's {name} is often empty: such devices cannot be written",
            )


# -- values the table must accept -------------------------------------------------------------------


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _candidates(mapping: TableMapping, info: TableInfo) -> dict[str, list[tuple[str, str]]]:
    """Column → [(a value the sync may write, where it comes from)], for every column whose
    values are known in advance: value maps, closed Golioth vocabularies, insert defaults, tenant."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, m in {**mapping.fields, **mapping.observed}.items():
        column = info.columns.get(m.column)
        if column is None or m.path or name not in VOCABULARY:
            continue
        kind = kind_of(column)
        for golioth in VOCABULARY[name]:
            if m.values is not None:
                value = m.values.written(golioth)
            else:  # without a map the Golioth value is written as is (enabled needs one: reported above)
                value = golioth if (name != "enabled" or kind == BOOLEAN) else None
            if value is not None:
                out.setdefault(m.column, []).append((value, f"{name}={golioth}"))
    for column_name, default in mapping.insert_defaults.items():
        out.setdefault(column_name, []).append((_text(default), "insert_defaults"))
    if mapping.tenant and mapping.tenant.equals is not None:
        out.setdefault(mapping.tenant.column, []).append((_text(mapping.tenant.equals), "tenant"))
    return {c: values for c, values in out.items() if c in info.columns}


def _allowed_values(conn: Connection, report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    for column_name, candidates in _candidates(mapping, info).items():
        column = info.columns[column_name]
        checks = [c for c in info.checks if c.columns == (column_name,)]
        for value, origin in candidates:
            if column.category == "E" and not column.is_array and value not in column.enum_labels:
                labels = ", ".join(column.enum_labels)
                report.error(
                    Misfit.value_not_allowed,
                    column_name,
                    f"value {value!r} ({origin}) is not a label of enum {column.type_sql} ({labels})",
                )
                continue
            _try_value(conn, report, column, checks, value, origin)
    _unevaluated_checks(report, mapping, info)


def _try_value(
    conn: Connection, report: CheckReport, column: ColumnInfo, checks: list, value: str, origin: str
) -> None:
    """Cast the value to the column's type (domains check theirs) and evaluate each CHECK of that
    column on it, in a savepoint: the catalog's own expressions, nothing re-implemented."""
    # psycopg2 formats the statement: a literal % in a constraint's expression must be doubled.
    tests = ", ".join(f"({c.expression.replace('%', '%%')})" for c in checks) or "true"
    sql = f"SELECT {tests} FROM (SELECT CAST(%(v)s AS {column.type_sql}) AS {quote_ident(column.name)}) AS candidate"
    try:
        with conn.begin_nested():
            results = conn.exec_driver_sql(sql, {"v": value}).one()
    except sa.exc.DBAPIError as exc:
        report.error(
            Misfit.value_not_allowed,
            column.name,
            f"value {value!r} ({origin}) does not fit {column.type_sql}: {first_line(exc)}",
        )
        return
    for constraint, allowed in zip(checks, results):
        if allowed is False:  # NULL passes a CHECK, as in PostgreSQL
            report.error(
                Misfit.value_not_allowed,
                column.name,
                f"value {value!r} ({origin}) is not allowed by CHECK {constraint.name}",
            )


def _unevaluated_checks(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    open_ended = {m.column: name for name, m in mapping.fields.items() if name in OPEN_ENDED}
    written = mapping.columns_written()
    for constraint in info.checks:
        columns = constraint.columns
        if len(columns) > 1 and written & set(columns):
            report.warn(
                Misfit.check_not_evaluated,
                None,
                f"CHECK {constraint.name} spans columns {', '.join(columns)}: not evaluated",
            )
        elif len(columns) == 1 and columns[0] in open_ended:
            name = open_ended[columns[0]]
            report.warn(
                Misfit.check_not_evaluated,
                columns[0],
                f"CHECK {constraint.name} limits Golioth's {name}: a device that breaks it cannot be written",
            )


# -- tenant -----------------------------------------------------------------------------------------


def _tenant(conn: Connection, report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    tenant = mapping.tenant
    column = info.columns.get(tenant.column) if tenant else None
    if tenant is None or column is None:
        return
    value = _looked_up(conn, report, mapping) if tenant.lookup is not None else _text(tenant.equals)
    if value is not None:
        _tenant_rows(conn, report, mapping, column, value)


def _looked_up(conn: Connection, report: CheckReport, mapping: TableMapping) -> str | None:
    assert mapping.tenant is not None and mapping.tenant.lookup is not None
    lookup, tenant_column = mapping.tenant.lookup, mapping.tenant.column
    table = _describe(conn, report, lookup.table, " (tenant lookup)")
    if table is None:
        return None
    for name in (lookup.key, *lookup.where):
        if name not in table.columns:
            report.error(Misfit.column_missing, name, f"does not exist in {lookup.table} (tenant lookup)")
            return None
    try:
        with conn.begin_nested():
            return lookup_tenant(conn, lookup)
    except TenantError as exc:
        report.error(Misfit.tenant, tenant_column, str(exc))
    except sa.exc.DBAPIError as exc:
        report.error(Misfit.tenant, tenant_column, f"the tenant lookup fails: {first_line(exc)}")
    return None


def _tenant_rows(conn: Connection, report: CheckReport, mapping: TableMapping, column: ColumnInfo, value: str) -> None:
    table, name = quote_table(mapping.table), quote_ident(column.name)
    try:
        with conn.begin_nested():
            selected, any_rows = conn.exec_driver_sql(
                f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {name} = CAST(%(v)s AS {column.type_sql})),"
                f" EXISTS (SELECT 1 FROM {table})",
                {"v": value},
            ).one()
    except sa.exc.DBAPIError:
        return  # a value the column's type refuses: reported with the candidate values
    if selected:
        return
    if not any_rows:
        report.warn(
            Misfit.tenant_empty, None, f"table {mapping.table} is empty: the first sync imports every Golioth device"
        )
    elif mapping.tenant and mapping.tenant.equals is not None and mapping.kind != "builtin":
        present = conn.exec_driver_sql(
            f"SELECT DISTINCT v FROM (SELECT {name}::text AS v FROM {table} LIMIT 1000) AS sample ORDER BY v LIMIT 5"
        ).scalars()
        shown = ", ".join(repr(v) for v in present)
        report.error(
            Misfit.tenant,
            column.name,
            f"the tenant {column.name} = {value!r} selects no row of {mapping.table} (values present: {shown})",
        )
    else:
        report.warn(
            Misfit.tenant_empty,
            column.name,
            f"no row has {column.name} = {value!r} yet: the first sync imports every Golioth device",
        )


# -- privileges and warnings ------------------------------------------------------------------------


def _privileges(conn: Connection, report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    """The role needs SELECT on every mapped column, INSERT on what an insert writes, UPDATE on
    what an update writes; nothing else (docs/local-tables.md lists the GRANTs)."""
    present = set(info.columns)
    read = sorted({c for c, _ in usages(mapping)} & present)
    inserted = (mapping.columns_written() - {mapping.key}) & present
    updated = {m.column for m in {**mapping.fields, **mapping.observed}.values()}
    updated |= {c for c in (mapping.link, mapping.soft_delete) if c}
    rows = conn.exec_driver_sql(
        "SELECT c, current_user, has_column_privilege(%(t)s, c, 'SELECT'), has_column_privilege(%(t)s, c, 'INSERT'),"
        " has_column_privilege(%(t)s, c, 'UPDATE') FROM unnest(%(cols)s::text[]) AS c",
        {"t": quote_table(mapping.table), "cols": read},
    ).fetchall()
    for column, role, can_select, can_insert, can_update in rows:
        needed = (
            ("SELECT", can_select, True),
            ("INSERT", can_insert, column in inserted),
            ("UPDATE", can_update, column in updated),
        )
        lacking = [privilege for privilege, has, need in needed if need and not has]
        if lacking:
            report.error(Misfit.privilege, column, f"this role ({role}) lacks {', '.join(lacking)} on it")


def _warnings(conn: Connection, report: CheckReport, mapping: TableMapping) -> None:
    if "hardware_ids" not in mapping.fields:
        report.warn(
            Misfit.no_hardware_ids,
            None,
            "fields: hardware_ids is not mapped: devices new locally will not be created in Golioth",
        )
    if mapping.soft_delete is None:
        report.warn(Misfit.no_soft_delete, None, "soft_delete is not set: deletes are off both ways")
    status = capture.capture_status(conn, mapping)
    if status is capture.CaptureStatus.stale:
        report.warn(
            Misfit.capture_stale,
            None,
            "change capture is installed for another version of this mapping: run `golioth-sync local install-capture` again",
        )
    if mapping.updated_at is None and status is capture.CaptureStatus.absent:
        report.warn(
            Misfit.no_change_tracking,
            None,
            "no updated_at and no change capture: newest_wins cannot date local edits and falls back to Golioth",
        )
