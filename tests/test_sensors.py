"""The Dagster sensors, evaluated for real: `build_sensor_context` against real PostgreSQL, the
targeted runs they request executed against the simulator, and the run-failure sensor fed the
failure event of a real failed run.

Tests share one session database, so each one works in its own organizations; a fresh Dagster
instance per test holds only that test's partitions, which is what scopes a sensor tick to them.
"""

import json
import uuid

import dagster as dg
import pytest
import sqlalchemy as sa

from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.batch import batch_sync_job
from golioth_assets.defs.config import SYNC_OP
from golioth_assets.defs.jobs import full_sync_job, targeted_sync_job
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store import services, sync_log, webhook_events
from sensors.failures import MAX_EVENT_ATTEMPTS, SYNC_JOBS, sync_failure_sensor
from sensors.organizations import organization_partitions_sensor
from sensors.webhooks import TICK_BUDGET_SECONDS, WAIT_SECONDS, run_key_for, webhook_inbox_sensor


@pytest.fixture(autouse=True)
def _idle_ticks_return_at_once(monkeypatch):
    """An idle tick of the inbox sensor watches for new work for seconds (sensors/webhooks.py);
    these tests evaluate ticks back to back, so they don't wait (tests/test_live_sync.py does)."""
    monkeypatch.setattr("sensors.webhooks.WAIT_SECONDS", 0.0)


@pytest.fixture
def resources(db_url):
    url = db_url.render_as_string(hide_password=False)
    return {"store": DeviceStore(database_url=url), "golioth": GoliothApi()}


def _new_service(engine, *, enabled=True, interval=300, base_url="http://127.0.0.1:9") -> services.Service:
    org = f"sens-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        return services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=org,
                name=org,
                project_id=f"p-{org}",
                base_url=base_url,
                api_key_env="GOLIOTH_SENSOR_TEST_KEY",
                sync_enabled=enabled,
                interval_seconds=interval,
            ),
        )


def _store_events(engine, service, device_ids, event_type="device.updated") -> list[int]:
    """Store signed registry events the way the receiver does; returns their row ids."""
    events = [
        webhook_events.NewEvent(
            service_id=service.id,
            organization_id=service.organization_id,
            event_id=f"evt-{uuid.uuid4().hex}",
            source="signed",
            event_type=event_type,
            golioth_device_id=device,
            payload_json=json.dumps({"type": event_type, "data": {"id": device}}),
        )
        for device in device_ids
    ]
    with engine.begin() as conn:
        assert all(webhook_events.store_events(conn, events))
        rows = (
            conn.execute(
                sa.text("SELECT id FROM webhook_events WHERE service_id = :s AND event_id = ANY(:e) ORDER BY id"),
                {"s": service.id, "e": [e.event_id for e in events]},
            )
            .scalars()
            .all()
        )
    return list(rows)


def _events(engine, ids) -> dict[int, dict]:
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text("SELECT id, status, attempts, claimed_by, last_error FROM webhook_events WHERE id = ANY(:i)"),
                {"i": list(ids)},
            )
            .mappings()
            .all()
        )
    return {r["id"]: dict(r) for r in rows}


