"""Time series for the console's charts, each one set-based query over our own tables.

Every series is bucketed into fixed-width time buckets (`date_bin`) from `since` to now, so a chart
has at most a few hundred points whatever the traffic. `organization_id=None` is the whole fleet.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy.engine import Connection

_ORG = "(CAST(%(org)s AS text) IS NULL OR {column} = %(org)s)"


def _params(organization_id: str | None, since: datetime, bucket: timedelta) -> dict:
    return {"org": organization_id, "since": since, "bucket": bucket}


def sync_runs(conn: Connection, organization_id: str | None, since: datetime, bucket: timedelta) -> pd.DataFrame:
    """Finished syncs (dry runs left out: they write nothing) per bucket: how many, the median and
    the slowest duration in seconds, and the changes written on each side."""
    rows = conn.exec_driver_sql(
        f"""
        SELECT date_bin(%(bucket)s, started_at, %(since)s) AS bucket,
               count(*) AS runs,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
                   AS median_seconds,
               max(extract(epoch FROM finished_at - started_at)) AS max_seconds,
               sum(created_local + updated_local + deleted_local) AS local_changes,
               sum(created_remote + updated_remote + deleted_remote) AS remote_changes,
               count(*) FILTER (WHERE status = 'failed') AS failed
        FROM golioth_sync_log
        WHERE started_at >= %(since)s AND finished_at IS NOT NULL AND NOT dry_run
          AND {_ORG.format(column="organization_id")}
        GROUP BY 1 ORDER BY 1
        """,
        _params(organization_id, since, bucket),
    ).fetchall()
    columns = ["bucket", "runs", "median_seconds", "max_seconds", "local_changes", "remote_changes", "failed"]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for column in columns[1:]:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def pending_conflicts(
    conn: Connection, organization_id: str | None, since: datetime, bucket: timedelta
) -> pd.DataFrame:
    """How many conflicts were pending at the end of each bucket (`at`; the last one is now):
    detected by then, and not yet resolved or superseded (both set resolved_at)."""
    rows = conn.exec_driver_sql(
        f"""
        WITH ends AS (
            SELECT generate_series(%(since)s + %(bucket)s, now() + %(bucket)s, %(bucket)s) AS at
        )
        SELECT least(ends.at, now()) AS at, count(c.id) AS pending
        FROM ends
        LEFT JOIN device_conflicts c
          ON c.detected_at <= least(ends.at, now()) AND coalesce(c.resolved_at, 'infinity') > least(ends.at, now())
         AND {_ORG.format(column="c.organization_id")}
        GROUP BY ends.at ORDER BY ends.at
        """,
        _params(organization_id, since, bucket),
    ).fetchall()
    frame = pd.DataFrame.from_records(rows, columns=["at", "pending"])
    frame["pending"] = frame["pending"].astype(float)
    return frame


def webhook_events(conn: Connection, organization_id: str | None, since: datetime, bucket: timedelta) -> pd.DataFrame:
    """Webhook events received per bucket, by their status now (one column per status)."""
    rows = conn.exec_driver_sql(
        f"""
        SELECT date_bin(%(bucket)s, received_at, %(since)s) AS bucket, status, count(*) AS events
        FROM webhook_events
        WHERE received_at >= %(since)s AND {_ORG.format(column="organization_id")}
        GROUP BY 1, 2 ORDER BY 1
        """,
        _params(organization_id, since, bucket),
    ).fetchall()
    frame = pd.DataFrame.from_records(rows, columns=["bucket", "status", "events"])
    if frame.empty:
        return pd.DataFrame({"bucket": pd.Series(dtype="datetime64[ns, UTC]")})
    return frame.pivot_table(
        index="bucket", columns="status", values="events", aggfunc="sum", fill_value=0
    ).reset_index()


def organization_summary(conn: Connection, since: datetime) -> list[dict]:
    """One row per organization with a service, for the fleet view: its syncs since `since`
    (count, median and slowest seconds, changes per side, failed or partial runs), conflicts
    pending now, and webhook events received since `since` (all, and dead)."""
    rows = conn.exec_driver_sql(
        """
        WITH runs AS (
            SELECT organization_id, count(*) AS runs,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))
                       AS median_seconds,
                   max(extract(epoch FROM finished_at - started_at)) AS max_seconds,
                   sum(created_local + updated_local + deleted_local) AS local_changes,
                   sum(created_remote + updated_remote + deleted_remote) AS remote_changes,
                   count(*) FILTER (WHERE status IN ('failed', 'partial')) AS troubled
            FROM golioth_sync_log
            WHERE started_at >= %(since)s AND finished_at IS NOT NULL AND NOT dry_run
            GROUP BY organization_id
        ), pending AS (
            SELECT organization_id, count(*) AS pending FROM device_conflicts WHERE status = 'pending'
            GROUP BY organization_id
        ), events AS (
            SELECT organization_id, count(*) AS events, count(*) FILTER (WHERE status = 'dead') AS dead
            FROM webhook_events WHERE received_at >= %(since)s
            GROUP BY organization_id
        )
        SELECT s.organization_id, coalesce(r.runs, 0) AS runs, r.median_seconds, r.max_seconds,
               coalesce(r.local_changes, 0) AS local_changes, coalesce(r.remote_changes, 0) AS remote_changes,
               coalesce(r.troubled, 0) AS troubled, coalesce(p.pending, 0) AS pending,
               coalesce(e.events, 0) AS events, coalesce(e.dead, 0) AS dead
        FROM device_services s
        LEFT JOIN runs r USING (organization_id)
        LEFT JOIN pending p USING (organization_id)
        LEFT JOIN events e USING (organization_id)
        ORDER BY s.organization_id
        """,
        {"since": since},
    ).mappings()
    return [dict(r) for r in rows]
