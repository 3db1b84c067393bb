"""The inbox (`webhook_events`): every SQL statement on that table lives here.

It holds both sources of live changes: registry events the webhook receiver verified, and changes
that change capture recorded in a local table (source `local_capture`, the row's key in
`device_id`; `store_local_changes`). Both go through the same lifecycle below.

Three audiences:

* the receiver stores a batch of verified events in one transaction (`store_batch`): insert
  idempotently, then apply observed fields (status, last seen, reported values, firmware) straight
  to the device row, through the organization's LocalTable (the built-in `devices` table or the
  product's own). Events that the fast path handled are stored as `processed`, so only registry
  changes and events for devices we don't know yet wake the sensor. A table in golioth-sync's own
  database is written in the same transaction; one in another database cannot be: its observed
  fields come back in `StoredBatch.elsewhere`, for the caller to apply once the events are
  committed (`apply_elsewhere`: best effort, the next sync brings whatever it misses).
* the sensor copies captured local changes in (`store_local_changes`: idempotent, keyed by the
  change's transaction and id, so a crash between this insert and the delete in their outbox
  duplicates nothing);
* the sensor and the targeted sync move events through their lifecycle:
  pending → claimed → processed, or claimed → failed (attempts + 1, claimable again) → dead after
  `max_attempts`; `replay_dead` requeues dead letters and `prune_processed` applies retention.

The caller owns the transaction: every function takes a Connection and never commits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.core.vocabulary import Trigger
from golioth_assets.store.local_table.capture import Change
from golioth_assets.store.local_table.connect import LocalSide, first_line, open_local_table
from golioth_assets.store.services import ServiceNotFound, get_service

log = logging.getLogger(__name__)

K = TypeVar("K")
STATUSES = ("pending", "claimed", "processed", "failed", "dead")
# Event types whose whole content is Golioth-owned observed data: nothing left for a sync to do
# once the fast path has applied them.
FAST_PATH_TYPES = ("device.data", "device.online", "device.offline")
# Where a captured local change came from (the receiver's events say golioth_pipeline or signed).
LOCAL_SOURCE = "local_capture"
LOCAL_EVENT_PREFIX = "local."  # event types local.insert, local.update, local.delete
# Enough of an error to diagnose a failed run; a stack trace has no business in the inbox.
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class ObservedUpdate:
    """Observed fields one event carries for its device; `at` orders events of the same device."""

    at: datetime
    status: str | None = None  # online / offline
    last_seen_online: datetime | None = None
    last_seen_offline: datetime | None = None
    last_report: datetime | None = None
    reported: dict[str, Any] | None = None  # merged into devices.reported_state (top level)
    firmware: dict[str, Any] | None = None  # merged into devices.firmware_versions


@dataclass(frozen=True)
class NewEvent:
    """A verified, validated event ready to be stored. `payload_json` is already-serialized JSON."""

    service_id: int
    organization_id: str
    event_id: str
    source: str  # golioth_pipeline / signed
    event_type: str
    golioth_device_id: str | None
    payload_json: str
    observed: ObservedUpdate | None = None

    @property
    def key(self) -> tuple[int, str]:
        return (self.service_id, self.event_id)


@dataclass(frozen=True)
class EventRow:
    id: int
    service_id: int
    organization_id: str
    event_id: str
    source: str
    event_type: str
    golioth_device_id: str | None
    status: str
    attempts: int
    received_at: datetime
    claimed_at: datetime | None
    claimed_by: str | None
    processed_at: datetime | None
    last_error: str | None
    device_id: str | None = None  # a captured local change: the row's key
    payload: Any = None


@dataclass
class ClaimedGroup:
    """The events one targeted sync should handle: one organization (= one service)."""

    organization_id: str
    service_id: int
    event_ids: list[int] = field(default_factory=list)
    golioth_device_ids: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)  # local keys, from captured changes
    event_types: list[str] = field(default_factory=list)
    attempts: int = 0  # the most attempts any of these events has had: part of a fresh run key
    sources: set[str] = field(default_factory=set)

    @property
    def trigger(self) -> Trigger:
        """What asked for the run: captured local changes, webhook events, or both."""
        if self.sources == {LOCAL_SOURCE}:
            return Trigger.local_change
        return Trigger.live if LOCAL_SOURCE in self.sources else Trigger.webhook

    @property
    def scope(self) -> list[str]:
        """The targeted sync's device ids: Golioth ids and local keys (the engine tells them apart)."""
        return sorted(set(self.golioth_device_ids) | set(self.device_ids))