def _tick(sensor, instance, resources, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _device_ids(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"][SYNC_OP]["config"]["device_ids"]


# ---------------------------------------------------------------------------------------------
# webhook_inbox_sensor
# ---------------------------------------------------------------------------------------------


def test_pending_events_become_one_run_per_organization_with_stable_keys(engine, instance, resources):
    a, b, unpartitioned = (_new_service(engine) for _ in range(3))
    instance.add_dynamic_partitions(organizations.name, [a.organization_id, b.organization_id])
    ids_a = _store_events(engine, a, ["dev-2", "dev-1", "dev-2"])  # two events of dev-2: one device id
    ids_b = _store_events(engine, b, ["dev-9"])
    ids_u = _store_events(engine, unpartitioned, ["dev-5", "dev-6"])

    result = _tick(webhook_inbox_sensor, instance, resources)

    by_org = {r.partition_key: r for r in result.run_requests}
    assert sorted(by_org) == sorted([a.organization_id, b.organization_id])  # one request per organization
    for service, ids, devices in ((a, ids_a, ["dev-1", "dev-2"]), (b, ids_b, ["dev-9"])):
        request = by_org[service.organization_id]
        assert request.run_key == run_key_for(service.organization_id, ids, 0)
        assert request.tags[RunTag.org] == service.organization_id
        assert request.tags[RunTag.claim] == request.run_key
        assert request.tags[RunTag.trigger] == "webhook"
        assert _device_ids(request) == devices
        assert request.job_name in (None, targeted_sync_job.name)
        # Claimed, and the claim is the run key: the run marks exactly these events processed.
        assert {e["status"] for e in _events(engine, ids).values()} == {"claimed"}
        assert {e["claimed_by"] for e in _events(engine, ids).values()} == {request.run_key}
    assert result.cursor is None  # the inbox's status column is the cursor (sensors/webhooks.py)
    # An organization without a partition yet is left alone until the partition sensor adds it.
    assert {e["status"] for e in _events(engine, ids_u).values()} == {"pending"}

    # The next tick requests nothing again: the events are claimed.
    again = _tick(webhook_inbox_sensor, instance, resources)
    assert again.run_requests == []

    # Once its partition exists, the other organization's events are picked up.
    instance.add_dynamic_partitions(organizations.name, [unpartitioned.organization_id])
    later = _tick(webhook_inbox_sensor, instance, resources)
    assert [r.partition_key for r in later.run_requests] == [unpartitioned.organization_id]
    assert _device_ids(later.run_requests[0]) == ["dev-5", "dev-6"] and len(ids_u) == 2


def test_run_keys_are_derived_from_event_ids_and_attempt():
    assert run_key_for("acme", [3, 1, 2], 0) == run_key_for("acme", [1, 2, 3], 0)
    assert run_key_for("acme", [1, 2, 3], 0).startswith("webhook:acme:1-3:")
    assert run_key_for("acme", [1, 2, 3], 0) != run_key_for("acme", [1, 2, 4], 0)
    assert run_key_for("acme", [1, 2, 3], 0) != run_key_for("acme", [1, 2, 3], 1)  # a retry is a new run
    assert run_key_for("acme", [1], 0) != run_key_for("other", [1], 0)


def test_stale_claims_are_released_and_retried_under_a_new_key(engine, instance, resources):
    service = _new_service(engine)
    org = service.organization_id
    instance.add_dynamic_partitions(organizations.name, [org])
    ids = _store_events(engine, service, ["dev-1", "dev-2"])
    with engine.begin() as conn:
        webhook_events.claim_pending(conn, limit=10, claimed_by="vanished-run", organization_id=org)
        # The run that claimed them died without a failure event (worker killed, instance lost).
        conn.execute(
            sa.text("UPDATE webhook_events SET claimed_at = now() - interval '2 hours' WHERE id = ANY(:i)"), {"i": ids}
        )
    fresh = _store_events(engine, _new_service(engine), ["x"])  # a fresh claim elsewhere is not touched
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE webhook_events SET status = 'claimed', claimed_by = 'live-run', "
                "claimed_at = now() WHERE id = ANY(:i)"
            ),
            {"i": fresh},
        )

    result = _tick(webhook_inbox_sensor, instance, resources)

    [request] = result.run_requests
    assert request.partition_key == org
    assert request.run_key == run_key_for(org, ids, 1)  # attempt 1: not the dead run's key
    events = _events(engine, ids)
    assert {e["attempts"] for e in events.values()} == {1}
    assert {e["claimed_by"] for e in events.values()} == {request.run_key}
    assert "claim expired" in events[ids[0]]["last_error"]
    assert _events(engine, fresh)[fresh[0]]["claimed_by"] == "live-run"


def test_tick_claims_at_most_a_batch_per_organization(engine, instance, resources, monkeypatch):
    import sensors.webhooks as module

    monkeypatch.setattr(module, "BATCH_EVENTS", 3)
    service = _new_service(engine)
    instance.add_dynamic_partitions(organizations.name, [service.organization_id])
    ids = _store_events(engine, service, [f"dev-{i}" for i in range(7)])

    first = _tick(webhook_inbox_sensor, instance, resources)
    second = _tick(webhook_inbox_sensor, instance, resources)
    third = _tick(webhook_inbox_sensor, instance, resources)

    sizes = [len(_device_ids(r)) for t in (first, second, third) for r in t.run_requests]
    assert sizes == [3, 3, 1]
    keys = [r.run_key for t in (first, second, third) for r in t.run_requests]
    assert len(set(keys)) == 3
    assert {e["status"] for e in _events(engine, ids).values()} == {"claimed"}


# ---------------------------------------------------------------------------------------------
# The targeted run and the run-failure sensor
# ---------------------------------------------------------------------------------------------


def _job(resources, job=targeted_sync_job):
    return dg.Definitions(assets=sync_assets, jobs=[job], resources=resources).resolve_job_def(job.name)


def _execute(request: dg.RunRequest, instance, resources, job=targeted_sync_job):
    """Launch a sensor's run request the way the daemon does (it adds the run key and sensor tags)."""
    daemon_tags = {RunTag.run_key: request.run_key, "dagster/sensor_name": webhook_inbox_sensor.name}
    return _job(resources, job).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        run_config=request.run_config,
        tags={**request.tags, **daemon_tags},
        raise_on_error=False,
    )


