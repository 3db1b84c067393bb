"""SQL expressions for one mapped table: how each Golioth field is read from its column (or JSON
path) into the sync's vocabulary, and how a Golioth value is written back in the column's own type.

Everything here returns SQL text over the table alias `t` and a staged JSON document `s.doc`
(store/bulk.py). Names come from a validated mapping and types from the live catalog
(introspect.py); both are quoted all the same. Constants (value maps, tenant values) are SQL
literals with `%` doubled, because every statement is run with driver parameters.
"""

from __future__ import annotations

from golioth_assets.core.fields import FIELD_KIND
from golioth_assets.store.local_table.introspect import ColumnInfo, TableInfo, quote_ident, quote_table
from golioth_assets.store.local_table.mapping import FieldMapping, TableMapping, Tenant

ALIAS = "t"
EPOCH_MICROS = "(extract(epoch FROM {}) * 1000000)::bigint"
OBSERVED_KIND = {
    "status": "text",
    "settings_status": "text",
    "last_seen_online": "timestamp",
    "last_seen_offline": "timestamp",
    "last_report": "timestamp",
    "firmware_versions": "json",
    "firmware_version": "text",
    "reported_state": "json",
}


def literal(value: object) -> str:
    """A constant as SQL text: booleans and numbers bare, everything else a quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("'", "''").replace("%", "%%")
    return f"'{text}'"


def column(name: str, alias: str = ALIAS) -> str:
    return f"{alias}.{quote_ident(name)}"


def path_literal(path: tuple[str, ...]) -> str:
    inner = ",".join('"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in path)
    return literal("{" + inner + "}") + "::text[]"


def doc(key: str) -> str:
    """The staged value as jsonb."""
    return f"(s.doc -> {literal(key)})"


def doc_text(key: str) -> str:
    return f"(s.doc ->> {literal(key)})"


class Expressions:
    """Read, write and fingerprint expressions for one mapping on one live table."""

    def __init__(self, mapping: TableMapping, info: TableInfo) -> None:
        self.mapping = mapping
        self.info = info
        self.table = quote_table(mapping.table)

    def info_of(self, name: str) -> ColumnInfo:
        return self.info.columns[name]

    # -- the raw value a field lives in -------------------------------------------------------------

    def raw(self, m: FieldMapping) -> str:
        """The column, or the jsonb at the path inside it."""
        if not m.path:
            return column(m.column)
        return f"({self._as_jsonb(m.column)} #> {path_literal(m.path)})"

    def _as_jsonb(self, name: str) -> str:
        c = self.info_of(name)
        return column(name) if c.base_type == "jsonb" else f"{column(name)}::jsonb"

    def raw_text(self, m: FieldMapping) -> str:
        if m.path:
            return f"({self._as_jsonb(m.column)} #>> {path_literal(m.path)})"
        return f"{column(m.column)}::text"

    def fingerprint_part(self, m: FieldMapping | str) -> str:
        """A raw value as stable text: timestamps as integers (their text depends on the session)."""
        m = FieldMapping(column=m) if isinstance(m, str) else m
        if not m.path and self.info_of(m.column).is_timestamp:
            return EPOCH_MICROS.format(column(m.column))
        return self.raw(m)

    def fingerprint(self) -> str:
        """md5 over every synced column the mapping names (+ soft delete and link): what a
        compare-and-set write checks is unchanged since the plan read it."""
        parts = [self.fingerprint_part(self.mapping.fields[f]) for f in self.mapping.synced_fields]
        parts += [self.fingerprint_part(c) for c in (self.mapping.soft_delete, self.mapping.link) if c]
        return f"md5(ROW({', '.join(parts)})::text)"

    # -- reads: column → the sync's vocabulary -------------------------------------------------------

    def read(self, name: str, m: FieldMapping) -> str:
        kind = FIELD_KIND.get(name) or OBSERVED_KIND[name]
        if kind == "list":
            return self._read_list(m)
        if kind == "json":
            return f"coalesce({self._jsonb_value(m)}, '{{}}'::jsonb)"
        if kind == "timestamp":
            return EPOCH_MICROS.format(self.read_timestamp(m))
        text = self.raw_text(m)
        if m.values is not None:
            cases = " ".join(
                f"WHEN {literal(local)} THEN {self._typed_golioth(kind, golioth)}"
                for local, golioth in m.values.read_back().items()
            )
            return f"(CASE {text} {cases} END)"
        if kind == "bool":
            return f"{text}::boolean" if m.path or self.info_of(m.column).base_type != "boolean" else column(m.column)
        return text

    @staticmethod
    def _typed_golioth(kind: str, golioth: str) -> str:
        return golioth if kind == "bool" and golioth in ("true", "false") else literal(golioth)

    def _jsonb_value(self, m: FieldMapping) -> str:
        return self.raw(m) if m.path else self._as_jsonb(m.column)

    def _read_list(self, m: FieldMapping) -> str:
        c = None if m.path else self.info_of(m.column)
        if c is not None and c.is_array:
            return f"coalesce({column(m.column)}::text[], '{{}}'::text[])"
        if c is not None and not c.is_json:
            text = f"{column(m.column)}::text"
            return f"(CASE WHEN coalesce({text}, '') = '' THEN '{{}}'::text[] ELSE ARRAY[{text}] END)"
        value = self._jsonb_value(m)
        return (
            f"(CASE jsonb_typeof({value}) WHEN 'array' THEN ARRAY(SELECT jsonb_array_elements_text({value})) "
            f"WHEN 'string' THEN ARRAY[{value} #>> '{{}}'] ELSE '{{}}'::text[] END)"
        )

    def read_timestamp(self, m: FieldMapping | str) -> str:
        """A timestamptz expression (a column without time zone is read as UTC)."""
        m = FieldMapping(column=m) if isinstance(m, str) else m
        if m.path:
            return f"{self.raw_text(m)}::timestamptz"
        c = self.info_of(m.column)
        if c.base_type == "timestamp without time zone":
            return f"({column(m.column)} AT TIME ZONE 'UTC')"
        if c.base_type == "timestamp with time zone":
            return column(m.column)
        return f"{column(m.column)}::timestamptz"

    # -- writes: a Golioth value (in s.doc) → the column's type --------------------------------------

    def write_whole(self, name: str, m: FieldMapping, key: str | None = None, *, insert: bool = False) -> str:
        """The new value of a whole column for Golioth field `name` (staged under `key`). A value
        the value map lacks keeps the current one (NULL on insert)."""
        key = key or name
        kind = FIELD_KIND.get(name) or OBSERVED_KIND[name]
        c = self.info_of(m.column)
        if m.values is not None:
            cases = " ".join(
                f"WHEN {literal(golioth)} THEN {literal(m.values.written(golioth))}" for golioth in m.values.entries
            )
            current = "NULL" if insert else f"{column(m.column)}::text"
            return f"(CASE {doc_text(key)} {cases} ELSE {current} END)::{c.type_sql}"
        if m.package is not None:  # one firmware package's version, out of Golioth's map
            return f"({doc(key)} ->> {literal(m.package)})::{c.type_sql}"
        if kind == "list":
            return self._write_list(key, c)
        if kind == "json":
            return f"coalesce({doc(key)}, '{{}}'::jsonb)::{c.type_sql}"
        if kind == "timestamp":
            return self.write_timestamp(doc_text(key), c)
        return f"{doc_text(key)}::{c.type_sql}"

    def _write_list(self, key: str, c: ColumnInfo) -> str:
        if c.is_array:
            return f"ARRAY(SELECT jsonb_array_elements_text(coalesce({doc(key)}, '[]'::jsonb)))::{c.type_sql}"
        if c.is_json:
            return f"coalesce({doc(key)}, '[]'::jsonb)::{c.type_sql}"
        # A text column holds one id: the first (a misfit `local check` reports for lists).
        return f"({doc(key)} ->> 0)::{c.type_sql}"

    @staticmethod
    def write_timestamp(text: str, c: ColumnInfo) -> str:
        if c.base_type == "timestamp without time zone":
            return f"({text}::timestamptz AT TIME ZONE 'UTC')"
        return f"{text}::{c.type_sql}"

    def write_json(self, name: str, m: FieldMapping, key: str | None = None, *, insert: bool = False) -> str:
        """The jsonb to put at a JSON path for Golioth field `name`."""
        key = key or name
        if m.values is not None:
            cases = " ".join(
                f"WHEN {literal(golioth)} THEN {literal(m.values.written(golioth))}" for golioth in m.values.entries
            )
            current = "NULL" if insert else f"({self.raw(m)})"
            return f"coalesce(to_jsonb(CASE {doc_text(key)} {cases} END), {current}, 'null'::jsonb)"
        if m.package is not None:
            return f"coalesce({doc(key)} -> {literal(m.package)}, 'null'::jsonb)"
        return f"coalesce({doc(key)}, 'null'::jsonb)"

    def assign_path(self, current: str, m: FieldMapping, value: str, when: str | None) -> str:
        """`current` with `value` set at the mapping's path (objects on the way are created)."""
        target = f"coalesce({current}, '{{}}'::jsonb)"
        for depth in range(1, len(m.path)):
            prefix = path_literal(m.path[:depth])
            target = f"jsonb_set({target}, {prefix}, coalesce({target} #> {prefix}, '{{}}'::jsonb), true)"
        updated = f"jsonb_set({target}, {path_literal(m.path)}, {value}, true)"
        return updated if when is None else f"(CASE WHEN {when} THEN {updated} ELSE {current} END)"

    # -- the tenant ------------------------------------------------------------------------------------

    def tenant_value(self) -> str | None:
        """The tenant column's value for this organization: a constant or a one-row lookup."""
        tenant: Tenant | None = self.mapping.tenant
        if tenant is None:
            return None
        c = self.info_of(tenant.column)
        if tenant.lookup is None:
            return f"{literal(tenant.equals)}::{c.type_sql}"
        lookup = tenant.lookup
        where = " AND ".join(f"{quote_ident(k)}::text = {literal(_as_text(v))}" for k, v in lookup.where.items())
        return f"(SELECT {quote_ident(lookup.key)} FROM {quote_table(lookup.table)} WHERE {where})"

    def tenant_filter(self) -> str:
        value = self.tenant_value()
        return "true" if value is None else f"{column(self.mapping.tenant.column)} = {value}"  # type: ignore[union-attr]

    def key_cast(self) -> str:
        return self.info_of(self.mapping.key).type_sql


def _as_text(value: object) -> str:
    """How PostgreSQL prints a constant as text (`true`, not Python's `True`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
