"""Everything a command needs before it touches a database or Dagster: the embedded server (or
DATABASE_URL), both databases, migrations, and a DAGSTER_HOME that uses this project's dagster.yaml
with Dagster's storage in PostgreSQL.

Child processes (the Dagster webserver, daemon and run workers, the webhook receiver) inherit the
resolved URLs through the environment, so they never race to start the embedded server themselves.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, Engine

from golioth_assets.settings import get_settings
from golioth_assets.store import database, migrate

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGSTER_YAML = PROJECT_ROOT / "dagster.yaml"
WORKSPACE_YAML = PROJECT_ROOT / "workspace.yaml"
DAGSTER_PG_ENV = "GOLIOTH_SYNC_DAGSTER_PG_URL"


@dataclass
class Runtime:
    app_url: URL
    dagster_url: URL
    engine: Engine
    dagster_home: Path
    embedded: bool

    def describe(self) -> str:
        where = "embedded PostgreSQL" if self.embedded else "DATABASE_URL"
        return f"{database.render(self.app_url)} ({where})"


def prepare(*, migrate_schema: bool = True, dagster: bool = True) -> Runtime:
    settings = get_settings()
    app_url, dagster_url = database.resolve_urls(settings)
    database.ensure_database_exists(app_url)
    engine = database.engine_for(app_url)
    if migrate_schema:
        migrate.upgrade(engine)
    os.environ["DATABASE_URL"] = app_url.render_as_string(hide_password=False)
    # Pinned too: with DATABASE_URL now set, resolving again (a child process, a second prepare())
    # would otherwise pick the DATABASE_URL-style name for Dagster's database, not the embedded one.
    os.environ["DAGSTER_DATABASE_URL"] = dagster_url.render_as_string(hide_password=False)
    dagster_home = settings.dagster_home
    if dagster:
        database.ensure_database_exists(dagster_url)
        dagster_home.mkdir(parents=True, exist_ok=True)
        # The project's dagster.yaml is the source of truth; DAGSTER_HOME just needs a copy of it.
        source = Path(os.environ.get("GOLIOTH_SYNC_DAGSTER_YAML", DAGSTER_YAML))
        shutil.copyfile(source, dagster_home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(dagster_home)
        os.environ[DAGSTER_PG_ENV] = dagster_url.render_as_string(hide_password=False)
    return Runtime(app_url, dagster_url, engine, dagster_home, embedded=settings.database_url is None)
