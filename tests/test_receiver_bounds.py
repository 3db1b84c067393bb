"""Issue 13, weakness 2: the receiver bounds what a client may send before any authentication.

`golioth-sync webhooks serve` runs as in production (its own process, uvloop, the bounded httptools
protocol); the tests talk to it over raw sockets, as a hostile client would, and watch the receiver
process's memory with psutil. Before the bounds, a 32 MiB header and 50,000 headers were accepted
and a client sending one byte at a time held its connection for ever.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa

from golioth_assets.store.services import ServiceSettings, create_service
from golioth_assets.webhooks.config import ENV_PREFIX, ReceiverConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0
MAX_CONNECTIONS = 40
SLACK = 3.0  # scheduling on a busy machine; the bounds themselves are what the tests check
MiB = 1024 * 1024


@dataclass
class Served:
    host: str
    port: int
    process: psutil.Process
    service_id: int

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def rss(self) -> int:
        return self.process.memory_info().rss

    def healthy(self) -> bool:
        return httpx.get(f"http://{self.host}:{self.port}/healthz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def receiver(db_url, engine) -> Iterator[Served]:
    org = f"bounds-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES (:o, :o)"), {"o": org})
    with engine.begin() as conn:
        service_id = create_service(
            conn,
            ServiceSettings(
                organization_id=org,
                name=org,
                project_id="proj-test",
                webhook_enabled=True,
                webhook_secret_env="GOLIOTH_BOUNDS_PIPELINE_SECRET",
            ),
        ).id
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "GOLIOTH_BOUNDS_PIPELINE_SECRET": secrets.token_hex(32),
        # The bounds come from the environment, as `uvicorn --workers N` hands them to each worker.
        ENV_PREFIX + "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        ENV_PREFIX + "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        ENV_PREFIX + "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    argv = [str(Path(sys.executable).with_name("golioth-sync")), "webhooks", "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--log-level", "warning"], env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL
    )
    served = Served("127.0.0.1", port, psutil.Process(proc.pid), service_id)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if served.healthy():
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the receiver did not come up"
            time.sleep(0.2)
        yield served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answer(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(0.2)
    received = b""
    while time.monotonic() - started < within:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        received += chunk
    else:
        raise AssertionError(f"the connection was still open after {within} s")
    return received, time.monotonic() - started


class PeakMemory(threading.Thread):
    """The receiver's largest RSS while a flood is on (a header held in memory shows while it lasts)."""

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.served, self.peak, self.done = served, served.rss(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.served.rss())

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


def _flood(served: Served, head: bytes, chunks: Iterator[bytes]) -> tuple[int, float, int]:
    """Send `head`, then `chunks` until the server stops taking them. (bytes sent, seconds, RSS growth)."""
    baseline = served.rss()
    sent = 0
    started = time.monotonic()
    with PeakMemory(served) as memory, served.connect() as sock:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
                assert time.monotonic() - started < 30, "the receiver kept reading the flood for 30 s"
        except (ConnectionResetError, BrokenPipeError):
            pass
        else:
            _answer(sock, SLACK)  # everything went into buffers: the close must follow
        seconds = time.monotonic() - started
    return sent, seconds, memory.peak - baseline


def _post_head(path: str = "/webhooks/golioth/1") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n".encode()


# -- sizes ------------------------------------------------------------------------------------------------


