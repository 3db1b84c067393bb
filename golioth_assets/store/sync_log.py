"""The audit trail: one `golioth_sync_log` row per run, one entry per changed or failed device, and
the run's plan (`sync_plan`) so that later steps, dry runs and operators can read it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.core.vocabulary import RunStatus
from golioth_assets.store.bulk import source
from golioth_assets.store.schema import golioth_sync_log

COUNT_COLUMNS = (
    "fetched_remote",
    "fetched_local",
    "created_local",
    "updated_local",
    "deleted_local",
    "observed_local",
    "created_remote",
    "updated_remote",
    "deleted_remote",
    "conflicts",
    "failures",
    "skipped",
    "api_requests",
    "api_retries",
)


def start_run(
    conn: Connection,
    *,
    organization_id: str,
    service_id: int | None,
    direction: str,
    policy: str,
    trigger: str = "manual",
    dry_run: bool = False,
    scope: Sequence[str] | None = None,
    dagster_run_id: str | None = None,
    details: Mapping | None = None,
) -> int:
    extra = {"details": dict(details)} if details is not None else {}
    return conn.execute(
        golioth_sync_log.insert()
        .values(
            organization_id=organization_id,
            service_id=service_id,
            direction=direction,
            policy=policy,
            trigger=trigger,
            dry_run=dry_run,
            scope=list(scope) if scope is not None else None,
            dagster_run_id=dagster_run_id,
            **extra,
        )
        .returning(golioth_sync_log.c.id)
    ).scalar_one()


def add_counts(conn: Connection, sync_log_id: int, counts: Mapping[str, int]) -> None:
    """Add to a run's counters (steps in different processes each add their own)."""
    values = {k: golioth_sync_log.c[k] + int(v) for k, v in counts.items() if k in COUNT_COLUMNS and v}
    if values:
        conn.execute(golioth_sync_log.update().where(golioth_sync_log.c.id == sync_log_id).values(**values))


def set_details(conn: Connection, sync_log_id: int, details: Mapping) -> None:
    conn.execute(
        golioth_sync_log.update()
        .where(golioth_sync_log.c.id == sync_log_id)
        .values(details=golioth_sync_log.c.details.op("||")(sa.cast(dict(details), golioth_sync_log.c.details.type)))
    )


def finish_run(conn: Connection, sync_log_id: int, *, status: str, error: str | None = None) -> None:
    conn.execute(
        golioth_sync_log.update()
        .where(golioth_sync_log.c.id == sync_log_id)
        .values(status=status, error=error, finished_at=sa.func.now())
    )


def close_run(
    conn: Connection, sync_log_id: int, *, error: str | None = None, counts: Mapping[str, int] | None = None
) -> dict:
    """Finish a run in one statement: add its last counts, set its status (failed with an error,
    partial when device writes failed, else success) and return the closed row."""
    table = golioth_sync_log.c
    added = {k: int(v) for k, v in (counts or {}).items() if k in COUNT_COLUMNS and v}
    status = sa.case(
        (sa.literal(error is not None), RunStatus.failed.value),
        (table.failures + added.get("failures", 0) > 0, RunStatus.partial.value),
        else_=RunStatus.success.value,
    )
    row = conn.execute(
        golioth_sync_log.update()
        .where(table.id == sync_log_id)
        .values(status=status, error=error, finished_at=sa.func.now(), **{k: table[k] + v for k, v in added.items()})
        .returning(*golioth_sync_log.c)
    )
    return dict(row.mappings().one())


def get_run(conn: Connection, sync_log_id: int) -> dict:
    row = conn.execute(sa.select(golioth_sync_log).where(golioth_sync_log.c.id == sync_log_id)).mappings().one()
    return dict(row)


def find_run(conn: Connection, sync_log_id: int) -> dict | None:
    row = conn.execute(sa.select(golioth_sync_log).where(golioth_sync_log.c.id == sync_log_id)).mappings().first()
    return dict(row) if row else None


def runs_of(conn: Connection, organization_id: str, limit: int) -> list[dict]:
    """The organization's runs, newest first."""
    query = (
        sa.select(golioth_sync_log)
        .where(golioth_sync_log.c.organization_id == organization_id)
        .order_by(golioth_sync_log.c.id.desc())
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(query).mappings()]


