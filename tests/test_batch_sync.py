"""Many organizations in one Dagster run (defs/batch.py), and the per-organization lock that keeps
two syncs of one organization apart however they were started (store/org_lock.py).

Real runs of the batched job against the simulator and PostgreSQL; the lock is taken by a real
second session, as another run worker's would be."""

import threading
import time

import dagster as dg
import sqlalchemy as sa

from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.batch import SyncBatch, batch_run_config, batch_sync_job
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store import org_lock
from sensors.failures import sync_failure_sensor
from tests.fixtures.sync import sync_log_rows

SIX = {
    "golioth_device_inventory",
    "local_devices",
    "device_reconciliation",
    "golioth_device_writes",
    "local_device_writes",
    "device_conflicts",
}


def _resources(db_url) -> dict:
    url = db_url.render_as_string(hide_password=False)
    return {"store": DeviceStore(database_url=url), "golioth": GoliothApi(), "batch": SyncBatch()}


def _run_batch(instance, db_url, orgs: list[str]) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(organizations.name, orgs)
    job = dg.Definitions(jobs=[batch_sync_job], resources=_resources(db_url)).resolve_job_def(batch_sync_job.name)
    return job.execute_in_process(instance=instance, run_config=batch_run_config(orgs))


def _by_partition(events) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for event in events:
        found.setdefault(event.partition, set()).add(event.asset_key.to_user_string())
    return found


def test_a_batched_run_syncs_each_organization_as_its_own_partition_and_one_failure_stays_its_own(
    make_harness, instance, db_url, engine, monkeypatch
):
    good = [make_harness(devices=30, seed=s) for s in (1, 2)]
    bad = make_harness(devices=30, seed=3)
    monkeypatch.setenv(bad.service.api_key_env, "not-the-key-of-this-project")  # Golioth rejects it

    result = _run_batch(instance, db_url, [h.org for h in [*good, bad]])

    assert result.success  # the run completes; the failure is the organization's, not the run's
    materialized = _by_partition(e.materialization for e in result.get_asset_materialization_events())
    assert materialized == {h.org: SIX for h in good}  # six assets per partition; none for the failed one
    checks = [e for e in result.get_asset_check_evaluations()]
    assert {(c.partition, c.check_name) for c in checks if not c.passed} == set()
    assert len({c.partition for c in checks}) == 2 and len(checks) == 10  # five checks per good partition
    for h in good:
        assert len(h.local()) == 30
        [row] = sync_log_rows(engine, h.org)
        assert row["status"] == "success" and row["dagster_run_id"] == result.run_id
        # Dagster's own partition status sees the batched materializations.
        assert instance.get_latest_materialization_event(dg.AssetKey("local_device_writes")) is not None
    [row] = sync_log_rows(engine, bad.org)
    assert row["status"] == "failed" and "key" in row["error"].lower()
    observed = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert [(o.partition, o.metadata["batched_sync"].value) for o in observed] == [(bad.org, "failed")]


def test_an_organization_held_by_another_sync_is_busy_in_a_batch_and_waited_for_by_a_single_run(
    make_harness, instance, db_url, engine
):
    held, free = make_harness(devices=10, seed=4), make_harness(devices=10, seed=5)

    # Another session (a run elsewhere) holds `held`: the batch leaves it as busy, not failed.
    with org_lock.organization_lock(engine, held.org):
        result = _run_batch(instance, db_url, [held.org, free.org])
    assert result.success
    assert sync_log_rows(engine, held.org) == []  # never started: nothing to fail, the next round syncs it
    assert [r["status"] for r in sync_log_rows(engine, free.org)] == ["success"]
    observed = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    assert [(o.partition, o.metadata["batched_sync"].value) for o in observed] == [(held.org, "busy")]

    # A single-organization run started meanwhile waits for the lock instead (the race: it is
    # launched while the lock is held, and must not open its log row before the holder lets go).
    outcome: dict = {}
    with org_lock.organization_lock(engine, held.org):

        def single_run():
            outcome["result"] = dg.materialize(
                sync_assets, partition_key=held.org, instance=instance, resources=_resources(db_url)
            )

        racer = threading.Thread(target=single_run)
        racer.start()
        deadline = time.monotonic() + 60
        with engine.connect() as conn:
            while not conn.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar():
                assert time.monotonic() < deadline, "the single run never asked for the lock"
                time.sleep(0.05)
        assert sync_log_rows(engine, held.org) == []  # waiting, not syncing
        released_at = time.time()
    racer.join(timeout=120)
    assert outcome["result"].success
    [row] = sync_log_rows(engine, held.org)
    assert row["status"] == "success" and row["started_at"].timestamp() >= released_at - 1
    assert len(held.local()) == 10


def test_a_sync_whose_process_died_is_closed_by_the_next_that_takes_the_lock(make_harness, instance, db_url, engine):
    h = make_harness(devices=5, seed=6)
    with engine.begin() as conn:  # a row left `running` by a worker killed mid-sync
        conn.execute(
            sa.text(
                "INSERT INTO golioth_sync_log (organization_id, direction, policy, status) "
                "VALUES (:o, 'bidirectional', 'manual', 'running')"
            ),
            {"o": h.org},
        )
    assert _run_batch(instance, db_url, [h.org]).success
    rows = sync_log_rows(engine, h.org)
    assert [r["status"] for r in rows] == ["failed", "success"]
    assert "process died" in rows[0]["error"]


def test_a_batched_run_that_died_has_its_organizations_rows_closed_by_the_failure_sensor(
    make_harness, instance, db_url, engine
):
    """Run monitoring fails a batched run whose worker was killed; the failure sensor then closes
    every row that run left `running` (not only the next sync of each organization would)."""
    a, b = make_harness(devices=3, seed=7), make_harness(devices=3, seed=8)
    job = dg.Definitions(jobs=[batch_sync_job], resources=_resources(db_url)).resolve_job_def(batch_sync_job.name)
    run = instance.create_run_for_job(
        job_def=job, run_config=batch_run_config([a.org, b.org]), status=dg.DagsterRunStatus.STARTED
    )
    with engine.begin() as conn:  # the dead worker's rows
        for org in (a.org, b.org):
            conn.execute(
                sa.text(
                    "INSERT INTO golioth_sync_log (organization_id, direction, policy, status, dagster_run_id) "
                    "VALUES (:o, 'bidirectional', 'manual', 'running', :r)"
                ),
                {"o": org, "r": run.run_id},
            )
    instance.report_run_failed(run)
    [record] = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    context = dg.build_run_status_sensor_context(
        sensor_name=sync_failure_sensor.name,
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources={"store": _resources(db_url)["store"]},
    )
    sync_failure_sensor(context.for_run_failure())

    for org in (a.org, b.org):
        [row] = sync_log_rows(engine, org)
        assert row["status"] == "failed" and row["finished_at"] is not None and row["error"]
