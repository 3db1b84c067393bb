"""The webhook receiver: a starlette app that authenticates, validates and durably stores events.

Stateless apart from short-lived caches and the in-process commit queue, so any number of
instances (and uvicorn workers) can run behind a load balancer: idempotency lives in the
database's unique key, not in memory.

    POST /webhooks/golioth/{service_id}   a Golioth pipeline delivery or a signed device event
    GET  /healthz                         200 when the database answers, else 503
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from golioth_assets.store.database import ping
from golioth_assets.store.services import PIPELINE_SECRET, SIGNING_KEY, MissingSecret, Service
from golioth_assets.store.webhook_events import NewEvent, store_batch
from golioth_assets.webhooks.batcher import DatabaseUnavailable, EventRejected, GroupCommitter, Overloaded
from golioth_assets.webhooks.config import ReceiverConfig
from golioth_assets.webhooks.ingest import BadRequest, is_json, pipeline_event, signed_event
from golioth_assets.webhooks.local_sides import LocalSideCache
from golioth_assets.webhooks.service_cache import ServiceCache
from golioth_assets.webhooks.verify import Unauthorized, check_static_secret, is_signed, verify_signature

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, send: Send) -> None:
        payload = json.dumps(self.body).encode()
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})


def _answer(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json", headers=headers)


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI servers hand over lowercased names; the first occurrence wins, as in starlette.
    out: dict[str, str] = {}
    for name, value in reversed(scope["headers"]):
        out[name.decode("latin-1")] = value.decode("latin-1")
    return out


async def _read_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    # Content-Length can lie (or be absent with chunked encoding): count what actually arrives.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Receiver:
    """The request handling, with its collaborators injected so tests can build it directly."""

    def __init__(self, config: ReceiverConfig, engine: Engine, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.engine = engine
        self.services = ServiceCache(engine, config.service_cache_seconds, clock=clock)
        self.local_sides = LocalSideCache(engine, config.service_cache_seconds)
        self.committer = GroupCommitter(
            engine,
            max_queue=config.max_queue,
            max_batch=config.max_batch,
            writers=config.writers,
            store=functools.partial(store_batch, side_of=self.local_sides.get),
        )
        self.in_flight = 0
        self.loop_lag = 0.0
        self._lag_task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.committer.start()
        if self.config.max_loop_lag_ms > 0:
            self._lag_task = asyncio.create_task(self._watch_loop_lag())
        try:
            yield
        finally:
            if self._lag_task:
                self._lag_task.cancel()
            # Whatever is still queued gets committed (and answered) before the process exits.
            await anyio.to_thread.run_sync(self.committer.stop)

    async def _watch_loop_lag(self) -> None:
        # A saturated event loop delays everything, including requests not yet read off the
        # socket; how late a short sleep wakes up is the cheapest measure of that backlog.
        loop = asyncio.get_running_loop()
        interval = 0.01
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            late = max(0.0, loop.time() - started - interval)
            self.loop_lag = 0.7 * self.loop_lag + 0.3 * late

    # -- endpoints ---------------------------------------------------------------------------

    def _overloaded(self) -> bool:
        cfg = self.config
        return (
            self.in_flight >= cfg.max_in_flight
            or self.committer.depth >= cfg.max_queue
            or (cfg.max_loop_lag_ms > 0 and self.loop_lag * 1000 > cfg.max_loop_lag_ms)
        )

    def _too_busy(self) -> Answer:
        # 503 rather than 429: senders that give up on 4xx (the simulator, some pipelines) still retry.
        return Answer(503, {"error": "overloaded, retry later"}, {"Retry-After": str(self.config.overload_retry_after)})

    def _db_down(self) -> Answer:
        return Answer(
            503, {"error": "database unavailable, retry later"}, {"Retry-After": str(self.config.database_retry_after)}
        )

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /webhooks/golioth/{service_id}, as a bare ASGI endpoint: this is the hot path, and
        starlette's Request/Response objects would cost more than the rest of the handler."""
        # Shedding comes first and costs nothing: under overload a quick 503 is what keeps the
        # accepted requests inside their latency budget.
        if self._overloaded():
            answer = self._too_busy()
        else:
            self.in_flight += 1
            try:
                answer = await self._webhook(scope, receive)
            except _ClientGone:
                return
            finally:
                self.in_flight -= 1
        await answer.send(send)

    async def _webhook(self, scope: Scope, receive: Receive) -> Answer:
        raw_id = scope["path_params"]["service_id"]
        try:
            service = await self.services.get(int(raw_id)) if raw_id.isdigit() else None
        except sa.exc.SQLAlchemyError:
            log.warning("service lookup failed: database unavailable")
            return self._db_down()
        if service is None or not service.webhook_enabled:
            return Answer(404, {"error": "unknown service"})
        headers = _headers(scope)
        if not is_json(headers.get("content-type")):
            return Answer(415, {"error": "content type must be application/json"})
        try:
            body = await _read_body(headers, receive, self.config.max_body_bytes)
        except _TooLarge:
            return Answer(413, {"error": f"body exceeds {self.config.max_body_bytes} bytes"}, {"Connection": "close"})
        event = self._authenticated_event(scope, service, headers, body)
        if isinstance(event, Answer):
            return event
        try:
            is_new = await self.committer.submit(event)
        except Overloaded:
            return self._too_busy()
        except DatabaseUnavailable:
            return self._db_down()
        except EventRejected:
            return Answer(500, {"error": "event could not be stored"})
        if is_new:
            return Answer(202, {"status": "accepted", "event_id": event.event_id})
        return Answer(200, {"status": "duplicate", "event_id": event.event_id})

    def _authenticated_event(
        self, scope: Scope, service: Service, headers: Mapping[str, str], body: bytes
    ) -> NewEvent | Answer:
        signed = is_signed(headers)
        try:
            # Each format has its own secret: a pipeline secret seen in transit can't sign events.
            secrets = service.webhook_secrets(SIGNING_KEY if signed else PIPELINE_SECRET)
        except MissingSecret as exc:
            # Misconfiguration on our side: the sender should retry once the operator fixes it.
            log.error("%s", exc)
            return Answer(503, {"error": "receiver not configured"}, {"Retry-After": "60"})
        try:
            if secrets is None:
                raise Unauthorized  # the service does not take deliveries in this format
            return self._parse(service, headers, body, secrets, signed=signed)
        except Unauthorized:
            client = scope.get("client") or ("?", 0)
            log.info("unauthorized delivery for service %s from %s", service.id, client[0])
            return Answer(401, {"error": "unauthorized"})
        except BadRequest as exc:
            return Answer(400, {"error": exc.reason})

    def _parse(
        self, service: Service, headers: Mapping[str, str], body: bytes, secrets: list[str], *, signed: bool
    ) -> NewEvent:
        now = datetime.now(UTC)
        if signed:
            webhook_id = verify_signature(
                body, headers, secrets, tolerance_seconds=self.config.signature_tolerance_seconds
            )
            return signed_event(
                service_id=service.id,
                organization_id=service.organization_id,
                webhook_id=webhook_id,
                body=body,
                received_at=now,
                project_id=service.project_id,
            )
        check_static_secret(headers.get(service.webhook_secret_header.lower()), secrets)
        return pipeline_event(
            service_id=service.id,
            organization_id=service.organization_id,
            project_id=service.project_id,
            headers=headers,
            body=body,
            received_at=now,
        )

    async def healthz(self, request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(ping, self.engine)
        except Exception:
            return _answer(
                503,
                {"status": "unavailable", "database": "unreachable"},
                {"Retry-After": str(self.config.database_retry_after)},
            )
        c = self.committer
        return _answer(
            200,
            {"status": "ok", "database": "ok", "queue": c.depth, "batches": c.batches, "events": c.committed},
        )


class _AsgiEndpoint:
    """Starlette mounts a callable object (unlike a function) as a raw ASGI app."""

    def __init__(self, handler):
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(scope, receive, send)


def create_app(
    config: ReceiverConfig | None = None, engine: Engine | None = None, clock: Callable[[], float] = time.monotonic
) -> Starlette:
    """The receiver app. Without an engine it uses the app database (DATABASE_URL or embedded).
    `clock` times the service cache (tests move it instead of waiting)."""
    if engine is None:
        from golioth_assets.store.database import app_engine

        engine = app_engine()
    receiver = Receiver(config or ReceiverConfig.from_env(), engine, clock)
    app = Starlette(
        routes=[
            Route("/webhooks/golioth/{service_id}", _AsgiEndpoint(receiver.webhook), methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
        ],
        lifespan=receiver.lifespan,
    )
    app.state.receiver = receiver
    return app


def create_app_from_env() -> Starlette:
    """The uvicorn factory (`--factory`): each worker process builds its app from the environment."""
    return create_app(ReceiverConfig.from_env())
