"""The periodic sync schedule, evaluated with `build_schedule_context` against real PostgreSQL.

`golioth_sync_log` says when each organization's last full sync started; the tests write those rows
with chosen start times and evaluate the schedule at chosen tick times around them. One Dagster
instance serves the module (`module_instance`): each test makes its own organizations and asserts
only about those (the session database has other tests' services too).
"""

import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.batch import SyncBatch, batch_organizations, batch_run_config, batch_sync_job
from golioth_assets.defs.jobs import full_sync_job, targeted_sync_job
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store import services
from sensors.schedule import BATCH_SIZE, batches, golioth_sync_schedule

# A tick on the minute grid, a little in the past so "now()" rows sit after it when needed.
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=3)


@pytest.fixture
def resources(db_url):
    return {"store": DeviceStore(database_url=db_url.render_as_string(hide_password=False))}


def _service(engine, instance, *, interval, enabled=True, partition=True) -> str:
    org = f"sched-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=org,
                name=org,
                project_id=f"p-{org}",
                base_url="http://127.0.0.1:9",
                api_key_env="GOLIOTH_SCHEDULE_TEST_KEY",
                interval_seconds=interval,
                sync_enabled=enabled,
            ),
        )
    if partition:
        instance.add_dynamic_partitions(organizations.name, [org])
    return org


