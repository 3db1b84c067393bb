"""`golioth-sync local check`: does a mapping fit the live table? Read-only, every misfit one line.

The rules the table's shape decides are fit.py's, the very ones a sync applies before it writes
(`connect.fits`). On top of them the check probes what needs the database: values an enum or a
CHECK constraint rejects, a tenant that selects nothing, a privilege the role lacks, and the
warnings (no hardware ids, no deletes, how local edits are dated). Each line begins with the
column at fault (`column lifecycle: …`).

The caller owns the transaction and makes it read-only (`run_check` does both); candidate values
are tried inside savepoints, so a value a type refuses does not end the check.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.connect import first_line
from golioth_assets.store.local_table.fit import (
    BOOLEAN,
    OPEN_ENDED,
    VOCABULARY,
    CheckReport,
    Misfit,
    Severity,
    fit_report,
    kind_of,
    usages,
)
from golioth_assets.store.local_table.introspect import (
    ColumnInfo,
    TableInfo,
    TableNotFound,
    describe_table,
    quote_ident,
    quote_table,
)
from golioth_assets.store.local_table.mapping import TableMapping, TableName
from golioth_assets.store.local_table.tenant import TenantError, lookup_tenant

__all__ = ["CheckReport", "Misfit", "Severity", "check_mapping", "run_check"]


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
    fit_report(mapping, info, report)  # what the sync itself refuses (connect.fits): the same rules
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
            "no updated_at and no change capture: newest_wins cannot date local edits, so Golioth wins them"
            " (name an updated_at column, or run `golioth-sync local install-capture`)",
        )
