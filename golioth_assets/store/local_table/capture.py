"""Change capture on a product's own table: a trigger and a side table, in a schema of our own.

`install_capture` creates, inside the table's database:

* schema `golioth_sync` (if missing);
* table `golioth_sync.changes`: one row per captured change (id, table_name, row_key, tenant,
  operation, changed_at, txid), shared by every captured table of that database;
* table `golioth_sync.row_changes`: each captured row's latest change time (table_name, tenant,
  row_key, changed_at). A consumer never deletes from it: it is how a sync dates their app's
  edits (`newest_wins`) when the mapping names no `updated_at` column, whatever was consumed;
* function `golioth_sync.capture()`: one generic trigger function, SECURITY DEFINER, so the
  product's own roles need no grant on our schema;
* trigger `golioth_sync_capture` on the mapped table: AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW,
  with the mapping's key, tenant and watched columns as trigger arguments.

Their table gains nothing else: no column, no index, no constraint. The trigger records a change
only when a synced column (or a watched JSON path inside one, or the soft-delete column) changed,
and skips the sync's own writes (`SET LOCAL golioth_sync.writer = 'on'`). It reads columns through
`to_jsonb(row)`, so a column dropped or renamed later stops being watched instead of making every
write to their table fail.

The side table is an outbox for a consumer (issue 12's sensor): read with `pending_changes`, queue
the changes durably elsewhere, then `delete_changes`. Ids increase, but transactions commit out of
order, so a consumer never keeps a high-water mark across reads: it reads from the oldest remaining
row each time, pages with `after_id` within one read, and deletes what it has queued.

`uninstall_capture` removes the trigger, this table's pending changes, and (when no other table of
that database is captured) the function, the side table and the schema, if nothing else is in it.
Every statement is in `install_statements` / `uninstall_statements`, which `--dry-run` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy.engine import Connection

from golioth_assets.store.local_table.introspect import TableNotFound, describe_table, quote_table
from golioth_assets.store.local_table.mapping import TableMapping
from golioth_assets.store.local_table.tenant import tenant_value

SCHEMA = "golioth_sync"
CHANGES = f"{SCHEMA}.changes"
ROW_CHANGES = f"{SCHEMA}.row_changes"
FUNCTION = f"{SCHEMA}.capture"
TRIGGER = "golioth_sync_capture"
OPERATIONS = ("insert", "update", "delete")
WRITER_SETTING = "golioth_sync.writer"
_NOT_THE_SYNC = f"current_setting('{WRITER_SETTING}', true) IS DISTINCT FROM 'on'"
# Installing takes a brief SHARE ROW EXCLUSIVE lock on their table: fail fast rather than queue
# behind a long transaction of theirs and stall their app's writes meanwhile.
LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"

_CHANGES_TABLE = f"""CREATE TABLE IF NOT EXISTS {CHANGES} (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name  text NOT NULL,
    row_key     text NOT NULL,
    tenant      text,
    operation   text NOT NULL CHECK (operation IN ({", ".join(f"'{o}'" for o in OPERATIONS)})),
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    txid        bigint NOT NULL DEFAULT txid_current()
)"""

# Not an outbox: one row per captured row, overwritten by each change. The tenant is '' for a table
# without one (a primary key column cannot be NULL).
_ROW_CHANGES_TABLE = f"""CREATE TABLE IF NOT EXISTS {ROW_CHANGES} (
    table_name  text NOT NULL,
    tenant      text NOT NULL,
    row_key     text NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (table_name, tenant, row_key)
)"""

# Trigger arguments: table label, key column, tenant column ('' for none), then one watched path
# per argument as a text[] literal: '{name}' for a whole column, '{metadata,tags}' inside jsonb.
_FUNCTION_BODY = f"""
DECLARE
    old_row jsonb;
    new_row jsonb;
    watched text[];
    changed boolean := false;
