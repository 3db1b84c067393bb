"""The local device table: bulk reads and set-based writes.

Writes made by a sync are compare-and-set on `version` (which a trigger bumps whenever a synced field
changes): if someone edited the device after the sync read it, the write is skipped and the next run
sees the new edit, instead of overwriting it silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.store.bulk import read_frame, stage, stage_records

LOCAL_COLUMNS = [
    "device_id",
    "name",
    "hardware_ids",
    "tags",
    "blueprint",
    "cohort",
    "enabled",
    "desired_state",
    "updated_at",
    "deleted_at",
    "version",
    "status",
    "last_seen_online",
    "last_seen_offline",
    "last_report",
    "firmware_versions",
    "settings_status",
]

_TIMESTAMPS = ("updated_at", "deleted_at", "last_seen_online", "last_seen_offline", "last_report")
_SELECT = """
SELECT id::text AS device_id, name, hardware_ids, tags, blueprint, cohort, enabled, desired_state,
       (extract(epoch FROM updated_at) * 1000000)::bigint, (extract(epoch FROM deleted_at) * 1000000)::bigint, version, status,
       (extract(epoch FROM last_seen_online) * 1000000)::bigint, (extract(epoch FROM last_seen_offline) * 1000000)::bigint,
       (extract(epoch FROM last_report) * 1000000)::bigint, firmware_versions, settings_status
FROM devices
WHERE organization_id = %(org)s
"""


def load_devices(
    conn: Connection,
    organization_id: str,
    *,
    device_ids: Sequence[str] | None = None,
    include_deleted: bool = True,
) -> pd.DataFrame:
    """The organization's devices as a frame (soft-deleted ones too: a sync needs to see deletes)."""
    sql = _SELECT
    params: dict = {"org": organization_id}
    if device_ids is not None:
        sql += " AND id = ANY(%(ids)s::uuid[])"
        params["ids"] = list(device_ids)
    if not include_deleted:
        sql += " AND deleted_at IS NULL"
    return read_frame(conn, sql, params, LOCAL_COLUMNS, _TIMESTAMPS)


def count_devices(conn: Connection, organization_id: str) -> int:
    return conn.execute(
        sa.text("SELECT count(*) FROM devices WHERE organization_id = :org AND deleted_at IS NULL"),
        {"org": organization_id},
    ).scalar_one()


def count_devices_by_state(conn: Connection, organization_id: str) -> tuple[int, int]:
    """(live, soft-deleted) device rows of the organization."""
    live, deleted = conn.exec_driver_sql(
        "SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) "
        "FROM devices WHERE organization_id = %(org)s",
        {"org": organization_id},
    ).one()
    return int(live), int(deleted)


