"""Live sync (issue 12): a local edit, captured by the trigger, reaches Golioth through the inbox
sensor and a targeted Dagster run. Real PostgreSQL, the simulator over HTTP, the sensor through
build_sensor_context, and the runs it requests executed as the daemon would.

Covered: capture on the built-in `devices` table and on a product's own table (hydro_meters: a
bigint key in another database); the sync's own writes don't echo; a failed run releases its
queued changes; a crash between the inbox insert and the outbox delete duplicates nothing and
loses nothing; an idle tick answers an edit within its wait.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from golioth_assets.cli import demo_product
from golioth_assets.core.vocabulary import RunTag, Trigger
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.config import SYNC_OP
from golioth_assets.defs.jobs import full_sync_job, targeted_sync_job
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store import database, local_changes, services, webhook_events
from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.connect import mapping_of
from sensors import webhooks
from sensors.failures import sync_failure_sensor
from sensors.webhooks import webhook_inbox_sensor
from tests.fixtures.database import _drop_database, _server_url
from tests.fixtures.local_tables import HydroHarness, _make_product_harness, load_example, mapping_with

SYSTEM_SOCKETS = "/var/run/postgresql"  # Debian's socket folder for the system PostgreSQL


@pytest.fixture
def resources(db_url):
    return {"store": DeviceStore(database_url=db_url.render_as_string(hide_password=False)), "golioth": GoliothApi()}


@pytest.fixture
def no_wait(monkeypatch):
    monkeypatch.setattr(webhooks, "WAIT_SECONDS", 0.0)


def _tick(instance, resources) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = webhook_inbox_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _job(resources, job=targeted_sync_job):
    return dg.Definitions(assets=sync_assets, jobs=[job], resources=resources).resolve_job_def(job.name)


def _execute(request: dg.RunRequest, instance, resources) -> dg.ExecuteInProcessResult:
    """Launch a sensor's run request the way the daemon does (run key and sensor tags added)."""
    daemon_tags = {RunTag.run_key: request.run_key, "dagster/sensor_name": webhook_inbox_sensor.name}
    return _job(resources).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        run_config=request.run_config,
        tags={**request.tags, **daemon_tags},
        raise_on_error=False,
    )


def _report_failure(result, instance, resources) -> None:
    """What the daemon does after a failed run: evaluate the run-failure sensor with its event."""
    [record] = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    context = dg.build_run_status_sensor_context(
        sensor_name=sync_failure_sensor.name,
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        resources=resources,
    )
    sync_failure_sensor(context.for_run_failure())


def _outbox(engine, service) -> list[capture.Change]:
    """This organization's captured changes still in the outbox of its table's database."""
    with engine.connect() as conn:
        return capture.pending_changes(conn, mapping_of(service))


def _inbox(engine, service) -> list[webhook_events.EventRow]:
    with engine.connect() as conn:
        rows = webhook_events.list_events(conn, organization_id=service.organization_id, limit=1000)
    return [r for r in rows if r.source == webhook_events.LOCAL_SOURCE]