BEGIN
    -- The sync marks its own writes; sending them back to Golioth would echo them.
    IF current_setting('golioth_sync.writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF old_row -> TG_ARGV[1] IS DISTINCT FROM new_row -> TG_ARGV[1]
           OR (TG_ARGV[2] <> '' AND old_row -> TG_ARGV[2] IS DISTINCT FROM new_row -> TG_ARGV[2]) THEN
            -- The row changed identity (key or tenant): gone from one, new in the other.
            INSERT INTO {CHANGES} (table_name, row_key, tenant, operation)
            VALUES (TG_ARGV[0], old_row ->> TG_ARGV[1], old_row ->> nullif(TG_ARGV[2], ''), 'delete'),
                   (TG_ARGV[0], new_row ->> TG_ARGV[1], new_row ->> nullif(TG_ARGV[2], ''), 'insert');
            INSERT INTO {ROW_CHANGES} AS r (table_name, tenant, row_key, changed_at)
            VALUES (TG_ARGV[0], coalesce(old_row ->> nullif(TG_ARGV[2], ''), ''), old_row ->> TG_ARGV[1], clock_timestamp()),
                   (TG_ARGV[0], coalesce(new_row ->> nullif(TG_ARGV[2], ''), ''), new_row ->> TG_ARGV[1], clock_timestamp())
            ON CONFLICT (table_name, tenant, row_key) DO UPDATE SET changed_at = greatest(r.changed_at, EXCLUDED.changed_at);
            RETURN NULL;
        END IF;
        FOR i IN 3 .. TG_NARGS - 1 LOOP
            watched := TG_ARGV[i]::text[];
            IF old_row #> watched IS DISTINCT FROM new_row #> watched THEN
                changed := true;
                EXIT;
            END IF;
        END LOOP;
        IF NOT changed THEN
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO {CHANGES} (table_name, row_key, tenant, operation)
    VALUES (TG_ARGV[0],
            coalesce(new_row, old_row) ->> TG_ARGV[1],
            coalesce(new_row, old_row) ->> nullif(TG_ARGV[2], ''),
            lower(TG_OP));
    INSERT INTO {ROW_CHANGES} AS r (table_name, tenant, row_key, changed_at)
    VALUES (TG_ARGV[0],
            coalesce(coalesce(new_row, old_row) ->> nullif(TG_ARGV[2], ''), ''),
            coalesce(new_row, old_row) ->> TG_ARGV[1],
            clock_timestamp())
    ON CONFLICT (table_name, tenant, row_key) DO UPDATE SET changed_at = greatest(r.changed_at, EXCLUDED.changed_at);
    RETURN NULL;
END
"""

_UNINSTALL_LEFTOVERS = f"""DO $golioth_sync$
BEGIN
    IF to_regclass('{CHANGES}') IS NOT NULL THEN
        DELETE FROM {CHANGES} WHERE table_name = :label;
    END IF;
    IF to_regclass('{ROW_CHANGES}') IS NOT NULL THEN
        DELETE FROM {ROW_CHANGES} WHERE table_name = :label;
    END IF;
    -- The function and the side tables stay while another table of this database is captured.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = to_regprocedure('{FUNCTION}()')) THEN
        DROP FUNCTION IF EXISTS {FUNCTION}();
        DROP TABLE IF EXISTS {CHANGES};
        DROP TABLE IF EXISTS {ROW_CHANGES};
    END IF;
    -- The schema goes only when nothing else is in it.
    IF to_regnamespace('{SCHEMA}') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace('{SCHEMA}'))
       AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = to_regnamespace('{SCHEMA}'))
       AND NOT EXISTS (SELECT 1 FROM pg_type WHERE typnamespace = to_regnamespace('{SCHEMA}')) THEN
        DROP SCHEMA {SCHEMA};
    END IF;
END
$golioth_sync$"""


class CaptureError(ValueError):
    """Capture cannot be installed on this table as mapped."""


class CaptureStatus(StrEnum):
    absent = "absent"
    current = "current"  # installed, watching exactly what this mapping syncs
    stale = "stale"  # installed for another version of the mapping: install again


@dataclass(frozen=True)
class Change:
    id: int
    row_key: str
    tenant: str | None
    operation: str
    changed_at: datetime
    txid: int


def literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings, the default since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


def _array_literal(items: tuple[str, ...]) -> str:
    quoted = ('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"


def watched_paths(mapping: TableMapping) -> list[tuple[str, ...]]:
    """What a change must touch to be captured: each synced field's column (or its JSON path),
    and the soft-delete column. Observed fields are Golioth's: their changes are not captured."""
    paths = [(m.column, *m.path) for m in mapping.fields.values()]
    if mapping.soft_delete:
        paths.append((mapping.soft_delete,))
    return sorted(set(paths))


def trigger_arguments(mapping: TableMapping) -> list[str]:
    tenant = mapping.tenant.column if mapping.tenant else ""
    return [str(mapping.table), mapping.key, tenant, *(_array_literal(p) for p in watched_paths(mapping))]


def install_statements(mapping: TableMapping) -> list[str]:
    """Every statement `install_capture` runs, in order, in one transaction. Idempotent."""
    arguments = ", ".join(literal(a) for a in trigger_arguments(mapping))
    return [
        LOCK_TIMEOUT,
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        _CHANGES_TABLE,
        f"CREATE INDEX IF NOT EXISTS changes_table_tenant_id ON {CHANGES} (table_name, tenant, id)",
        _ROW_CHANGES_TABLE,
        f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER\n"
        f"SET search_path = pg_catalog, pg_temp AS $golioth_sync${_FUNCTION_BODY}$golioth_sync$",
        f"COMMENT ON FUNCTION {FUNCTION}() IS "
        + literal("golioth-sync change capture: records edits of synced columns in golioth_sync.changes"),
        f"CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {quote_table(mapping.table)}\n"
        # The WHEN test spares the sync's own bulk writes the call, and the queued after-trigger
        # event, per row; the function tests the same setting again (an older trigger lacks WHEN).
        f"FOR EACH ROW WHEN ({_NOT_THE_SYNC}) EXECUTE FUNCTION {FUNCTION}({arguments})",
    ]


