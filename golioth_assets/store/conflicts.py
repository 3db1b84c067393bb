"""Conflicts an operator must settle (`device_conflicts`).

pending → resolved (an operator chose) → applied (the next sync wrote the choice to both sides);
or pending → superseded (both sides converged, or the conflict disappeared, on their own).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.store.bulk import source
from golioth_assets.store.schema import device_conflicts


class ConflictNotFound(LookupError):
    pass


class ConflictNotPending(RuntimeError):
    """The conflict was already resolved, applied or superseded; nothing was changed."""


def upsert_conflicts(
    conn: Connection, organization_id: str, service_id: int, sync_log_id: int | None, frame: pd.DataFrame
) -> int:
    """Record conflicts (decoded values). A conflict already open for the device and field is refreshed."""
    if frame.empty:
        return 0
    from_item, staged = source(conn, frame)
    return conn.exec_driver_sql(
        f"""
        INSERT INTO device_conflicts (organization_id, service_id, device_id, golioth_device_id, field,
                                      conflict_type, base_value, local_value, remote_value, sync_log_id)
        SELECT %(org)s, %(service)s, s.doc->>'device_id', s.doc->>'golioth_device_id',
               s.doc->>'field', s.doc->>'conflict_type', s.doc->'base_value', s.doc->'local_value',
               s.doc->'remote_value', %(log)s
        FROM {from_item}
        ON CONFLICT (service_id, coalesce(device_id::text, ''), coalesce(golioth_device_id, ''), field)
            WHERE status IN ('pending', 'resolved')
        DO UPDATE SET base_value = excluded.base_value, local_value = excluded.local_value,
                      remote_value = excluded.remote_value, last_seen_at = now(),
                      sync_log_id = excluded.sync_log_id
        WHERE device_conflicts.status = 'pending'
        """,
        {**staged, "org": organization_id, "service": service_id, "log": sync_log_id},
    ).rowcount


_OPEN_COLUMNS = [
    "conflict_id",
    "device_id",
    "golioth_device_id",
    "field",
    "conflict_type",
    "status",
    "resolution",
    "resolved_value",
    "resolved_by",
]


def load_open(conn: Connection, service_id: int) -> pd.DataFrame:
    """Pending and resolved-but-not-applied conflicts of a service."""
    rows = conn.exec_driver_sql(
        """
        SELECT id, device_id, golioth_device_id, field, conflict_type, status, resolution,
               resolved_value, resolved_by
        FROM device_conflicts WHERE service_id = %(service)s AND status IN ('pending', 'resolved')
        """,
        {"service": service_id},
    ).fetchall()
    return pd.DataFrame.from_records(rows, columns=_OPEN_COLUMNS)


def mark(conn: Connection, conflict_ids: Sequence[int], status: str) -> int:
    if not conflict_ids:
        return 0
    column = {"applied": "applied_at", "superseded": "resolved_at"}[status]
    return conn.execute(
        device_conflicts.update()
        .where(device_conflicts.c.id.in_([int(i) for i in conflict_ids]))
        .where(device_conflicts.c.status.in_(["pending", "resolved"]))
        .values(status=status, **{column: sa.func.now()})
    ).rowcount


def refresh_link_status(conn: Connection, service_id: int) -> None:
    """Links with a pending conflict say "conflict"; links whose conflicts are gone say "synced"."""
    conn.exec_driver_sql(
        """
        WITH open AS (
            SELECT device_id, golioth_device_id FROM device_conflicts
            WHERE service_id = %(service)s AND status = 'pending'
        )
        -- One pass over the links, flipping those whose status is wrong (no join of the table to
        -- itself: a third of the time at 100k links). Two IN lists (each hashed once), not EXISTS
        -- with an OR: that scanned every open conflict for every link (seconds at 100k links).
        -- An IN list holding a NULL answers NULL for the ids it lacks: coalesce, "not open".
        UPDATE device_service_assignments a
        SET sync_status = CASE a.sync_status WHEN 'conflict' THEN 'synced' ELSE 'conflict' END, updated_at = now()
        WHERE a.service_id = %(service)s AND a.sync_status IN ('synced', 'conflict')
          AND (a.sync_status = 'conflict') <> coalesce(
              a.device_id IN (SELECT device_id FROM open) OR a.golioth_device_id IN (SELECT golioth_device_id FROM open),
              false)
        """,
        {"service": service_id},
    )


def get_conflict(conn: Connection, conflict_id: int) -> dict:
    row = conn.execute(sa.select(device_conflicts).where(device_conflicts.c.id == conflict_id)).mappings().first()
    if row is None:
        raise ConflictNotFound(f"no conflict with id {conflict_id}")
    return dict(row)


def resolve(conn: Connection, conflict_id: int, *, use: str, value=None, resolved_by: str) -> dict:
    """Record an operator's choice: use="local" | "remote" | "value" (with `value`).

    Only a pending conflict can be resolved, and the check and the write are one statement, so of
    two concurrent resolutions exactly one wins.
    """
    if use not in ("local", "remote", "value"):
        raise ValueError("use must be 'local', 'remote' or 'value'")
    current = get_conflict(conn, conflict_id)
    if current["conflict_type"] == "identity":
        raise ValueError(
            "identity conflicts are settled by editing hardware ids so that each device matches exactly "
            "one device on the other side; the next sync then links them and supersedes the conflict"
        )
    if use == "value" and current["conflict_type"] != "field":
        raise ValueError("a delete-vs-modify conflict takes --use local or --use remote, not a value")
    chosen = {"local": device_conflicts.c.local_value, "remote": device_conflicts.c.remote_value}.get(use)
    row = (
        conn.execute(
            device_conflicts.update()
            .where(device_conflicts.c.id == conflict_id, device_conflicts.c.status == "pending")
            .values(
                status="resolved",
                resolution=use,
                resolved_value=chosen if chosen is not None else sa.cast(value, device_conflicts.c.resolved_value.type),
                resolved_by=resolved_by,
                resolved_at=sa.func.now(),
            )
            .returning(*device_conflicts.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise ConflictNotPending(f"conflict {conflict_id} is already {current['status']}; nothing changed")
    return dict(row)


PENDING_COLUMNS = ["id", "device_id", "golioth_device_id", "field", "conflict_type", "local_value", "remote_value"]


def pending_summary(conn: Connection, organization_id: str, limit: int) -> tuple[int, pd.DataFrame]:
    """How many conflicts of the organization wait for an operator, and the newest `limit` of them."""
    count = conn.exec_driver_sql(
        "SELECT count(*) FROM device_conflicts WHERE organization_id = %(org)s AND status = 'pending'",
        {"org": organization_id},
    ).scalar_one()
    rows = conn.exec_driver_sql(
        """
        SELECT id, device_id::text, golioth_device_id, field, conflict_type, local_value, remote_value
        FROM device_conflicts WHERE organization_id = %(org)s AND status = 'pending'
        ORDER BY detected_at DESC, id DESC LIMIT %(limit)s
        """,
        {"org": organization_id, "limit": int(limit)},
    ).fetchall()
    return int(count), pd.DataFrame.from_records(rows, columns=PENDING_COLUMNS)


# -- the operators' view (actions/conflicts.py) --------------------------------------------------------

# Device name: the last agreed one (the local table may be in another database), else Golioth's
# (a conflict may only have one side).
_NAMED = """
    SELECT c.id, c.organization_id, c.service_id, c.device_id, c.golioth_device_id, c.field,
           c.conflict_type, c.base_value, c.local_value, c.remote_value, c.status, c.resolution,
           c.resolved_value, c.resolved_by, c.resolved_at, c.applied_at, c.detected_at, c.last_seen_at,
           c.sync_log_id, coalesce(a.base_snapshot ->> 'name', g.name) AS device_name
    FROM device_conflicts c
    LEFT JOIN device_service_assignments a ON a.service_id = c.service_id AND a.device_id = c.device_id
    LEFT JOIN golioth_inventory g ON g.organization_id = c.organization_id AND g.golioth_device_id = c.golioth_device_id
