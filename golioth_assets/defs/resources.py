"""Dagster resources: the device store (PostgreSQL) and the Golioth API.

Secrets never pass through Dagster config. The store's config names the environment variable that
holds the database URL (Dagster shows the name, never the URL), read when a run or tick starts;
each organization's Golioth API key is read, at run time, from the variable its service names.

The engine is built once per run or tick (`setup_for_execution`), and nothing here migrates the
schema: `golioth-sync db upgrade` and `golioth-sync dev` do. A run checks the schema revision once
(`require_schema`) and fails with one line that says what to do.
"""

from __future__ import annotations

import os

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import URL, Engine

from golioth_assets.engine.sync import open_client
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.settings import get_settings
from golioth_assets.store import database, embedded, migrate, services


class DeviceStore(dg.ConfigurableResource):
    """Our PostgreSQL: the URL in the environment variable `database_url_env`; when that variable is
    unset, the embedded server in GOLIOTH_SYNC_HOME (what `golioth-sync env` sets up for plain
    `dagster` commands). `database_url` gives a URL directly instead (tests)."""

    database_url_env: str = Field(
        default="DATABASE_URL",
        description="Environment variable holding the PostgreSQL URL, read at run time. Unset: the embedded "
        "PostgreSQL in GOLIOTH_SYNC_HOME.",
    )
    database_url: str | None = Field(
        default=None, description="A PostgreSQL URL given directly (give it as dg.EnvVar); overrides database_url_env."
    )
    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = database.engine_for(self._url())

    def _url(self) -> URL:
        if self.database_url:
            return database.normalize_url(self.database_url)
        raw = os.environ.get(self.database_url_env)
        if raw:
            return database.normalize_url(raw, variable=self.database_url_env)
        return embedded.start(get_settings().pgdata).set(database=database.APP_DATABASE)

    @property
    def engine(self) -> Engine:
        """The engine, built once (by setup_for_execution, or on first use outside Dagster)."""
        if self._engine is None:
            self._engine = database.engine_for(self._url())
        return self._engine

    def require_schema(self) -> None:
        """A run's first call (one query; sensor ticks don't pay it): fails the step with one line,
        and what to do, when the database is missing or behind this code."""
        head = migrate.head_revision()
        try:
            current = migrate.current_revision(self.engine)
        except sa.exc.OperationalError as exc:
            if "does not exist" not in str(exc):
                raise
            current = None
        if current != head:
            raise dg.Failure(
                description=f"the golioth-sync database is at schema revision {current or 'none'}, this code "
                f"needs {head}: run `golioth-sync db upgrade`",
                allow_retries=False,
            )

    def service(self, organization_id: str) -> services.Service:
        with self.engine.connect() as conn:
            return services.service_for_org(conn, organization_id)


class GoliothApi(dg.ConfigurableResource):
    """Opens one GoliothClient per organization, with the key its service names."""

    max_concurrency: int = Field(default=16, ge=1, le=64, description="concurrent Golioth requests per run")

    def client_for(self, service: services.Service) -> GoliothClient:
        return open_client(service, max_concurrency=self.max_concurrency)
