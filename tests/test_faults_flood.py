"""Issue 7, fault 5: a webhook flood at 10× the sustainable rate for 30 s (soak: `make test-soak`).

docs/benchmarks.md ("Webhook ingest") measured S ≈ 2,000 events/s sustainable on this machine, so
wrk paces at 20,000/s: Golioth pipeline deliveries for linked devices, through the production
server (`golioth-sync webhooks serve --workers 2`, default shedding settings) on a database of its
own. (A wrk connection waits for its answer before sending again, so what is actually offered is
capped by how fast the receiver answers: 13-16k/s on 2 shared cores, asserted > 5×S.)
Meanwhile two witnesses run:

- a health prober: GET /healthz every 100 ms; the receiver must keep answering it, quickly;
- a witness sender: signed events one at a time, like a well-behaved sender (on 503 it waits for
  Retry-After, at most 1 s here, and tries again), each tracked by id: half of them registry
  events that only a targeted sync completes.

Afterwards: every answer was 2xx or a 503/429 refusal with Retry-After; no 5xx otherwise, no
socket errors or timeouts; wrk's acknowledged events are all in the table (2xx ≤ rows ≤ 2xx + the
requests wrk cut off in flight at the end: wrk cannot say which ids were answered) and were all
processed by the fast path; every witness event answered 2xx is in the table, and its registry
events are then claimed and processed through the inbox lifecycle.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from golioth_assets.store import database, migrate
from golioth_assets.store import webhook_events as inbox
from golioth_assets.webhooks.testing import make_webhook_service, signed_headers
from tests.fixtures.database import drop_database

pytestmark = pytest.mark.soak

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "benchmarks" / "webhook_wrk.lua"
SUSTAINABLE = 2000  # events/s, docs/benchmarks.md "Webhook ingest"
FLOOD_RATE = 10 * SUSTAINABLE
FLOOD_SECONDS = 30
DEVICES = 1000
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
SECRET_ENV = "GOLIOTH_FAULTS_FLOOD_SIGNING_KEY"
PIPELINE_SECRET = secrets.token_hex(32)
PIPELINE_SECRET_ENV = "GOLIOTH_FAULTS_FLOOD_PIPELINE_SECRET"


@pytest.fixture
def flood_db(db_url):
    """A database of its own (the flood writes ~100k rows), with DEVICES linked devices."""
    url = db_url.set(database=f"gs_flood_{uuid.uuid4().hex[:8]}")
    database.ensure_database_exists(url)
    engine = database.engine_for(url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES ('bench', 'bench')"))
    service_id = make_webhook_service(
        engine, "bench", pipeline_secret_env=PIPELINE_SECRET_ENV, signing_key_env=SECRET_ENV, project_id="bench"
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO devices (organization_id, name) "
                "SELECT 'bench', 'bench-' || g FROM generate_series(0, :n - 1) g"
            ),
            {"n": DEVICES},
        )
        conn.execute(
            sa.text(
                "INSERT INTO device_service_assignments (service_id, device_id, golioth_device_id) "
                "SELECT :s, id, name FROM devices WHERE organization_id = 'bench'"
            ),
            {"s": service_id},
        )
    try:
        yield url, engine, service_id
    finally:
        engine.dispose()
        drop_database(url)


@dataclass
class ReceiverProcess:
    base: str
    proc: subprocess.Popen

    def stop(self) -> None:
        """SIGTERM, then wait for the exit: uvicorn finishes the requests it holds, and each worker
        commits its queue on the way out, so afterwards the table holds all it will ever hold."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def receiver(flood_db):
    """`golioth-sync webhooks serve --workers 2` in its own session, as in production."""
    url, _, _ = flood_db
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        SECRET_ENV: SECRET,
        PIPELINE_SECRET_ENV: PIPELINE_SECRET,
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("golioth-sync")),
            "webhooks",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the receiver did not come up"
            time.sleep(0.2)
        yield ReceiverProcess(base, proc)
    finally:
        ReceiverProcess(base, proc).stop()


