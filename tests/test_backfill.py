"""A backfill of the sync assets over many organizations, launched as the Dagster UI launches it
(GraphQL `launchPartitionBackfill`) and carried out by the backfill daemon's own iteration: one run
per range of up to 100 organizations (BackfillPolicy.multi_run), each organization still its own
partition, and one organization's failure its own.

Real Dagster (the project's code location, loaded as the daemon loads it; runs executed by the run
launcher), real PostgreSQL, real simulator projects over HTTP."""

import logging
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from golioth_assets.core.vocabulary import RunTag, Trigger
from golioth_assets.defs.assets import CHECKS, SPECS, sync_assets
from golioth_assets.defs.config import sync_run_config
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resolve import resolve_conflicts_job
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from sensors.failures import sync_failure_sensor
from tests.fixtures.sync import sync_log_rows

ROOT = Path(__file__).resolve().parents[1]
SIX = {spec.key.to_user_string() for spec in SPECS}


def _launch_backfill(workspace, orgs: list[str]) -> str:
    """What the UI's *Materialize → Launch backfill* sends for the six assets and these partitions."""
    result = execute_dagster_graphql(
        workspace.create_request_context(),
        LAUNCH_PARTITION_BACKFILL_MUTATION,
        {"backfillParams": {"assetSelection": [{"path": [key]} for key in sorted(SIX)], "partitionNames": orgs}},
    )
    assert not result.errors, result.errors
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _run_daemon_until_done(workspace, instance, backfill_id: str) -> PartitionBackfill:
    """The backfill daemon's iterations (each submits runs, then reads what they materialized)."""
    for _ in range(10):
        list(execute_backfill_iteration(workspace, logging.getLogger("backfill-daemon")))
        backfill = instance.get_backfill(backfill_id)
        if backfill.status != BulkActionStatus.REQUESTED:
            return backfill
    raise AssertionError(f"the backfill is still {backfill.status}")


@pytest.mark.slow
def test_a_backfill_of_five_organizations_is_one_run_and_each_stays_its_own_partition(
    make_harness, db_env, engine, monkeypatch
):
    good = [make_harness(devices=12, seed=s) for s in (21, 22, 23, 24)]
    bad = make_harness(devices=12, seed=25)
    monkeypatch.setenv(bad.service.api_key_env, "not-the-key-of-this-project")  # Golioth rejects it
    orgs = [h.org for h in [good[0], good[1], bad, good[2], good[3]]]  # the failing one mid-range

    with dg.instance_for_test(synchronous_run_launcher=True, synchronous_run_coordinator=True) as instance:
        instance.add_dynamic_partitions(organizations.name, orgs)
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                module_name="golioth_assets.definitions", attribute="defs", working_directory=str(ROOT)
            ),
            location_name="golioth_sync",
        )
        with create_test_daemon_workspace_context(InProcessTestWorkspaceLoadTarget(origin), instance) as workspace:
            backfill_id = _launch_backfill(workspace, orgs)
            backfill = _run_daemon_until_done(workspace, instance, backfill_id)

        # One run for the five organizations (a range of partitions), not five.
        [run] = instance.get_runs(filters=dg.RunsFilter(tags={RunTag.backfill: backfill_id}))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert (run.tags[RunTag.range_start], run.tags[RunTag.range_end]) == (orgs[0], orgs[-1])
        assert RunTag.partition not in run.tags

        # Each good organization: its six materializations, with its own metadata (its own log row).
        materialized: dict[str, dict[str, int]] = {}
        for key in SIX:
            for record in instance.fetch_materializations(dg.AssetKey(key), limit=100).records:
                m = record.asset_materialization
                assert m is not None and m.partition is not None
                assert m.partition not in materialized.get(key, {}), "one materialization per partition"
                materialized.setdefault(key, {})[m.partition] = int(m.metadata["duration_seconds"].value >= 0)
                if key == "device_reconciliation":
                    [row] = sync_log_rows(engine, m.partition)
                    assert m.metadata["sync_log_id"].value == row["id"]
        assert {key: set(parts) for key, parts in materialized.items()} == {key: {h.org for h in good} for key in SIX}

        # ...its five check evaluations, on its partition; none for the failed one.
        evaluations = [
            r.event_log_entry.dagster_event.event_specific_data
            for r in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
        ]
        assert sorted((e.partition, e.check_name) for e in evaluations) == sorted(
            (h.org, c.name) for h in good for c in CHECKS
        )
        assert all(e.passed for e in evaluations)

        # ...its own sync log row, tied to the run, and its devices synced.
        for h in good:
            [row] = sync_log_rows(engine, h.org)
            assert (row["status"], row["dagster_run_id"], row["trigger"]) == ("success", run.run_id, Trigger.backfill)
            assert len(h.local()) == 12

        # The failed organization fails alone: its row says why, its partition says so, and the
        # backfill ends with exactly its partitions failed.
        [row] = sync_log_rows(engine, bad.org)
        assert row["status"] == "failed" and "key" in row["error"].lower()
        observed = instance.fetch_observations(dg.AssetKey("golioth_device_inventory"), limit=10).records
        assert [
            (o.asset_observation.partition, o.asset_observation.metadata["batched_sync"].value) for o in observed
        ] == [(bad.org, "failed")]
        assert backfill.status == BulkActionStatus.COMPLETED_FAILED
        failed = backfill.asset_backfill_data.failed_and_downstream_subset
        assert {kp.partition_key for kp in failed.iterate_asset_partitions()} == {bad.org}
        assert {kp.asset_key.to_user_string() for kp in failed.iterate_asset_partitions()} == SIX