"""


def list_named(conn: Connection, organization_id: str | None, status: str | None, limit: int) -> list[dict]:
    """Conflicts with their device's name, newest first; None for the organization or status means all."""
    rows = conn.execute(
        sa.text(
            _NAMED
            + """
            WHERE (CAST(:org AS text) IS NULL OR c.organization_id = :org)
              AND (CAST(:status AS text) IS NULL OR c.status = :status)
            ORDER BY c.id DESC LIMIT :limit
            """
        ),
        {"org": organization_id, "status": status, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def find_named(conn: Connection, conflict_id: int) -> dict | None:
    """One conflict with its device's name, or None."""
    row = conn.execute(sa.text(_NAMED + " WHERE c.id = :id"), {"id": conflict_id}).mappings().first()
    return dict(row) if row else None


def count_by_status(conn: Connection, organization_id: str | None) -> dict[str, int]:
    """{status: conflicts}, of one organization or (None) of all; statuses with none are absent."""
    rows = conn.execute(
        sa.text(
            "SELECT status, count(*) FROM device_conflicts "
            "WHERE CAST(:org AS text) IS NULL OR organization_id = :org GROUP BY status"
        ),
        {"org": organization_id},
    ).all()
    return {status: int(n) for status, n in rows}


def pending_ids(conn: Connection, organization_id: str) -> list[int]:
    """The organization's pending conflicts, oldest first."""
    return list(
        conn.execute(
            sa.text("SELECT id FROM device_conflicts WHERE organization_id = :o AND status = 'pending' ORDER BY id"),
            {"o": organization_id},
        )
        .scalars()
        .all()
    )
