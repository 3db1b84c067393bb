"""One sync of an organization at a time, enforced by PostgreSQL: a session-level advisory lock per
organization, held on a connection of its own for as long as the organization's sync runs.

Dagster's `dagster/partition` run limit keeps two single-organization runs apart, but a batched run
(many organizations in one run) carries no partition tag, and a run launched around the queue
(the CLI in process, a test) is not counted at all. The lock is taken by every sync, however it was
started, right before it opens its log row, so no mix of batched, targeted and manual runs can
sync one organization twice at once. It lives in the session: a process that dies (SIGKILL, a lost
Celery worker) drops its connection, and PostgreSQL releases the lock with it.

The key is the pair (hashtext('golioth-sync'), hashtext(organization)): two organizations whose
names hash alike would only take turns, never sync together wrongly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

NAMESPACE = "golioth-sync"
_KEY = "hashtext(:namespace), hashtext(:org)"


class OrganizationBusy(RuntimeError):
    """Another sync of this organization holds its lock: this one did not start (nothing failed)."""

    def __init__(self, organization_id: str) -> None:
        super().__init__(f"{organization_id}: another sync of this organization is running; not started")
        self.organization_id = organization_id


def _try_lock(conn: Connection, org: str, wait_seconds: float) -> bool:
    params = {"namespace": NAMESPACE, "org": org}
    if wait_seconds <= 0:
        return bool(conn.execute(sa.text(f"SELECT pg_try_advisory_lock({_KEY})"), params).scalar())
    # lock_timeout bounds an advisory lock's wait too: the wait ends on the lock's release, not a poll.
    conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": f"{int(wait_seconds * 1000)}ms"})
    try:
        conn.execute(sa.text(f"SELECT pg_advisory_lock({_KEY})"), params)
        return True
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available: the wait timed out
            raise
        return False
    finally:
        conn.execute(sa.text("RESET lock_timeout"))  # the role's or database's own, not 0


@contextmanager
def organization_lock(db: Engine, organization_id: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the organization's sync lock for the block; raise OrganizationBusy when another session
    holds it (at once, or after waiting up to `wait_seconds` for it to be released)."""
    # AUTOCOMMIT: the lock belongs to the session, so no transaction stays open (idle) for the sync.
    conn = db.connect().execution_options(isolation_level="AUTOCOMMIT")
    locked = False
    try:
        locked = _try_lock(conn, organization_id, wait_seconds)
        if not locked:
            raise OrganizationBusy(organization_id)
        yield
    finally:
        try:
            if locked:
                conn.execute(
                    sa.text(f"SELECT pg_advisory_unlock({_KEY})"), {"namespace": NAMESPACE, "org": organization_id}
                )
        except sa.exc.DBAPIError:
            conn.invalidate()  # a dead session released its locks with it; never pool a doubtful one
        finally:
            conn.close()
