"""One sync of one organization as the Dagster layer runs it: the steps of engine/sync.py in their
one possible order, with one Golioth client and one log row for the whole run, each step returning
what its asset's metadata shows.

    with SyncRun(db, service, request, open_client=...) as run:
        run.fetch(); run.local_devices(); run.plan(); run.write_golioth(); run.write_local()
        run.writes_left(); run.finish(); run.pending_conflicts()

Leaving the `with` block closes the run's golioth_sync_log row however the run ends (RunLog): a
failed step, a refused inventory, a cancellation. A step called out of order raises at once.
"""

from __future__ import annotations

import concurrent.futures as futures
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy.engine import Engine

from golioth_assets.core.plan import Plan
from golioth_assets.engine import convergence
from golioth_assets.engine import sync as steps
from golioth_assets.engine.apply_remote import WriteAnswers
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.golioth.stats import ClientStats
from golioth_assets.store import conflicts, inventory, services, sync_log, webhook_events
from golioth_assets.store.local_table.connect import described_for_sync, mapping_of, open_local_table

PREVIEW_ROWS = 20
STEPS = ("fetch", "local_devices", "plan", "write_golioth", "write_local", "writes_left", "finish")


@dataclass
class Usage:
    """The Golioth requests one step made (its share of the run's client stats)."""

    stats: ClientStats = field(default_factory=ClientStats)


@dataclass
class Fetched:
    result: steps.FetchResult
    preview: pd.DataFrame
    usage: Usage


@dataclass
class LocalDevices:
    live: int
    soft_deleted: int
    preview: pd.DataFrame


@dataclass
class GoliothWrites:
    counts: dict[str, int]
    usage: Usage
    applied: pd.DataFrame  # the plan's Golioth rows, with the status each write got


@dataclass
class LocalWrites:
    counts: dict[str, int]
    applied: pd.DataFrame


@dataclass
class Finished:
    status: str
    row: dict  # the closed golioth_sync_log row: every count of the run


@dataclass
class Conflicts:
    pending: int
    devices: int
    preview: pd.DataFrame


class StepOutOfOrder(RuntimeError):
    pass


