"""The webhook inbox for operators: list events (with dead letters) and replay dead ones.

Replays go through `store.webhook_events.replay_dead`, the function `golioth-sync webhooks replay`
uses, so the console and the CLI requeue events the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Engine

from golioth_assets.ops.errors import InvalidInput
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


def replay(engine: Engine, ids: Sequence[int] | None = None, organization_id: str | None = None) -> int:
    """Requeue dead letters: the given ids, or every dead event of one organization."""
    if not ids and not organization_id:
        raise InvalidInput("say which dead events to replay: ids or an organization")
    with engine.begin() as conn:
        return store.replay_dead(conn, ids=[int(i) for i in ids] if ids else None, organization_id=organization_id)