PREVIEW_COLUMNS = ["device_id", "name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "status"]


def preview_devices(conn: Connection, organization_id: str, limit: int) -> pd.DataFrame:
    """The first `limit` live devices by name (then id): a preview for operators."""
    rows = conn.exec_driver_sql(
        "SELECT id::text, name, hardware_ids, tags, blueprint, cohort, enabled, status FROM devices "
        "WHERE organization_id = %(org)s AND deleted_at IS NULL ORDER BY name, id LIMIT %(limit)s",
        {"org": organization_id, "limit": int(limit)},
    ).fetchall()
    return pd.DataFrame.from_records(rows, columns=PREVIEW_COLUMNS)


def insert_devices(conn: Connection, organization_id: str, frame: pd.DataFrame) -> int:
    """Insert devices (with their ids chosen by the caller) in one statement."""
    if frame.empty:
        return 0
    table = stage(conn, frame)
    result = conn.exec_driver_sql(
        f"""
        INSERT INTO devices (id, organization_id, name, hardware_ids, tags, blueprint, cohort, enabled,
                             desired_state, status, last_seen_online, last_seen_offline, last_report,
                             firmware_versions, settings_status, observed_at)
        SELECT r.device_id, %(org)s, r.name, coalesce(r.hardware_ids, '{{}}'), coalesce(r.tags, '{{}}'),
               r.blueprint, r.cohort, coalesce(r.enabled, true), coalesce(r.desired_state, '{{}}'),
               r.status, r.last_seen_online, r.last_seen_offline, r.last_report,
               coalesce(r.firmware_versions, '{{}}'), r.settings_status, now()
        FROM {table} s,
             jsonb_to_record(s.doc) AS r(device_id uuid, name text, hardware_ids text[], tags text[],
                 blueprint text, cohort text, enabled boolean, desired_state jsonb, status text,
                 last_seen_online timestamptz, last_seen_offline timestamptz, last_report timestamptz,
                 firmware_versions jsonb, settings_status text)
        ON CONFLICT (id) DO NOTHING
        """,
        {"org": organization_id},
    )
    return result.rowcount


_SYNCED_SET = {
    "name": "s.doc->>'name'",
    "hardware_ids": "ARRAY(SELECT jsonb_array_elements_text(s.doc->'hardware_ids'))",
    "tags": "ARRAY(SELECT jsonb_array_elements_text(s.doc->'tags'))",
    "blueprint": "s.doc->>'blueprint'",
    "cohort": "s.doc->>'cohort'",
    "enabled": "(s.doc->>'enabled')::boolean",
    "desired_state": "coalesce(s.doc->'desired_state', '{}'::jsonb)",
    "deleted_at": "(s.doc->>'deleted_at')::timestamptz",
}


def update_devices(conn: Connection, organization_id: str, records: Iterable[dict]) -> list[str]:
    """Compare-and-set updates. Each record: device_id, expected_version and only the columns to change.

    Returns the ids actually updated; a device whose version moved since it was read is left alone.
    """
    records = list(records)
    if not records:
        return []
    table = stage_records(conn, records)
    assignments = ",\n".join(
        f"{column} = CASE WHEN s.doc ? '{column}' THEN {expression} ELSE d.{column} END"
        for column, expression in _SYNCED_SET.items()
    )
    rows = conn.exec_driver_sql(
        f"""
        UPDATE devices d SET {assignments}
        FROM {table} s
        WHERE d.id = (s.doc->>'device_id')::uuid
          AND d.organization_id = %(org)s
          AND d.version = (s.doc->>'expected_version')::bigint
        RETURNING d.id::text
        """,
        {"org": organization_id},
    ).fetchall()
    return [r[0] for r in rows]


def update_observed(conn: Connection, organization_id: str, frame: pd.DataFrame) -> int:
    """Observed fields from Golioth. Activity timestamps only move forward: a webhook may already have
    written newer activity than the inventory saw."""
    if frame.empty:
        return 0
    table = stage(conn, frame)
    result = conn.exec_driver_sql(
        f"""
        UPDATE devices d SET
            last_seen_online = greatest(d.last_seen_online, r.last_seen_online),
            last_seen_offline = greatest(d.last_seen_offline, r.last_seen_offline),
            last_report = greatest(d.last_report, r.last_report),
            status = CASE WHEN greatest(r.last_seen_online, r.last_seen_offline, r.last_report)
                               > coalesce(greatest(d.last_seen_online, d.last_seen_offline, d.last_report), '-infinity')
                          THEN coalesce(r.status, d.status) ELSE coalesce(d.status, r.status) END,
            firmware_versions = coalesce(r.firmware_versions, d.firmware_versions),
            settings_status = coalesce(r.settings_status, d.settings_status),
            observed_at = now()
        FROM {table} s,
             jsonb_to_record(s.doc) AS r(device_id uuid, status text, last_seen_online timestamptz,
                 last_seen_offline timestamptz, last_report timestamptz, firmware_versions jsonb,
                 settings_status text)
        WHERE d.id = r.device_id AND d.organization_id = %(org)s
        """,
        {"org": organization_id},
    )
    return result.rowcount


def ensure_hardware_ids(conn: Connection, organization_id: str, generated: dict[str, str]) -> list[str]:
    """Give devices without hardware ids a generated one, before they are created in Golioth, so a
    create that crashes half-way can be found again by hardware id instead of being duplicated."""
    if not generated:
        return []
    table = stage_records(conn, [{"device_id": d, "hw": hw} for d, hw in generated.items()])
    rows = conn.exec_driver_sql(
        f"""
        UPDATE devices d SET hardware_ids = ARRAY[s.doc->>'hw']
        FROM {table} s
        WHERE d.id = (s.doc->>'device_id')::uuid AND d.organization_id = %(org)s
          AND cardinality(d.hardware_ids) = 0
        RETURNING d.id::text
        """,
        {"org": organization_id},
    ).fetchall()
    return [r[0] for r in rows]