class SyncRun:
    """See the module docstring. `open_client` opens the run's Golioth client once the log row is
    open, so that a missing API key is a failed run in the log, not a run that never started."""

    def __init__(
        self,
        db: Engine,
        service: services.Service,
        request: steps.SyncRequest,
        *,
        open_client: Callable[[services.Service], GoliothClient],
        claim: str | None = None,
    ) -> None:
        self.db, self.service, self.request = db, service, request
        self.claim = claim  # the webhook events this run processes (marked processed when it succeeds)
        self._open_client = open_client
        self.client: GoliothClient | None = None
        self.log = steps.RunLog(db, service, request)
        self.scope = steps.Scope()
        self._fetched: steps.FetchResult | None = None  # handed to the plan and the check in memory
        self._plan_rows: pd.DataFrame | None = None  # the stored plan with each write's status, once written
        self._answers = WriteAnswers()  # what Golioth answered the run's writes (the check reads them)
        # A full sync reads its local side in this thread while the listing is on the wire.
        self._reader = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-read")
        self._local: futures.Future[steps.LocalSnapshot] | None = None
        self._done: list[str] = []
        self._held = ExitStack()  # the local table's description, held for the run (described_for_sync)

    # -- the run's frame ----------------------------------------------------------------------

    def __enter__(self) -> SyncRun:
        self.log.__enter__()
        try:
            self.client = self._open_client(self.service)
            self.log.attach(self.client)
            # Described once, here: a table changed since the last sync fails the run before any
            # read or write; every step of the run reuses the description.
            self._held.enter_context(described_for_sync(self.db, self.service))
            self.scope = steps.resolve_scope(self.db, self.service, self.request.device_ids)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            return self.log.__exit__(exc_type, exc, traceback)
        finally:
            self._reader.shutdown(wait=True)  # a read still going ends before the description goes
            self._held.close()
            if self.client is not None:
                self.client.close()

    @property
    def sync_log_id(self) -> int:
        return self.log.id

    @property
    def golioth(self) -> GoliothClient:
        """The run's client, open from `with SyncRun(...)` on."""
        if self.client is None:
            raise StepOutOfOrder("a sync step ran outside `with SyncRun(...)`")
        return self.client

    @contextmanager
    def _step(self, name: str, usage: Usage | None = None):
        expected = STEPS[len(self._done)] if len(self._done) < len(STEPS) else None
        if name != expected:
            raise StepOutOfOrder(f"sync step {name!r} called out of order (next: {expected!r})")
        before = self.client.stats.snapshot() if self.client is not None else ClientStats()
        yield
        if usage is not None and self.client is not None:
            usage.stats = self.client.stats.since(before)
        self._done.append(name)

    # -- the steps, in order --------------------------------------------------------------------

    def fetch(self) -> Fetched:
        usage = Usage()
        with self._step("fetch", usage):
            if self.scope.full:
                self._local = self._reader.submit(steps.read_local_snapshot, self.db, self.service)
            result = self._fetched = steps.fetch_step(self.db, self.service, self.golioth, self.scope, self.log.id)
        with self.db.connect() as conn:
            preview = inventory.preview_inventory(conn, self.service.organization_id, PREVIEW_ROWS)
        return Fetched(result, preview, usage)

    def local_devices(self) -> LocalDevices:
        """Counts and a preview only: the plan loads the devices itself (loading all of them here,
        seconds at 100k, would be for nothing)."""
        with self._step("local_devices"):
            side = open_local_table(self.db, self.service)
            with side.engine.connect() as conn:
                counted = side.table.count_by_state(conn)
                preview = side.table.preview(conn, PREVIEW_ROWS)
        return LocalDevices(counted["live"], counted["deleted"], preview)

    def plan(self) -> Plan:
        """Refuses (InventoryInconsistent) when the inventory does not add up."""
        with self._step("plan"):
            local = self._local.result() if self._local is not None else None
            return steps.plan_step(self.db, self.service, self.request, self.scope, self.log.id, self._fetched, local)

    def write_golioth(self) -> GoliothWrites:
        usage = Usage()
        with self._step("write_golioth", usage):
            counts = {}
            if not self.request.dry_run:
                written = steps.golioth_side(
                    self.db, self.service, self.golioth, self.log.id, self.request, self._fetched
                )
                counts, self._answers = written.counts, written.answers
        return GoliothWrites(counts, usage, self._applied("remote"))

    def write_local(self) -> LocalWrites:
        with self._step("write_local"):
            counts = (
                {}
                if self.request.dry_run
                else steps.local_step(self.db, self.service, self.log.id, self.request).counts
            )
        with self.db.connect() as conn:
            self._plan_rows = sync_log.load_plan(conn, self.log.id)  # every write's status: the check samples it
        return LocalWrites(counts, self._applied("local", self._plan_rows))

    def writes_left(self) -> tuple[int, Usage]:
        """The convergence self-check (engine/convergence.py), on the run's own client."""
        usage = Usage()
        with self._step("writes_left", usage):
            left = 0
            if not self.request.dry_run:
                left = convergence.writes_left(
                    self.db, self.service, self.golioth, self.log.id, self._fetched, self._plan_rows, self._answers
                )
        return left, usage

    def finish(self) -> Finished:
        """Close the log row (with the run's request totals); hand the webhook events in."""
        with self._step("finish"):
            status = self.log.close()
            if self.claim:
                with self.db.begin() as conn:
                    webhook_events.mark_processed(conn, self.claim)
        return Finished(status, self.log.row)

    def pending_conflicts(self) -> Conflicts:
        """After the run: the organization's conflicts waiting for an operator."""
        with self.db.connect() as conn:
            pending, preview = conflicts.pending_summary(conn, self.service.organization_id, PREVIEW_ROWS)
        preview = self.with_local_columns(preview)
        side = open_local_table(self.db, self.service)
        with side.engine.connect() as conn:
            total = side.table.count_by_state(conn)["live"]
        return Conflicts(pending, total, preview)

    def with_local_columns(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with `local_column`: each row's field as the local table names it (a product
        table's own column, e.g. `display_name` for `name`), so that previews speak its language."""
        mapping = mapping_of(self.service)
        return frame.assign(local_column=[mapping.column_of(str(f)) for f in frame["field"]])

    def _applied(self, side: str, plan: pd.DataFrame | None = None) -> pd.DataFrame:
        """The stored plan's writes on `side` with their statuses (`plan`: the stored plan, if read)."""
        if plan is None:
            with self.db.connect() as conn:
                plan = sync_log.load_plan(conn, self.log.id, side=side)
        return self.with_local_columns(plan[(plan["side"] == side) & (plan["action"] != "agree")])
