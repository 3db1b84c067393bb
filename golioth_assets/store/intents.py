"""`local_apply_intents`: one row per local write transaction, recording what golioth-sync's own
tables owe it once it is known to have committed (docs/reliability.md, "Two databases").

pending → done (bookkeeping applied) or aborted (the local transaction never committed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class Intent:
    id: int
    service_id: int
    sync_log_id: int | None
    txid: int
    payload: dict


def record(conn: Connection, service_id: int, sync_log_id: int | None, txid: int, payload: dict) -> int:
    return conn.exec_driver_sql(
        "INSERT INTO local_apply_intents (service_id, sync_log_id, txid, payload) "
        "VALUES (%(service)s, %(log)s, %(txid)s, %(payload)s::jsonb) RETURNING id",
        {
            "service": service_id,
            "log": sync_log_id,
            "txid": txid,
            "payload": json.dumps(payload, default=str, ensure_ascii=False),
        },
    ).scalar_one()


def pending(conn: Connection, service_id: int, *, lock: bool = False) -> list[Intent]:
    """The service's intents whose outcome is not settled yet, oldest first (locked, skipping
    those another process is settling, when `lock`)."""
    rows = conn.exec_driver_sql(
        "SELECT id, service_id, sync_log_id, txid, payload FROM local_apply_intents "
        "WHERE service_id = %(service)s AND status = 'pending' ORDER BY id"
        + (" FOR UPDATE SKIP LOCKED" if lock else ""),
        {"service": service_id},
    ).fetchall()
    return [Intent(*r) for r in rows]


def has_pending(conn: Connection, service_id: int) -> bool:
    return bool(
        conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM local_apply_intents WHERE service_id = %(s)s AND status = 'pending')",
            {"s": service_id},
        ).scalar()
    )


def settle(conn: Connection, intent_id: int, status: str) -> bool:
    """Mark an intent done or aborted; False when it was no longer pending (settled elsewhere)."""
    return (
        conn.exec_driver_sql(
            "UPDATE local_apply_intents SET status = %(status)s, finished_at = now() "
            "WHERE id = %(id)s AND status = 'pending'",
            {"id": intent_id, "status": status},
        ).rowcount
        == 1
    )


def transaction_status(conn: Connection, txids: list[int]) -> dict[int, str | None]:
    """txid → 'committed' | 'aborted' | 'in progress' | None (too old to know), asked of the
    database the transactions ran in."""
    if not txids:
        return {}
    rows = conn.exec_driver_sql(
        "SELECT t, txid_status(t) FROM unnest(%(ids)s::bigint[]) AS t", {"ids": list(txids)}
    ).fetchall()
    return {int(t): s for t, s in rows}
