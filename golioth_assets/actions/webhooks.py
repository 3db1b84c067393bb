"""The webhook inbox for operators: list events (with dead letters) and replay dead ones.

Replays go through `store.webhook_events.replay_dead`, the function `golioth-sync webhooks replay`
uses, so the console and the CLI requeue events the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection, Engine

from golioth_assets.actions.errors import InvalidInput, NotFound
from golioth_assets.store import webhook_events as store


def inbox(
    engine: Engine, organization_id: str | None = None, status: str | None = None, limit: int = 100
) -> tuple[list[store.EventRow], dict[str, int]]:
    if status is not None and status not in store.STATUSES:
        raise InvalidInput(f"unknown status {status!r} (one of {', '.join(store.STATUSES)})")
    if not 1 <= limit <= 10_000:
        raise InvalidInput("limit must be between 1 and 10000")
    with engine.connect() as conn:
        return (
            store.list_events(conn, status=status, organization_id=organization_id, limit=limit),
            store.count_by_status(conn, organization_id),
        )


def replay(
    engine: Engine, ids: Sequence[int] | None = None, organization_id: str | None = None, *, every_org: bool = False
) -> int:
    """Requeue dead letters: the given ids (all of them or none), every dead event of one
    organization, or with `every_org` every dead event."""
    if not (ids or organization_id or every_org):
        raise InvalidInput("say which dead events to replay: ids or an organization")
    ids = [int(i) for i in ids] if ids else None
    with engine.begin() as conn:
        if ids:
            _check_dead(conn, ids, organization_id)
        return store.replay_dead(conn, ids=ids, organization_id=organization_id)


def _check_dead(conn: Connection, ids: list[int], organization_id: str | None) -> None:
    # An id that is not dead is a typo or someone else's replay: say so instead of "requeued 0".
    status = store.lock_statuses(conn, ids, organization_id)
    missing = [str(i) for i in ids if i not in status]
    if missing:
        raise NotFound(
            f"no webhook event with id {', '.join(missing)}"
            + (f" in organization {organization_id!r}" if organization_id else "")
        )
    alive = [f"{i} is {status[i]}" for i in ids if status[i] != "dead"]
    if alive:
        raise InvalidInput(f"only dead events can be replayed: event {', '.join(alive)}; nothing requeued")