def run_wrk(base: str, service_id: int, prefix: str) -> dict:
    env = {
        **os.environ,
        "BENCH_SERVICE": str(service_id),
        "BENCH_SECRET": PIPELINE_SECRET,
        "BENCH_PREFIX": prefix,
        "BENCH_DEVICES": str(DEVICES),
        "BENCH_RATE": str(FLOOD_RATE),
        "BENCH_THREADS": "2",
    }
    # wrk sends one request per connection at a time: 400 connections are needed to offer 20k/s
    # while answers take ~20 ms.
    cmd = ["wrk", "-t2", "-c400", f"-d{FLOOD_SECONDS}s", "--timeout", "10s", "-s", str(LUA), base]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=FLOOD_SECONDS + 60).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_RESULT "))
    return json.loads(line.removeprefix("BENCH_RESULT "))


class HealthProber(threading.Thread):
    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.stop, self.samples = base, threading.Event(), []

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.samples.append((status, time.monotonic() - started))
                time.sleep(0.1)


class WitnessSender(threading.Thread):
    """Signed events one at a time, each retried on 503 after Retry-After (capped at 1 s)."""

    def __init__(self, url: str, prefix: str):
        super().__init__(daemon=True)
        self.url, self.prefix, self.stop = url, prefix, threading.Event()
        self.final: dict[str, int] = {}  # event id -> last answer
        self.kinds: dict[str, str] = {}
        self.refusals = 0
        self.bad_refusals = 0  # a 503/429 without Retry-After

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=15) as client:
            while not self.stop.is_set():
                n += 1
                msg_id = f"witness-{self.prefix}-{n}"
                kind = "device.updated" if n % 2 else "device.data"
                self.kinds[msg_id] = kind
                body = json.dumps({"type": kind, "device_id": f"bench-{n % DEVICES}", "data": {"n": n}}).encode()
                for _ in range(20):
                    try:
                        response = client.post(
                            self.url, content=body, headers=signed_headers(body, SECRET, msg_id=msg_id)
                        )
                        status = response.status_code
                    except httpx.TransportError as exc:
                        status, response = type(exc).__name__, None
                    self.final[msg_id] = status
                    if status not in (429, 503):
                        break
                    self.refusals += 1
                    retry_after = response.headers.get("retry-after") if response is not None else None
                    if not retry_after:
                        self.bad_refusals += 1
                    time.sleep(min(1.0, float(retry_after or 1)))