def _device_ids(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"][SYNC_OP]["config"]["device_ids"]


@pytest.mark.slow  # ~10 s: a full and a targeted run through Dagster, against the simulator
def test_builtin_edit_reaches_golioth_through_the_inbox_and_the_sync_does_not_echo(
    make_harness, engine, instance, resources, no_wait
):
    h = make_harness(devices=5)
    instance.add_dynamic_partitions(organizations.name, [h.org])
    assert _job(resources, full_sync_job).execute_in_process(instance=instance, partition_key=h.org).success
    # The first sync wrote five rows into `devices` (capture is on it since migration 0007): none echoes.
    assert len(h.local()) == 5 and _outbox(engine, h.service) == []
    assert _tick(instance, resources).run_requests == []

    device_id = sorted(h.local().index)[0]
    h.edit_local(device_id, name="renamed-in-the-app")
    [change] = _outbox(engine, h.service)
    assert (change.row_key, change.operation) == (device_id, "update")

    [request] = _tick(instance, resources).run_requests
    assert _outbox(engine, h.service) == []  # moved into the inbox, claimed by this run
    [event] = _inbox(engine, h.service)
    assert (event.status, event.claimed_by, event.event_type) == ("claimed", request.run_key, "local.update")
    assert request.tags[RunTag.trigger] == Trigger.local_change and request.partition_key == h.org
    assert _device_ids(request) == [device_id]

    result = _execute(request, instance, resources)
    assert result.success
    assert h.remote()[h.golioth_id_of(device_id)]["name"] == "renamed-in-the-app"  # visible in Golioth
    [event] = _inbox(engine, h.service)
    assert event.status == "processed"
    with engine.connect() as conn:
        trigger, scope = conn.execute(
            sa.text("SELECT trigger, scope FROM golioth_sync_log WHERE dagster_run_id = :r"), {"r": result.run_id}
        ).one()
    assert (trigger, scope) == ("local_change", [device_id])

    # An edit made in Golioth comes back into `devices` by a sync: the sync's write is not captured.
    other = sorted(h.local().index)[1]
    h.edit_remote(h.golioth_id_of(other), name="renamed-in-golioth")
    assert h.sync().status == "success"
    assert h.local().loc[other, "name"] == "renamed-in-golioth"
    assert _outbox(engine, h.service) == [] and _tick(instance, resources).run_requests == []


@pytest.fixture
def captured_hydro(request, engine, sim_project_factory, monkeypatch) -> Iterator[HydroHarness]:
    """One Hydro tenant in a fresh copy of examples/hydro_meters (bigint keys, its own database),
    with change capture installed as `golioth-sync local install-capture` does."""
    url = load_example(_server_url(request), "hydro_meters")
    h = _make_product_harness(HydroHarness, "hydro_meters", url, engine, sim_project_factory, monkeypatch, 4, 5, {}, {})
    with h.product.begin() as conn:
        capture.install_capture(conn, h.mapping)
    yield h
    database.engine_for(url).dispose()
    _drop_database(url)


@pytest.mark.slow  # ~15 s: four runs through Dagster
def test_mapped_table_edit_survives_a_failed_run_and_reaches_golioth(
    captured_hydro, engine, instance, resources, monkeypatch, no_wait
):
    h = captured_hydro
    instance.add_dynamic_partitions(organizations.name, [h.org])
    assert _job(resources, full_sync_job).execute_in_process(instance=instance, partition_key=h.org).success
    assert len(h.local()) == 4 and _outbox(h.product, h.service) == []  # the sync's inserts: no echo

    meter = sorted(h.local().index, key=int)[0]
    h.edit_local(meter, name="Pump house (edited in their app)")
    monkeypatch.setenv(h.service.api_key_env, "revoked-key")
    [request] = _tick(instance, resources).run_requests
    assert _device_ids(request) == [meter] and request.tags[RunTag.trigger] == Trigger.local_change
    failed = _execute(request, instance, resources)
    assert not failed.success
    _report_failure(failed, instance, resources)
    # The run failed: its change is back in the queue (one attempt counted), nothing lost.
    [event] = _inbox(engine, h.service)
    assert (event.status, event.attempts, event.device_id) == ("failed", 1, meter)

    monkeypatch.setenv(h.service.api_key_env, h.project.api_key)
    [retry] = _tick(instance, resources).run_requests
    assert retry.run_key != request.run_key and _device_ids(retry) == [meter]
    assert _execute(retry, instance, resources).success
    assert h.remote()[h.golioth_id_of(meter)]["name"] == "Pump house (edited in their app)"
    assert [e.status for e in _inbox(engine, h.service)] == ["processed"]
    # The run wrote back to their table (links, observed fields): no echo of that either.
    assert _outbox(h.product, h.service) == [] and _tick(instance, resources).run_requests == []


def _builtin_service(engine) -> services.Service:
    org = f"live-{uuid.uuid4().hex[:10]}"
    with engine.begin() as conn:
        return services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=org, name=org, project_id=f"p-{org}", base_url="http://127.0.0.1:9",
                api_key_env="GOLIOTH_LIVE_TEST_KEY",
            ),
        )  # fmt: skip


