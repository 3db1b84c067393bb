"""Captured local changes → the inbox: the one step between change capture and the targeted syncs.

Change capture (store/local_table/capture.py) records every edit of a synced column in an outbox,
`golioth_sync.changes`, inside the database of the table it watches: golioth-sync's own for the
built-in `devices` table (installed by migration 0007), the product's for their own table
(`golioth-sync local install-capture`). `collect` moves one organization's changes from there
into golioth-sync's inbox (`webhook_events`, store/webhook_events.py), where they get the inbox's
guarantees, then deletes them from the outbox:

* durable: a change leaves their outbox only after the inbox holds it (committed);
* idempotent: the inbox key is the change's identity (transaction id and change id), so a crash
  between our commit and their delete queues nothing twice: the next collect finds the change
  already queued and deletes it;
* bounded: `limit` changes per organization per call;
* then as any inbox event: claimed in batches per organization, one targeted run at a time,
  released when the run fails, a dead letter after N attempts.

A table in golioth-sync's own database is collected in one transaction (insert and delete commit
together).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from golioth_assets.store import services, webhook_events
from golioth_assets.store.local_table import capture
from golioth_assets.store.local_table.connect import first_line, mapping_of, table_engine
from golioth_assets.store.local_table.mapping import TableMapping
from golioth_assets.store.local_table.table import LocalTableError
from golioth_assets.store.local_table.tenant import TenantError, tenant_value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CapturedTable:
    """One organization's local table, with change capture installed on it."""

    organization_id: str
    service_id: int
    mapping: TableMapping
    engine: Engine  # the table's database
    same_database: bool  # golioth-sync's own: insert and delete in one transaction
    tenant: str | None  # its tenant value, as capture records it (None: the whole table)

    @property
    def label(self) -> str:
        return str(self.mapping.table)


def captured_tables(db: Engine, organizations: Collection[str], deadline: float = math.inf) -> list[CapturedTable]:
    """The enabled services of these organizations whose table has change capture. A table that
    cannot be reached now is left out, with one line saying why (the next call tries again).

    Organizations sharing a table (every organization on the built-in `devices`, tenants of one
    product table) share its trigger: its status is read once per table, not per organization.
    A database that did not answer is not tried again for its other tenants in this call (each try
    can take the connect timeout), and no database is tried after `deadline` (time.monotonic())."""
    with db.connect() as conn:
        enabled = [s for s in services.list_services(conn, enabled_only=True) if s.organization_id in organizations]
    installed: dict[tuple, bool] = {}
    unreachable: set[str] = set()
    tables: list[CapturedTable] = []
    for service in enabled:
        if time.monotonic() > deadline:
            log.warning("change capture: %d service(s) not read within the tick's budget", len(enabled) - len(tables))
            break
        mapping = mapping_of(service)
        engine = None
        try:
            engine, same = table_engine(db, mapping)
            if _name(engine) in unreachable:
                continue
            trigger = (engine.url, *capture.trigger_arguments(mapping))
            with engine.connect() as conn:
                if trigger not in installed:
                    installed[trigger] = capture.capture_installed(conn, mapping)
                if not installed[trigger]:
                    continue
                tenant = tenant_value(conn, mapping)
        except (LocalTableError, SQLAlchemyError, TenantError) as exc:
            if isinstance(exc, OperationalError) and engine is not None:
                unreachable.add(_name(engine))
            log.warning("%s: change capture not read: %s", service.organization_id, first_line(exc))
            continue
        tables.append(CapturedTable(service.organization_id, service.id, mapping, engine, same, tenant))
    return tables


def _name(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def latest_change_ids(tables: list[CapturedTable], deadline: float = math.inf) -> dict[str, int]:
    """Each captured database's newest change id, by database URL: a waiting consumer compares
    two of these to learn that something new was captured, one cheap query per database."""
    latest: dict[str, int] = {}
    for engine in _engines(tables):
        if time.monotonic() > deadline:
            break
        key = _name(engine)
        try:
            with engine.connect() as conn:
                latest[key] = capture.latest_change_id(conn)
        except SQLAlchemyError as exc:
            log.warning("change capture in %s not read: %s", key, first_line(exc))
    return latest


def _engines(tables: list[CapturedTable]) -> list[Engine]:
    engines = {id(t.engine): t.engine for t in tables}
    return list(engines.values())


@dataclass
class Collected:
    read: int = 0  # changes read from outboxes
    queued: int = 0  # new in the inbox (the rest were there already: a crash after our commit)


def collect_all(db: Engine, tables: list[CapturedTable], limit: int, deadline: float = math.inf) -> Collected:
    """`collect` for every organization with changes waiting (one probe per database says which),
    starting no database after `deadline`: what is left waits in its outbox for the next call."""
    total = Collected()
    for engine in _engines(tables):
        if time.monotonic() > deadline:
            break
        mine = [t for t in tables if t.engine is engine]
        try:
            with engine.connect() as conn:
                waiting = capture.waiting_changes(conn)
        except SQLAlchemyError as exc:
            log.warning("%s: change capture not read: %s", mine[0].organization_id, first_line(exc))
            continue
        for table in mine:
            if (table.label, table.tenant) in waiting:
                done = collect(db, table, limit)
                total.read += done.read
                total.queued += done.queued
    return total


def collect(db: Engine, table: CapturedTable, limit: int) -> Collected:
    """Move up to `limit` of this organization's captured changes into the inbox (oldest first),
    then delete them from the outbox. Errors are logged: the changes stay in the outbox."""
    try:
        if table.same_database:
            with db.begin() as conn:
                changes = capture.pending_changes(conn, table.mapping, limit=limit)
                queued = webhook_events.store_local_changes(conn, table.service_id, table.organization_id, changes)
                capture.delete_changes(conn, [c.id for c in changes])
            return Collected(len(changes), queued)
        with table.engine.connect() as their:
            changes = capture.pending_changes(their, table.mapping, limit=limit)
        if not changes:
            return Collected()
        with db.begin() as conn:
            queued = webhook_events.store_local_changes(conn, table.service_id, table.organization_id, changes)
        # Only now, with the inbox committed: a crash before this line re-reads them next time,
        # and the inbox's key keeps them from being queued twice.
        with table.engine.begin() as their:
            capture.delete_changes(their, [c.id for c in changes])
        return Collected(len(changes), queued)
    except (SQLAlchemyError, TenantError) as exc:
        log.warning("%s: captured changes not collected: %s", table.organization_id, first_line(exc))
        return Collected()
