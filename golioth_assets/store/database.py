"""Which PostgreSQL we talk to, and the SQLAlchemy engines for it.

One dialect everywhere: PostgreSQL through psycopg2 (dagster-postgres needs psycopg2 too, and
SQLAlchemy 2.1 would otherwise pick psycopg 3 for a bare `postgresql://`).
"""

from __future__ import annotations

import functools
import logging
import time

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from golioth_assets.settings import Settings, get_settings
from golioth_assets.store import embedded

log = logging.getLogger(__name__)

APP_DATABASE = "golioth_sync"
DAGSTER_DATABASE = "dagster"


class DatabaseConfigError(ValueError):
    """DATABASE_URL (or DAGSTER_DATABASE_URL) is not a usable PostgreSQL URL."""


def normalize_url(raw: str | URL, *, variable: str = "DATABASE_URL") -> URL:
    """Accept postgres://, postgresql:// and postgresql+psycopg2:// and always use psycopg2."""
    try:
        url = make_url(raw) if isinstance(raw, str) else raw
    except Exception as exc:
        raise DatabaseConfigError(f"{variable} is not a valid database URL: {exc}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise DatabaseConfigError(
            f"{variable} must point at PostgreSQL (got a {backend!r} URL); golioth-sync supports PostgreSQL only"
        )
    if driver and driver != "psycopg2":
        log.info("%s names driver %s; using psycopg2 instead", variable, driver)
    return url.set(drivername="postgresql+psycopg2")


def resolve_urls(settings: Settings | None = None) -> tuple[URL, URL]:
    """Return (app URL, Dagster storage URL), starting the embedded server when no URL is set."""
    settings = settings or get_settings()
    if settings.database_url:
        app = normalize_url(settings.database_url)
    else:
        server = embedded.start(settings.pgdata)
        app = server.set(database=APP_DATABASE)
    if settings.dagster_database_url:
        dagster = normalize_url(settings.dagster_database_url, variable="DAGSTER_DATABASE_URL")
    else:
        # Dagster's own storage: same server, its own database.
        dagster = app.set(database=f"{app.database}_dagster" if settings.database_url else DAGSTER_DATABASE)
    return app, dagster


def render(url: URL) -> str:
    """A URL as a string with any password hidden: safe for logs and output."""
    return url.render_as_string(hide_password=True)


def ensure_database_exists(url: URL) -> None:
    """CREATE DATABASE if missing, connecting through the server's `postgres` database."""
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).scalar()
            if not exists and url.database:
                # The name comes from our own settings, never from request input; quote it anyway.
                quoted = conn.dialect.identifier_preparer.quote(url.database)
                try:
                    conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
                except sa.exc.ProgrammingError as exc:
                    if "already exists" not in str(exc):  # lost a race with another process: fine
                        raise
    finally:
        admin.dispose()


# A pooled connection idle at least this long is pinged before it is handed out again.
IDLE_PING_SECONDS = 1.0
_CHECKED_IN = "golioth_sync_checked_in_at"


def ping_when_idle(engine: Engine, idle_seconds: float = IDLE_PING_SECONDS) -> Engine:
    """SQLAlchemy's pool_pre_ping, but only for a connection that sat in the pool `idle_seconds` or
    more: one sync checks connections out back to back (~40 times an organization), and pinging
    each, milliseconds after it came back, is one round trip each for nothing. A connection that
    idled (a server restart, an idle timeout, a network cut) is still pinged, and a dead one is
    replaced (DisconnectionError makes the pool connect afresh); one that dies while in use fails
    that statement, as it would with pre-ping, and the pool drops its older connections too."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # a new connection, or one that was in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure means: not this connection
            raise sa.exc.DisconnectionError(f"pooled connection failed its ping: {exc}") from exc
        if not alive:
            raise sa.exc.DisconnectionError("pooled connection failed its ping")

    return engine


@functools.lru_cache(maxsize=16)
def _engine_for(url_string: str) -> Engine:
    return ping_when_idle(
        sa.create_engine(
            url_string,
            pool_size=5,
            max_overflow=10,
            # A short connect timeout turns "database down" into a prompt, clear error.
            connect_args={"connect_timeout": 5, "application_name": "golioth-sync"},
        )
    )


def engine_for(url: URL | str) -> Engine:
    url = normalize_url(url)
    return _engine_for(url.render_as_string(hide_password=False))


def app_engine(settings: Settings | None = None) -> Engine:
    """The engine for our own tables, creating the database on first use."""
    app, _ = resolve_urls(settings)
    ensure_database_exists(app)
    return engine_for(app)


def ping(engine: Engine) -> None:
    """One round trip to the server; raises if it does not answer."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def run_scripts_unless_table(url: URL, table: str, scripts: list[str]) -> bool:
    """Run SQL scripts (a product's own migration and seed, say) in one transaction, unless `table`
    exists already. True when they ran."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            if conn.exec_driver_sql("SELECT to_regclass(%(t)s)", {"t": table}).scalar() is not None:
                return False
            for script in scripts:
                conn.exec_driver_sql(script.replace("%", "%%"))  # no parameters: a literal % is %%
        return True
    finally:
        engine.dispose()
