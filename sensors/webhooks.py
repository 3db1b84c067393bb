"""The inbox's sensor: webhook registry events and captured local changes become targeted syncs.

One path for every live change. Each tick
1. moves captured local changes (change capture's outbox, in each captured table's database) into
   the inbox (store/local_changes.py), where they join the webhook receiver's registry events;
2. claims pending events in bounded batches, one batch per organization, and requests one targeted
   sync per batch (a full sync when the batch touches more than TARGETED_DEVICES devices), tagged
   with its trigger: `local_change`, `webhook`, or `live` for a mix;
3. when there was nothing to request, waits up to WAIT_SECONDS for something new (one cheap probe
   per database every POLL_SECONDS) and, as soon as it comes and has settled (nothing newer for
   one poll, so that a burst makes one run), does 1 and 2 again and returns.

Why the wait: the sensor daemon evaluates sensors at most every 5 s (dagster/_daemon/sensor.py,
MIN_INTERVAL_LOOP_TIME, not configurable), and a tick's run requests are submitted only when it
returns. An edit that waited for the next tick would wait 2.5 s on average before its run was even
requested; a tick that spends its idle time watching answers within POLL_SECONDS. The whole tick
stays well inside Dagster's 60 s (TICK_BUDGET_SECONDS bounds the work, WAIT_SECONDS the wait).

The run key is derived from the event ids (and their attempt count, so a retried batch gets a new
key): run keys are deduplicated forever, so the same events never start two runs. The run marks its
events processed when it finishes; the failure sensor puts them back (or, after N attempts, makes
them dead letters).

No sensor cursor: the inbox's own status column is the cursor. Claiming an event is committed in the
same transaction that reads it, and a failed run's events come back as `failed` with ids below any
high-water mark, so a cursor Dagster stores after the tick could only be stale or wrong.
"""

import hashlib
import time
import uuid
from collections.abc import Collection
from datetime import timedelta

import dagster as dg
from sqlalchemy.engine import Engine

from golioth_assets.core.vocabulary import RunTag, Trigger
from golioth_assets.defs.config import sync_run_config
from golioth_assets.defs.jobs import full_sync_job, run_tags, targeted_sync_job
from golioth_assets.defs.partitions import ORGANIZATIONS
from golioth_assets.defs.resources import DeviceStore
from golioth_assets.store import local_changes, webhook_events

BATCH_EVENTS = 5000  # per organization per tick: one run handles at most this many events
# A batch touching more devices than this runs as a full sync of the organization: its device ids
# would make a large run config, and one listing is cheaper than that many single-device reads.
TARGETED_DEVICES = 500
COLLECT_CHANGES = 2000  # captured changes moved into the inbox per organization per pass
TICK_BUDGET_SECONDS = 20.0
WAIT_SECONDS = 4.5  # an idle tick watches this long (the daemon's loop comes back after 5 s)
POLL_SECONDS = 0.2
SETTLE_SECONDS = 1.0  # once something arrived, wait this long at most for the rest of its burst
STALE_CLAIM = timedelta(minutes=30)


def run_key_for(organization_id: str, event_ids: list[int], attempt: int, trigger: str = Trigger.webhook) -> str:
    digest = hashlib.sha1(",".join(map(str, sorted(event_ids))).encode()).hexdigest()[:16]
    return f"{trigger}:{organization_id}:{min(event_ids)}-{max(event_ids)}:{digest}:a{attempt}"


def _unused_run_key(instance: dg.DagsterInstance, key: str) -> str:
    """`key`, or `key:rN` if a run already used it. Events replayed from the dead letters start
    again at attempt 0, so their natural key is one Dagster has seen; the daemon would skip that
    request forever (run keys are deduplicated forever) and the events would sit claimed."""
    candidate, n = key, 0
    while instance.get_run_records(dg.RunsFilter(tags={RunTag.run_key: candidate}), limit=1):
        n += 1
        candidate = f"{key}:r{n}"
    return candidate


