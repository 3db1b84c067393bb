"""Periodic bidirectional sync: every minute, request a full sync for each organization that is due.

A service is due when no full sync (not a dry run, not targeted) started within its own interval,
and none of its runs is queued or in progress. The run key names the interval slot, so a slot never
yields two runs.
"""


import dagster as dg
import sqlalchemy as sa

from golioth_assets.defs.jobs import ORG_TAG, full_sync_job, run_tags
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def due_organizations(conn, now_epoch: float) -> list[tuple[str, int]]:
    """(organization, slot) for enabled services whose last full sync is older than their interval."""
    rows = conn.execute(
        sa.text(
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
        )
    ).all()
    return [
        (org, int(now_epoch // interval))
        for org, interval, last in rows
        if last is None or now_epoch - float(last) >= interval
    ]


@dg.schedule(
    cron_schedule="* * * * *",
    target=full_sync_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each minute, a full sync for every organization whose interval has passed.",
)
def golioth_sync_schedule(context: dg.ScheduleEvaluationContext, store: DeviceStore):
    now = context.scheduled_execution_time.timestamp()
    partitions = set(context.instance.get_dynamic_partitions(organizations.name))
    with store.migrated_engine().connect() as conn:
        due = due_organizations(conn, now)
    requests = []
    for org, slot in due:
        if org not in partitions:
            continue  # the partition sensor adds it within a minute
        busy = context.instance.get_run_records(
            dg.RunsFilter(tags={ORG_TAG: org}, statuses=IN_FLIGHT), limit=1
        )
        if busy:
            continue
        requests.append(
            dg.RunRequest(run_key=f"schedule:{org}:{slot}", partition_key=org, tags=run_tags(org, "schedule"))
        )
    if not requests:
        return dg.SkipReason(f"no organization due ({len(due)} due but busy or not yet partitioned)")
    return requests

