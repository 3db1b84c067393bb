"""Reads for the status views (actions/status.py): one row per service with its counts, each
organization's last run, and the database's clock (the one run timestamps come from)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_SERVICES = """
    SELECT s.id, s.organization_id, s.name, s.sync_enabled, s.interval_seconds, s.direction,
           s.conflict_policy,
           (SELECT max(l.started_at) FROM golioth_sync_log l
            WHERE l.organization_id = s.organization_id AND NOT l.dry_run AND l.scope IS NULL)
               AS last_full_sync_started,
           (SELECT count(*) FROM device_service_assignments a WHERE a.service_id = s.id) AS linked,
           (SELECT count(*) FROM device_service_assignments a
            WHERE a.service_id = s.id AND a.sync_status = 'failed') AS failed_links,
           (SELECT count(*) FROM device_conflicts c
            WHERE c.service_id = s.id AND c.status = 'pending') AS pending_conflicts,
           (SELECT count(*) FROM device_conflicts c
            WHERE c.service_id = s.id AND c.status = 'resolved') AS awaiting_apply,
           (SELECT count(*) FROM webhook_events w
            WHERE w.service_id = s.id AND w.status = 'dead') AS dead_letters
    FROM device_services s
    WHERE CAST(:org AS text) IS NULL OR s.organization_id = :org
    ORDER BY s.organization_id
"""

_LAST_RUNS = """
    SELECT DISTINCT ON (organization_id) * FROM golioth_sync_log
    WHERE CAST(:org AS text) IS NULL OR organization_id = :org
    ORDER BY organization_id, id DESC
"""


def database_now(conn: Connection) -> datetime:
    return conn.execute(sa.text("SELECT now()")).scalar_one()


def service_counts(conn: Connection, organization_id: str | None) -> list[dict]:
    """Each service (of one organization, or None: all) with its settings, the start of its last
    full sync, and its counts of links, failed links, pending and resolved conflicts, dead letters."""
    return [dict(r) for r in conn.execute(sa.text(_SERVICES), {"org": organization_id}).mappings()]


def last_runs(conn: Connection, organization_id: str | None) -> dict[str, dict]:
    """{organization: its newest golioth_sync_log row}."""
    rows = conn.execute(sa.text(_LAST_RUNS), {"org": organization_id}).mappings()
    return {r["organization_id"]: dict(r) for r in rows}
