"""`LocalTable`: every read and write of one organization's devices in its local table, the
product's own or golioth-sync's built-in `devices` (one more mapping): one path for both.

Set-based throughout: a batch is COPYed into a temp table (store/bulk.py) and applied by one
statement; an organization is read by one query. Only mapped columns are ever written, and only
this organization's rows (the tenant filter is in every statement).

Compare-and-set: `load` reads an md5 `fingerprint` of each row's synced columns (+ soft-delete and
link columns); `update` writes a row only where that fingerprint is still the one the plan read, so
an edit made by the product's app in between is never overwritten (the write is skipped; the next
run sees the edit).

The caller owns connections and transactions: the table may live in another database than
golioth-sync's state (see store/local_table/connect.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd
from sqlalchemy.engine import Connection

from golioth_assets.core.fields import FIELD_KIND, OBSERVED_FIELDS
from golioth_assets.store.bulk import source
from golioth_assets.store.frames import frame_of, read_rows, timestamp_micros
from golioth_assets.store.local_table.capture import ROW_CHANGES, WRITER_SETTING
from golioth_assets.store.local_table.fit import INTEGER_TYPES
from golioth_assets.store.local_table.introspect import TableInfo, quote_ident
from golioth_assets.store.local_table.mapping import SYNCED, FieldMapping, TableMapping
from golioth_assets.store.local_table.sql import (
    EPOCH_MICROS,
    OBSERVED_KIND,
    Expressions,
    column,
    doc,
    doc_text,
    literal,
)

# WRITER_SETTING is set (`SET LOCAL … = 'on'`) in every transaction that writes the local table:
# change capture skips rows the sync wrote itself, so they don't echo back.

TIMESTAMPS = ("updated_at", "deleted_at", "last_seen_online", "last_seen_offline", "last_report")
ACTIVITY = ("last_seen_online", "last_seen_offline", "last_report")
_UUID_TYPES = ("uuid",)


# What a preview of devices shows (operators' pages and run metadata): the columns a table maps.
PREVIEW_COLUMNS = ("device_id", "name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "status")


class LocalTableError(RuntimeError):
    """The local table cannot be used as mapped (one line, naming the column)."""


class ChangeTracking(StrEnum):
    """Where the time of a local edit comes from (what `newest_wins` compares with Golioth's)."""

    column = "updated_at"  # the mapping's updated_at column
    capture = "capture"  # change capture's latest change of the row (golioth_sync.row_changes)
    none = "none"  # unknown: Golioth wins


@dataclass
class LocalTable:
    mapping: TableMapping
    organization_id: str
    info: TableInfo
    captured: bool = False
    """Change capture is installed on the table (connect.py looks, when the mapping has no updated_at)."""
    x: Expressions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.x = Expressions(self.mapping, self.info)

    # -- what the sync can do with this table -----------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.mapping.table)

    @property
    def synced_fields(self) -> tuple[str, ...]:
        return self.mapping.synced_fields

    @property
    def change_tracking(self) -> ChangeTracking:
        if self.mapping.updated_at:
            return ChangeTracking.column
        return ChangeTracking.capture if self.captured else ChangeTracking.none

    @property
    def observed_fields(self) -> tuple[str, ...]:
        """The core's observed fields this table holds (firmware_version is read as firmware_versions)."""
        mapped = set(self.mapping.observed)
        if "firmware_version" in mapped:
            mapped.add("firmware_versions")
        return tuple(f for f in OBSERVED_FIELDS if f in mapped)

    @property
    def deletes_possible(self) -> bool:
        return self.mapping.deletes_possible

    def comparable_remote(self, remote: pd.DataFrame) -> pd.DataFrame:
        """Golioth's frame as this table can hold it: observed fields it doesn't map are dropped
        (else they would differ forever), and one firmware package stands for the map."""
        unmapped = [c for c in OBSERVED_FIELDS if c in remote.columns and c not in self.observed_fields]
        remote = remote.drop(columns=unmapped)
        if self.holds_one_hardware_id and "hardware_ids" in remote.columns:
            # A text column holds one id: the first stands for the list, or the others would read as
            # removed locally and be pushed away from Golioth.
            remote = remote.assign(hardware_ids=[_first_only(v) for v in remote["hardware_ids"]])
        m = self._observed_mappings().get("firmware_versions")
        if m is not None and m.package is not None and "firmware_versions" in remote.columns:
            package = m.package
            remote = remote.assign(
                firmware_versions=[
                    {package: v[package]} if isinstance(v, dict) and v.get(package) is not None else {}
                    for v in remote["firmware_versions"]
                ]
            )
        return remote

    @property
    def holds_one_hardware_id(self) -> bool:
        """hardware_ids maps to a plain text column (one id), not an array or JSON."""
        m = self.mapping.fields.get("hardware_ids")
        if m is None or m.path:
            return False
        c = self.info.columns[m.column]
        return not c.is_array and not c.is_json

    def _observed_mappings(self) -> dict[str, FieldMapping]:
        """Core observed field → its mapping (firmware_version stands in for firmware_versions)."""
        out = {f: m for f, m in self.mapping.observed.items() if f in OBSERVED_FIELDS}
        if "firmware_versions" not in out and "firmware_version" in self.mapping.observed:
            out["firmware_versions"] = self.mapping.observed["firmware_version"]
        return out

    # -- reads ---------------------------------------------------------------------------------------------

    def _select(self) -> tuple[list[str], list[str]]:
        exprs = [f"{column(self.mapping.key)}::text"]
        names = ["device_id"]
        for name in SYNCED:
            m = self.mapping.fields.get(name)
            if m is not None:
                exprs.append(self.x.read(name, m))
                names.append(name)
            elif name == "hardware_ids":
                exprs.append("'{}'::text[]")  # unmapped: no hardware ids to match by
                names.append(name)
        exprs.append(self._change_time())
        names.append("updated_at")
        deleted = self.mapping.soft_delete
        exprs.append(EPOCH_MICROS.format(self.x.read_timestamp(deleted)) if deleted else "NULL::bigint")
        names.append("deleted_at")
        for name, m in self._observed_mappings().items():
            exprs.append(self._read_observed(name, m))
            names.append(name)
        exprs.append(self.x.fingerprint())
        names.append("fingerprint")
        return exprs, names

    def _change_time(self) -> str:
        """When the row was last edited locally: their updated_at column; else capture's latest
        change of the row (kept per row, so consuming the outbox does not lose it); else unknown."""
        tracking = self.change_tracking
        if tracking is ChangeTracking.column:
            return EPOCH_MICROS.format(self.x.read_timestamp(self.mapping.updated_at))  # type: ignore[arg-type]
        if tracking is ChangeTracking.none:
            return "NULL::bigint"
        # Spelled as the trigger records them: to_jsonb(row) ->> column.
        tenant = f"to_jsonb({column(self.mapping.tenant.column)}) #>> '{{}}'" if self.mapping.tenant else "''"
        latest = (
            f"(SELECT r.changed_at FROM {ROW_CHANGES} r WHERE r.table_name = {literal(self.name)} "
            f"AND r.tenant = coalesce({tenant}, '') AND r.row_key = to_jsonb({column(self.mapping.key)}) #>> '{{}}')"
        )
        return EPOCH_MICROS.format(latest)

    def _read_observed(self, name: str, m: FieldMapping) -> str:
        if name == "firmware_versions" and m.package is not None:
            text = self.x.raw_text(m)
            return f"(CASE WHEN {text} IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object({literal(m.package)}, {text}) END)"
        return self.x.read(name, m)

    def _where(self, device_ids: Sequence[str] | None, params: dict) -> str:
        where = self.x.tenant_filter()
        if device_ids is not None:
            params["ids"] = self.valid_keys(device_ids)
            where += f" AND {column(self.mapping.key)} = ANY(CAST(%(ids)s AS {self.x.key_cast()}[]))"
        return where

    def load(self, conn: Connection, device_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """The organization's devices (soft-deleted ones too: a sync needs to see deletes), in the
        sync's vocabulary, with each row's fingerprint. Unmapped fields are absent."""
        columns, names, special = self._read_columns()
        params: dict = {"org": self.organization_id}
        where = self._where(device_ids, params)
        if device_ids is not None and not params["ids"]:  # nothing to read: no round trip
            return frame_of([], names, **special)
        sql = f"SELECT {columns} FROM {self.x.table} t WHERE {where}"
        return read_rows(conn, sql, params, names, **special)

    def _read_columns(self) -> tuple[str, list[str], dict[str, tuple[str, ...]]]:
        """The select list of `load`, its names, and which are timestamps and JSON (store/frames.py)."""
        exprs, names = self._select()
        special = {
            "timestamps": tuple(n for n in names if n in TIMESTAMPS),
            "json_text": tuple(n for n in names if _kind(n) == "json"),
        }
        exprs = [
            f"({e})::text" if n in special["json_text"] else timestamp_micros(e) if n in special["timestamps"] else e
            for e, n in zip(exprs, names)
        ]
        return ", ".join(exprs), names, special

    def valid_keys(self, ids: Iterable[str]) -> list[str]:
        """The ids that can be keys of this table (a Golioth id is no uuid or integer)."""
        key_type = self.info.columns[self.mapping.key].base_type
        if key_type in _UUID_TYPES:
            return [i for i in ids if _is_uuid(i)]
        if key_type in INTEGER_TYPES:
            return [i for i in ids if i.lstrip("-").isdigit()]
        return list(ids)

    def existing_keys(self, conn: Connection, ids: Sequence[str]) -> list[str]:
        params: dict = {"org": self.organization_id}
        where = self._where(ids, params)
        rows = conn.exec_driver_sql(
            f"SELECT {column(self.mapping.key)}::text FROM {self.x.table} t WHERE {where}", params
        )
        return [r[0] for r in rows]

    def find_by_hardware_ids(self, conn: Connection, hardware_ids: Sequence[str]) -> list[str]:
        m = self.mapping.fields.get("hardware_ids")
        if m is None or not hardware_ids:
            return []
        c = None if m.path else self.info.columns[m.column]
        if c is not None and c.is_array:
            # The column itself, so its GIN index applies; the array as a sub-select, so the planner
            # takes it as one parameter. As a literal of a hundred ids it estimated a third of the
            # table per lookup and scanned all of it (50 ms at 10,000 devices against 1 ms).
            match = f"{column(m.column)} && (SELECT CAST(%(hw)s AS {c.type_sql}))"
        elif c is not None and not c.is_json:
            match = f"{column(m.column)}::text = ANY(%(hw)s)"
        else:
            match = f"{self.x.read('hardware_ids', m)} && CAST(%(hw)s AS text[])"
        rows = conn.exec_driver_sql(
            f"SELECT {column(self.mapping.key)}::text FROM {self.x.table} t WHERE {self.x.tenant_filter()} AND {match}",
            {"org": self.organization_id, "hw": list(hardware_ids)},
        )
        return [r[0] for r in rows]

    def count_by_state(self, conn: Connection) -> dict[str, int]:
        deleted = self.x.read_timestamp(self.mapping.soft_delete) if self.mapping.soft_delete else "NULL"
        row = conn.exec_driver_sql(
            f"SELECT count(*) FILTER (WHERE {deleted} IS NULL), count(*) FILTER (WHERE {deleted} IS NOT NULL) "
            f"FROM {self.x.table} t WHERE {self.x.tenant_filter()}",
            {"org": self.organization_id},
        ).one()
        return {"live": int(row[0]), "deleted": int(row[1])}

    def preview(self, conn: Connection, limit: int = 20) -> pd.DataFrame:
        """The first live devices by name (for metadata and pages): one query."""
        deleted = self.x.read_timestamp(self.mapping.soft_delete) if self.mapping.soft_delete else "NULL"
        name = self.x.read("name", self.mapping.fields["name"])
        columns, names, special = self._read_columns()
        key = column(self.mapping.key)
        first = (  # the keys first: the select list (fingerprints, …) is computed for these rows only
            f"SELECT {key} FROM {self.x.table} t WHERE {self.x.tenant_filter()} AND {deleted} IS NULL "
            f"ORDER BY {name}, {key}::text LIMIT %(limit)s"
        )
        frame = read_rows(
            conn,
            f"SELECT {columns} FROM {self.x.table} t WHERE {self.x.tenant_filter()} AND {key} IN ({first})",
            {"org": self.organization_id, "limit": int(limit)},
            names,
            **special,
        )
        return frame.sort_values(["name", "device_id"]).reset_index(drop=True)

    def find_by_name(self, conn: Connection, name: str) -> list[str]:
        """Ids of the devices with exactly this name, live ones first."""
        deleted = self.x.read_timestamp(self.mapping.soft_delete) if self.mapping.soft_delete else "NULL"
        rows = conn.exec_driver_sql(
            f"SELECT {column(self.mapping.key)}::text FROM {self.x.table} t WHERE {self.x.tenant_filter()} "
            f"AND {self.x.read('name', self.mapping.fields['name'])} = %(name)s ORDER BY {deleted} NULLS FIRST",
            {"org": self.organization_id, "name": name},
        )
        return [r[0] for r in rows]

    def names(self, conn: Connection, device_ids: Sequence[str]) -> dict[str, str]:
        params: dict = {"org": self.organization_id}
        name = self.x.read("name", self.mapping.fields["name"])
        rows = conn.exec_driver_sql(
            f"SELECT {column(self.mapping.key)}::text, {name} FROM {self.x.table} t "
            f"WHERE {self._where(list(device_ids), params)}",
            params,
        )
        return {r[0]: r[1] for r in rows}

    # -- writes ------------------------------------------------------------------------------------------

    @staticmethod
    def mark_writer(conn: Connection) -> None:
        """Mark this transaction as the sync's own (change capture skips it): call first."""
        conn.exec_driver_sql(f"SET LOCAL {WRITER_SETTING} = 'on'")

    @staticmethod
    def txid(conn: Connection) -> int:
        return int(conn.exec_driver_sql("SELECT txid_current()").scalar_one())

    @staticmethod
    def begin_write(conn: Connection) -> int:
        """`mark_writer` and `txid` in one round trip (call first): the transaction's id."""
        return int(conn.exec_driver_sql(f"SELECT set_config('{WRITER_SETTING}', 'on', true), txid_current()").one()[1])

    def choose_keys(self, conn: Connection, count: int) -> list[str]:
        """Keys for new rows, chosen before the insert (so a crash can't leave rows we can't name):
        uuids for uuid and text keys, the key's own sequence for serial and identity keys."""
        if count <= 0:
            return []
        key = self.info.columns[self.mapping.key]
        if key.base_type in INTEGER_TYPES:
            table = f"{quote_ident(self.mapping.table.schema_name)}.{quote_ident(self.mapping.table.name)}"
            sequence = conn.exec_driver_sql(
                "SELECT pg_get_serial_sequence(%(t)s, %(c)s)", {"t": table, "c": self.mapping.key}
            ).scalar()
            if sequence is None:
                raise LocalTableError(
                    f"{self.name}.{self.mapping.key}: an integer key without a sequence or identity; "
                    "golioth-sync cannot choose keys for new rows"
                )
            rows = conn.exec_driver_sql(
                "SELECT nextval(%(s)s)::text FROM generate_series(1, %(n)s)", {"s": sequence, "n": count}
            )
            return [r[0] for r in rows]
        return [str(uuid.uuid4()) for _ in range(count)]

    def insert(self, conn: Connection, frame: pd.DataFrame) -> list[str]:
        """Insert devices new in Golioth. frame: device_id (a key from `choose_keys`),
        golioth_device_id, the synced fields and observed fields in Golioth's vocabulary.
        Returns the keys inserted (a row whose key or a unique value exists already is skipped)."""
        if frame.empty:
            return []
        columns, values = self._insert_columns(set(frame.columns))
        overriding = " OVERRIDING SYSTEM VALUE" if self.info.columns[self.mapping.key].identity == "a" else ""
        staged, params = source(conn, frame)
        rows = conn.exec_driver_sql(
            f"INSERT INTO {self.x.table} ({', '.join(map(quote_ident, columns))}){overriding} "
            f"SELECT {', '.join(values)} FROM {staged} ON CONFLICT DO NOTHING "
            f"RETURNING {quote_ident(self.mapping.key)}::text",
            {"org": self.organization_id, **params},
        )
        return [r[0] for r in rows]

    def _insert_columns(self, present: set[str]) -> tuple[list[str], list[str]]:
        key = self.info.columns[self.mapping.key]
        columns, values = [self.mapping.key], [f"{doc_text('device_id')}::{key.type_sql}"]
        tenant = self.x.tenant_value()
        if tenant is not None:
            columns.append(self.mapping.tenant.column)  # type: ignore[union-attr]
            values.append(tenant)
        if self.mapping.link:
            columns.append(self.mapping.link)
            values.append(f"{doc_text('golioth_device_id')}::{self.info.columns[self.mapping.link].type_sql}")
        mappings = {n: m for n, m in self.mapping.fields.items() if n in present}
        mappings |= {n: m for n, m in self._observed_mappings().items() if n in present}
        self._add_field_values(mappings, columns, values, insert=True)
        if self.mapping.observed_at:
            columns.append(self.mapping.observed_at)
            values.append("now()")
        for name, value in self.mapping.insert_defaults.items():
            columns.append(name)
            values.append(f"{literal(value)}::{self.info.columns[name].type_sql}")
        return columns, values

    def _add_field_values(
        self, mappings: dict[str, FieldMapping], columns: list[str], values: list[str], *, insert: bool
    ) -> None:
        """Whole columns get their value; fields at JSON paths of one column are set one by one."""
        by_column: dict[str, list[tuple[str, FieldMapping]]] = {}
        for name, m in mappings.items():
            by_column.setdefault(m.column, []).append((name, m))
        for name_of_column, fields in by_column.items():
            c = self.info.columns[name_of_column]
            if not fields[0][1].path:
                name, m = fields[0]
                columns.append(name_of_column)
                values.append(self.x.write_whole(name, m, insert=insert))
                continue
            current = "'{}'::jsonb" if insert else f"{column(name_of_column)}::jsonb"
            for name, m in fields:
                when = None if insert else f"s.doc ? {literal(name)}"
                current = self.x.assign_path(current, m, self.x.write_json(name, m, insert=insert), when)
            columns.append(name_of_column)
            values.append(f"({current})::{c.type_sql}")

    def update(self, conn: Connection, records: Sequence[dict]) -> list[str]:
        """Compare-and-set updates. Each record: device_id, fingerprint (as the plan read it) and
        only the fields to change (Golioth values; `deleted_at` for a soft delete or undelete).
        Returns the ids written; a row whose fingerprint moved since is left alone."""
        if not records:
            return []
        present = set().union(*(r.keys() for r in records))
        mappings = {n: m for n, m in self.mapping.fields.items() if n in present}
        columns: list[str] = []
        values: list[str] = []
        self._add_field_values(mappings, columns, values, insert=False)
        sets = [
            f"{quote_ident(c)} = CASE WHEN s.doc ? {literal(self._field_of(c, mappings))} THEN {v} ELSE {column(c)} END"
            if not mappings[self._field_of(c, mappings)].path
            else f"{quote_ident(c)} = {v}"
            for c, v in zip(columns, values)
        ]
        if "deleted_at" in present and self.mapping.soft_delete:
            c = self.info.columns[self.mapping.soft_delete]
            written = self.x.write_timestamp(doc_text("deleted_at"), c)
            sets.append(
                f"{quote_ident(c.name)} = CASE WHEN s.doc ? 'deleted_at' THEN {written} ELSE {column(c.name)} END"
            )
        if not sets:
            return []
        staged, params = source(conn, records)
        rows = conn.exec_driver_sql(
            f"UPDATE {self.x.table} t SET {', '.join(sets)} FROM {staged} "
            f"WHERE {column(self.mapping.key)} = {doc_text('device_id')}::{self.x.key_cast()} "
            # Not `=`: the planner would hash the fingerprint of every row of the organization to
            # join on it; as a filter it is computed for the rows whose key matched only.
            f"AND {self.x.tenant_filter()} AND {self.x.fingerprint()} IS NOT DISTINCT FROM {doc_text('fingerprint')} "
            f"AND {doc_text('fingerprint')} IS NOT NULL "
            f"RETURNING {column(self.mapping.key)}::text",
            {"org": self.organization_id, **params},
        )
        return [r[0] for r in rows]

    @staticmethod
    def _field_of(column_name: str, mappings: dict[str, FieldMapping]) -> str:
        return next(n for n, m in mappings.items() if m.column == column_name)

    def set_links(self, conn: Connection, pairs: Sequence[tuple[str, str | None]]) -> int:
        """Write the link column (the Golioth id; None clears it) where the mapping has one."""
        if not self.mapping.link or not pairs:
            return 0
        c = self.info.columns[self.mapping.link]
        staged, params = source(conn, [{"device_id": d, "golioth_device_id": g} for d, g in pairs])
        return conn.exec_driver_sql(
            f"UPDATE {self.x.table} t SET {quote_ident(c.name)} = {doc_text('golioth_device_id')}::{c.type_sql} "
            f"FROM {staged} WHERE {column(self.mapping.key)} = {doc_text('device_id')}::{self.x.key_cast()} "
            f"AND {self.x.tenant_filter()} AND {column(c.name)} IS DISTINCT FROM {doc_text('golioth_device_id')}::{c.type_sql}",
            {"org": self.organization_id, **params},
        ).rowcount

    def update_observed(self, conn: Connection, frame: pd.DataFrame | Sequence[dict], *, patch: bool = False) -> int:
        """Observed fields from Golioth, one statement (no compare-and-set: only Golioth writes
        them). Activity timestamps only move forward: a webhook may already have written newer
        activity, and a sync may bring older.

        patch: the rows hold a batch of webhook events folded per device (device_id, status,
        status_at, the activity timestamps, reported_state and firmware_versions as patches,
        patch_at): a status counts only if `status_at` is not older than the activity the row
        knows, and patches are merged key by key only if `patch_at` is not older than its last
        report, so a late or replayed event never turns the row back in time."""
        mapped = self._observed_mappings()
        if patch and "reported_state" in self.mapping.observed:  # only webhooks carry reported values
            mapped["reported_state"] = self.mapping.observed["reported_state"]
        present = set(frame.columns) if isinstance(frame, pd.DataFrame) else set().union(*(r.keys() for r in frame))
        mappings = {n: m for n, m in mapped.items() if n in present}
        if len(frame) == 0 or not mappings:
            return 0
        setter = self._patch_set if patch else self._observed_set
        sets = [setter(n, m, mappings) for n, m in mappings.items()]
        if self.mapping.observed_at:
            sets.append(f"{quote_ident(self.mapping.observed_at)} = now()")
        rows, params = source(conn, frame)
        return conn.exec_driver_sql(
            f"UPDATE {self.x.table} t SET {', '.join(sets)} FROM {rows} "
            f"WHERE {column(self.mapping.key)} = {doc_text('device_id')}::{self.x.key_cast()} AND {self.x.tenant_filter()}",
            {"org": self.organization_id, **params},
        ).rowcount

    def _patch_set(self, name: str, m: FieldMapping, mappings: dict[str, FieldMapping]) -> str:
        """One column's new value from a folded batch of webhook events (see update_observed)."""
        c = self.info.columns[m.column]
        if name == "status" and not m.path:
            known = self._known(ACTIVITY)
            when = f"{doc_text(name)} IS NOT NULL"
            if known:
                when += f" AND {self._doc_ts('status_at')} >= coalesce({known}, '-infinity')"
            new = self.x.write_whole(name, m)  # a value the value map lacks keeps the current one
            return f"{quote_ident(c.name)} = CASE WHEN {when} THEN {new} ELSE {column(c.name)} END"
        if name not in ("reported_state", "firmware_versions"):
            return self._observed_set(name, m, mappings)  # activity, settings: as a sync writes them
        known = self._known(("last_report",))
        when = f"jsonb_typeof({doc(name)}) = 'object'"
        if known:
            when += f" AND {self._doc_ts('patch_at')} >= coalesce({known}, '-infinity')"
        if m.package is not None:  # one package's version, as text
            version = f"({doc(name)} ->> {literal(m.package)})"
            when += f" AND {version} IS NOT NULL"
            if m.path:
                value = self.x.assign_path(f"{column(c.name)}::jsonb", m, f"to_jsonb({version})", when)
                return f"{quote_ident(c.name)} = ({value})::{c.type_sql}"
            return f"{quote_ident(c.name)} = CASE WHEN {when} THEN {version}::{c.type_sql} ELSE {column(c.name)} END"
        if m.path:
            merged = f"(coalesce({self.x.raw(m)}, '{{}}'::jsonb) || {doc(name)})"
            return f"{quote_ident(c.name)} = ({self.x.assign_path(f'{column(c.name)}::jsonb', m, merged, when)})::{c.type_sql}"
        merged = f"(coalesce({column(c.name)}::jsonb, '{{}}'::jsonb) || {doc(name)})::{c.type_sql}"
        return f"{quote_ident(c.name)} = CASE WHEN {when} THEN {merged} ELSE {column(c.name)} END"

    def _known(self, names: tuple[str, ...]) -> str | None:
        """The latest of these activity timestamps the row holds (those the table maps), or None."""
        mapped = self._observed_mappings()
        columns = [self.x.read_timestamp(mapped[n]) for n in names if n in mapped]
        return f"greatest({', '.join(columns)})" if columns else None

    def _observed_set(self, name: str, m: FieldMapping, mappings: dict[str, FieldMapping]) -> str:
        c = self.info.columns[m.column]
        if m.path:
            value = self.x.write_json(name, m)
            return f"{quote_ident(c.name)} = ({self.x.assign_path(f'{column(c.name)}::jsonb', m, value, f'{doc_text(name)} IS NOT NULL')})::{c.type_sql}"
        new = self.x.write_whole(name, m, insert=True)
        current = column(c.name)
        if name in ACTIVITY:
            return f"{quote_ident(c.name)} = greatest({current}, {new})"
        if name == "status":
            return f"{quote_ident(c.name)} = {self._status_value(new, current, mappings)}"
        if c.is_json and m.package is None:
            new = f"({doc(name)})::{c.type_sql}"  # absent stays absent: the row keeps what it has
        return f"{quote_ident(c.name)} = coalesce({new}, {current})"

    def _status_value(self, new: str, current: str, mappings: dict[str, FieldMapping]) -> str:
        """Golioth's status wins only when its activity is newer than what the row already knows."""
        activity = [(self.x.read_timestamp(mappings[a]), self._doc_ts(a)) for a in ACTIVITY if a in mappings]
        if not activity:
            return f"coalesce({new}, {current})"
        known = f"greatest({', '.join(k for k, _ in activity)})"
        incoming = f"greatest({', '.join(n for _, n in activity)})"
        return (
            f"CASE WHEN {incoming} > coalesce({known}, '-infinity') "
            f"THEN coalesce({new}, {current}) ELSE coalesce({current}, {new}) END"
        )

    @staticmethod
    def _doc_ts(name: str) -> str:
        return f"{doc_text(name)}::timestamptz"

    def ensure_hardware_ids(self, conn: Connection, generated: dict[str, str]) -> list[str]:
        """Give devices without hardware ids a generated one before they are created in Golioth, so
        a create that dies half-way is found again by hardware id instead of being duplicated."""
        m = self.mapping.fields.get("hardware_ids")
        if m is None or not generated:
            return []
        records = [{"device_id": d, "hardware_ids": [hw]} for d, hw in generated.items()]
        columns: list[str] = []
        values: list[str] = []
        self._add_field_values({"hardware_ids": m}, columns, values, insert=False)
        staged, params = source(conn, records)
        rows = conn.exec_driver_sql(
            f"UPDATE {self.x.table} t SET {quote_ident(columns[0])} = {values[0]} FROM {staged} "
            f"WHERE {column(self.mapping.key)} = {doc_text('device_id')}::{self.x.key_cast()} "
            f"AND {self.x.tenant_filter()} AND cardinality({self.x.read('hardware_ids', m)}) = 0 "
            f"RETURNING {column(self.mapping.key)}::text",
            {"org": self.organization_id, **params},
        )
        return [r[0] for r in rows]


def _kind(name: str) -> str | None:
    return FIELD_KIND.get(name) or OBSERVED_KIND.get(name)


def _first_only(ids: object) -> object:
    if isinstance(ids, str) or not hasattr(ids, "__len__"):
        return ids
    return list(ids)[:1]  # type: ignore[call-overload]


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(text) == 36
