"""The receiver over real HTTP (uvicorn on a loopback port) against the real test database."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from golioth_assets.store import database
from golioth_assets.store.services import update_service
from golioth_assets.webhooks.app import create_app
from golioth_assets.webhooks.config import ReceiverConfig
from golioth_assets.webhooks.testing import ServerThread, make_webhook_service, signed_headers
from tests.fixtures.webhooks import make_linked_device

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()  # the signing key
OLD_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
PIPELINE_SECRET = secrets.token_hex(32)  # the Golioth pipelines' header secret: another secret
PIPELINE_SECRET_HEADER = "x-golioth-sync-secret"
CONFIG = ReceiverConfig(max_body_bytes=64 * 1024, service_cache_seconds=0.2)


@pytest.fixture(scope="module")
def receiver(engine) -> Iterator[ServerThread]:
    with ServerThread(create_app(CONFIG, engine=engine), limits=CONFIG) as server:
        yield server


@pytest.fixture
def client(receiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=receiver.url, timeout=10) as c:
        yield c


@pytest.fixture
def service(engine, org, monkeypatch) -> int:
    suffix = uuid.uuid4().hex[:8].upper()
    monkeypatch.setenv(f"GOLIOTH_TEST_WEBHOOK_{suffix}", PIPELINE_SECRET)
    monkeypatch.setenv(f"GOLIOTH_TEST_SIGNING_{suffix}", SECRET)
    return make_webhook_service(
        engine,
        org,
        pipeline_secret_env=f"GOLIOTH_TEST_WEBHOOK_{suffix}",
        signing_key_env=f"GOLIOTH_TEST_SIGNING_{suffix}",
    )


@pytest.fixture
def device(engine, org, service) -> tuple[str, str]:
    golioth_id = uuid.uuid4().hex[:24]
    return golioth_id, make_linked_device(engine, org, service, golioth_id)


def rows(engine, service_id: int) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text("SELECT * FROM webhook_events WHERE service_id = :s ORDER BY id"), {"s": service_id}
            ).mappings()
        ]


def device_row(engine, device_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM devices WHERE id = :id"), {"id": device_id}).mappings().one())


def pipeline_headers(device_id: str, secret: str | None = PIPELINE_SECRET, **extra: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "ce-source": device_id,
        "ce-subject": "proj-test",
        "ce-type": "io.golioth.data.v1/.s/env",
        **extra,
    }
    if secret is not None:
        headers[PIPELINE_SECRET_HEADER] = secret
    return headers


def signed_body(event_type: str, device_id: str, data=None, timestamp: str | None = None) -> bytes:
    body = {"type": event_type, "device_id": device_id, "data": data or {}}
    if timestamp:
        body["timestamp"] = timestamp
    return json.dumps(body).encode()


# --- Golioth pipeline deliveries -------------------------------------------------------------


def test_pipeline_delivery_with_correct_secret_is_stored_once(client, engine, service, device):
    golioth_id, _ = device
    headers = pipeline_headers(golioth_id, **{"ce-id": "ce-1"})
    first = client.post(f"/webhooks/golioth/{service}", content=b'{"temp": 21.5}', headers=headers)
    retry = client.post(f"/webhooks/golioth/{service}", content=b'{"temp": 21.5}', headers=headers)

    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    assert (retry.status_code, retry.json()["status"]) == (200, "duplicate")
    stored = rows(engine, service)
    assert len(stored) == 1
    assert stored[0]["event_id"] == "ce-1"
    assert stored[0]["source"] == "golioth_pipeline"
    assert stored[0]["golioth_device_id"] == golioth_id
    assert stored[0]["payload"]["data"] == {"temp": 21.5}
    assert stored[0]["payload"]["ce_type"] == "io.golioth.data.v1/.s/env"


# The signing key is not the pipeline secret: seeing one must not let anyone use the other format.
@pytest.mark.parametrize("secret", ["wrong-secret", PIPELINE_SECRET + "x", PIPELINE_SECRET[:-1], "", None, SECRET])
def test_pipeline_delivery_with_wrong_or_no_secret_is_401_and_not_stored(client, engine, service, device, secret):
    golioth_id, _ = device
    response = client.post(
        f"/webhooks/golioth/{service}", content=b'{"temp": 1}', headers=pipeline_headers(golioth_id, secret)
    )
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert SECRET not in response.text and PIPELINE_SECRET not in response.text
    assert rows(engine, service) == []


def test_pipeline_without_ce_id_dedupes_on_a_hash_of_device_type_and_body(client, engine, service, device):
    golioth_id, _ = device
    url = f"/webhooks/golioth/{service}"
    body = json.dumps(
        {
            "data": {"temp": 3},
            "device_id": golioth_id,
            "project_id": "proj-test",
            "timestamp": {"seconds": 1700000000, "nanos": 0},
        }
    ).encode()
    answers = [client.post(url, content=body, headers=pipeline_headers(golioth_id)).status_code for _ in range(2)]
    other = client.post(url, content=body.replace(b'"temp": 3', b'"temp": 4'), headers=pipeline_headers(golioth_id))

    assert answers == [202, 200]
    assert other.status_code == 202
    stored = rows(engine, service)
    assert len(stored) == 2
    assert all(r["event_id"].startswith("sha256:") for r in stored)


def test_pipeline_inject_metadata_updates_observed_fields_in_the_same_transaction(client, engine, service, device):
    golioth_id, local_id = device
    before = device_row(engine, local_id)
    sent_at = datetime.now(UTC) - timedelta(seconds=5)
    body = json.dumps(
        {
            "data": {"battery": 87, "rssi": -71},
            "device_id": golioth_id,
            "project_id": "proj-test",
            "timestamp": {"seconds": int(sent_at.timestamp()), "nanos": 250_000_000},
        }
    ).encode()
    headers = pipeline_headers(golioth_id)
    del headers["ce-source"]  # the device id comes from the injected metadata

    response = client.post(f"/webhooks/golioth/{service}", content=body, headers=headers)

    assert response.status_code == 202
    # No polling: the 2xx means the device row is already committed.
    after = device_row(engine, local_id)
    assert after["reported_state"] == {"env": {"battery": 87, "rssi": -71}}
    assert after["status"] == "online"
    assert after["last_report"] == datetime.fromtimestamp(int(sent_at.timestamp()) + 0.25, tz=UTC)
    assert after["observed_at"] is not None
    # Observed fields are not versioned: the sync must not see this as a local edit.
    assert (after["version"], after["updated_at"]) == (before["version"], before["updated_at"])
    # Fully handled by the fast path: nothing for the sensor to do.
    assert rows(engine, service)[0]["status"] == "processed"


def test_pipeline_delivery_for_unknown_device_stays_pending_for_the_sensor(client, engine, service):
    response = client.post(
        f"/webhooks/golioth/{service}", content=b'{"temp": 1}', headers=pipeline_headers("not-linked-yet")
    )
    assert response.status_code == 202
    assert [r["status"] for r in rows(engine, service)] == ["pending"]


# --- signed device events --------------------------------------------------------------------


def test_signed_online_and_offline_events_update_status(client, engine, service, device):
    golioth_id, local_id = device
    url = f"/webhooks/golioth/{service}"
    t0 = datetime.now(UTC) - timedelta(seconds=30)
    online = signed_body("device.online", golioth_id, timestamp=t0.isoformat())
    offline = signed_body("device.offline", golioth_id, timestamp=(t0 + timedelta(seconds=10)).isoformat())

    assert client.post(url, content=online, headers=signed_headers(online, SECRET)).status_code == 202
    assert device_row(engine, local_id)["status"] == "online"
    assert client.post(url, content=offline, headers=signed_headers(offline, SECRET)).status_code == 202
    after = device_row(engine, local_id)
    assert after["status"] == "offline"
    assert after["last_seen_online"] == t0
    assert after["last_seen_offline"] == t0 + timedelta(seconds=10)
    # A late, older "online" must not flip the device back.
    late = signed_body("device.online", golioth_id, timestamp=(t0 + timedelta(seconds=5)).isoformat())
    assert client.post(url, content=late, headers=signed_headers(late, SECRET)).status_code == 202
    assert device_row(engine, local_id)["status"] == "offline"


def test_signed_registry_event_is_left_pending_and_touches_no_device(client, engine, service, device):
    golioth_id, local_id = device
    before = device_row(engine, local_id)
    body = signed_body("device.updated", golioth_id, {"name": "renamed"})
    response = client.post(f"/webhooks/golioth/{service}", content=body, headers=signed_headers(body, SECRET))

    assert response.status_code == 202
    stored = rows(engine, service)
    assert [(r["event_type"], r["status"], r["source"]) for r in stored] == [("device.updated", "pending", "signed")]
    assert device_row(engine, local_id) == before


def test_signed_event_retried_with_same_webhook_id_is_stored_once(client, engine, service, device):
    golioth_id, _ = device
    body = signed_body("device.deleted", golioth_id)
    headers = signed_headers(body, SECRET, msg_id="msg_retry_1")
    codes = [client.post(f"/webhooks/golioth/{service}", content=body, headers=headers).status_code for _ in range(3)]
    assert codes == [202, 200, 200]
    assert [r["event_id"] for r in rows(engine, service)] == ["msg_retry_1"]


def test_signature_rotation_sender_signs_with_old_and_new(client, engine, service, device):
    golioth_id, _ = device
    body = signed_body("device.created", golioth_id)
    # The sender is mid-rotation: several signatures, only one made with the receiver's secret.
    headers = signed_headers(body, OLD_SECRET, SECRET)
    assert len(headers["webhook-signature"].split()) == 2
    assert client.post(f"/webhooks/golioth/{service}", content=body, headers=headers).status_code == 202
    assert len(rows(engine, service)) == 1


def test_signature_rotation_receiver_holds_old_and_new(client, engine, org, monkeypatch):
    # The receiver is mid-rotation: the new key's variable is current, the old one's is accepted
    # until its window ends (tests/test_security_webhooks.py covers the window's end).
    suffix = uuid.uuid4().hex[:8].upper()
    monkeypatch.setenv(f"GOLIOTH_TEST_SIGNING_{suffix}", SECRET)
    monkeypatch.setenv(f"GOLIOTH_TEST_OLD_SIGNING_{suffix}", OLD_SECRET)
    service_id = make_webhook_service(engine, org, signing_key_env=f"GOLIOTH_TEST_SIGNING_{suffix}")
    with engine.begin() as conn:
        update_service(
            conn,
            service_id,
            webhook_signing_key_previous_env=f"GOLIOTH_TEST_OLD_SIGNING_{suffix}",
            webhook_signing_key_previous_until=datetime.now(UTC) + timedelta(hours=1),
        )
    body = signed_body("device.created", "dev-rot")
    old_only = client.post(f"/webhooks/golioth/{service_id}", content=body, headers=signed_headers(body, OLD_SECRET))
    stranger = "whsec_" + base64.b64encode(b"s" * 32).decode()
    forged = client.post(f"/webhooks/golioth/{service_id}", content=body, headers=signed_headers(body, stranger))
    assert (old_only.status_code, forged.status_code) == (202, 401)
    assert len(rows(engine, service_id)) == 1


def _signed_variants(golioth_id: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    body = signed_body("device.created", golioth_id)
    good = signed_headers(body, SECRET)
    now = int(time.time())
    wrong_secret = "whsec_" + base64.b64encode(b"w" * 32).decode()
    missing = {
        name: {k: v for k, v in good.items() if k != name}
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    }
    return {
        "wrong secret": (body, signed_headers(body, wrong_secret)),
        "body tampered by one byte": (body.replace(b"device.created", b"device.createD"), good),
        "too old": (body, signed_headers(body, SECRET, timestamp=now - 400)),
        "too new": (body, signed_headers(body, SECRET, timestamp=now + 400)),
        "unknown signature version": (
            body,
            {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")},
        ),
        "garbage signature": (body, {**good, "webhook-signature": "v1,@@@ nonsense"}),
        "non-numeric timestamp": (body, {**good, "webhook-timestamp": "yesterday"}),
        **{f"missing {name}": (body, headers) for name, headers in missing.items()},
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong secret",
        "body tampered by one byte",
        "too old",
        "too new",
        "unknown signature version",
        "garbage signature",
        "non-numeric timestamp",
        "missing webhook-id",
        "missing webhook-timestamp",
        "missing webhook-signature",
    ],
)
def test_forged_signed_events_are_401_and_not_stored(client, engine, service, device, case):
    body, headers = _signed_variants(device[0])[case]
    # A static secret alongside a bad signature must not rescue it.
    headers = {**headers, PIPELINE_SECRET_HEADER: PIPELINE_SECRET}
    response = client.post(f"/webhooks/golioth/{service}", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert rows(engine, service) == []


# --- bad input: precise answers, nothing written ----------------------------------------------


def _bad_requests(service_id: int, golioth_id: str) -> dict[str, tuple[int, str, bytes, dict[str, str]]]:
    url = f"/webhooks/golioth/{service_id}"
    ok = pipeline_headers(golioth_id)
    big = b'{"x": "' + b"a" * (64 * 1024) + b'"}'
    invalid_signed = json.dumps({"type": "device.exploded", "device_id": golioth_id}).encode()
    other_project = json.dumps({"type": "device.online", "device_id": golioth_id, "project_id": "nope"}).encode()
    return {
        "malformed JSON": (400, url, b'{"temp": ', ok),
        "NaN is not JSON": (400, url, b'{"temp": NaN}', ok),
        "not UTF-8": (400, url, b'{"temp": "\xff"}', ok),
        "NUL character": (400, url, b'{"temp": "a\\u0000b"}', ok),
        "unpaired surrogate": (400, url, b'{"temp": "\\ud800"}', ok),
        "missing device id": (400, url, b'{"temp": 1}', {k: v for k, v in ok.items() if k != "ce-source"}),
        "control character in device id": (400, url, b'{"temp": 1}', {**ok, "ce-source": "a\tb"}),
        "other project": (400, url, b'{"temp": 1}', {**ok, "ce-subject": "someone-elses-project"}),
        "bad injected timestamp": (
            400,
            url,
            json.dumps({"data": {}, "device_id": golioth_id, "timestamp": "soon"}).encode(),
            ok,
        ),
        "signed event fails validation": (400, url, invalid_signed, signed_headers(invalid_signed, SECRET)),
        "signed event not an object": (400, url, b"[1, 2]", signed_headers(b"[1, 2]", SECRET)),
        "signed event of another project": (400, url, other_project, signed_headers(other_project, SECRET)),
        "unknown service": (404, "/webhooks/golioth/987654321987", b'{"temp": 1}', ok),
        "non-numeric service": (404, "/webhooks/golioth/abc", b'{"temp": 1}', ok),
        "body above the limit": (413, url, big, ok),
        "wrong content type": (415, url, b'{"temp": 1}', {**ok, "content-type": "text/plain"}),
        "CBOR": (415, url, b"\xa1dtemp\x15", {**ok, "content-type": "application/cbor"}),
        "no content type": (415, url, b'{"temp": 1}', {k: v for k, v in ok.items() if k != "content-type"}),
    }


@pytest.mark.parametrize(
    "case",
    [
        "malformed JSON",
        "NaN is not JSON",
        "not UTF-8",
        "NUL character",
        "unpaired surrogate",
        "missing device id",
        "control character in device id",
        "other project",
        "bad injected timestamp",
        "signed event fails validation",
        "signed event not an object",
        "signed event of another project",
        "unknown service",
        "non-numeric service",
        "body above the limit",
        "wrong content type",
        "CBOR",
        "no content type",
    ],
)
def test_bad_input_gets_a_precise_answer_and_writes_nothing(client, engine, service, device, case):
    status, url, body, headers = _bad_requests(service, device[0])[case]
    response = client.post(url, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert rows(engine, service) == []
    assert device_row(engine, device[1])["observed_at"] is None


def test_body_limit_is_enforced_while_reading_not_from_content_length(client, engine, service, device):
    # Chunked transfer has no Content-Length to trust: the limit must hold on the bytes themselves.
    def chunks():
        yield b'{"x": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}'

    response = client.post(f"/webhooks/golioth/{service}", content=chunks(), headers=pipeline_headers(device[0]))
    assert response.status_code == 413
    assert rows(engine, service) == []


def test_body_at_the_limit_is_accepted(client, engine, service, device):
    padding = CONFIG.max_body_bytes - len(b'{"x": ""}')
    body = b'{"x": "' + b"a" * padding + b'"}'
    assert len(body) == CONFIG.max_body_bytes
    response = client.post(f"/webhooks/golioth/{service}", content=body, headers=pipeline_headers(device[0]))
    assert response.status_code == 202
    assert len(rows(engine, service)) == 1


class ManualClock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_disabled_service_is_404_once_the_cache_expires(engine, service, device):
    clock = ManualClock()
    url = f"/webhooks/golioth/{service}"
    with (
        ServerThread(create_app(CONFIG, engine=engine, clock=clock), limits=CONFIG) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        assert client.post(url, content=b'{"n": 1}', headers=pipeline_headers(device[0])).status_code == 202
        with engine.begin() as conn:
            update_service(conn, service, webhook_enabled=False)
        # Within the cache's lifetime the receiver still uses the settings it read.
        clock.now += CONFIG.service_cache_seconds * 0.9
        assert client.post(url, content=b'{"n": 2}', headers=pipeline_headers(device[0])).status_code == 202
        clock.now += CONFIG.service_cache_seconds * 0.2
        assert client.post(url, content=b'{"n": 3}', headers=pipeline_headers(device[0])).status_code == 404
    assert len(rows(engine, service)) == 2


def test_secret_variable_unset_is_503_and_writes_nothing(client, engine, org, monkeypatch):
    service_id = make_webhook_service(engine, org, pipeline_secret_env="GOLIOTH_TEST_WEBHOOK_NEVER_SET")
    monkeypatch.delenv("GOLIOTH_TEST_WEBHOOK_NEVER_SET", raising=False)
    response = client.post(f"/webhooks/golioth/{service_id}", content=b"{}", headers=pipeline_headers("d"))
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert rows(engine, service_id) == []


def test_secrets_never_reach_the_logs(client, service, device, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"/webhooks/golioth/{service}"
    client.post(url, content=b'{"n": 1}', headers=pipeline_headers(device[0]))
    client.post(url, content=b'{"n": 1}', headers=pipeline_headers(device[0], secret=PIPELINE_SECRET + "typo"))
    body = signed_body("device.created", device[0])
    client.post(url, content=body, headers=signed_headers(body, OLD_SECRET))
    assert caplog.records, "the unauthorized attempts should have been logged"
    assert SECRET not in caplog.text and SECRET[6:] not in caplog.text and OLD_SECRET not in caplog.text
    assert PIPELINE_SECRET not in caplog.text


# --- concurrency, health and refusal ----------------------------------------------------------


def test_concurrent_retries_of_one_event_store_exactly_one_row(receiver, engine, service, device):
    body = signed_body("device.data", device[0], {"battery": 50})
    headers = signed_headers(body, SECRET)
    url = f"{receiver.url}/webhooks/golioth/{service}"

    def send(_):
        with httpx.Client(timeout=10) as c:
            return c.post(url, content=body, headers=headers).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, range(32)))

    assert sorted(codes) == [200] * 31 + [202]
    assert len(rows(engine, service)) == 1


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_unreachable_database_is_503_with_retry_after():
    # Port 1 on loopback refuses at once: a database that is down, without stopping anything shared.
    dead = database.engine_for("postgresql+psycopg2://postgres@127.0.0.1:1/nowhere")
    with ServerThread(create_app(CONFIG, engine=dead)) as server, httpx.Client(base_url=server.url) as c:
        hook = c.post("/webhooks/golioth/1", content=b"{}", headers=pipeline_headers("d"))
        health = c.get("/healthz")
    assert (hook.status_code, health.status_code) == (503, 503)
    assert int(hook.headers["Retry-After"]) > 0 and int(health.headers["Retry-After"]) > 0


def test_overload_is_refused_with_503_and_retry_after(engine, service, device):
    shedding = ReceiverConfig(max_queue=0)  # every event finds the queue "full"
    with (
        ServerThread(create_app(shedding, engine=engine), limits=shedding) as server,
        httpx.Client(base_url=server.url) as c,
    ):
        response = c.post(f"/webhooks/golioth/{service}", content=b'{"n": 1}', headers=pipeline_headers(device[0]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["error"].startswith("overloaded")
    assert rows(engine, service) == []


def test_secret_env_value_is_read_at_request_time(client, engine, org, monkeypatch):
    # Rotating the secret in the environment of a running receiver takes effect immediately.
    env = f"GOLIOTH_TEST_WEBHOOK_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env, PIPELINE_SECRET)
    service_id = make_webhook_service(engine, org, pipeline_secret_env=env)
    url = f"/webhooks/golioth/{service_id}"
    assert client.post(url, content=b'{"n": 0}', headers=pipeline_headers("d1")).status_code == 202
    brand_new = secrets.token_hex(32)
    monkeypatch.setenv(env, brand_new)
    old = client.post(url, content=b'{"n": 1}', headers=pipeline_headers("d1"))
    new = client.post(url, content=b'{"n": 1}', headers=pipeline_headers("d1", secret=brand_new))
    assert (old.status_code, new.status_code) == (401, 202)
    assert len(rows(engine, service_id)) == 2


def test_the_simulators_deliveries_are_accepted(client, receiver, engine, service, device):
    # Contract with golioth_assets/simulator/webhook_sender.py: what it sends, we take.
    from golioth_assets.simulator.model import EventsTarget, WebhookTarget
    from golioth_assets.simulator.webhook_sender import data_delivery, event_delivery

    golioth_id, local_id = device
    url = f"{receiver.url}/webhooks/golioth/{service}"
    now_ns = time.time_ns()
    data = data_delivery(
        WebhookTarget(url, {PIPELINE_SECRET_HEADER: PIPELINE_SECRET}),
        "proj-test",
        golioth_id,
        "env",
        {"battery": 5},
        now_ns=now_ns,
    )
    offline = event_delivery(
        EventsTarget(url, SECRET), "device.offline", "proj-test", golioth_id, {}, now_ms=now_ns // 1_000_000 + 1000
    )
    for delivery in (data, offline):
        response = client.post(delivery.url, content=delivery.body, headers=delivery.headers)
        assert response.status_code == 202, response.text
    row = device_row(engine, local_id)
    assert (row["reported_state"], row["status"]) == ({"env": {"battery": 5}}, "offline")


# --- a product's own table (issue 10): the fast path through its LocalTable --------------------------


@pytest.fixture
def product_service(make_acme_harness, monkeypatch):
    """examples/acme_fleet in a database of its own, linked by a first sync, with webhooks on."""
    env = f"GOLIOTH_TEST_SIGNING_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env, SECRET)
    h = make_acme_harness(devices=2)
    assert h.sync().status == "success"
    h.configure(webhook_enabled=True, webhook_signing_key_env=env)
    return h


def _wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def test_observed_fields_reach_a_product_table_in_another_database(client, engine, product_service):
    """The events commit first (and are answered); then one statement writes their table, in the
    product's own vocabulary: ONLINE/OFFLINE in its enum, the firmware map merged."""
    h = product_service
    device_id, gid = h.links().sort_values("golioth_device_id").iloc[0][["device_id", "golioth_device_id"]]
    audits = h.audit_count()
    t0 = datetime.now(UTC) - timedelta(seconds=30)
    online = signed_body("device.online", gid, {"firmware_versions": {"main": "9.9.9"}}, timestamp=t0.isoformat())
    offline = signed_body("device.offline", gid, timestamp=(t0 + timedelta(seconds=10)).isoformat())
    late = signed_body("device.online", gid, timestamp=(t0 + timedelta(seconds=5)).isoformat())  # older: no flip
    url = f"/webhooks/golioth/{h.service.id}"
    for body in (online, offline, late):
        assert client.post(url, content=body, headers=signed_headers(body, SECRET)).status_code == 202

    def applied():
        row = h.rows().loc[device_id]
        return row.to_dict() if row["last_online_at"] == t0 + timedelta(seconds=5) else None

    row = _wait_for(applied)
    assert row["connectivity"] == "OFFLINE"
    assert row["last_offline_at"] == t0 + timedelta(seconds=10)
    assert row["firmware"]["main"] == "9.9.9"
    assert h.audit_count() == audits + 3  # their audit trigger saw each write: ordinary UPDATEs
    assert [r["status"] for r in rows(engine, h.service.id)] == ["processed"] * 3
    assert h.sync().plan.query("action != 'observe'").empty  # no synced field looks edited


