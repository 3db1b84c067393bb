"""Group commit: many requests' events share one transaction, and each request waits for its commit.

A transaction per request costs a round trip per statement plus a WAL flush per event, and with
psycopg2 it also ties up a thread per request. Here requests hand their event to a queue; writer
threads take everything queued (up to `max_batch`), store it in one transaction and then resolve
each request's future. Batches grow with load on their own: while one commits, the next fills.

A request is answered 2xx only after the commit that holds its event returned, so an accepted
event is never lost. Observed fields for a product table in another database are written after
that, once the requests are answered (store/webhook_events.py, `apply_elsewhere`). When the database is unreachable every waiting request gets
`DatabaseUnavailable` (503), and for a short moment after that new requests fail fast instead of
each waiting for a connection attempt.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from golioth_assets.store.webhook_events import NewEvent, StoredBatch, apply_elsewhere, store_batch

log = logging.getLogger(__name__)

# Deadlock or serialization failure: the transaction was rolled back whole and may simply be rerun.
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_FAIL_FAST_SECONDS = 0.5


class DatabaseUnavailable(Exception):
    pass


class Overloaded(Exception):
    pass


class EventRejected(Exception):
    """The database refused this one event (the rest of its batch was stored)."""


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "pgcode", None)


def _is_connection_problem(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    # Operational errors without a SQLSTATE, or class 08 / 57 (connection, operator intervention)
    # / 53 (insufficient resources), mean the server is gone or can't take writes right now.
    state = _sqlstate(exc)
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return state is None or state[:2] in ("08", "57", "53")
    return False


Item = tuple[NewEvent, asyncio.Future, asyncio.AbstractEventLoop]


class GroupCommitter:
    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 1000,
        max_batch: int = 500,
        writers: int = 2,
        store: Callable[[Connection, Sequence[NewEvent]], StoredBatch] = store_batch,
    ):
        self._engine = engine
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._store = store
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._down_until = 0.0
        self._threads = [
            threading.Thread(target=self._run, name=f"webhook-writer-{i}", daemon=True) for i in range(writers)
        ]
        self.batches = 0
        self.committed = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the writer threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    async def submit(self, event: NewEvent) -> bool:
        """Store `event`; True once committed as new, False if it was already stored."""
        if time.monotonic() < self._down_until:
            raise DatabaseUnavailable
        if len(self._queue) >= self._max_queue:
            raise Overloaded
        if self._stopping:
            raise DatabaseUnavailable
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            self._queue.append((event, future, loop))
            self._cond.notify()
        return await future

    def _run(self) -> None:
        # Each writer keeps one connection: no pool checkout or pre-ping round trip per batch.
        writer = _Writer(self._engine, self._store)
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                self._commit(writer, batch)
        finally:
            writer.close()

    def _commit(self, writer: _Writer, batch: list[Item]) -> None:
        events = [item[0] for item in batch]
        writer.elsewhere.clear()
        try:
            outcomes: list[object] = list(writer.store(events))
        except Exception as exc:
            if _is_connection_problem(exc):
                self._down_until = time.monotonic() + _FAIL_FAST_SECONDS
                log.warning("database unavailable; %d events answered 503: %s", len(batch), type(exc).__name__)
                outcomes = [DatabaseUnavailable() for _ in batch]
            else:
                outcomes = self._isolate(writer, events, exc)
        else:
            self.batches += 1
            self.committed += len(batch)
        _resolve(batch, outcomes)
        for side, frame in writer.elsewhere:  # answered already: their database's speed is not ours
            apply_elsewhere(side, frame)

    def _isolate(self, writer: _Writer, events: list[NewEvent], exc: Exception) -> list[object]:
        """One bad event must not sink its batch: store them one by one, fail only the culprits."""
        if len(events) == 1:
            log.error("event refused by the database (service %s): %s", events[0].service_id, type(exc).__name__)
            return [EventRejected()]
        outcomes: list[object] = []
        for event in events:
            try:
                outcomes.append(writer.store([event])[0])
            except Exception as single:
                if _is_connection_problem(single):
                    outcomes.append(DatabaseUnavailable())
                else:
                    log.error("event refused by the database (service %s): %s", event.service_id, type(single).__name__)
                    outcomes.append(EventRejected())
        return outcomes


class _Writer:
    """One writer thread's connection, reopened after it breaks."""

    def __init__(self, engine: Engine, store: Callable[[Connection, Sequence[NewEvent]], StoredBatch]):
        self._engine = engine
        self._store = store
        self._conn: Connection | None = None
        self.elsewhere: list = []
        """What committed batches left for tables in other databases, applied after answering."""

    def store(self, events: Sequence[NewEvent], attempts: int = 3) -> list[bool]:
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._engine.connect()
            try:
                with self._conn.begin():
                    stored = self._store(self._conn, events)
                self.elsewhere += stored.elsewhere
                return stored.new
            except sa_exc.DBAPIError as exc:
                if _is_connection_problem(exc):
                    self.close()
                    # A connection that sat idle may have died with a database restart: one fresh
                    # try before calling the database unavailable. Rerunning is safe: a batch
                    # whose commit did land shows up as duplicates, never as second rows.
                    if reused and not last:
                        continue
                    raise
                if _sqlstate(exc) in _RETRYABLE_SQLSTATES and not last:
                    continue
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: nothing to give back
                pass
            self._conn = None


def _resolve(batch: list[Item], outcomes: list[object]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, pairs in by_loop.items():
        # One hop into the loop per batch, not per request.
        try:
            loop.call_soon_threadsafe(_settle, pairs)
        except RuntimeError:  # loop closed: its requests are gone anyway
            pass


def _settle(pairs: list[tuple[asyncio.Future, object]]) -> None:
    for future, outcome in pairs:
        if future.done():  # the client went away; its event is stored all the same
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
