"""The rules a mapping must satisfy against the live table's shape: one source of truth for the
sync (`connect.fits`, before any write) and for `golioth-sync local check` (which adds the probes
that need the database: allowed values, the tenant's rows, privileges, capture).

Pure: a mapping and a `TableInfo` (introspect.py) in, a `CheckReport` out; nothing touches a
database. Errors are what would make a sync fail or write something the table refuses; warnings
are what works but may surprise. Each line begins with the column at fault (`column lifecycle: …`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from golioth_assets.store.local_table.introspect import ColumnInfo, TableInfo
from golioth_assets.store.local_table.mapping import FieldMapping, TableMapping


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
    if mapping.observed_at:
        yield mapping.observed_at, "observed_at"


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


INTEGER_TYPES = ("smallint", "integer", "bigint", "numeric")
UUID_TEXT_LENGTH = 36


def key_problem(key: ColumnInfo) -> str | None:
    """Why golioth-sync could not choose keys for new rows in this key column, or None. It chooses
    them before inserting (so a crash never leaves a row it cannot name): the next values of an
    integer key's own sequence (serial or identity), a fresh uuid for uuid and text keys. The
    column's default is not what fills it."""
    if key.is_array:
        return f"the key is {key.type_sql}: an array cannot be a key"
    if key.base_type in INTEGER_TYPES:
        if key.has_sequence:
            return None
        return (
            "an integer key without an identity or an owned sequence: golioth-sync cannot choose keys for new rows"
            " (make it GENERATED … AS IDENTITY or serial)"
        )
    if key.base_type == "uuid":
        return None
    if key.is_text:
        limit = _length_limit(key.type_sql)
        if limit is not None and limit < UUID_TEXT_LENGTH:
            return f"the key holds at most {limit} characters; new rows get a uuid ({UUID_TEXT_LENGTH} characters)"
        return None
    return (
        f"the key is {key.type_sql}: golioth-sync can choose keys for new rows only in uuid, text or integer keys"
        " with a sequence"
    )


def _length_limit(type_sql: str) -> int | None:
    """n of `character varying(n)` / `character(n)`; None when unlimited."""
    match = re.search(r"\((\d+)\)$", type_sql)
    return int(match.group(1)) if match else None


def _unique_within_tenant(mapping: TableMapping, info: TableInfo, column: str) -> bool:
    scopes = [{column}] + ([{column, mapping.tenant.column}] if mapping.tenant else [])
    return any(set(u) in scopes for u in info.unique)


def _key_and_link(report: CheckReport, mapping: TableMapping, info: TableInfo) -> None:
    key = info.columns.get(mapping.key)
    if key is not None:
        if not _unique_within_tenant(mapping, info, mapping.key):
            report.error(Misfit.key, mapping.key, f"the key is neither the primary key nor unique in {mapping.table}")
        problem = key_problem(key)
        if problem:
            report.error(Misfit.key, mapping.key, problem)
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
    roles = (("soft_delete", mapping.soft_delete), ("updated_at", mapping.updated_at))
    for role, name in (*roles, ("observed_at", mapping.observed_at)):
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


def fit_report(mapping: TableMapping, info: TableInfo, report: CheckReport | None = None) -> CheckReport:
    """Every rule that the table's shape alone decides, added to `report` (a new one by default)."""
    report = report if report is not None else CheckReport(str(mapping.table))
    _columns_exist(report, mapping, info)
    _field_types(report, mapping, info)
    _key_and_link(report, mapping, info)
    _timestamps(report, mapping, info)
    _insert_coverage(report, mapping, info)
    return report