def uninstall_statements(mapping: TableMapping) -> list[str]:
    """Every statement `uninstall_capture` runs, in order, in one transaction. Idempotent."""
    return [
        LOCK_TIMEOUT,
        f"DROP TRIGGER IF EXISTS {TRIGGER} ON {quote_table(mapping.table)}",
        _UNINSTALL_LEFTOVERS.replace(":label", literal(str(mapping.table))),
    ]


def script(statements: list[str]) -> str:
    """The statements as one psql script, in the transaction they run in."""
    return "BEGIN;\n\n" + ";\n\n".join(statements) + ";\n\nCOMMIT;"


def _check_installable(conn: Connection, mapping: TableMapping) -> None:
    try:
        info = describe_table(conn, mapping.table)
    except TableNotFound as exc:
        raise CaptureError(str(exc)) from None
    needed = [
        mapping.key,
        *([mapping.tenant.column] if mapping.tenant else []),
        *(p[0] for p in watched_paths(mapping)),
    ]
    missing = [c for c in needed if c not in info.columns]
    if missing:
        raise CaptureError(f"column {missing[0]}: does not exist in {mapping.table}; run `golioth-sync local check`")
    for path in watched_paths(mapping):
        if len(path) > 1 and info.columns[path[0]].base_type != "jsonb":
            raise CaptureError(
                f"column {path[0]}: a JSON path needs a jsonb column, but it is {info.columns[path[0]].type_sql}"
            )


def _run(conn: Connection, statement: str) -> None:
    # psycopg2 formats every statement SQLAlchemy sends (with empty parameters, too): a literal %
    # (a JSON key, say) must reach it doubled to arrive single.
    conn.exec_driver_sql(statement.replace("%", "%%"))


def install_capture(conn: Connection, mapping: TableMapping) -> None:
    """Install (or bring up to date) capture on the mapped table, in the caller's transaction."""
    _check_installable(conn, mapping)
    for statement in install_statements(mapping):
        _run(conn, statement)


def uninstall_capture(conn: Connection, mapping: TableMapping) -> None:
    """Remove what `install_capture` created for this table, in the caller's transaction."""
    for statement in uninstall_statements(mapping):
        _run(conn, statement)


def capture_status(conn: Connection, mapping: TableMapping) -> CaptureStatus:
    row = conn.exec_driver_sql(
        "SELECT tg.tgargs FROM pg_trigger tg"
        " WHERE tg.tgrelid = to_regclass(%(t)s) AND tg.tgname = %(n)s"
        " AND tg.tgfoid = to_regprocedure(%(f)s) AND to_regclass(%(c)s) IS NOT NULL AND to_regclass(%(r)s) IS NOT NULL",
        {"t": quote_table(mapping.table), "n": TRIGGER, "f": f"{FUNCTION}()", "c": CHANGES, "r": ROW_CHANGES},
    ).first()
    if row is None:
        return CaptureStatus.absent
    installed = [a.decode() for a in bytes(row[0]).split(b"\x00")[:-1]]
    return CaptureStatus.current if installed == trigger_arguments(mapping) else CaptureStatus.stale


def capture_installed(conn: Connection, mapping: TableMapping) -> bool:
    """Is capture on this table (for this or an earlier version of the mapping)?"""
    return capture_status(conn, mapping) is not CaptureStatus.absent


def pending_changes(conn: Connection, mapping: TableMapping, after_id: int = 0, limit: int = 1000) -> list[Change]:
    """Up to `limit` captured changes of this mapping's rows (its table, its tenant), oldest first,
    with id > after_id. Call `capture_installed` first: without the side table this raises."""
    tenant = tenant_value(conn, mapping)
    tenant_condition = "tenant IS NULL" if tenant is None else "tenant = %(tenant)s"
    rows = conn.exec_driver_sql(
        f"SELECT id, row_key, tenant, operation, changed_at, txid FROM {CHANGES}"
        f" WHERE table_name = %(table)s AND {tenant_condition} AND id > %(after)s ORDER BY id LIMIT %(limit)s",
        {"table": str(mapping.table), "tenant": tenant, "after": after_id, "limit": limit},
    ).fetchall()
    return [Change(*row) for row in rows]


def delete_changes(conn: Connection, ids: list[int]) -> int:
    """Delete changes once they are safely queued elsewhere; returns how many were deleted. Each
    row's latest change time stays in `row_changes`: the sync still dates their edits."""
    if not ids:
        return 0
    result = conn.exec_driver_sql(f"DELETE FROM {CHANGES} WHERE id = ANY(%(ids)s)", {"ids": list(ids)})
    return result.rowcount


def latest_change_id(conn: Connection) -> int:
    """The newest captured change's id in this database (0: none): a cheap probe (the primary
    key's last entry) for a consumer waiting for new changes. Capture must be installed here."""
    return int(conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {CHANGES}").scalar_one())


def waiting_changes(conn: Connection) -> set[tuple[str, str | None]]:
    """(table label, tenant) of every captured change waiting in this database's outbox: which
    organizations have something to collect, in one query (the index on (table_name, tenant, id))."""
    return {(r[0], r[1]) for r in conn.exec_driver_sql(f"SELECT DISTINCT table_name, tenant FROM {CHANGES}")}