def test_a_product_table_that_refuses_the_write_loses_nothing_but_those_fields(client, engine, product_service, caplog):
    """Their database refuses the observed fields (a column renamed under the receiver): the events
    are committed and answered all the same, one line says what was not written, and the row is
    unchanged. The next sync brings the fields from Golioth."""
    h = product_service
    device_id, gid = h.links().sort_values("golioth_device_id").iloc[0][["device_id", "golioth_device_id"]]
    url = f"/webhooks/golioth/{h.service.id}"
    warmup = signed_body("device.offline", gid, timestamp=(datetime.now(UTC) - timedelta(seconds=60)).isoformat())
    assert client.post(url, content=warmup, headers=signed_headers(warmup, SECRET)).status_code == 202
    _wait_for(lambda: h.rows().loc[device_id, "connectivity"] == "OFFLINE")  # the table is open and cached
    before = h.rows().loc[device_id]
    caplog.set_level(logging.WARNING, logger="golioth_assets.store.webhook_events")
    with h.product.begin() as conn:
        conn.execute(sa.text("ALTER TABLE app.devices RENAME COLUMN connectivity TO link_state"))
    try:
        body = signed_body("device.online", gid, timestamp=datetime.now(UTC).isoformat())
        assert client.post(url, content=body, headers=signed_headers(body, SECRET)).status_code == 202
        line = _wait_for(lambda: [r.getMessage() for r in caplog.records if "not written to" in r.getMessage()])
        assert "observed fields of 1 device(s) not written to" in line[0] and "app.devices" in line[0]
        assert "connectivity" in line[0] and "next sync brings them" in line[0]
        after = h.rows().loc[device_id]
        assert after["last_online_at"] == before["last_online_at"]
        assert [r["status"] for r in rows(engine, h.service.id)] == ["processed", "processed"]
    finally:
        with h.product.begin() as conn:
            conn.execute(sa.text("ALTER TABLE app.devices RENAME COLUMN link_state TO connectivity"))