@pytest.mark.skipif(
    shutil.which("wrk") is None,
    reason="needs wrk (apt-get install -y wrk), the load generator the ingest benchmark uses",
)
def test_webhook_flood_at_ten_times_the_sustainable_rate(flood_db, receiver):
    _, engine, service_id = flood_db
    prefix = f"flood-{uuid.uuid4().hex[:6]}"
    prober = HealthProber(receiver.base)
    # A few of them: under the flood most attempts are refused, and each refusal costs a second.
    witnesses = [WitnessSender(f"{receiver.base}/webhooks/golioth/{service_id}", str(i)) for i in range(4)]
    for thread in (prober, *witnesses):
        thread.start()
    try:
        result = run_wrk(receiver.base, service_id, prefix)
    finally:
        for thread in (prober, *witnesses):
            thread.stop.set()
        for thread in (prober, *witnesses):
            thread.join(30)
    witness = WitnessSender("", "all")  # the four witnesses' logs, merged
    for w in witnesses:
        witness.final.update(w.final)
        witness.kinds.update(w.kinds)
        witness.refusals += w.refusals
        witness.bad_refusals += w.bad_refusals
    receiver.stop()  # the requests wrk cut off at the end are answered, and committed, by now

    statuses = {int(k): v for k, v in result["statuses"].items()}
    accepted = sum(v for k, v in statuses.items() if 200 <= k < 300)
    cut_off = result["sent"] - result["requests"]
    offered = result["sent"] / (result["duration_us"] / 1e6)
    health_ms = sorted(seconds * 1000 for _, seconds in prober.samples)
    print(
        f"\nflood: offered {offered:.0f}/s, answers {statuses}, cut off {cut_off}, errors {result['errors']}, "
        f"p99 {result['p99_us'] / 1000:.0f} ms; /healthz p50 {health_ms[len(health_ms) // 2]:.0f} ms, "
        f"p95 {health_ms[int(0.95 * (len(health_ms) - 1))]:.0f} ms, max {health_ms[-1]:.0f} ms "
        f"({len(health_ms)} probes); witnesses: {len(witness.final)} events, {witness.refusals} refusals"
    )

    # It really was a flood, and the receiver shed it rather than falling over.
    # wrk paces at 20,000/s, but a connection waits for its answer before its next request: on 2
    # shared cores the receiver answers (mostly refuses) ~10-12k/s, and that caps what is offered.
    assert offered > 5 * SUSTAINABLE, offered
    assert set(statuses) <= {202, 429, 503}, statuses
    assert statuses.get(503, 0) + statuses.get(429, 0) > accepted  # most of it refused...
    assert accepted > SUSTAINABLE * FLOOD_SECONDS / 4  # ...while a good share still got in
    assert result["missing_retry_after"] == 0
    assert result["errors"]["connect"] == 0 and result["errors"]["timeout"] == 0, result["errors"]

    # Responsive: /healthz kept answering, quickly, all along.
    health = prober.samples
    assert len(health) > FLOOD_SECONDS * 3
    assert {s for s, _ in health} == {200}, {s for s, _ in health}
    latencies = sorted(seconds for _, seconds in health)
    assert latencies[int(0.95 * (len(latencies) - 1))] < 1.0, latencies[-10:]
    assert latencies[-1] < 5.0

    with engine.connect() as conn:
        flood_rows = dict(
            conn.execute(
                sa.text(
                    "SELECT status, count(*) FROM webhook_events WHERE service_id = :s AND event_id LIKE :p "
                    "GROUP BY status"
                ),
                {"s": service_id, "p": prefix + "-%"},
            ).all()
        )
        witness_rows = dict(
            conn.execute(
                sa.text(
                    "SELECT event_id, status FROM webhook_events WHERE service_id = :s AND event_id LIKE 'witness-%'"
                ),
                {"s": service_id},
            ).all()
        )
    # Every event wrk saw acknowledged is stored, and processed (their devices are linked).
    rows = sum(flood_rows.values())
    assert accepted <= rows <= accepted + cut_off, (accepted, rows, cut_off)
    assert set(flood_rows) == {"processed"}, flood_rows

    # The witnesses: every acknowledged event stored; a sender that waits as told gets through.
    acknowledged = {k for k, v in witness.final.items() if v in (200, 202)}
    assert witness.bad_refusals == 0
    assert set(witness.final.values()) <= {200, 202, 429, 503}, set(witness.final.values())
    assert len(acknowledged) >= 0.8 * len(witness.final) and len(acknowledged) >= 8, witness.final
    assert acknowledged <= set(witness_rows)
    registry = {k for k in acknowledged if witness.kinds[k] == "device.updated"}
    assert {witness_rows[k] for k in acknowledged - registry} <= {"processed"}
    assert {witness_rows[k] for k in registry} <= {"pending"}
    with engine.begin() as conn:
        claimed = inbox.claim_pending(conn, limit=100_000, claimed_by="flood-test", organization_id="bench")
        assert {e for g in claimed for e in g.event_ids} and sum(len(g.event_ids) for g in claimed) == len(
            [k for k in witness_rows if witness.kinds.get(k) == "device.updated"]
        )
        inbox.mark_processed(conn, "flood-test")
        assert inbox.count_by_status(conn, "bench")["pending"] == 0