# ---------------------------------------------------------------------------------------------
# The receiver's write path
# ---------------------------------------------------------------------------------------------

# One round trip stores the batch: lock the batch's linked, live devices, insert the events with
# their final status, and report which rows are new and where their device is.
# - unnest() keeps one statement text for any batch size (one plan, no per-size compilation).
# - Devices are locked in id order (ORDER BY runs before FOR UPDATE) so that receivers sharing a
#   device never deadlock, and a locked row can't be deleted between "handled" and "applied".
# - Events go in sorted by key, so concurrent batches sharing keys wait rather than deadlock.
# - The status is final at insert time (an event the fast path handles goes in as `processed`):
#   updating a just-inserted row would write it, and all its index entries, twice.
_INSERT = sa.text(
    """
    WITH u AS (
        SELECT * FROM unnest(
            CAST(:service_ids AS bigint[]), CAST(:organization_ids AS text[]), CAST(:event_ids AS text[]),
            CAST(:sources AS text[]), CAST(:event_types AS text[]), CAST(:device_ids AS text[]),
            CAST(:payloads AS jsonb[]), CAST(:observed AS boolean[]))
            AS u(service_id, organization_id, event_id, source, event_type, golioth_device_id, payload, observed)
    ), k AS (
        -- Only services whose local table the caller could open get the fast path; the others'
        -- events stay pending, for the targeted sync.
        SELECT DISTINCT service_id, golioth_device_id FROM u
        WHERE observed AND service_id = ANY(CAST(:fast_services AS bigint[]))
    ), builtin AS (
        SELECT a.service_id, a.golioth_device_id, d.id::text AS device_id
        FROM k
        JOIN device_service_assignments a
          ON a.service_id = k.service_id AND a.golioth_device_id = k.golioth_device_id
        JOIN device_services sv ON sv.id = a.service_id AND sv.local_table IS NULL
        JOIN devices d ON d.id = (CASE WHEN sv.local_table IS NULL THEN a.device_id END)::uuid
        WHERE d.deleted_at IS NULL
        ORDER BY d.id
        FOR UPDATE OF d
    ), linked AS (
        SELECT * FROM builtin
        UNION ALL
        -- A product's own table (maybe in another database): the link says which row.
        SELECT a.service_id, a.golioth_device_id, a.device_id
        FROM k
        JOIN device_service_assignments a
          ON a.service_id = k.service_id AND a.golioth_device_id = k.golioth_device_id
        JOIN device_services sv ON sv.id = a.service_id AND sv.local_table IS NOT NULL
    ), ins AS (
        INSERT INTO webhook_events
            (service_id, organization_id, event_id, source, event_type, golioth_device_id, payload, status,
             processed_at)
        SELECT u.service_id, u.organization_id, u.event_id, u.source, u.event_type, u.golioth_device_id,
               u.payload,
               CASE WHEN u.event_type = ANY(CAST(:fast_types AS text[])) AND l.device_id IS NOT NULL
                    THEN 'processed' ELSE 'pending' END,
               CASE WHEN u.event_type = ANY(CAST(:fast_types AS text[])) AND l.device_id IS NOT NULL
                    THEN now() END
        FROM u LEFT JOIN linked l
          ON l.service_id = u.service_id AND l.golioth_device_id = u.golioth_device_id
        ORDER BY u.service_id, u.event_id
        ON CONFLICT (service_id, event_id) DO NOTHING
        RETURNING service_id, event_id, golioth_device_id
    )
    SELECT ins.service_id, ins.event_id, l.device_id
    FROM ins LEFT JOIN linked l
      ON l.service_id = ins.service_id AND l.golioth_device_id = ins.golioth_device_id
    """
)