def _synced(engine, org, started_at, *, dry_run=False, scope=None, status="succeeded") -> None:
    """A sync of `org` that started at `started_at` (full unless dry_run or scope)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO golioth_sync_log (organization_id, direction, policy, dry_run, scope, started_at, "
                "finished_at, status) VALUES (:o, 'bidirectional', 'manual', :d, :s, :t, :t, :st)"
            ),
            {"o": org, "d": dry_run, "s": scope, "t": started_at, "st": status},
        )


# The repository lets evaluate_tick resolve the target job and check each requested partition key.
# Built once, at import: building it needs no instance (the resources that run are the context's).
REPO = dg.Definitions(
    assets=sync_assets,
    jobs=[full_sync_job, batch_sync_job],
    schedules=[golioth_sync_schedule],
    resources={"store": DeviceStore(), "golioth": GoliothApi(), "batch": SyncBatch()},
).get_repository_def()


def _evaluate_tick(instance, resources, at: datetime):
    # The context opens its own instance from the ref and makes it Dagster's current one; only
    # `with` closes it in order. Left to the garbage collector, a later test's Definitions would
    # find a dead instance there ("Attempted to resolve undefined DagsterInstance weakref").
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=at, resources=resources, repository_def=REPO
    ) as context:
        return golioth_sync_schedule.evaluate_tick(context)


def _evaluate(instance, resources, at: datetime) -> dict[str, dg.RunRequest]:
    """Each organization the tick requests, with the (batched) request it is in."""
    data = _evaluate_tick(instance, resources, at)
    if data.skip_message:
        assert not data.run_requests
    by_org: dict[str, dg.RunRequest] = {}
    for request in data.run_requests or []:
        for org in batch_organizations(request.run_config):
            assert org not in by_org  # one organization is in one request of a tick
            by_org[org] = request
    return by_org


def test_never_synced_enabled_partitioned_organizations_are_due(engine, module_instance, resources):
    due = _service(engine, module_instance, interval=60)
    disabled = _service(engine, module_instance, interval=60, enabled=False)
    unpartitioned = _service(engine, module_instance, interval=60, partition=False)

    requests = _evaluate(module_instance, resources, T0)

    assert due in requests
    assert disabled not in requests  # sync_enabled = false
    assert unpartitioned not in requests  # the partition sensor adds it first
    request = requests[due]
    assert RunTag.partition not in request.tags  # a batch spans many partitions
    assert request.tags[RunTag.trigger] == "schedule"
    assert request.run_key.startswith(f"schedule:{int(T0.timestamp())}:")
    assert golioth_sync_schedule.job_name == batch_sync_job.name


@pytest.mark.parametrize("launch_delay", [2, 12, 45])
@pytest.mark.parametrize("interval", [60, 300, 900, 3600, 7200 + 60])
def test_each_service_is_due_once_its_own_interval_has_passed(
    engine, module_instance, resources, interval, launch_delay
):
    org = _service(engine, module_instance, interval=interval)
    # The last scheduled run started a few seconds after its tick (queueing and launching a run
    # takes a moment): the next one is still due one interval after that tick, not one tick later.
    _synced(engine, org, T0 + timedelta(seconds=launch_delay))

    def due(seconds_after_tick: int) -> bool:
        return org in _evaluate(module_instance, resources, T0 + timedelta(seconds=seconds_after_tick))

    assert not due(60) or interval == 60  # the next tick
    assert not due(interval - 60)  # the tick before the interval has passed
    assert due(interval)  # exactly one interval after the last scheduled sync's tick
    assert due(interval + 60)  # still due (if that sync never started, the next tick retries)


def test_dry_runs_targeted_syncs_and_other_organizations_do_not_count(engine, module_instance, resources):
    org = _service(engine, module_instance, interval=300)
    other = _service(engine, module_instance, interval=300)
    _synced(engine, org, T0 - timedelta(minutes=10))
    _synced(engine, org, T0 - timedelta(seconds=30), dry_run=True)  # a plan from the launchpad
    _synced(engine, org, T0 - timedelta(seconds=20), scope=["dev-1"])  # a webhook's targeted sync
    _synced(engine, other, T0 - timedelta(seconds=40))  # another organization's full sync

    requests = _evaluate(module_instance, resources, T0)

    assert org in requests
    assert other not in requests


def test_a_full_sync_within_the_interval_postpones_the_next(engine, module_instance, resources):
    org = _service(engine, module_instance, interval=300)
    _synced(engine, org, T0 - timedelta(seconds=100))  # e.g. a manual sync from the launchpad
    assert org not in _evaluate(module_instance, resources, T0)
    assert org in _evaluate(module_instance, resources, T0 + timedelta(seconds=200))


def test_due_organizations_are_batched_and_a_tick_never_yields_a_batch_twice(engine, instance, resources):
    # An instance of its own, and more organizations than one batch holds.
    orgs = {_service(engine, instance, interval=60) for _ in range(BATCH_SIZE + 3)}

    data = _evaluate_tick(instance, resources, T0)
    batches = [r for r in data.run_requests if set(batch_organizations(r.run_config)) & orgs]
    assert len(batches) >= 2  # more than BATCH_SIZE due: more than one run, each at most BATCH_SIZE
    assert all(len(batch_organizations(r.run_config)) <= BATCH_SIZE for r in batches)
    assert orgs <= {o for r in batches for o in batch_organizations(r.run_config)}
    assert all(r.job_name in (None, batch_sync_job.name) for r in batches)
    assert len({r.run_key for r in batches}) == len(batches)
    later = {r.run_key for r in _evaluate_tick(instance, resources, T0 + timedelta(minutes=1)).run_requests}
    assert not later & {r.run_key for r in batches}  # the next tick's batches are new runs


def test_a_round_is_spread_over_a_few_runs_of_at_most_a_hundred():
    assert [len(b) for b in batches([f"o{i}" for i in range(8)])] == [8]  # too few to split
    assert [len(b) for b in batches([f"o{i}" for i in range(100)])] == [25] * 4  # every core busy
    sizes = [len(b) for b in batches([f"o{i:04d}" for i in range(1001)])]
    assert len(sizes) == 11 and max(sizes) <= BATCH_SIZE and sum(sizes) == 1001
    assert sorted(o for b in batches(["b", "a", "c"]) for o in b) == ["a", "b", "c"]


def test_an_organization_whose_full_sync_failed_is_retried_on_its_own_once(engine, module_instance, resources):
    org = _service(engine, module_instance, interval=3600)
    _synced(engine, org, T0 - timedelta(minutes=5), status="failed")  # e.g. a batched sync, key rejected

    requests = _evaluate(module_instance, resources, T0)
    retry = requests[org]
    assert batch_organizations(retry.run_config) == [org]  # a run of its own
    assert retry.tags[RunTag.trigger] == "retry"
    assert retry.run_key.startswith(f"retry:{org}:")  # keyed by the failed row: retried once
    # The retry failed too: no retry of the retry; it waits for its interval with the others.
    _synced(engine, org, T0 - timedelta(minutes=1), status="failed")
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE golioth_sync_log SET trigger = 'retry' WHERE id = (SELECT max(id) FROM golioth_sync_log)")
        )
    assert org not in _evaluate(module_instance, resources, T0)


def test_organizations_with_a_full_sync_in_flight_are_skipped(engine, module_instance, resources):
    scheduled, from_ui, backfilled, webhook, idle = (_service(engine, module_instance, interval=60) for _ in range(5))
    full = REPO.get_job(full_sync_job.name)
    targeted = dg.Definitions(
        assets=sync_assets, jobs=[targeted_sync_job], resources={**resources, "golioth": GoliothApi()}
    ).resolve_job_def(targeted_sync_job.name)
    # Runs carry their job's tags (golioth-sync/kind) as the daemon and the launchpad create them.
    runs = [
        # A scheduled full sync in progress, and one starting from the launchpad (which carries
        # only Dagster's partition tag).
        module_instance.create_run_for_job(
            job_def=full,
            tags={**full.tags, RunTag.org: scheduled, RunTag.partition: scheduled},
            status=dg.DagsterRunStatus.STARTED,
        ),
        module_instance.create_run_for_job(
            job_def=full, tags={**full.tags, RunTag.partition: from_ui}, status=dg.DagsterRunStatus.STARTING
        ),
        # An asset backfill's run (Dagster's own asset job): the partition tag, no golioth-sync tag.
        module_instance.create_run_for_job(
            job_def=full, tags={RunTag.partition: backfilled}, status=dg.DagsterRunStatus.STARTING
        ),
        # A webhook's targeted sync does not hold the schedule back (with steady webhook traffic
        # one is nearly always in flight); the per-organization run limit queues the full sync.
        module_instance.create_run_for_job(
            job_def=targeted,
            tags={**targeted.tags, RunTag.org: webhook, RunTag.partition: webhook},
            status=dg.DagsterRunStatus.STARTED,
        ),
    ]

    batch = REPO.get_job(batch_sync_job.name)
    batched, _ = (_service(engine, module_instance, interval=60) for _ in range(2))
    runs.append(
        module_instance.create_run_for_job(
            job_def=batch,
            tags=dict(batch.tags),
            run_config=batch_run_config([batched]),
            status=dg.DagsterRunStatus.STARTING,
        )
    )

    # A backfill's run over a range of organizations (BackfillPolicy.multi_run): Dagster's range
    # tags, the first and last of the range, and no partition tag; the range covers the middle one.
    first, middle, last = (_service(engine, module_instance, interval=60) for _ in range(3))
    runs.append(
        module_instance.create_run_for_job(
            job_def=full,
            tags={RunTag.range_start: first, RunTag.range_end: last},
            status=dg.DagsterRunStatus.STARTED,
        )
    )
    ranged = {first, middle, last}

    requests = _evaluate(module_instance, resources, T0)
    assert idle in requests and webhook in requests
    assert not {scheduled, from_ui, backfilled, batched, *ranged} & set(requests)

    for run in runs:
        module_instance.report_run_failed(run)  # no longer in flight
    requests = _evaluate(module_instance, resources, T0)
    assert {scheduled, from_ui, backfilled, batched, *ranged} <= set(requests)


def test_nothing_due_is_a_skip_with_a_reason(engine, instance, resources):
    # An instance of its own: it holds only this test's organization.
    org = _service(engine, instance, interval=3600)
    _synced(engine, org, T0 - timedelta(minutes=5))
    data = _evaluate_tick(instance, resources, T0)
    assert not data.run_requests
    assert data.skip_message and "no organization due" in data.skip_message


def test_schedule_runs_every_minute_and_is_on_by_default():
    assert golioth_sync_schedule.cron_schedule == "* * * * *"
    assert golioth_sync_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
