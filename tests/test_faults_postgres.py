"""Issue 7, fault 4: PostgreSQL goes away, on a private embedded server that the tests stop and
start (pg_ctl stop -m fast: open sessions are terminated, as in a crash or a failover).

- During a sync, while the Golioth writes are in flight and while the local step's transaction
  is open: the sync fails with a clear database error, leaves no half-written device row, and
  the run after the restart converges without duplicates or lost edits.
- During webhook ingest with many concurrent senders (tests/test_webhook_outage.py covers one
  sender; here group-commit batches are in flight when the server stops): the receiver answers
  503 with Retry-After while the database is down, /healthz says so promptly, never a 500; every
  event answered 2xx before or after is in the inbox exactly once, and the registry events among
  them are claimed and processed once the database is back.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import sqlalchemy as sa

from golioth_assets.engine import apply_local as apply_local_module
from golioth_assets.engine.sync import SyncRequest, sync_organization
from golioth_assets.store import intents
from golioth_assets.store.local_table.table import LocalTable
from tests.fixtures.database import private_folder
from tests.fixtures.faults import (
    WRITE_METHODS,
    assert_no_duplicates,
    bulk_create_local,
    bulk_edit_local,
    harness_on,
    start_private_postgres,
    stop_private_postgres,
    sync_log_rows,
    write_requests,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def private_pg():
    """A private embedded PostgreSQL for this module; each test leaves it running."""
    from golioth_assets.store import embedded

    home = private_folder("faults-pg")
    pgdata = home / "pgdata"
    start_private_postgres(pgdata)
    try:
        yield pgdata
    finally:
        embedded.stop(pgdata)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pg_harness(private_pg, simulator, monkeypatch):
    """A harness whose database is the private server (and a fresh project on the session simulator)."""
    engine = start_private_postgres(private_pg)
    harnesses = []

    def make(devices: int, seed: int):
        h = harness_on(simulator.url, simulator.control, engine, monkeypatch, devices=devices, seed=seed)
        harnesses.append(h)
        return h

    yield make
    for h in harnesses:
        simulator.control.remove_project(h.project.project_id)


def _device_rows(h) -> dict:
    """Every column a sync may write, for every device of the organization (soft-deleted too).
    Hardware ids only as "has some": a device created locally without one gets a generated one,
    committed on purpose before its Golioth create is sent (so a half-done create is found again)."""
    with h.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id::text, name, cardinality(hardware_ids) > 0 OR name LIKE 'born-%', tags, enabled, "
                "desired_state, deleted_at FROM devices WHERE organization_id = :o"
            ),
            {"o": h.org},
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _links(h) -> set:
    return set(zip(h.links()["device_id"], h.links()["golioth_device_id"]))


def _edits(h) -> dict:
    """100 local renames, 10 local creates (half without a hardware id), 20 console renames."""
    ids = list(h.local().sort_index().index)
    renamed = bulk_edit_local(h, ids[:100], "before-outage")
    created = bulk_create_local(h, 10, "born-before-outage", with_hardware_ids=False)
    pulled = {}
    for device_id in ids[180:200]:
        gid = h.golioth_id_of(device_id)
        pulled[gid] = f"console-{gid[:8]}"
        h.edit_remote(gid, name=pulled[gid])
    return {"local": {**renamed, **created}, "pulled": pulled}


def _assert_converged(h, edits: dict, devices: int) -> None:
    result = h.sync()
    assert result.status == "success", result.counts
    assert h.conflicts().empty, h.conflicts()[["field", "local_value", "remote_value"]]
    remote = assert_no_duplicates(h)
    assert len(remote) == devices + 10
    local, links = h.local(), h.links().set_index("device_id")["golioth_device_id"]
    for device_id, name in edits["local"].items():
        assert local.loc[device_id, "name"] == name and remote[links[device_id]]["name"] == name
    for gid, name in edits["pulled"].items():
        assert remote[gid]["name"] == name and local.loc[h.device_id_of(gid), "name"] == name
    assert h.sync().plan.empty


def test_database_stops_while_golioth_writes_are_in_flight(pg_harness, private_pg):
    h = pg_harness(devices=200, seed=41)
    assert h.sync().status == "success"
    edits = _edits(h)
    before_rows, before_links = _device_rows(h), _links(h)
    # ~120 writes at 200 ms and 16 at a time: the apply phase outlasts the server's shutdown.
    h.project.set_faults(latency_ms=200, methods=list(WRITE_METHODS))
    h.project.reset_stats()

    outcome: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = sync_organization(h.engine, SyncRequest(h.org))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while write_requests(h.project.stats()) < 20:
        assert worker.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.01)
    stop_private_postgres(private_pg)
    stopped_at = time.monotonic()
    worker.join(120)
    try:
        assert not worker.is_alive()
        # A clean failure: the database error itself, promptly once the Golioth writes were done.
        error = outcome.get("error")
        assert isinstance(error, sa.exc.OperationalError), outcome
        assert "connection" in str(error) or "server" in str(error)
        print(f"\nthe sync failed with: {str(error).splitlines()[0]}")
        assert time.monotonic() - stopped_at < 30
        writes = write_requests(h.project.stats())
        assert writes >= 100  # the Golioth writes went on: they don't need the database
    finally:
        start_private_postgres(private_pg)
    h.project.clear_faults()

    # Nothing of the local side was written: device rows and links are as before the run.
    assert _device_rows(h) == before_rows
    assert _links(h) == before_links
    assert sync_log_rows(h)[-1]["status"] == "running"  # it could not even record its failure
    # The next run finds what Golioth already has (updates and creates) and converges.
    _assert_converged(h, edits, 200)


def test_database_stops_inside_the_local_step_and_nothing_is_half_written(pg_harness, private_pg, monkeypatch):
    h = pg_harness(devices=200, seed=42)
    assert h.sync().status == "success"
    edits = _edits(h)
    before_rows, before_links = _device_rows(h), _links(h)

    # Stop the server between two statements of the local table's one write transaction: after
    # the device rows were updated (pulls), before the observed fields and soft deletes.
    real_update = LocalTable.update
    stopped = []

    def update_then_stop(self, conn, records):
        done = real_update(self, conn, records)
        if not stopped:
            stopped.append(True)
            stop_private_postgres(private_pg)
        return done

    monkeypatch.setattr(LocalTable, "update", update_then_stop)
    try:
        with pytest.raises(sa.exc.OperationalError):
            sync_organization(h.engine, SyncRequest(h.org))
    finally:
        monkeypatch.setattr(LocalTable, "update", real_update)
        start_private_postgres(private_pg)

    # All or nothing: the pulls written before the stop were rolled back with the rest.
    after = _device_rows(h)
    for gid in edits["pulled"]:
        device_id = h.device_id_of(gid)
        assert after[device_id] == before_rows[device_id]
    assert after == before_rows
    # The remote step's own bookkeeping committed before (links of the created devices).
    assert before_links < _links(h)
    _assert_converged(h, edits, 200)


def test_database_stops_inside_the_bookkeeping_and_the_next_run_finishes_it(pg_harness, private_pg, monkeypatch):
    """The local writes committed, their bookkeeping (links, bases, audit) did not: the intent row
    committed before them lets the next run finish it instead of redoing or losing anything."""
    h = pg_harness(devices=200, seed=42)
    assert h.sync().status == "success"
    edits = _edits(h)
    real_merge_bases = apply_local_module.assignments.merge_bases

    def stop_then_merge(conn, *args, **kwargs):
        stop_private_postgres(private_pg)
        return real_merge_bases(conn, *args, **kwargs)

    monkeypatch.setattr(apply_local_module.assignments, "merge_bases", stop_then_merge)
    try:
        with pytest.raises(sa.exc.OperationalError):
            sync_organization(h.engine, SyncRequest(h.org))
    finally:
        monkeypatch.setattr(apply_local_module.assignments, "merge_bases", real_merge_bases)
        start_private_postgres(private_pg)
    with h.engine.connect() as conn:
        assert len(intents.pending(conn, h.service.id)) == 1
    _assert_converged(h, edits, 200)
    with h.engine.connect() as conn:
        assert not intents.pending(conn, h.service.id)


# -- webhook ingest across an outage, many senders at once ----------------------------------------

WEBHOOK_SECRET = "whsec_" + __import__("base64").b64encode(b"faults-outage-secret-32-bytes-ok").decode()


class Flood:
    """`senders` concurrent senders posting signed events non-stop from an asyncio loop in a
    thread; remembers every answer by event id."""

    def __init__(self, url: str, devices: list[str], senders: int = 32):
        self.url, self.devices, self.senders = url, devices, senders
        self.answers: dict[str, int] = {}
        self.kinds: dict[str, str] = {}
        self.missing_retry_after = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def body(self, msg_id: str, n: int) -> bytes:
        import json

        kind = "device.updated" if n % 5 == 0 else "device.data"  # 1 in 5: a registry event
        self.kinds[msg_id] = kind
        device = self.devices[n % len(self.devices)]
        return json.dumps({"type": kind, "device_id": device, "data": {"seq": n}}).encode()

    async def send(self, client, msg_id: str, body: bytes) -> int:
        import httpx

        from golioth_assets.webhooks.testing import signed_headers

        try:
            response = await client.post(
                self.url, content=body, headers=signed_headers(body, WEBHOOK_SECRET, msg_id=msg_id)
            )
        except httpx.TransportError:
            return 0
        if response.status_code == 503 and not response.headers.get("retry-after"):
            self.missing_retry_after += 1
        return response.status_code

    def _run(self) -> None:
        import asyncio
        import itertools

        import httpx

        counter = itertools.count()
        self.bodies: dict[str, bytes] = {}

        async def sender(client) -> None:
            while not self.stop.is_set():
                n = next(counter)
                msg_id = f"msg_flood_{n}"
                self.bodies[msg_id] = body = self.body(msg_id, n)
                self.answers[msg_id] = await self.send(client, msg_id, body)

        async def main() -> None:
            limits = httpx.Limits(max_connections=self.senders)
            async with httpx.AsyncClient(timeout=20, limits=limits) as client:
                await asyncio.gather(*(sender(client) for _ in range(self.senders)))

        asyncio.run(main())

    def count(self, *statuses: int) -> int:
        return sum(1 for v in list(self.answers.values()) if v in statuses)

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; answers so far {sorted(set(self.answers.values()))}"
            time.sleep(0.05)

    def resend_refused(self) -> dict[str, int]:
        import asyncio

        import httpx

        refused = [k for k, v in self.answers.items() if v not in (200, 202)]

        async def main() -> dict[str, int]:
            async with httpx.AsyncClient(timeout=20) as client:
                return {k: await self.send(client, k, self.bodies[k]) for k in refused}

        return asyncio.run(main())


def test_webhook_ingest_with_concurrent_senders_across_an_outage(private_pg, monkeypatch):
    import httpx

    from golioth_assets.store import webhook_events as inbox
    from golioth_assets.webhooks.app import create_app
    from golioth_assets.webhooks.config import ReceiverConfig
    from golioth_assets.webhooks.testing import ServerThread, make_webhook_service
    from tests.fixtures.webhooks import make_linked_device

    engine = start_private_postgres(private_pg)
    org = f"outage-{time.time_ns() % 10**9}"
    monkeypatch.setenv("GOLIOTH_FAULTS_OUTAGE_SECRET", WEBHOOK_SECRET)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES (:o, :o)"), {"o": org})
    service_id = make_webhook_service(engine, org, signing_key_env="GOLIOTH_FAULTS_OUTAGE_SECRET")
    devices = [f"{org}-dev-{i}" for i in range(20)]
    for gid in devices:
        make_linked_device(engine, org, service_id, gid)

    app = create_app(ReceiverConfig(service_cache_seconds=60), engine=engine)
    with ServerThread(app) as server:
        flood = Flood(f"{server.url}/webhooks/golioth/{service_id}", devices)
        flood.thread.start()
        health: list[tuple[int, float]] = []
        try:
            flood.wait_for(lambda: flood.count(202) >= 300, timeout=30)
            stop_private_postgres(private_pg)  # group-commit batches are in flight right now
            flood.wait_for(lambda: flood.count(503) >= 100, timeout=30)
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for _ in range(3):
                    started = time.monotonic()
                    health.append((client.get("/healthz").status_code, time.monotonic() - started))
            accepted_during_outage = flood.count(200, 202)
            start_private_postgres(private_pg)
            flood.wait_for(lambda: flood.count(202) >= accepted_during_outage + 300, timeout=30)
        finally:
            flood.stop.set()
            flood.thread.join(30)
        retried = flood.resend_refused()  # what a sender does with a 503: try again later

    answers = set(flood.answers.values())
    assert answers <= {200, 202, 503}, answers  # never a 500, never a dropped connection
    assert flood.missing_retry_after == 0
    assert all(status == 503 and seconds < 5.0 for status, seconds in health), health  # answers, not hangs
    assert set(retried.values()) <= {200, 202}, set(retried.values())

    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                sa.text("SELECT event_id, status FROM webhook_events WHERE service_id = :s"), {"s": service_id}
            ).all()
        )
    acknowledged = {k for k, v in flood.answers.items() if v in (200, 202)} | set(retried)
    assert acknowledged <= set(stored), "an event answered 2xx is missing from the inbox"
    assert set(stored) == set(flood.answers)  # and nothing was stored that nobody sent
    # Observed data of linked devices was applied in the commit that acknowledged it...
    assert {stored[k] for k, kind in flood.kinds.items() if kind == "device.data"} == {"processed"}
    # ...and the registry events wait for the sensor's targeted sync, which now claims them all.
    registry = {k for k, kind in flood.kinds.items() if kind == "device.updated"}
    assert {stored[k] for k in registry} == {"pending"}
    with engine.begin() as conn:
        groups = inbox.claim_pending(conn, limit=100_000, claimed_by="faults-test", organization_id=org)
        assert sum(len(g.event_ids) for g in groups) == len(registry)
        assert inbox.mark_processed(conn, "faults-test") == len(registry)
        assert inbox.count_by_status(conn, org) == {**dict.fromkeys(inbox.STATUSES, 0), "processed": len(stored)}
    print(f"\nwebhook outage: {len(stored)} events, {flood.count(503)} answered 503 first, healthz {health}")
