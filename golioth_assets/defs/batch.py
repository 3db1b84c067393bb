"""Many organizations in one run: the batched full sync.

A round of the schedule (or a backfill-like request from the CLI) names many organizations in the
`batch` resource's run config. A backfill of the sync assets from the UI uses the same machinery:
its runs span ranges of partitions, and the multi-asset hands each range to `sync_partition_range`. The job has LANES ops; lane i syncs every LANES-th organization, so
under the in-process executor the lanes run one after another in the run worker (no process start
per organization), and under the Celery or Kubernetes executor each lane is a step of its own,
spread over the workers. Every lane is in the `golioth_api` pool.

Inside a lane, up to `parallel` organizations sync at once (threads: the work is Golioth requests
and PostgreSQL), each with its own client and its own bound (GoliothApi.max_concurrency), and each
under its organization's lock (store/org_lock.py): an organization that another sync holds is
reported busy, not failed, and is left for the next round. One organization's failure (a rejected
key, a deleted project, timeouts) closes its own log row as failed; the rest of the lane goes on.

Each organization is still its own partition: its six materializations and five check evaluations
are logged with `partition=<org>`, from the same MaterializeResults the single-organization op
yields (defs/steps.py: sync_results), so the UI, the console and the history show each one.
"""

import concurrent.futures as futures
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from pydantic import Field

from golioth_assets import settings
from golioth_assets.core.vocabulary import BatchOutcome, RunTag, SyncKind, Trigger
from golioth_assets.defs.config import SyncRunConfig
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.defs.steps import INVENTORY, sync_results
from golioth_assets.engine import run as sync_run
from golioth_assets.store import org_lock, sync_log

log = logging.getLogger(__name__)

LANES = 4  # steps per batched run: what a distributed executor spreads over its workers
BATCH_JOB = "golioth_batch_sync"
ORPHANED = "the sync's process died before it finished (found by the next sync that took the organization's lock)"


class SyncBatch(dg.ConfigurableResource):
    """Which organizations a batched run syncs (its run config), and how many at once per lane."""

    organizations: list[str] = Field(default_factory=list, description="The organizations (partitions) to sync.")
    # At most 6: each organization holds a pooled connection for its lock and uses another or two
    # while it syncs, and a process's pool has 15 (store/database.py).
    parallel: int = Field(default=4, ge=1, le=6, description="Organizations synced at once in one lane.")

    def lane(self, index: int) -> list[str]:
        return sorted(set(self.organizations))[index::LANES]


def batch_run_config(organizations: list[str], parallel: int | None = None) -> dict:
    """The run config of a batched run (`resources: batch: config: ...`)."""
    config: dict = {"organizations": sorted(set(organizations))}
    if parallel is not None:
        config["parallel"] = parallel
    SyncBatch(**config)  # fail here, at the caller
    return {"resources": {"batch": {"config": config}}}


def batch_organizations(run_config: Mapping[str, Any]) -> list[str]:
    """The organizations a batched run's config names (none for any other run)."""
    resources = run_config.get("resources") or {}
    return list(((resources.get("batch") or {}).get("config") or {}).get("organizations", []))


@dataclass
class Outcome:
    """One organization's part of a lane: its events (logged by the lane's own thread), and how it ended."""

    org: str
    status: BatchOutcome
    events: list = field(default_factory=list)
    error: str | None = None


def _as_events(org: str, result: dg.MaterializeResult) -> list:
    """A MaterializeResult of the single-organization op, as partition events any op may log."""
    assert result.asset_key is not None
    events: list = [dg.AssetMaterialization(asset_key=result.asset_key, partition=org, metadata=result.metadata)]
    for check in result.check_results or []:
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=check.asset_key or result.asset_key,
                check_name=str(check.check_name),
                passed=check.passed,
                metadata=check.metadata or {},
                severity=check.severity,
                partition=org,
            )
        )
    return events


@dataclass(frozen=True)
class Orders:
    """What every organization of one run is synced with: the run's id and tags, its config (a full
    sync with the services' own settings unless the launchpad said otherwise), and how long to wait
    for an organization another sync holds (0: report it busy at once)."""

    run_id: str
    tags: Mapping[str, str]
    config: SyncRunConfig = field(default_factory=SyncRunConfig)
    lock_wait_seconds: float = 0.0


def sync_one(org: str, store: DeviceStore, golioth: GoliothApi, orders: Orders) -> Outcome:
    """One organization of a batch, under its lock. Never raises: the outcome says how it ended."""
    outcome = Outcome(org, BatchOutcome.failed)
    try:
        with org_lock.organization_lock(store.engine, org, wait_seconds=orders.lock_wait_seconds):
            with store.engine.begin() as conn:
                sync_log.fail_orphaned_runs(conn, org, ORPHANED)
            request = orders.config.to_request(org, orders.run_id, orders.tags)
            run = sync_run.SyncRun(store.engine, store.service(org), request, open_client=golioth.client_for)
            for result in sync_results(run):
                outcome.events.extend(_as_events(org, result))
            outcome.status = BatchOutcome(run.log.status or BatchOutcome.failed)
    except org_lock.OrganizationBusy as exc:
        outcome.status, outcome.error = BatchOutcome.busy, str(exc)
    except Exception as exc:  # its own log row says failed (RunLog); the lane goes on with the rest
        outcome.error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("batched sync of %s failed: %s", org, outcome.error, exc_info=True)
    return outcome