def _fail(result, instance, resources):
    """What the daemon does after a failed run: evaluate the run-failure sensor with its event."""
    run = instance.get_run_by_id(result.run_id)
    [record] = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    context = dg.build_run_status_sensor_context(
        sensor_name=sync_failure_sensor.name,
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources=resources,
    )
    sync_failure_sensor(context.for_run_failure())


@pytest.mark.slow  # 14-20 s: three runs through Dagster; the fast tests cover the requests it starts from
def test_webhook_run_applies_the_edit_marks_events_processed_and_failures_retry_then_die(
    make_harness, engine, instance, resources, monkeypatch
):
    h = make_harness(devices=6)
    instance.add_dynamic_partitions(organizations.name, [h.org])
    first = _job(resources, full_sync_job).execute_in_process(instance=instance, partition_key=h.org)
    assert first.success and len(h.local()) == 6

    # Someone renames a device in the Golioth console; Golioth sends device.updated.
    golioth_id = sorted(h.remote())[0]
    h.edit_remote(golioth_id, name="renamed-in-console")
    ids = _store_events(engine, h.service, [golioth_id])

    [request] = _tick(webhook_inbox_sensor, instance, resources).run_requests
    assert _device_ids(request) == [golioth_id]
    result = _execute(request, instance, resources)
    assert result.success
    local = h.local()
    assert local.loc[h.device_id_of(golioth_id), "name"] == "renamed-in-console"
    assert {e["status"] for e in _events(engine, ids).values()} == {"processed"}
    run = instance.get_run_by_id(result.run_id)
    assert run.job_name == targeted_sync_job.name and run.tags[RunTag.org] == h.org
    with engine.connect() as conn:
        scope, trigger = conn.execute(
            sa.text("SELECT scope, trigger FROM golioth_sync_log WHERE dagster_run_id = :r"), {"r": result.run_id}
        ).one()
    assert scope == [golioth_id] and trigger == "webhook"  # a targeted sync, not a full one

    # Now the key is revoked: every attempt fails, the failure sensor counts it, then gives up.
    h.edit_remote(golioth_id, name="renamed-again")
    ids = _store_events(engine, h.service, [golioth_id])
    monkeypatch.setenv(h.service.api_key_env, "revoked-key")
    keys = []
    for attempt in range(1, MAX_EVENT_ATTEMPTS + 1):
        tick = _tick(webhook_inbox_sensor, instance, resources)
        [request] = tick.run_requests
        keys.append(request.run_key)
        failed = _execute(request, instance, resources)
        assert not failed.success
        _fail(failed, instance, resources)
        events = _events(engine, ids)
        assert {e["attempts"] for e in events.values()} == {attempt}
        expected = "dead" if attempt == MAX_EVENT_ATTEMPTS else "failed"
        assert {e["status"] for e in events.values()} == {expected}
        # The inbox says why, in the failed step's words (not just "Steps failed: [...]").
        assert all("rejected the API key" in e["last_error"] for e in events.values())
        assert all("revoked-key" not in e["last_error"] for e in events.values())
        with engine.connect() as conn:
            status = conn.execute(
                sa.text("SELECT status FROM golioth_sync_log WHERE dagster_run_id = :r"), {"r": failed.run_id}
            ).scalar_one()
        assert status == "failed"
    assert len(set(keys)) == MAX_EVENT_ATTEMPTS  # every retry is a new run key, so Dagster runs it
    assert _tick(webhook_inbox_sensor, instance, resources).run_requests == []  # dead letters stay
    assert h.local().loc[h.device_id_of(golioth_id), "name"] == "renamed-in-console"

    # The key is fixed and the operator replays the dead letters (attempts start again at 0). The
    # natural key is the first attempt's, which Dagster already ran: the sensor must pick a new one,
    # or the daemon would skip the request and the events would sit claimed.
    monkeypatch.setenv(h.service.api_key_env, h.project.api_key)
    with engine.begin() as conn:
        assert webhook_events.replay_dead(conn, organization_id=h.org) == 1
    [replayed] = _tick(webhook_inbox_sensor, instance, resources).run_requests
    assert replayed.run_key not in keys and replayed.run_key.startswith(keys[0])
    assert _execute(replayed, instance, resources).success
    assert {e["status"] for e in _events(engine, ids).values()} == {"processed"}
    assert h.local().loc[h.device_id_of(golioth_id), "name"] == "renamed-again"


