"""When a sync run fails or is cancelled, give its webhook events back to the queue (counting an
attempt: after N, they become dead letters).

The run closes its own golioth_sync_log row however it ends, from inside the op (engine RunLog):
success, a failed step, a refused inventory, a cancellation. These sensors only close the rows of
runs that could not: a worker killed outright (OOM, SIGKILL; run monitoring fails the run), or a run
that failed or was cancelled before its op started (then they open the row, to say so)."""

from typing import Any

import dagster as dg
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME as ASSET_JOB_NAME

from golioth_assets.core.vocabulary import RunTag, Trigger
from golioth_assets.defs.batch import batch_sync_job
from golioth_assets.defs.config import SYNC_OP
from golioth_assets.defs.jobs import full_sync_job, targeted_sync_job
from golioth_assets.defs.resources import DeviceStore
from golioth_assets.engine import sync as engine
from golioth_assets.store import services, sync_log, webhook_events

MAX_EVENT_ATTEMPTS = 5
# The jobs whose runs sync: ours, and Dagster's own asset job (the UI's *Materialize*, backfills,
# whose runs may span a range of organizations). The sensors watch every job of the code location
# (a selector cannot name the asset job without naming the location) and skip the others.
SYNC_JOBS = {full_sync_job.name, targeted_sync_job.name, batch_sync_job.name, ASSET_JOB_NAME}


def _failure_message(context: dg.RunFailureSensorContext) -> str:
    """Why the run failed, in the failed step's own words (the run failure event only says which
    steps failed): what an operator reads in golioth_sync_log and on a dead-lettered event."""
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is not None:
            cause = error.cause or error  # Dagster wraps the op's exception in a step execution error
            return f"{event.step_key}: {cause.message.strip()}"
    return context.failure_event.message or "run failed"


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records failed sync runs in golioth_sync_log and releases their webhook events.",
)
def sync_failure_sensor(context: dg.RunFailureSensorContext, store: DeviceStore) -> None:
    _record_stopped_run(context.dagster_run, _failure_message(context)[:2000], store)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records cancelled sync runs and releases their webhook events right away.",
)
def sync_cancel_sensor(context: dg.RunStatusSensorContext, store: DeviceStore) -> None:
    _record_stopped_run(context.dagster_run, "the run was cancelled", store)


def _record_stopped_run(run: dg.DagsterRun, error: str, store: DeviceStore) -> None:
    if run.job_name not in SYNC_JOBS:
        return
    org = run.tags.get(RunTag.org) or run.tags.get(RunTag.partition)
    db = store.engine
    if not org:  # a batched run, or a backfill's over a range: each organization has its own row
        with db.begin() as conn:
            sync_log.fail_running_rows_of(conn, run.run_id, error)
        return
    if org:
        with db.connect() as conn:
            row = sync_log.latest_run(conn, org, dagster_run_id=run.run_id)
        if row is None:
            try:
                service = store.service(org)
            except services.ServiceNotFound:
                service = None
            if service is not None:
                request = engine.SyncRequest(
                    org, dagster_run_id=run.run_id, trigger=Trigger.failure, device_ids=_requested_devices(run)
                )
                row = {"id": engine.begin(db, service, request)}
        if row is not None and row.get("status", "running") == "running":
            engine.finish(db, row["id"], error=error)
    claim = run.tags.get(RunTag.claim)
    if claim:
        with db.begin() as conn:
            webhook_events.release_failed(conn, claim, error, max_attempts=MAX_EVENT_ATTEMPTS)


def _requested_devices(run: dg.DagsterRun) -> list[str] | None:
    """The devices a targeted run was asked to sync (its run config), so that the row recorded for
    it is a targeted one: the schedule retries failed full syncs, not these."""
    run_config: Any = run.run_config or {}
    ids = (((run_config.get("ops") or {}).get(SYNC_OP) or {}).get("config") or {}).get("device_ids")
    return [str(i) for i in ids] if ids else None
