"""Periodic bidirectional sync: every minute, request batched full syncs of the organizations that are due.

A service is due when no full sync (not a dry run, not targeted) started within its own interval,
and no full sync of it is queued or in progress (one query over the run records finds them all).
The run key names the tick and the batch. The due organizations go into batched runs (defs/batch.py) of up to
BATCH_SIZE each, so a round of a thousand organizations is ten runs, not a thousand run workers.

The schedule ticks on the minute and a run's sync starts some seconds after the tick that requested
it (queue, run worker start-up). So "within its interval" allows LAUNCH_SLACK_SECONDS: measured
strictly, a 60 s interval would find its last sync 57 s old at the next tick and run every 2 minutes.
"""

import dagster as dg

from golioth_assets.core.vocabulary import RunTag, SyncKind, Trigger
from golioth_assets.defs.batch import batch_organizations, batch_run_config, batch_sync_job, batch_tags
from golioth_assets.defs.partitions import ORGANIZATIONS
from golioth_assets.defs.resources import DeviceStore
from golioth_assets.store.sync_log import failed_full_syncs, last_full_sync_starts

LAUNCH_SLACK_SECONDS = 50  # < the 60 s tick, so a sync is never requested a tick early
BATCH_SIZE = 100  # organizations per batched run at most: ~3 s of run start-up shared by 100 syncs
# ...and a round spreads over at least this many runs (of MIN_BATCH or more): a run worker is one
# Python process, one core's worth of work, so a round of 100 in one run would leave cores idle.
MIN_RUNS, MIN_BATCH = 4, 10

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


NOT_FULL = {SyncKind.targeted.value, SyncKind.resolve.value}


def _full_syncs_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Organizations a full sync is queued or running for: single-organization runs (matched on
    dagster/partition: launchpad runs carry it but no golioth-sync kind tag, so any partitioned run
    counts unless it says it is targeted or a resolve), a backfill's runs (each names the first and
    last organization of its range) and batched runs (their run config names theirs). One query for
    the whole fleet, whatever its size. Targeted (live) runs don't count: with steady traffic one is
    nearly always in flight, and the organization's lock makes a full sync and a targeted one take
    turns."""
    busy: set[str] = set()
    ranges: list[tuple[str, str]] = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        if run.tags.get(RunTag.kind) in NOT_FULL:
            continue
        if run.tags.get(RunTag.partition):
            busy.add(run.tags[RunTag.partition])
        elif run.tags.get(RunTag.range_start):
            ranges.append((run.tags[RunTag.range_start], run.tags.get(RunTag.range_end, run.tags[RunTag.range_start])))
        else:
            busy.update(batch_organizations(run.run_config))
    if ranges:
        busy.update(_in_ranges(list(instance.get_dynamic_partitions(ORGANIZATIONS)), ranges))
    return busy


def _in_ranges(partitions: list[str], ranges: list[tuple[str, str]]) -> set[str]:
    """The organizations between each range's first and last, in the partitions' own order (the
    order Dagster reads a range of dynamic partitions in)."""
    where = {org: i for i, org in enumerate(partitions)}
    covered: set[str] = set()
    for start, end in ranges:
        covered.update({start, end})  # even one no longer partitioned
        if start in where and end in where:
            covered.update(partitions[where[start] : where[end] + 1])
    return covered


def batches(orgs: list[str]) -> list[list[str]]:
    """`orgs` in runs of at most BATCH_SIZE, over at least MIN_RUNS runs when there are enough of
    them for batches of MIN_BATCH: sizes differ by one at most."""
    count = max(-(-len(orgs) // BATCH_SIZE), min(MIN_RUNS, len(orgs) // MIN_BATCH), 1)
    ordered = sorted(orgs)
    return [chunk for chunk in (ordered[i::count] for i in range(count)) if chunk]


def batch_requests(orgs: list[str], tick: float, trigger: str = Trigger.schedule, key: str = "schedule") -> list:
    """Due organizations as batched runs (`batches`); the run key names the tick and the batch, so
    a tick never yields a batch twice."""
    return [
        dg.RunRequest(run_key=f"{key}:{int(tick)}:{n}", run_config=batch_run_config(chunk), tags=batch_tags(trigger))
        for n, chunk in enumerate(batches(orgs))
    ]


def retry_requests(conn, partitions: set[str], busy: set[str]) -> list[dg.RunRequest]:
    """An organization whose latest full sync failed is retried once, on its own (a batch of one),
    keyed by the failed row so it is never retried twice; a failed retry waits for its interval."""
    return [
        dg.RunRequest(
            run_key=f"retry:{org}:{log_id}",
            run_config=batch_run_config([org]),
            tags=batch_tags(Trigger.retry),
        )
        for org, log_id, trigger in failed_full_syncs(conn)
        if trigger != Trigger.retry and org in partitions and org not in busy
    ]


@dg.schedule(
    cron_schedule="* * * * *",
    target=batch_sync_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each minute, one batched full sync of the organizations whose interval has passed (in runs "
    "of up to 100), and a retry of its own for each whose last full sync failed.",
)
def golioth_sync_schedule(context: dg.ScheduleEvaluationContext, store: DeviceStore):
    now = context.scheduled_execution_time.timestamp()
    partitions = set(context.instance.get_dynamic_partitions(ORGANIZATIONS))
    busy = _full_syncs_in_flight(context.instance)
    with store.engine.connect() as conn:
        due = due_organizations(conn, now)
        retries = retry_requests(conn, partitions, busy)
    retried = {org for r in retries for org in batch_organizations(r.run_config)}
    # Not partitioned yet: the partition sensor adds it within a minute.
    ready = [org for org, _slot in due if org in partitions and org not in busy and org not in retried]
    requests = batch_requests(ready, now) + retries
    if not requests:
        return dg.SkipReason(f"no organization due ({len(due)} due but busy or not yet partitioned)")
    return requests
