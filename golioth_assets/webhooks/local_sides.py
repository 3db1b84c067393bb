"""Each service's local table, opened once and reused for a few seconds by the receiver's writers.

Opening one (store/local_table/connect.py) reads the service, describes the live table and checks
the mapping still fits: too much for every batch. Like the service cache, entries expire after the
receiver's `service_cache_seconds`, so a new mapping or a migration of their table is seen without
a restart. A table that cannot be opened (a misfit, its database down, its variable unset) is
remembered as None for as long: its services' events stay pending for the targeted sync, which
reports the problem; one line is logged when it starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from golioth_assets.store.local_table.connect import LocalSide, first_line, open_local_table
from golioth_assets.store.services import ServiceNotFound, get_service

log = logging.getLogger(__name__)


class LocalSideCache:
    def __init__(self, engine: Engine, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self._engine = engine
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[int, tuple[float, LocalSide | None]] = {}
        self._failing: set[int] = set()
        self._lock = threading.Lock()

    def get(self, service_id: int) -> LocalSide | None:
        """The service's local side, or None (unknown service, or a table that can't be used now)."""
        with self._lock:
            entry = self._entries.get(service_id)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            return entry[1]
        side = self._open(service_id)
        with self._lock:
            self._entries[service_id] = (self._clock(), side)
        return side

    def _open(self, service_id: int) -> LocalSide | None:
        try:
            with self._engine.connect() as conn:  # our own database: its errors are the batch's
                service = get_service(conn, service_id)
        except ServiceNotFound:
            return None
        try:
            side = open_local_table(self._engine, service)
        except Exception as exc:  # a misfit, their database unreachable: the sync will say more
            if service_id not in self._failing:
                log.warning(
                    "webhook fast path off for service %s: its local table cannot be used: %s; its events stay "
                    "pending for the targeted sync",
                    service_id,
                    first_line(exc),
                )
            self._failing.add(service_id)
            return None
        self._failing.discard(service_id)
        return side