@dg.sensor(
    jobs=[targeted_sync_job, full_sync_job],
    minimum_interval_seconds=1,  # the daemon's loop (5 s) paces it; a tick that waited is due at once
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Moves captured local changes into the inbox, claims pending inbox events (local changes and "
    "webhook registry events) and requests one targeted sync per organization.",
)
def webhook_inbox_sensor(context: dg.SensorEvaluationContext, store: DeviceStore) -> dg.SensorResult:
    started = time.monotonic()
    partitions = set(context.instance.get_dynamic_partitions(ORGANIZATIONS))
    db = store.engine
    with db.begin() as conn:
        webhook_events.release_stale_claims(conn, STALE_CLAIM)
    tables = local_changes.captured_tables(db, partitions, deadline=started + TICK_BUDGET_SECONDS)
    watched = _latest(db, tables, started)
    requests = _collect_and_claim(context.instance, db, tables, partitions, started)
    while not requests and time.monotonic() - started < WAIT_SECONDS:
        time.sleep(POLL_SECONDS)  # a poll interval: one cheap probe per database
        latest = _latest(db, tables, started)
        if latest != watched:
            watched = _settled(db, tables, latest, started)
            requests = _collect_and_claim(context.instance, db, tables, partitions, started)
    if requests:
        return dg.SensorResult(run_requests=requests)
    # The tick list in the UI says why a tick requested nothing, and that it did watch.
    skipped = f"nothing new in the inbox or in {len(tables)} captured table(s) within {WAIT_SECONDS:g} s"
    return dg.SensorResult(run_requests=[], skip_reason=skipped)


def _settled(db: Engine, tables: list[local_changes.CapturedTable], latest: tuple, started: float) -> tuple:
    """Wait until nothing new arrived for one poll (at most SETTLE_SECONDS): a burst (a bulk edit,
    a batch of webhook deliveries) then makes one run, not one for its first change and another
    for the rest."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        again = _latest(db, tables, started)
        if again == latest:
            break
        latest = again
    return latest


def _latest(db: Engine, tables: list[local_changes.CapturedTable], started: float) -> tuple:
    """What the wait watches: the newest claimable inbox event and each outbox's newest change."""
    with db.connect() as conn:
        inbox = webhook_events.latest_claimable_id(conn)
    return inbox, local_changes.latest_change_ids(tables, deadline=started + TICK_BUDGET_SECONDS)


def _collect_and_claim(
    instance: dg.DagsterInstance,
    db: Engine,
    tables: list[local_changes.CapturedTable],
    partitions: Collection[str],
    started: float,
) -> list[dg.RunRequest]:
    local_changes.collect_all(db, tables, COLLECT_CHANGES, deadline=started + TICK_BUDGET_SECONDS)
    with db.connect() as conn:
        orgs = webhook_events.organizations_with_work(conn)
    requests = []
    for org in orgs:
        if org not in partitions or time.monotonic() - started > TICK_BUDGET_SECONDS:
            continue
        request = _claim(instance, db, org)
        if request is not None:
            requests.append(request)
    return requests


def _claim(instance: dg.DagsterInstance, db: Engine, org: str) -> dg.RunRequest | None:
    """Claim one batch of this organization's events for one targeted run."""
    token = f"claiming:{uuid.uuid4()}"
    with db.begin() as conn:
        groups = webhook_events.claim_pending(conn, limit=BATCH_EVENTS, claimed_by=token, organization_id=org)
        if not groups:
            return None
        [group] = groups  # one service per organization
        key = _unused_run_key(instance, run_key_for(org, group.event_ids, group.attempts, group.trigger))
        # The run's key is the claim: the run marks exactly these events processed (or failed).
        webhook_events.rename_claim(conn, token, key)
    targeted = len(group.scope) <= TARGETED_DEVICES
    return dg.RunRequest(
        run_key=key,
        job_name=(targeted_sync_job if targeted else full_sync_job).name,
        partition_key=org,
        run_config=sync_run_config(device_ids=group.scope) if targeted else {},
        tags=run_tags(org, group.trigger, **{RunTag.claim: key}),
    )
