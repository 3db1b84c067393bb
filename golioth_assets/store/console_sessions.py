"""Console sign-ins (`console_sessions`): opened by /login, checked on every request, revoked by logout.

The cookie holds a random session id; the table holds only its SHA-256, so reading the table does
not let anyone sign in. A session ends at the first of: its absolute expiry, `idle` without a
request, logout, or a new console token (each session remembers which token opened it).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from golioth_assets.store.schema import console_sessions

# Rows of ended sessions are kept this long (to tell "expired" from "never existed" when debugging).
_KEEP_ENDED = timedelta(days=1)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def open_session(conn: Connection, token_hash: str, lifetime: timedelta) -> str:
    """A new session; returns the id for the cookie (stored only as a hash). Old rows are pruned."""
    conn.execute(console_sessions.delete().where(console_sessions.c.expires_at < sa.func.now() - _KEEP_ENDED))
    session_id = secrets.token_urlsafe(32)
    conn.execute(
        console_sessions.insert().values(
            id_hash=_hash(session_id), token_hash=token_hash, expires_at=sa.func.now() + lifetime
        )
    )
    return session_id


def touch_session(conn: Connection, session_id: str, token_hash: str, idle: timedelta) -> bool:
    """True when the session is live (and records this use); one statement checks and touches."""
    c = console_sessions.c
    row = conn.execute(
        console_sessions.update()
        .where(
            c.id_hash == _hash(session_id),
            c.token_hash == token_hash,
            c.revoked_at.is_(None),
            c.expires_at > sa.func.now(),
            c.last_seen_at > sa.func.now() - idle,
        )
        .values(last_seen_at=sa.func.now())
        .returning(c.id_hash)
    ).first()
    return row is not None


def revoke_session(conn: Connection, session_id: str) -> bool:
    c = console_sessions.c
    result = conn.execute(
        console_sessions.update()
        .where(c.id_hash == _hash(session_id), c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )
    return result.rowcount > 0


def revoke_all(conn: Connection) -> int:
    """End every live session (all operators sign in again)."""
    c = console_sessions.c
    result = conn.execute(
        console_sessions.update()
        .where(c.revoked_at.is_(None), c.expires_at > sa.func.now())
        .values(revoked_at=sa.func.now())
    )
    return result.rowcount
