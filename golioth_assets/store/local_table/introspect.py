"""What a live table looks like, read from PostgreSQL's catalog: columns and their types, keys,
enum labels, CHECK constraints and triggers.

The mapping names columns; this says what they are. The SQL builder casts to the real types, and
`golioth-sync local check` compares the two and reports every misfit, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from golioth_assets.store.local_table.mapping import TableName


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_sql: str
    """The type as SQL spells it (`format_type`): `uuid`, `bigint`, `text[]`, `app.device_status`."""
    base_type: str
    """The element type for arrays, else the type itself (`text` for `text[]`)."""
    category: str
    """pg_type.typcategory of the base type: S string, N numeric, B bool, D date/time, U user (jsonb,
    uuid), E enum, A array (never here: arrays report their element's category)."""
    is_array: bool
    nullable: bool
    has_default: bool
    identity: str
    """'' (not an identity column), 'a' (GENERATED ALWAYS) or 'd' (BY DEFAULT)."""
    generated: bool
    """A generated (computed) column: never written."""
    enum_labels: tuple[str, ...] = ()
    has_sequence: bool = False
    """A sequence the column owns (serial, or an identity): what new integer keys are taken from."""

    @property
    def is_json(self) -> bool:
        return self.base_type in ("json", "jsonb")

    @property
    def is_text(self) -> bool:
        return self.category == "S"

    @property
    def is_timestamp(self) -> bool:
        return self.base_type in ("timestamp with time zone", "timestamp without time zone")


@dataclass(frozen=True)
class CheckInfo:
    name: str
    expression: str
    """The bare boolean expression (`pg_get_expr`), e.g. `(status = ANY (ARRAY['a'::text, 'b'::text]))`."""
    columns: tuple[str, ...]


@dataclass(frozen=True)
class TableInfo:
    table: TableName
    columns: dict[str, ColumnInfo]
    primary_key: tuple[str, ...]
    unique: tuple[tuple[str, ...], ...]
    """Column sets with a unique constraint or unique index (without a predicate), the PK included."""
    checks: tuple[CheckInfo, ...] = ()
    triggers: tuple[str, ...] = field(default=())
    """User triggers on the table (not internal FK triggers)."""

    def is_unique(self, column: str) -> bool:
        return (column,) in self.unique


class TableNotFound(LookupError):
    pass


_COLUMNS = """
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       format_type(coalesce(nullif(t.typelem, 0), t.oid), NULL),
       coalesce(et.typcategory, t.typcategory),
       t.typcategory = 'A',
       NOT a.attnotnull,
       a.atthasdef,
       a.attidentity::text,
       a.attgenerated <> '',
       coalesce((SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                 FROM pg_enum e WHERE e.enumtypid = coalesce(nullif(t.typelem, 0), t.oid)), '{}'),
       pg_get_serial_sequence(a.attrelid::regclass::text, a.attname) IS NOT NULL
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = nullif(t.typelem, 0) AND t.typcategory = 'A'
WHERE a.attrelid = %(rel)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_UNIQUE = """
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(rel)s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid, i.indisprimary
ORDER BY i.indisprimary DESC
"""

_PRIMARY = """
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(rel)s AND i.indisprimary
"""

_CHECKS = """
SELECT c.conname, pg_get_expr(c.conbin, c.conrelid),
       coalesce((SELECT array_agg(a.attname::text) FROM pg_attribute a
                 WHERE a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)), '{}')
FROM pg_constraint c
WHERE c.conrelid = %(rel)s AND c.contype = 'c'
ORDER BY c.conname
"""

_TRIGGERS = "SELECT tgname FROM pg_trigger WHERE tgrelid = %(rel)s AND NOT tgisinternal ORDER BY tgname"


def relation_oid(conn: Connection, table: TableName) -> int | None:
    """The table's oid, or None when it does not exist (or is not visible to this role)."""
    qualified = f'"{table.schema_name}"."{table.name}"'
    return conn.exec_driver_sql("SELECT to_regclass(%(t)s)::oid", {"t": qualified}).scalar()


def describe_table(conn: Connection, table: TableName) -> TableInfo:
    """Read the table's shape. Raises TableNotFound when it does not exist."""
    rel = relation_oid(conn, table)
    if rel is None:
        raise TableNotFound(f"table {table} does not exist (or this role cannot see it)")
    params = {"rel": rel}
    columns = {
        row[0]: ColumnInfo(
            name=row[0],
            type_sql=row[1],
            base_type=row[2],
            category=row[3],
            is_array=bool(row[4]),
            nullable=bool(row[5]),
            has_default=bool(row[6]),
            identity=row[7] or "",
            generated=bool(row[8]),
            enum_labels=tuple(row[9] or ()),
            has_sequence=bool(row[10]),
        )
        for row in conn.exec_driver_sql(_COLUMNS, params).fetchall()
    }
    primary = conn.exec_driver_sql(_PRIMARY, params).scalar()
    unique = tuple(tuple(r[0]) for r in conn.exec_driver_sql(_UNIQUE, params).fetchall())
    checks = tuple(
        CheckInfo(name=r[0], expression=r[1], columns=tuple(r[2] or ()))
        for r in conn.exec_driver_sql(_CHECKS, params).fetchall()
    )
    triggers = tuple(r[0] for r in conn.exec_driver_sql(_TRIGGERS, params).fetchall())
    return TableInfo(
        table=table,
        columns=columns,
        primary_key=tuple(primary or ()),
        unique=unique,
        checks=checks,
        triggers=triggers,
    )


def quote_ident(name: str) -> str:
    """An identifier quoted for SQL (names come from a validated mapping, quoted all the same)."""
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: TableName) -> str:
    return f"{quote_ident(table.schema_name)}.{quote_ident(table.name)}"
