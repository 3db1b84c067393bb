"""Periodic bidirectional sync: every minute, request a full sync for each organization that is due.

A service is due when no full sync (not a dry run, not targeted) started within its own interval,
and no full sync of it is queued or in progress. The run key names the interval slot, so a slot
never yields two runs.

The schedule ticks on the minute and a run's sync starts some seconds after the tick that requested
it (queue, run worker start-up). So "within its interval" allows LAUNCH_SLACK_SECONDS: measured
strictly, a 60 s interval would find its last sync 57 s old at the next tick and run every 2 minutes.
"""

import dagster as dg

from golioth_assets.core.vocabulary import RunTag, SyncKind, Trigger
from golioth_assets.defs.jobs import full_sync_job, run_tags
from golioth_assets.defs.partitions import ORGANIZATIONS
from golioth_assets.defs.resources import DeviceStore
from golioth_assets.store.sync_log import last_full_sync_starts

LAUNCH_SLACK_SECONDS = 50  # < the 60 s tick, so a sync is never requested a tick early

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def due_organizations(conn, now_epoch: float) -> list[tuple[str, int]]:
    """(organization, slot) for enabled services whose last full sync is older than their interval."""
    rows = last_full_sync_starts(conn)
    return [
        (org, int(now_epoch // interval))
        for org, interval, last in rows
        if last is None or now_epoch - float(last) >= interval - LAUNCH_SLACK_SECONDS
    ]


def _full_sync_in_flight(instance: dg.DagsterInstance, org: str) -> bool:
    """A sync of the whole organization is queued or running. Matched on dagster/partition, not our
    org tag: launchpad runs and backfills carry only the former. Targeted (webhook) runs don't
    count: with steady webhook traffic one is nearly always in flight, and the per-organization
    concurrency limit already queues the full sync behind it."""
    records = instance.get_run_records(dg.RunsFilter(tags={RunTag.partition: org}, statuses=IN_FLIGHT), limit=50)
    return any(r.dagster_run.tags.get(RunTag.kind) != SyncKind.targeted for r in records)


@dg.schedule(
    cron_schedule="* * * * *",
    target=full_sync_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each minute, a full sync for every organization whose interval has passed.",
)
def golioth_sync_schedule(context: dg.ScheduleEvaluationContext, store: DeviceStore):
    now = context.scheduled_execution_time.timestamp()
    partitions = set(context.instance.get_dynamic_partitions(ORGANIZATIONS))
    with store.engine.connect() as conn:
        due = due_organizations(conn, now)
    requests = []
    for org, slot in due:
        if org not in partitions:
            continue  # the partition sensor adds it within a minute
        if _full_sync_in_flight(context.instance, org):
            continue
        requests.append(
            dg.RunRequest(run_key=f"schedule:{org}:{slot}", partition_key=org, tags=run_tags(org, Trigger.schedule))
        )
    if not requests:
        return dg.SkipReason(f"no organization due ({len(due)} due but busy or not yet partitioned)")
    return requests