def test_a_32_mib_header_is_refused_early_without_growing_memory(receiver):
    flood = (b"a" * 65536 for _ in range(32 * MiB // 65536))
    sent, seconds, growth = _flood(receiver, _post_head() + b"X-Big: ", flood)
    assert sent < 16 * MiB, f"the receiver took {sent / MiB:.1f} MiB of one header"
    assert seconds < 10
    assert growth < 8 * MiB, f"the receiver grew by {growth / MiB:.1f} MiB"
    assert receiver.healthy()


def test_50000_headers_are_refused_early_without_growing_memory(receiver):
    flood = (b"".join(b"X-H-%d: v\r\n" % (i + j) for j in range(1000)) for i in range(0, 50_000, 1000))
    sent, seconds, growth = _flood(receiver, _post_head(), flood)
    assert seconds < 10
    assert growth < 8 * MiB, f"the receiver grew by {growth / MiB:.1f} MiB"
    assert receiver.healthy()


def _over_a_bound(case: str) -> tuple[bytes, int, bytes]:
    """A request just over one bound, small enough to arrive in one read; its status and reason."""
    bounds = ReceiverConfig()
    if case == "header count":
        headers = b"".join(b"X-H-%d: v\r\n" % i for i in range(bounds.max_headers + 1))
        return _post_head() + headers + b"\r\n", 431, b"too many"
    if case == "head size":
        return _post_head() + b"X-Big: " + b"a" * bounds.max_header_bytes + b"\r\n\r\n", 431, b"too large"
    return b"GET /" + b"a" * bounds.max_url_bytes + b" HTTP/1.1\r\nHost: r\r\n\r\n", 414, b"too long"


@pytest.mark.parametrize("case", ["header count", "head size", "request target"])
def test_each_bound_has_its_own_answer(receiver, case):
    request_bytes, status, reason = _over_a_bound(case)
    with receiver.connect() as sock:
        sock.sendall(request_bytes)
        answer, _ = _answer(sock, SLACK)
    assert answer.startswith(b"HTTP/1.1 %d " % status) and reason in answer, answer[:200]


def test_requests_within_the_bounds_are_served(receiver):
    headers = {f"x-h-{i}": "v" for i in range(ReceiverConfig().max_headers - 10)}
    response = httpx.get(f"http://127.0.0.1:{receiver.port}/healthz", headers=headers, timeout=5)
    assert response.status_code == 200


# -- time ---------------------------------------------------------------------------------------------------


def test_a_slowloris_client_is_cut_off_after_the_header_timeout(receiver):
    with receiver.connect() as sock:
        started = time.monotonic()
        sock.sendall(_post_head())
        sock.settimeout(0.25)
        answer = b""
        try:
            for byte in b"X-Slow: " + b"a" * 1000:  # one byte every 0.25 s: headers that never end
                if time.monotonic() - started > HEADER_TIMEOUT + SLACK:
                    break
                sock.send(bytes([byte]))
                try:
                    answer = sock.recv(4096)
                    break
                except TimeoutError:
                    pass
        except (ConnectionResetError, BrokenPipeError):
            pass
        elapsed = time.monotonic() - started
    assert elapsed < HEADER_TIMEOUT + SLACK, f"a trickling client held its connection {elapsed:.1f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_connection_is_closed_after_the_header_timeout(receiver):
    with receiver.connect() as sock:
        answer, seconds = _answer(sock, HEADER_TIMEOUT + SLACK)
    assert seconds > HEADER_TIMEOUT - 0.5 and answer.startswith(b"HTTP/1.1 408 ")


def test_a_body_that_never_ends_is_cut_off_after_the_body_timeout(receiver):
    with receiver.connect() as sock:
        sock.sendall(
            _post_head(f"/webhooks/golioth/{receiver.service_id}")
            + b"Content-Length: 1000\r\nX-Golioth-Sync-Secret: x\r\n\r\n"
            + b'{"a": "'
        )
        answer, seconds = _answer(sock, BODY_TIMEOUT + SLACK)
    assert answer == b""  # the receiver was waiting for the body: no answer, the connection just ends
    assert seconds > BODY_TIMEOUT - 0.5


def test_connections_beyond_the_limit_are_closed_at_once(receiver):
    socks = [receiver.connect() for _ in range(MAX_CONNECTIONS + 20)]
    closed: set[int] = set()
    try:
        # Well before the header timeout could close any of them: only the limit closes connections.
        deadline = time.monotonic() + HEADER_TIMEOUT / 2
        while len(closed) < 20 and time.monotonic() < deadline:
            for i, sock in enumerate(socks):
                if i in closed:
                    continue
                sock.settimeout(0.01)
                try:
                    if sock.recv(1) == b"":
                        closed.add(i)
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed.add(i)
        assert 15 <= len(closed) <= 25, f"{len(closed)} of {len(socks)} connections closed at once"
    finally:
        for sock in socks:
            sock.close()
    assert receiver.healthy()