def latest_run(conn: Connection, organization_id: str, *, dagster_run_id: str | None = None) -> dict | None:
    query = sa.select(golioth_sync_log).where(golioth_sync_log.c.organization_id == organization_id)
    if dagster_run_id is not None:
        query = query.where(golioth_sync_log.c.dagster_run_id == dagster_run_id)
    row = conn.execute(query.order_by(golioth_sync_log.c.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


def insert_entries(conn: Connection, sync_log_id: int, organization_id: str, entries: Iterable[dict]) -> int:
    """Per-device entries: device_id, golioth_device_id, side, action, status, changes, error, changed_by."""
    entries = list(entries)
    if not entries:
        return 0
    from_item, staged = source(conn, entries)
    return conn.exec_driver_sql(
        f"""
        INSERT INTO golioth_sync_log_entries (sync_log_id, organization_id, device_id, golioth_device_id,
                                              side, action, status, changes, error, changed_by)
        SELECT %(log)s, %(org)s, s.doc->>'device_id', s.doc->>'golioth_device_id',
               s.doc->>'side', s.doc->>'action', coalesce(s.doc->>'status', 'ok'),
               coalesce(s.doc->'changes', '{{}}'::jsonb), s.doc->>'error', s.doc->>'changed_by'
        FROM {from_item}
        """,
        {**staged, "log": sync_log_id, "org": organization_id},
    ).rowcount


PLAN_COLUMNS = [
    "id",
    "device_id",
    "golioth_device_id",
    "field",
    "action",
    "side",
    "old_value",
    "new_value",
    "kind",
    "reason",
    "status",
    "error",
    "conflict_id",
    "changed_by",
]


def save_plan(conn: Connection, sync_log_id: int, organization_id: str, table_rows: pd.DataFrame) -> int:
    """Store a decoded plan (see engine/plan_table.py): one row per device, field and action."""
    if table_rows.empty:
        return 0
    from_item, staged = source(conn, table_rows)
    return conn.exec_driver_sql(
        f"""
        INSERT INTO sync_plan (sync_log_id, organization_id, device_id, golioth_device_id, field, action,
                               side, old_value, new_value, kind, reason, status, conflict_id, changed_by)
        -- conflict_id goes through numeric: pandas writes 3.0 when the column also holds nulls.
        SELECT %(log)s, %(org)s, s.doc->>'device_id', s.doc->>'golioth_device_id', s.doc->>'field',
               s.doc->>'action', s.doc->>'side', s.doc->'old_value', s.doc->'new_value', s.doc->>'kind', s.doc->>'reason',
               s.doc->>'status', (s.doc->>'conflict_id')::numeric::bigint, s.doc->>'changed_by'
        FROM {from_item}
        """,
        {**staged, "log": sync_log_id, "org": organization_id},
    ).rowcount


def load_plan(conn: Connection, sync_log_id: int, *, side: str | None = None) -> pd.DataFrame:
    sql = """
        SELECT id, device_id, golioth_device_id, field, action, side, old_value, new_value, kind, reason,
               status, error, conflict_id, changed_by
        FROM sync_plan WHERE sync_log_id = %(log)s
    """
    params: dict = {"log": sync_log_id}
    if side is not None:
        sql += " AND side = %(side)s"
        params["side"] = side
    rows = conn.exec_driver_sql(sql + " ORDER BY id", params).fetchall()
    frame = pd.DataFrame.from_records(rows, columns=PLAN_COLUMNS)
    # Keep JSON values as Python objects with None for null (pandas would infer strings and NaN).
    for column in ("device_id", "golioth_device_id", "old_value", "new_value", "error", "changed_by", "conflict_id"):
        frame[column] = pd.Series([r[PLAN_COLUMNS.index(column)] for r in rows], index=frame.index, dtype=object)
    return frame


def mark_plan(conn: Connection, updates: Iterable[dict]) -> int:
    """Set status/error on plan rows: id, status, error."""
    updates = list(updates)
    if not updates:
        return 0
    from_item, staged = source(conn, updates)
    return conn.exec_driver_sql(
        f"""
        UPDATE sync_plan p SET status = s.doc->>'status', error = s.doc->>'error'
        FROM {from_item} WHERE p.id = (s.doc->>'id')::bigint
        """,
        staged,
    ).rowcount


def last_full_sync_starts(conn: Connection) -> list[tuple[str, int, float | None]]:
    """(organization, interval seconds, epoch of its last full sync's start or None) for each
    enabled service; a full sync is neither a dry run nor targeted."""
    rows = conn.exec_driver_sql(
        """
        SELECT s.organization_id, s.interval_seconds,
               extract(epoch FROM max(l.started_at)) AS last_started
        FROM device_services s
        LEFT JOIN golioth_sync_log l
          ON l.organization_id = s.organization_id AND NOT l.dry_run AND l.scope IS NULL
        WHERE s.sync_enabled
        GROUP BY s.organization_id, s.interval_seconds
        ORDER BY s.organization_id
        """
    ).all()
    return [(org, int(interval), None if last is None else float(last)) for org, interval, last in rows]


def fail_orphaned_runs(conn: Connection, organization_id: str, error: str) -> int:
    """Close the organization's rows still `running` as failed. Only for a caller holding the
    organization's sync lock (store/org_lock.py): every live sync holds it, so such a row belongs to
    a process that died mid-sync (a SIGKILLed worker) and nothing else will ever close it."""
    return conn.execute(
        golioth_sync_log.update()
        .where(golioth_sync_log.c.organization_id == organization_id, golioth_sync_log.c.status == "running")
        .values(status="failed", error=error, finished_at=sa.func.now())
    ).rowcount


def fail_running_rows_of(conn: Connection, dagster_run_id: str, error: str) -> int:
    """Close as failed the rows a Dagster run left `running` (a batched run's organizations): the
    run has ended, its worker and the organization locks it held with it."""
    return conn.execute(
        golioth_sync_log.update()
        .where(golioth_sync_log.c.dagster_run_id == dagster_run_id, golioth_sync_log.c.status == "running")
        .values(status="failed", error=error, finished_at=sa.func.now())
    ).rowcount


def failed_full_syncs(conn: Connection) -> list[tuple[str, int, str]]:
    """(organization, log id, trigger) of each enabled service whose latest full sync (not a dry run,
    not targeted) failed: the schedule retries it on its own."""
    rows = conn.exec_driver_sql(
        """
        SELECT DISTINCT ON (l.organization_id) l.organization_id, l.id, l.trigger, l.status
        FROM golioth_sync_log l JOIN device_services s
          ON s.organization_id = l.organization_id AND s.sync_enabled
        WHERE NOT l.dry_run AND l.scope IS NULL
        ORDER BY l.organization_id, l.id DESC
        """
    ).all()
    return [(org, int(log_id), str(trigger)) for org, log_id, trigger, status in rows if status == "failed"]


UNCONFIRMED_COLUMNS = ["device_id", "golioth_device_id", "field", "action", "new_value"]


def unconfirmed_remote_writes(conn: Connection, service_id: int) -> pd.DataFrame:
    """Golioth writes that may have landed without their bookkeeping: creates planned or failed, and
    updates still planned, in the service's runs (not dry runs) since its last successful one."""
    rows = conn.exec_driver_sql(
        """
        SELECT p.device_id::text, p.golioth_device_id, p.field, p.action, p.new_value
        FROM sync_plan p JOIN golioth_sync_log l ON l.id = p.sync_log_id
        WHERE l.service_id = %(service)s AND NOT l.dry_run AND p.side = 'remote'
          AND l.id > coalesce((SELECT max(id) FROM golioth_sync_log
                               WHERE service_id = %(service)s AND status = 'success' AND NOT dry_run), 0)
          AND ((p.action = 'create' AND p.status IN ('planned', 'failed'))
               OR (p.action = 'update' AND p.status = 'planned'))
        ORDER BY p.id
        """,
        {"service": service_id},
    ).fetchall()
    return pd.DataFrame(rows, columns=UNCONFIRMED_COLUMNS)