def test_a_backfill_run_that_died_has_its_organizations_rows_closed_by_the_failure_sensor(instance, db_url, engine):
    """Run monitoring fails a backfill's run whose worker was killed mid-range; the failure sensor,
    evaluated as the daemon evaluates it (it watches Dagster's asset job too), closes every row that
    run left `running`. A failed run of a job that does not sync is left alone."""
    a, b = (f"bf-{uuid.uuid4().hex[:10]}" for _ in range(2))
    instance.add_dynamic_partitions(organizations.name, [a, b])
    store = DeviceStore(database_url=db_url.render_as_string(hide_password=False))
    defs = dg.Definitions(
        assets=sync_assets, jobs=[resolve_conflicts_job], resources={"store": store, "golioth": GoliothApi()}
    )
    asset_job = defs.resolve_implicit_global_asset_job_def()
    ranged = instance.create_run_for_job(
        job_def=asset_job, tags={RunTag.range_start: a, RunTag.range_end: b}, status=dg.DagsterRunStatus.STARTED
    )
    resolve = defs.resolve_job_def(resolve_conflicts_job.name)
    other = instance.create_run_for_job(
        job_def=resolve,
        tags={RunTag.org: a},
        run_config={"ops": {"resolve_conflicts": {"config": {"choice": "local", "resolved_by": "test"}}}},
        status=dg.DagsterRunStatus.STARTED,
    )
    with engine.begin() as conn:  # the dead worker's rows
        for org in (a, b):
            conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES (:o, :o)"), {"o": org})
            conn.execute(
                sa.text(
                    "INSERT INTO golioth_sync_log (organization_id, direction, policy, status, dagster_run_id) "
                    "VALUES (:o, 'bidirectional', 'manual', 'running', :r)"
                ),
                {"o": org, "r": ranged.run_id},
            )

    first = sync_failure_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources={"store": store}))
    instance.report_run_failed(other)
    instance.report_run_failed(ranged)
    sync_failure_sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"store": store})
    )

    for org in (a, b):
        [row] = sync_log_rows(engine, org)
        assert row["status"] == "failed" and row["finished_at"] is not None and row["error"]
    assert not [r for r in sync_log_rows(engine, a) if r["dagster_run_id"] == other.run_id]


def test_a_range_run_refuses_device_ids_before_syncing_anything(instance, db_url, engine):
    """A targeted sync names one organization's devices: over a range of organizations it is refused."""
    a, b = (f"bf-{uuid.uuid4().hex[:10]}" for _ in range(2))
    instance.add_dynamic_partitions(organizations.name, [a, b])
    store = DeviceStore(database_url=db_url.render_as_string(hide_password=False))
    job = dg.Definitions(assets=sync_assets, resources={"store": store, "golioth": GoliothApi()})
    result = job.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        tags={RunTag.range_start: a, RunTag.range_end: b},
        run_config=sync_run_config(device_ids=["dev-1"]),
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "one partition" in failure.step_failure_data.user_failure_data.description
    assert sync_log_rows(engine, a) == [] and sync_log_rows(engine, b) == []