@dataclass
class _DeviceUpdate:
    """Several events of one device in one batch, folded into one row update."""

    status: str | None = None
    status_at: datetime | None = None
    seen_online: datetime | None = None
    seen_offline: datetime | None = None
    last_report: datetime | None = None
    reported: dict[str, Any] | None = None
    firmware: dict[str, Any] | None = None
    patch_at: datetime | None = None


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def fold_observed(updates: Iterable[tuple[K, ObservedUpdate]]) -> dict[K, _DeviceUpdate]:
    """Fold a batch's updates per device, oldest event first, so one UPDATE per row suffices.

    PostgreSQL's UPDATE … FROM applies only one source row per target row, so a batch holding
    several events of the same device must be merged first: the newest status wins, timestamps
    take their maximum, and reported/firmware patches are merged in event-time order.
    """
    folded: dict[K, _DeviceUpdate] = {}
    # sorted() is stable: events with equal times keep arrival order, so the later arrival wins.
    for key, obs in sorted(updates, key=lambda item: item[1].at):
        acc = folded.setdefault(key, _DeviceUpdate())
        if obs.status is not None:
            acc.status, acc.status_at = obs.status, obs.at
        acc.seen_online = _later(acc.seen_online, obs.last_seen_online)
        acc.seen_offline = _later(acc.seen_offline, obs.last_seen_offline)
        acc.last_report = _later(acc.last_report, obs.last_report)
        if obs.reported is not None:
            acc.reported = {**(acc.reported or {}), **obs.reported}
            acc.patch_at = obs.at
        if obs.firmware is not None:
            acc.firmware = {**(acc.firmware or {}), **obs.firmware}
            acc.patch_at = obs.at
    return folded


SideOf = Callable[[int], LocalSide | None]
"""Service id → its local table, opened (None: unknown service, or its table can't be used now)."""


@dataclass
class StoredBatch:
    new: list[bool]
    """Per event: stored now (False: a duplicate)."""
    elsewhere: list[tuple[LocalSide, list[dict[str, Any]]]] = field(default_factory=list)
    """Observed fields for tables in another database: apply them once the batch is committed."""


def store_batch(conn: Connection, events: Sequence[NewEvent], side_of: SideOf | None = None) -> StoredBatch:
    """Insert a batch idempotently and apply its observed fields; `new` is True per event stored now.

    A key already in the table (or earlier in the same batch) is a duplicate: it is answered as
    accepted by the receiver but changes nothing, so a retried delivery can't replay old data over
    newer data. Observed-data events (data/online/offline) of a linked device are stored as
    `processed`: the fast path did (or, for a table in another database, is about to do) all there
    is to do. Everything else is `pending` for the sensor. Call inside a transaction and acknowledge
    only after it commits; then apply `elsewhere` (`apply_elsewhere`).
    """
    if not events:
        return StoredBatch([])
    side_of = side_of or _opener(conn)
    sides = {sid: side_of(sid) for sid in {e.service_id for e in events if e.observed is not None}}
    rows = conn.execute(
        _INSERT,
        {
            "service_ids": [e.service_id for e in events],
            "organization_ids": [e.organization_id for e in events],
            "event_ids": [e.event_id for e in events],
            "sources": [e.source for e in events],
            "event_types": [e.event_type for e in events],
            "device_ids": [e.golioth_device_id for e in events],
            "payloads": [e.payload_json for e in events],
            "observed": [e.observed is not None and e.golioth_device_id is not None for e in events],
            "fast_types": list(FAST_PATH_TYPES),
            "fast_services": [sid for sid, side in sides.items() if side is not None],
        },
    ).all()
    device_of_new = {(r.service_id, r.event_id): r.device_id for r in rows}

    batch = StoredBatch([])
    observed: dict[int, list[tuple[str, ObservedUpdate]]] = {}
    for event in events:
        # Only the first occurrence of a key in this batch counts as the stored one.
        is_new = event.key in device_of_new
        batch.new.append(is_new)
        if is_new:
            device = device_of_new.pop(event.key)
            if device is not None and event.observed is not None:
                observed.setdefault(event.service_id, []).append((str(device), event.observed))
    for service_id, updates in sorted(observed.items()):
        side = sides[service_id]
        assert side is not None  # the insert links devices of opened tables only
        frame = observed_records(fold_observed(updates))
        if side.same_database:
            side.table.update_observed(conn, frame, patch=True)
        else:
            batch.elsewhere.append((side, frame))
    return batch


def store_events(conn: Connection, events: Sequence[NewEvent], side_of: SideOf | None = None) -> list[bool]:
    """`store_batch`, with the observed fields meant for a table in another database applied right
    away, before the caller commits (harmless: they are Golioth's values either way). The receiver
    uses store_batch, to apply those only after its commit and to acknowledge first."""
    batch = store_batch(conn, events, side_of)
    for side, frame in batch.elsewhere:
        apply_elsewhere(side, frame)
    return batch.new