@pytest.fixture
def meters_in_our_database(engine, org, monkeypatch):
    """examples/hydro_meters' table created in golioth-sync's own database (its own schema), one
    meter linked to a Golioth device: (service id, meter id, Golioth id, schema)."""
    from tests.fixtures.local_tables import EXAMPLES, mapping_with

    schema = f"hydro_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}; SET LOCAL search_path = {schema}")
        conn.exec_driver_sql((EXAMPLES / "hydro_meters" / "schema.sql").read_text().replace("%", "%%"))
        meter = conn.exec_driver_sql(
            f"INSERT INTO {schema}.meters (utility, serial, label) VALUES (%(u)s, 'HN-1', 'Main street 12') RETURNING id",
            {"u": org},
        ).scalar_one()
    env = f"GOLIOTH_TEST_SIGNING_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(env, SECRET)
    mapping = mapping_with(
        "hydro_meters", connection_env=None, table=f"{schema}.meters", tenant={"column": "utility", "equals": org}
    )
    service_id = make_webhook_service(engine, org, signing_key_env=env)
    gid = uuid.uuid4().hex[:24]
    with engine.begin() as conn:
        update_service(conn, service_id, local_table=mapping)
        conn.execute(
            sa.text(
                "INSERT INTO device_service_assignments (service_id, device_id, golioth_device_id) VALUES (:s, :d, :g)"
            ),
            {"s": service_id, "d": str(meter), "g": gid},
        )
    yield service_id, meter, gid, schema
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def test_a_product_table_in_our_own_database_is_written_in_the_events_transaction(
    client, engine, meters_in_our_database
):
    service_id, meter, gid, schema = meters_in_our_database
    t0 = datetime.now(UTC) - timedelta(seconds=30)
    body = signed_body("device.online", gid, {"firmware_versions": {"main": "3.0.1"}}, timestamp=t0.isoformat())
    response = client.post(f"/webhooks/golioth/{service_id}", content=body, headers=signed_headers(body, SECRET))
    assert response.status_code == 202
    # No polling: the 2xx means the meter row is committed with the event.
    with engine.connect() as conn:
        row = conn.exec_driver_sql(f"SELECT * FROM {schema}.meters WHERE id = %(id)s", {"id": meter}).mappings().one()
    assert (row["last_contact"], row["fw"], row["label"]) == (t0, "3.0.1", "Main street 12")
    assert [r["status"] for r in rows(engine, service_id)] == ["processed"]
