"""Turns the webhook inbox into targeted syncs.

Each tick claims pending events in bounded batches (a tick must finish well inside Dagster's 60 s),
one batch per organization, and requests one targeted sync per batch. The run key is derived from
the event ids (and their attempt count, so a retried batch gets a new key): run keys are
deduplicated forever, so the same events never start two runs. The run marks its events processed
when it finishes; the failure sensor puts them back (or, after N attempts, makes them dead letters).

No sensor cursor: the inbox's own status column is the cursor. Claiming an event is committed in the
same transaction that reads it, and a failed run's events come back as `failed` with ids below any
high-water mark, so a cursor Dagster stores after the tick could only be stale or wrong.
"""

import hashlib
import time
import uuid
from datetime import timedelta

import dagster as dg

from golioth_assets.core.vocabulary import RunTag, Trigger
from golioth_assets.defs.config import sync_run_config
from golioth_assets.defs.jobs import run_tags, targeted_sync_job
from golioth_assets.defs.partitions import ORGANIZATIONS
from golioth_assets.defs.resources import DeviceStore
from golioth_assets.store import webhook_events

BATCH_EVENTS = 500  # per organization per tick: one targeted run handles at most this many events
TICK_BUDGET_SECONDS = 20.0
STALE_CLAIM = timedelta(minutes=30)


def run_key_for(organization_id: str, event_ids: list[int], attempt: int) -> str:
    digest = hashlib.sha1(",".join(map(str, sorted(event_ids))).encode()).hexdigest()[:16]
    return f"webhook:{organization_id}:{min(event_ids)}-{max(event_ids)}:{digest}:a{attempt}"


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
    target=targeted_sync_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Claims pending webhook events and requests one targeted sync per organization.",
)
def webhook_inbox_sensor(context: dg.SensorEvaluationContext, store: DeviceStore) -> dg.SensorResult:
    started = time.monotonic()
    partitions = set(context.instance.get_dynamic_partitions(ORGANIZATIONS))
    db = store.engine
    requests: list[dg.RunRequest] = []
    with db.begin() as conn:
        webhook_events.release_stale_claims(conn, STALE_CLAIM)
        orgs = webhook_events.organizations_with_work(conn)
    for org in orgs:
        if org not in partitions or time.monotonic() - started > TICK_BUDGET_SECONDS:
            continue
        token = f"claiming:{uuid.uuid4()}"
        with db.begin() as conn:
            groups = webhook_events.claim_pending(conn, limit=BATCH_EVENTS, claimed_by=token, organization_id=org)
            if not groups:
                continue
            event_ids = [i for g in groups for i in g.event_ids]
            attempt = max(g.attempts for g in groups)
            key = _unused_run_key(context.instance, run_key_for(org, event_ids, attempt))
            # The run's key is the claim: the run marks exactly these events processed (or failed).
            webhook_events.rename_claim(conn, token, key)
        device_ids = sorted({d for g in groups for d in g.golioth_device_ids})
        requests.append(
            dg.RunRequest(
                run_key=key,
                partition_key=org,
                run_config=sync_run_config(device_ids=device_ids),
                tags=run_tags(org, Trigger.webhook, **{RunTag.claim: key}),
            )
        )
    return dg.SensorResult(run_requests=requests)