def _opener(conn: Connection) -> SideOf:
    """Open each service's local table on demand (the receiver passes a cached one instead)."""
    engine = conn.engine

    def side_of(service_id: int) -> LocalSide | None:
        try:
            return open_local_table(engine, get_service(conn, service_id))
        except ServiceNotFound:
            return None

    return side_of


def observed_records(folded: dict[str, _DeviceUpdate]) -> list[dict[str, Any]]:
    """Folded updates as the rows LocalTable.update_observed(patch=True) takes, one per device.
    Plain dicts with times as ISO text (the SQL casts them): a DataFrame would cost more than the
    rest of the batch's write."""
    return [
        {
            "device_id": device_id,
            "status": v.status,
            "status_at": _iso(v.status_at),
            "last_seen_online": _iso(v.seen_online),
            "last_seen_offline": _iso(v.seen_offline),
            "last_report": _iso(v.last_report),
            "reported_state": v.reported,
            "firmware_versions": v.firmware,
            "patch_at": _iso(v.patch_at),
        }
        for device_id, v in sorted(folded.items())
    ]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def apply_elsewhere(side: LocalSide, rows: list[dict[str, Any]]) -> bool:
    """Observed fields for a table in another database, after the events are committed. Best
    effort: on failure one line says so (the events stay processed; the next sync brings the
    fields from Golioth)."""
    try:
        with side.engine.begin() as their:
            side.table.mark_writer(their)
            side.table.update_observed(their, rows, patch=True)
    except Exception as exc:
        log.warning(
            "webhook fast path: observed fields of %d device(s) not written to %s (%s): %s; the next sync brings them",
            len(rows),
            side.where,
            side.table.organization_id,
            first_line(exc),
        )
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Captured local changes
# ---------------------------------------------------------------------------------------------

_INSERT_LOCAL = sa.text(
    """
    INSERT INTO webhook_events
        (service_id, organization_id, event_id, source, event_type, device_id, payload)
    SELECT :service_id, :organization_id, u.event_id, :source, u.event_type, u.device_id, u.payload
    FROM unnest(CAST(:event_ids AS text[]), CAST(:event_types AS text[]), CAST(:device_ids AS text[]),
                CAST(:payloads AS jsonb[])) AS u(event_id, event_type, device_id, payload)
    ORDER BY u.event_id
    ON CONFLICT (service_id, event_id) DO NOTHING
    """
)


def local_event_id(change: Change) -> str:
    """The inbox key of a captured change. Its id alone could come back (capture uninstalled and
    installed again restarts the ids); with its transaction id (txid_current(), which never
    repeats on a server) it is the change's identity."""
    return f"local:{change.txid}:{change.id}"


def store_local_changes(conn: Connection, service_id: int, organization_id: str, changes: Sequence[Change]) -> int:
    """Queue captured changes of one service's table as pending inbox events, idempotently (a
    change already queued is skipped). Returns how many are new. The caller deletes them from
    their outbox only after this commits."""
    if not changes:
        return 0
    result = conn.execute(
        _INSERT_LOCAL,
        {
            "service_id": service_id,
            "organization_id": organization_id,
            "source": LOCAL_SOURCE,
            "event_ids": [local_event_id(c) for c in changes],
            "event_types": [LOCAL_EVENT_PREFIX + c.operation for c in changes],
            "device_ids": [c.row_key for c in changes],
            "payloads": [
                json.dumps(
                    {
                        "operation": c.operation,
                        "key": c.row_key,
                        "tenant": c.tenant,
                        "changed_at": c.changed_at.isoformat(),
                        "change_id": c.id,
                        "txid": c.txid,
                    }
                )
                for c in changes
            ],
        },
    )
    return result.rowcount


def latest_claimable_id(conn: Connection) -> int:
    """The newest pending or failed event's id (0: none): what the sensor's wait watches."""
    return int(
        conn.execute(
            sa.text("SELECT coalesce(max(id), 0) FROM webhook_events WHERE status IN ('pending', 'failed')")
        ).scalar_one()
    )


# ---------------------------------------------------------------------------------------------
# Lifecycle: the sensor, the targeted sync and the CLI
# ---------------------------------------------------------------------------------------------

