"""Links between local devices and Golioth devices (`device_service_assignments`), and the base
snapshot each link carries: the last state both sides agreed on, field by field."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
from sqlalchemy.engine import Connection

from golioth_assets.store.bulk import source
from golioth_assets.store.frames import read_rows

LINK_COLUMNS = ["device_id", "golioth_device_id", "base_snapshot", "link_status", "sync_status"]


def load_links(
    conn: Connection,
    service_id: int,
    *,
    device_ids: Sequence[str] | None = None,
    golioth_device_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    sql = """
        SELECT device_id, golioth_device_id, base_snapshot::text,
               CASE WHEN sync_status = 'unlinked' THEN 'unlinked' ELSE 'linked' END AS link_status,
               sync_status
        FROM device_service_assignments WHERE service_id = %(service)s
    """
    params: dict = {"service": service_id}
    if device_ids is not None or golioth_device_ids is not None:
        sql += " AND (device_id = ANY(%(ids)s) OR golioth_device_id = ANY(%(gids)s))"
        params["ids"] = list(device_ids or [])
        params["gids"] = list(golioth_device_ids or [])
    return read_rows(conn, sql, params, LINK_COLUMNS, json_text=("base_snapshot",))


def linked_golioth_ids(conn: Connection, service_id: int) -> set[str]:
    """The Golioth ids of every link of the service (what a full listing is expected to contain),
    without reading the base snapshots."""
    rows = conn.exec_driver_sql(
        "SELECT golioth_device_id FROM device_service_assignments WHERE service_id = %(service)s",
        {"service": service_id},
    ).fetchall()
    return {r[0] for r in rows}


def insert_links(conn: Connection, service_id: int, records: Iterable[dict]) -> int:
    """New links: device_id, golioth_device_id, base_snapshot. A device's existing link is replaced
    (a device re-created in Golioth after an operator's choice gets a new Golioth id)."""
    records = list(records)
    if not records:
        return 0
    rows, params = source(conn, records)
    result = conn.exec_driver_sql(
        f"""
        INSERT INTO device_service_assignments (service_id, device_id, golioth_device_id, base_snapshot,
                                                sync_status, last_synced_at)
        SELECT %(service)s, s.doc->>'device_id', s.doc->>'golioth_device_id',
               coalesce(s.doc->'base_snapshot', '{{}}'::jsonb), 'synced', now()
        FROM {rows}
        ON CONFLICT (service_id, device_id) DO UPDATE SET
            golioth_device_id = excluded.golioth_device_id, base_snapshot = excluded.base_snapshot,
            sync_status = 'synced', last_synced_at = now(), last_error = NULL, updated_at = now()
        """,
        {"service": service_id, **params},
    )
    return result.rowcount


def merge_bases(conn: Connection, service_id: int, records: Iterable[dict]) -> int:
    """Record agreed values. Each record: device_id, golioth_device_id, fields {field: value} and
    desired_keys {key: value or null} (a null removes the key from the agreed desired state)."""
    records = list(records)
    if not records:
        return 0
    rows, params = source(conn, records)
    result = conn.exec_driver_sql(
        f"""
        UPDATE device_service_assignments a SET
            base_snapshot = CASE WHEN s.doc->'desired_keys' IS NULL OR s.doc->'desired_keys' = '{{}}'::jsonb
                THEN a.base_snapshot || coalesce(s.doc->'fields', '{{}}'::jsonb)
                ELSE jsonb_set(
                    a.base_snapshot || coalesce(s.doc->'fields', '{{}}'::jsonb),
                    '{{desired_state}}',
                    jsonb_strip_nulls(
                        coalesce((a.base_snapshot || coalesce(s.doc->'fields', '{{}}'::jsonb))->'desired_state',
                                 '{{}}'::jsonb)
                        || (s.doc->'desired_keys')))
                END,
            sync_status = 'synced', last_synced_at = now(), last_error = NULL, updated_at = now()
        FROM {rows}
        WHERE a.service_id = %(service)s
          AND a.device_id = s.doc->>'device_id'
          AND a.golioth_device_id = s.doc->>'golioth_device_id'
        """,
        {"service": service_id, **params},
    )
    return result.rowcount


def set_status(conn: Connection, service_id: int, records: Iterable[dict]) -> int:
    """Mark links: device_id, golioth_device_id, sync_status (failed/conflict/unlinked/…), error."""
    records = list(records)
    if not records:
        return 0
    rows, params = source(conn, records)
    result = conn.exec_driver_sql(
        f"""
        UPDATE device_service_assignments a SET
            sync_status = s.doc->>'sync_status', last_error = s.doc->>'error', updated_at = now()
        FROM {rows}
        WHERE a.service_id = %(service)s
          AND a.device_id = s.doc->>'device_id'
          AND a.golioth_device_id = s.doc->>'golioth_device_id'
        """,
        {"service": service_id, **params},
    )
    return result.rowcount


def delete_links(conn: Connection, service_id: int, pairs: Iterable[tuple[str, str]]) -> int:
    records = [{"device_id": d, "golioth_device_id": g} for d, g in pairs]
    if not records:
        return 0
    rows, params = source(conn, records)
    result = conn.exec_driver_sql(
        f"""
        DELETE FROM device_service_assignments a USING {rows}
        WHERE a.service_id = %(service)s
          AND a.device_id = s.doc->>'device_id'
          AND a.golioth_device_id = s.doc->>'golioth_device_id'
        """,
        {"service": service_id, **params},
    )
    return result.rowcount
