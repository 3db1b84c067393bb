"""Service settings, reused for a few seconds so that requests don't each read device_services.

Short enough that enabling a service, changing its secret variable or header takes effect without
a restart; unknown ids are remembered too, so a flood against a wrong URL doesn't reach the
database. Concurrent misses for the same id share one lookup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio.to_thread
from sqlalchemy.engine import Engine

from golioth_assets.store.services import Service, ServiceNotFound, get_service

_BIGINT_MAX = 2**63 - 1


class ServiceCache:
    def __init__(self, engine: Engine, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._engine = engine
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[int, tuple[float, Service | None]] = {}
        self._inflight: dict[int, asyncio.Future[Service | None]] = {}

    def _load(self, service_id: int) -> Service | None:
        with self._engine.connect() as conn:
            try:
                return get_service(conn, service_id)
            except ServiceNotFound:
                return None

    async def get(self, service_id: int) -> Service | None:
        """The service, or None when no such service exists. Database errors propagate."""
        if not 0 < service_id <= _BIGINT_MAX:
            return None
        entry = self._entries.get(service_id)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            return entry[1]
        task = self._inflight.get(service_id)
        if task is None:
            # A task of its own, so a caller that disconnects doesn't cancel the others' lookup.
            task = asyncio.ensure_future(self._fetch(service_id))
            self._inflight[service_id] = task
            task.add_done_callback(lambda t: self._done(service_id, t))
        return await asyncio.shield(task)

    async def _fetch(self, service_id: int) -> Service | None:
        service = await anyio.to_thread.run_sync(self._load, service_id)
        self._entries[service_id] = (self._clock(), service)
        return service

    def _done(self, service_id: int, task: asyncio.Task) -> None:
        self._inflight.pop(service_id, None)
        if not task.cancelled():
            task.exception()  # retrieved, so a lookup whose callers all left doesn't warn
