"""Reads for operators' history views: per-device audit entries and what links and entries know
about a device's ids. Device names come from the base snapshot (the last agreed name) or Golioth's
inventory: the local table may live in another database, so no query here joins it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

# The last agreed name, else Golioth's (an entry may only have one side).
_ENTRIES = """
    SELECT e.id, e.sync_log_id, e.device_id, e.golioth_device_id, e.side, e.action,
           e.status, e.changes, e.error, e.changed_by, e.created_at,
           l.dagster_run_id, l.trigger, l.started_at AS run_started_at,
           coalesce(a.base_snapshot ->> 'name', g.name) AS device_name
    FROM golioth_sync_log_entries e
    JOIN golioth_sync_log l ON l.id = e.sync_log_id
    LEFT JOIN device_service_assignments a ON a.service_id = l.service_id AND a.device_id = e.device_id
    LEFT JOIN golioth_inventory g ON g.organization_id = e.organization_id
                                  AND g.golioth_device_id = e.golioth_device_id
"""


def run_entries(conn: Connection, sync_log_id: int, limit: int) -> list[dict]:
    rows = conn.execute(
        sa.text(_ENTRIES + " WHERE e.sync_log_id = :run ORDER BY e.id DESC LIMIT :limit"),
        {"run": sync_log_id, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def device_entries(
    conn: Connection, organization_id: str, local_ids: list[str], golioth_ids: list[str], limit: int
) -> list[dict]:
    rows = conn.execute(
        sa.text(
            _ENTRIES + " WHERE e.organization_id = :o AND (e.device_id = ANY(:l) OR e.golioth_device_id = ANY(:g)) "
            "ORDER BY e.id DESC LIMIT :limit"
        ),
        {"o": organization_id, "l": local_ids, "g": golioth_ids, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def local_id_known(conn: Connection, organization_id: str, device_id: str) -> bool:
    """Whether links or audit entries of the organization name this local id."""
    return (
        conn.execute(
            sa.text(
                """
                SELECT 1 FROM device_service_assignments a JOIN device_services s ON s.id = a.service_id
                WHERE s.organization_id = :o AND a.device_id = :d
                UNION ALL SELECT 1 FROM golioth_sync_log_entries WHERE organization_id = :o AND device_id = :d
                LIMIT 1
                """
            ),
            {"o": organization_id, "d": device_id},
        ).first()
        is not None
    )


def golioth_id_known(conn: Connection, organization_id: str, golioth_id: str) -> bool:
    return (
        conn.execute(
            sa.text(
                """
                SELECT 1 FROM device_service_assignments a JOIN device_services s ON s.id = a.service_id
                WHERE s.organization_id = :o AND a.golioth_device_id = :g
                UNION ALL SELECT 1 FROM golioth_inventory WHERE organization_id = :o AND golioth_device_id = :g
                UNION ALL SELECT 1 FROM golioth_sync_log_entries WHERE organization_id = :o AND golioth_device_id = :g
                LIMIT 1
                """
            ),
            {"o": organization_id, "g": golioth_id},
        ).first()
        is not None
    )


def linked_pairs(
    conn: Connection, organization_id: str, local_ids: list[str], golioth_ids: list[str]
) -> list[tuple[str, str]]:
    """(local id, Golioth id) pairs that links or audit entries tie to any of these ids."""
    rows = conn.execute(
        sa.text(
            """
            SELECT a.device_id, a.golioth_device_id FROM device_service_assignments a
            JOIN device_services s ON s.id = a.service_id
            WHERE s.organization_id = :o AND (a.device_id = ANY(:l) OR a.golioth_device_id = ANY(:g))
            UNION
            SELECT DISTINCT device_id, golioth_device_id FROM golioth_sync_log_entries
            WHERE organization_id = :o AND device_id IS NOT NULL AND golioth_device_id IS NOT NULL
              AND (device_id = ANY(:l) OR golioth_device_id = ANY(:g))
            """
        ),
        {"o": organization_id, "l": local_ids, "g": golioth_ids},
    ).all()
    return [(r[0], r[1]) for r in rows]


def device_conflicts(
    conn: Connection, organization_id: str, local_ids: list[str], golioth_ids: list[str]
) -> list[dict]:
    rows = conn.execute(
        sa.text(
            """
            SELECT id, field, conflict_type, status, base_value, local_value, remote_value, resolution,
                   resolved_value, resolved_by, resolved_at, applied_at, detected_at
            FROM device_conflicts
            WHERE organization_id = :o AND (device_id = ANY(:l) OR golioth_device_id = ANY(:g))
            ORDER BY id DESC
            """
        ),
        {"o": organization_id, "l": local_ids, "g": golioth_ids},
    ).mappings()
    return [dict(c) for c in rows]


def names(conn: Connection, organization_id: str, local_ids: list[str], golioth_ids: list[str]) -> dict[str, str]:
    """Display names by local id (the last agreed name) and by Golioth id (the inventory's)."""
    rows = conn.execute(
        sa.text(
            """
            SELECT a.device_id, a.base_snapshot ->> 'name' FROM device_service_assignments a
            JOIN device_services s ON s.id = a.service_id
            WHERE s.organization_id = :o AND a.device_id = ANY(:ids) AND a.base_snapshot ? 'name'
            UNION ALL SELECT golioth_device_id, name FROM golioth_inventory
            WHERE organization_id = :o AND golioth_device_id = ANY(:gids)
            """
        ),
        {"o": organization_id, "ids": local_ids, "gids": golioth_ids},
    ).all()
    return {r[0]: r[1] for r in rows}