# SKIP LOCKED lets two sensor ticks (or two deployments) claim disjoint sets without waiting.
# `failed` events are retryable, so they are claimed like pending ones, oldest first.
_CLAIM = sa.text(
    """
    WITH picked AS (
        SELECT id FROM webhook_events
        WHERE status IN ('pending', 'failed')
          AND (CAST(:organization_id AS text) IS NULL OR organization_id = :organization_id)
        ORDER BY id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_events e
    SET status = 'claimed', claimed_at = now(), claimed_by = :claimed_by
    FROM picked
    WHERE e.id = picked.id
    RETURNING e.id, e.service_id, e.organization_id, e.golioth_device_id, e.device_id, e.event_type, e.attempts,
              e.source
    """
)


def claim_pending(
    conn: Connection, *, limit: int, claimed_by: str, organization_id: str | None = None
) -> list[ClaimedGroup]:
    """Claim up to `limit` pending/failed events for `claimed_by`, grouped by organization.

    Groups come sorted by organization; event ids ascend and device ids are unique and sorted,
    so a run key derived from them is stable.
    """
    if limit <= 0:
        return []
    rows = conn.execute(_CLAIM, {"limit": limit, "claimed_by": claimed_by, "organization_id": organization_id}).all()
    groups: dict[tuple[str, int], ClaimedGroup] = {}
    for row in sorted(rows, key=lambda r: r.id):
        group = groups.setdefault(
            (row.organization_id, row.service_id), ClaimedGroup(row.organization_id, row.service_id)
        )
        group.event_ids.append(row.id)
        group.golioth_device_ids.append(row.golioth_device_id)
        group.device_ids.append(row.device_id)
        group.event_types.append(row.event_type)
        group.sources.add(row.source)
        group.attempts = max(group.attempts, row.attempts)
    for group in groups.values():  # each distinct, sorted (a batch holds thousands: sets, not `in` on lists)
        group.golioth_device_ids = sorted(set(filter(None, group.golioth_device_ids)))
        group.device_ids = sorted(set(filter(None, group.device_ids)))
        group.event_types = sorted(set(group.event_types))
    return [groups[k] for k in sorted(groups)]


def organizations_with_work(conn: Connection) -> list[str]:
    """Organizations that have claimable (pending or failed) events, sorted."""
    return list(
        conn.execute(
            sa.text(
                "SELECT DISTINCT organization_id FROM webhook_events "
                "WHERE status IN ('pending', 'failed') ORDER BY organization_id"
            )
        ).scalars()
    )


def rename_claim(conn: Connection, old_claimed_by: str, new_claimed_by: str) -> int:
    """Move a claim to another owner, e.g. from a temporary token to the run key derived from it."""
    result = conn.execute(
        sa.text("UPDATE webhook_events SET claimed_by = :new WHERE claimed_by = :old AND status = 'claimed'"),
        {"old": old_claimed_by, "new": new_claimed_by},
    )
    return result.rowcount


def mark_processed(conn: Connection, claimed_by: str) -> int:
    """The run that claimed these events finished: they are done. Returns how many."""
    result = conn.execute(
        sa.text(
            "UPDATE webhook_events SET status = 'processed', processed_at = now(), last_error = NULL "
            "WHERE claimed_by = :claimed_by AND status = 'claimed'"
        ),
        {"claimed_by": claimed_by},
    )
    return result.rowcount


def release_failed(conn: Connection, claimed_by: str, error: str, max_attempts: int = 5) -> tuple[int, int]:
    """The run failed: count an attempt. Returns (back in the queue as `failed`, now `dead`)."""
    rows = (
        conn.execute(
            sa.text(
                """
            UPDATE webhook_events
            SET attempts = attempts + 1,
                status = CASE WHEN attempts + 1 >= :max_attempts THEN 'dead' ELSE 'failed' END,
                last_error = :error, claimed_by = NULL, claimed_at = NULL
            WHERE claimed_by = :claimed_by AND status = 'claimed'
            RETURNING status
            """
            ),
            {"claimed_by": claimed_by, "error": (error or "")[:_MAX_ERROR_CHARS], "max_attempts": max_attempts},
        )
        .scalars()
        .all()
    )
    return sum(1 for s in rows if s == "failed"), sum(1 for s in rows if s == "dead")