def test_failure_sensor_records_a_run_that_died_before_its_first_step(engine, instance, resources):
    """A run worker that died (OOM, SIGKILL: run monitoring marks the run failed) never opened its
    golioth_sync_log row; the failure sensor opens and fails one, and gives the events back."""
    service = _new_service(engine)
    org = service.organization_id
    instance.add_dynamic_partitions(organizations.name, [org])
    ids = _store_events(engine, service, ["dev-1"])
    [request] = _tick(webhook_inbox_sensor, instance, resources).run_requests
    run = instance.create_run_for_job(
        job_def=_job(resources),
        run_config=request.run_config,
        tags={**request.tags, RunTag.partition: org},
    )
    instance.report_run_failed(run, message="the run worker exited unexpectedly")

    context = dg.build_run_status_sensor_context(
        sensor_name=sync_failure_sensor.name,
        dagster_event=instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        .records[0]
        .event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run.run_id),
        resources=resources,
    )
    sync_failure_sensor(context.for_run_failure())

    with engine.connect() as conn:
        status, error, trigger = conn.execute(
            sa.text("SELECT status, error, trigger FROM golioth_sync_log WHERE dagster_run_id = :r"),
            {"r": run.run_id},
        ).one()
    assert (status, trigger) == ("failed", "failure")
    assert "exited unexpectedly" in error
    with engine.connect() as conn:
        scope = conn.execute(
            sa.text("SELECT scope FROM golioth_sync_log WHERE dagster_run_id = :r"), {"r": run.run_id}
        ).scalar_one()
        # A targeted run's row: the schedule's retry of failed full syncs leaves it alone.
        assert scope and org not in {o for o, _, _ in sync_log.failed_full_syncs(conn)}
    events = _events(engine, ids)
    assert {(e["status"], e["attempts"]) for e in events.values()} == {("failed", 1)}
    # The next tick retries them under a new run key.
    [retry] = _tick(webhook_inbox_sensor, instance, resources).run_requests
    assert retry.run_key == run_key_for(org, ids, 1) != request.run_key


# ---------------------------------------------------------------------------------------------
# organization_partitions_sensor
# ---------------------------------------------------------------------------------------------


def _partition_changes(result: dg.SensorResult) -> tuple[set[str], set[str]]:
    added, deleted = set(), set()
    for req in result.dynamic_partitions_requests:
        assert req.partitions_def_name == organizations.name
        (added if isinstance(req, dg.AddDynamicPartitionsRequest) else deleted).update(req.partition_keys)
    return added, deleted


def _apply(instance, result):
    for req in result.dynamic_partitions_requests:
        if isinstance(req, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        else:
            for key in req.partition_keys:
                instance.delete_dynamic_partition(req.partitions_def_name, key)


def test_partition_sensor_adds_and_removes_organizations(engine, instance, resources):
    enabled, disabled, later = _new_service(engine), _new_service(engine, enabled=False), _new_service(engine)
    instance.add_dynamic_partitions(organizations.name, [later.organization_id, "org-without-a-service"])

    result = _tick(organization_partitions_sensor, instance, resources)
    added, deleted = _partition_changes(result)
    assert enabled.organization_id in added and later.organization_id not in added
    assert disabled.organization_id not in added
    assert deleted == {"org-without-a-service"}
    _apply(instance, result)

    # Nothing changed: nothing to request.
    assert _partition_changes(_tick(organization_partitions_sensor, instance, resources)) == (set(), set())

    # Disable one service, delete another, enable the third.
    with engine.begin() as conn:
        services.update_service(conn, enabled.id, sync_enabled=False)
        services.delete_service(conn, later.id)
        services.update_service(conn, disabled.id, sync_enabled=True)
    result = _tick(organization_partitions_sensor, instance, resources)
    assert _partition_changes(result) == ({disabled.organization_id}, {enabled.organization_id, later.organization_id})
    _apply(instance, result)
    partitions = set(instance.get_dynamic_partitions(organizations.name))
    assert disabled.organization_id in partitions
    assert not partitions & {enabled.organization_id, later.organization_id, "org-without-a-service"}


def test_sensors_are_running_by_default():
    from golioth_assets.definitions import defs

    # The Definitions' own lists (building the repository here would touch closed test instances).
    names = {s.name for s in defs.sensors}
    assert {"webhook_inbox_sensor", "organization_partitions_sensor", "sync_failure_sensor"} <= names
    for sensor in defs.sensors:
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name
    assert [s.default_status for s in defs.schedules] == [dg.DefaultScheduleStatus.RUNNING]
    # The daemon's loop paces it (5 s); an idle tick watches for new work meanwhile, well under 60 s.
    assert webhook_inbox_sensor.minimum_interval_seconds <= 5
    assert WAIT_SECONDS + TICK_BUDGET_SECONDS < 60
    # They watch every job of the code location and act on the sync jobs' runs only: ours, and
    # Dagster's asset job (the UI's Materialize, backfills).
    assert sync_failure_sensor._monitored_jobs == []
    assert {full_sync_job.name, targeted_sync_job.name, batch_sync_job.name, "__ASSET_JOB"} == SYNC_JOBS
