"""Dagster resources: the device store (PostgreSQL) and the Golioth API.

Secrets never pass through Dagster config: DATABASE_URL is read as an `EnvVar` (Dagster shows the
variable's name, not its value), and each organization's Golioth API key is read, at run time, from
the environment variable its service names.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field
from sqlalchemy.engine import Engine

from golioth_assets.engine.sync import open_client
from golioth_assets.golioth.client import GoliothClient
from golioth_assets.store import database, migrate, services


class DeviceStore(dg.ConfigurableResource):
    """Our PostgreSQL: DATABASE_URL, or the embedded server in GOLIOTH_SYNC_HOME when unset."""

    database_url: str | None = Field(default=None, description="PostgreSQL URL; unset = embedded server")

    def engine(self) -> Engine:
        if self.database_url:
            url = database.normalize_url(self.database_url)
            database.ensure_database_exists(url)
            return database.engine_for(url)
        return database.app_engine()

    def migrated_engine(self) -> Engine:
        engine = self.engine()
        if migrate.current_revision(engine) != migrate.head_revision():
            migrate.upgrade(engine)
        return engine

    def service(self, organization_id: str) -> services.Service:
        with self.engine().connect() as conn:
            return services.service_for_org(conn, organization_id)


class GoliothApi(dg.ConfigurableResource):
    """Opens one GoliothClient per organization, with the key its service names."""

    max_concurrency: int = Field(default=16, ge=1, le=64, description="concurrent Golioth requests per run")

    def client_for(self, service: services.Service) -> GoliothClient:
        return open_client(service, max_concurrency=self.max_concurrency)