def release_stale_claims(conn: Connection, older_than: timedelta, max_attempts: int = 5) -> tuple[int, int]:
    """Claims whose run vanished without reporting (killed worker): treat them as failed attempts."""
    rows = (
        conn.execute(
            sa.text(
                """
            UPDATE webhook_events
            SET attempts = attempts + 1,
                status = CASE WHEN attempts + 1 >= :max_attempts THEN 'dead' ELSE 'failed' END,
                last_error = 'claim expired: the run never reported back',
                claimed_by = NULL, claimed_at = NULL
            WHERE status = 'claimed' AND claimed_at < now() - :older_than
            RETURNING status
            """
            ),
            {"older_than": older_than, "max_attempts": max_attempts},
        )
        .scalars()
        .all()
    )
    return sum(1 for s in rows if s == "failed"), sum(1 for s in rows if s == "dead")


_COLUMNS = (
    "id, service_id, organization_id, event_id, source, event_type, golioth_device_id, status, attempts, "
    "received_at, claimed_at, claimed_by, processed_at, last_error, device_id"
)


def list_events(
    conn: Connection,
    status: str | None = None,
    organization_id: str | None = None,
    limit: int = 100,
    *,
    with_payload: bool = False,
) -> list[EventRow]:
    """The newest events first, optionally filtered by status and organization."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    columns = _COLUMNS + (", payload" if with_payload else "")
    rows = conn.execute(
        sa.text(
            f"SELECT {columns} FROM webhook_events "
            "WHERE (CAST(:status AS text) IS NULL OR status = :status) "
            "AND (CAST(:org AS text) IS NULL OR organization_id = :org) "
            "ORDER BY id DESC LIMIT :limit"
        ),
        {"status": status, "org": organization_id, "limit": limit},
    ).mappings()
    return [EventRow(**dict(r)) for r in rows]


def get_event(conn: Connection, service_id: int, event_id: str) -> EventRow | None:
    row = (
        conn.execute(
            sa.text(f"SELECT {_COLUMNS}, payload FROM webhook_events WHERE service_id = :s AND event_id = :e"),
            {"s": service_id, "e": event_id},
        )
        .mappings()
        .first()
    )
    return EventRow(**dict(row)) if row else None


def count_by_status(conn: Connection, organization_id: str | None = None) -> dict[str, int]:
    rows = conn.execute(
        sa.text(
            "SELECT status, count(*) AS n FROM webhook_events "
            "WHERE CAST(:org AS text) IS NULL OR organization_id = :org GROUP BY status"
        ),
        {"org": organization_id},
    ).all()
    counts = dict.fromkeys(STATUSES, 0)
    counts.update({r.status: r.n for r in rows})
    return counts


def lock_statuses(conn: Connection, ids: Sequence[int], organization_id: str | None = None) -> dict[int, str]:
    """Status of each of these events that exists (in that organization), locked until commit so
    that a check made on them still holds when the transaction writes."""
    rows = conn.execute(
        sa.text(
            "SELECT id, status FROM webhook_events WHERE id = ANY(CAST(:ids AS bigint[])) "
            "AND (CAST(:org AS text) IS NULL OR organization_id = :org) FOR UPDATE"
        ),
        {"ids": list(ids), "org": organization_id},
    ).all()
    return dict(rows)


def replay_dead(conn: Connection, ids: Sequence[int] | None = None, organization_id: str | None = None) -> int:
    """Requeue dead letters (all, the given ids, or one organization's) with a fresh attempt count.

    `last_error` stays so an operator can still see why it died the last time.
    """
    result = conn.execute(
        sa.text(
            """
            UPDATE webhook_events
            SET status = 'pending', attempts = 0, claimed_by = NULL, claimed_at = NULL
            WHERE status = 'dead'
              AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
              AND (CAST(:org AS text) IS NULL OR organization_id = :org)
            """
        ),
        {"ids": list(ids) if ids is not None else None, "org": organization_id},
    )
    return result.rowcount


def prune_processed(conn: Connection, older_than: timedelta) -> int:
    """Delete processed events older than the retention; dead letters are kept for the operator."""
    result = conn.execute(
        sa.text("DELETE FROM webhook_events WHERE status = 'processed' AND processed_at < now() - :older_than"),
        {"older_than": older_than},
    )
    return result.rowcount