def _status_event(outcome: Outcome) -> dg.AssetObservation:
    """Busy and failed organizations get an observation on their partition, so the UI says why
    there is no new materialization."""
    return dg.AssetObservation(
        asset_key=INVENTORY,
        partition=outcome.org,
        metadata={"batched_sync": outcome.status.value, "reason": outcome.error or ""},
    )


def run_lane(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    orgs: list[str],
    parallel: int,
    store: DeviceStore,
    golioth: GoliothApi,
    orders: Orders | None = None,
) -> Iterator:
    """Sync `orgs`, `parallel` at a time; log each one's events as it finishes (from this thread:
    Dagster's event stream is the op's)."""
    orders = orders or Orders(context.run.run_id, dict(context.run.tags))
    outcomes: dict[str, int] = {}
    pool = futures.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="batch-sync")
    try:
        pending = [pool.submit(sync_one, org, store, golioth, orders) for org in orgs]
        for done in futures.as_completed(pending):
            outcome = done.result()
            outcomes[outcome.status] = outcomes.get(outcome.status, 0) + 1
            yield from outcome.events
            if outcome.status in (BatchOutcome.busy, BatchOutcome.failed):
                yield _status_event(outcome)
    finally:
        # Cancelled (Terminate) or failed: start no further organization; the ones syncing finish
        # and close their own rows (a thread cannot be interrupted).
        pool.shutdown(wait=True, cancel_futures=True)
    context.log.info(f"{len(orgs)} organizations: {dict(sorted((str(k), v) for k, v in outcomes.items()))}")


def sync_partition_range(
    context: dg.AssetExecutionContext,
    config: SyncRunConfig,
    store: DeviceStore,
    golioth: GoliothApi,
    lock_wait_seconds: float,
) -> Iterator:
    """A run of the sync assets over a range of partitions (a backfill's run, BackfillPolicy.multi_run):
    every organization in the range, as one lane of a batched run syncs its share, each one's events
    on its own partition. An organization another sync holds is waited for, as a single run waits.

    The op reports no asset result for the range as a whole (the six assets are `skippable`, so
    Dagster records no materialization a result does not make), and its check outputs, which it
    cannot skip, are Nothing: each organization's evaluations above are its own."""
    if config.device_ids:
        raise dg.Failure(description="device_ids name one organization's devices: run a targeted sync on one partition")
    tags = dict(context.run.tags)
    if RunTag.backfill in tags:
        tags.setdefault(RunTag.trigger, Trigger.backfill.value)
    orders = Orders(context.run.run_id, tags, config, lock_wait_seconds)
    parallel = SyncBatch.model_fields["parallel"].default
    yield from run_lane(context, list(context.partition_keys), parallel, store, golioth, orders)
    for output_name in context.assets_def.check_specs_by_output_name:
        yield dg.Output(None, output_name=output_name)


def _lane_op(index: int) -> dg.OpDefinition:
    @dg.op(
        name=f"sync_lane_{index}",
        pool="golioth_api",
        out={},
        description=f"Every {LANES}th organization of the batch (from the {index}th), {SyncBatch.model_fields['parallel'].description}",
    )
    def lane(context: dg.OpExecutionContext, batch: SyncBatch, store: DeviceStore, golioth: GoliothApi) -> Iterator:
        store.require_schema()
        yield from run_lane(context, batch.lane(index), batch.parallel, store, golioth)

    return lane


LANE_OPS = [_lane_op(i) for i in range(LANES)]


def lane_executor() -> dg.ExecutorDefinition:
    """Where the lanes execute (settings.executor_name): in the run worker by default; on Celery
    workers or in Kubernetes Jobs when the deployment says so (deploy/, docs/dagster.md)."""
    name = settings.executor_name()
    if name == "celery":
        from dagster_celery import celery_executor

        # The broker's URL comes from the environment (it may hold a password); a worker killed
        # mid-lane gives its lane back to the queue (acks_late), where another worker takes it.
        return celery_executor.configured(
            {
                "broker": {"env": settings.CELERY_BROKER_ENV},
                "backend": "rpc://",
                "config_source": dict(settings.CELERY_APP_CONFIG),
            },
            name="celery",
        )
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return dg.in_process_executor


@dg.job(
    name=BATCH_JOB,
    description="Full sync of many organizations in one run (resources.batch.config.organizations); each "
    "organization is still its own partition, with its own materializations, checks and sync log row.",
    tags={RunTag.kind: SyncKind.full.value},
    executor_def=lane_executor(),
)
def batch_sync_job():
    for lane in LANE_OPS:
        lane()


def batch_tags(trigger: str = Trigger.schedule, **extra: str) -> dict[str, str]:
    """A batched run's tags: no partition (it spans many); the organizations are in its run config."""
    return {RunTag.trigger: str(trigger), **extra}