def _insert_device(engine, org: str, name: str) -> str:
    with engine.begin() as conn:
        return conn.execute(
            sa.text("INSERT INTO devices (organization_id, name) VALUES (:o, :n) RETURNING id::text"),
            {"o": org, "n": name},
        ).scalar_one()


def test_a_crash_between_inbox_and_outbox_duplicates_nothing_and_loses_nothing(engine, instance, resources, no_wait):
    service = _builtin_service(engine)
    instance.add_dynamic_partitions(organizations.name, [service.organization_id])
    first = _insert_device(engine, service.organization_id, "first")
    second = _insert_device(engine, service.organization_id, "second")
    # A collector copied the first change into the inbox and died before deleting it from the outbox.
    with engine.begin() as conn:
        [change, _] = capture.pending_changes(conn, mapping_of(service))
        assert webhook_events.store_local_changes(conn, service.id, service.organization_id, [change]) == 1
    # (A crash before the copy just leaves the second change in the outbox: the next tick takes it.)
    assert len(_outbox(engine, service)) == 2

    [request] = _tick(instance, resources).run_requests

    events = _inbox(engine, service)
    assert sorted(e.device_id for e in events) == sorted([first, second])  # each change queued once
    assert {e.status for e in events} == {"claimed"} and _outbox(engine, service) == []
    assert _device_ids(request) == sorted([first, second])
    with engine.begin() as conn:  # the same change copied again (a second collector): still once
        assert webhook_events.store_local_changes(conn, service.id, service.organization_id, [change]) == 0


def test_an_idle_tick_requests_one_run_for_a_burst_as_soon_as_it_settles(engine, instance, resources, monkeypatch):
    """Nothing to do when the tick starts; then, while it waits, the app inserts three devices, one
    between each of the tick's probes. The tick notices the first, waits until the burst stops
    growing, and requests one run for all three, well before its wait would have ended."""
    service = _builtin_service(engine)
    instance.add_dynamic_partitions(organizations.name, [service.organization_id])
    probe = webhooks._latest
    calls: list[int] = []
    made: list[str] = []

    def app_edits_between_probes(*args):  # the real probe; before probes 2-4, the app inserts a device
        calls.append(1)
        if 2 <= len(calls) <= 4:
            made.append(_insert_device(engine, service.organization_id, f"burst-{len(calls)}"))
        return probe(*args)

    monkeypatch.setattr(webhooks, "_latest", app_edits_between_probes)
    started = time.monotonic()
    [request] = _tick(instance, resources).run_requests
    assert _device_ids(request) == sorted(made) and len(made) == 3
    assert request.tags[RunTag.trigger] == Trigger.local_change
    assert time.monotonic() - started < webhooks.WAIT_SECONDS  # answered by the wait, not at its end


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_the_demos_psql_line_edits_acme_and_capture_queues_the_edit(product_database):
    """`golioth-sync dev` installs capture on Acme's table and prints this line: run as printed
    (through a shell), it edits one device, and capture records the edit for the inbox sensor."""
    product = product_database("acme_fleet")
    demo_product.install_capture(product.url)
    urls = [product.url]  # the embedded server's is a unix socket already; a TCP one gets its socket twin
    if product.url.host and Path(SYSTEM_SOCKETS, f".s.PGSQL.{product.url.port or 5432}").exists():
        u = product.url
        urls.append(sa.engine.URL.create(u.drivername, u.username, database=u.database, query={"host": SYSTEM_SOCKETS}))
    outputs = []
    for url in urls:
        line = demo_product.psql_line(url)
        assert line.startswith("psql postgresql://")  # unquoted: pasted as printed
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.strip())
    assert outputs == ["UPDATE 1", "UPDATE 0"][: len(urls)]  # the second finds the device already renamed
    with product.engine.connect() as conn:
        [change] = capture.pending_changes(conn, demo_product.mapping())
    assert change.operation == "update"


def test_webhook_events_and_local_changes_of_one_organization_make_one_live_run(engine, instance, resources, no_wait):
    service = _builtin_service(engine)
    org = service.organization_id
    instance.add_dynamic_partitions(organizations.name, [org])
    local = _insert_device(engine, org, "edited-here")
    event = webhook_events.NewEvent(
        service_id=service.id, organization_id=org, event_id=f"evt-{uuid.uuid4().hex}", source="signed",
        event_type="device.updated", golioth_device_id="golioth-dev-1", payload_json='{"type": "device.updated"}',
    )  # fmt: skip
    with engine.begin() as conn:
        assert webhook_events.store_events(conn, [event]) == [True]

    [request] = _tick(instance, resources).run_requests

    assert _device_ids(request) == sorted(["golioth-dev-1", local])  # one batch, both sources
    assert request.tags[RunTag.trigger] == Trigger.live and request.run_key.startswith(f"live:{org}:")


def test_organizations_sharing_the_devices_table_each_get_their_own_changes(engine, instance, resources, no_wait):
    a, b, unpartitioned = (_builtin_service(engine) for _ in range(3))
    instance.add_dynamic_partitions(organizations.name, [a.organization_id, b.organization_id])
    made = {s.organization_id: _insert_device(engine, s.organization_id, "one") for s in (a, b, unpartitioned)}

    requests = {r.partition_key: _device_ids(r) for r in _tick(instance, resources).run_requests}

    assert requests == {a.organization_id: [made[a.organization_id]], b.organization_id: [made[b.organization_id]]}
    # An organization without a partition yet keeps its change in the outbox, for when it has one.
    assert [c.row_key for c in _outbox(engine, unpartitioned)] == [made[unpartitioned.organization_id]]


def test_a_batch_touching_many_devices_runs_as_a_full_sync_that_owns_its_events(
    engine, instance, resources, monkeypatch, no_wait
):
    monkeypatch.setattr(webhooks, "TARGETED_DEVICES", 2)
    service = _builtin_service(engine)
    instance.add_dynamic_partitions(organizations.name, [service.organization_id])
    for name in ("a", "b", "c"):
        _insert_device(engine, service.organization_id, name)

    [request] = _tick(instance, resources).run_requests

    assert request.job_name == full_sync_job.name and request.run_config == {}  # no list of 3 device ids
    assert request.tags[RunTag.claim] == request.run_key  # the run still marks its 3 events processed
    assert [e.claimed_by for e in _inbox(engine, service)] == [request.run_key] * 3


def test_a_product_database_that_does_not_answer_is_tried_once_per_pass(engine, monkeypatch, caplog):
    """Tenants of one unreachable product database cost one connection attempt per pass, not one
    each (a black-holed server takes the connect timeout per attempt, and a tick has 60 s)."""
    monkeypatch.setenv("GONE_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/gone")
    mapping = mapping_with("acme_fleet", connection_env="GONE_DATABASE_URL")
    gone = [_builtin_service(engine) for _ in range(3)]
    with engine.begin() as conn:
        for service in gone:
            services.update_service(conn, service.id, local_table=mapping)
    here = _builtin_service(engine)  # the built-in table: reachable, capture installed by migration 0007
    orgs = [s.organization_id for s in (*gone, here)]

    with caplog.at_level(logging.WARNING, logger=local_changes.__name__):
        tables = local_changes.captured_tables(engine, orgs)

    assert [t.organization_id for t in tables] == [here.organization_id]
    refused = [r for r in caplog.records if "change capture not read" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    # ...and past its deadline a pass reads no database at all.
    assert local_changes.captured_tables(engine, orgs, deadline=0.0) == []
