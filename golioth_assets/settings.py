"""Settings that come from the environment, in one place.

Everything here is read lazily (call `get_settings()`), so tests and the CLI can set environment
variables before the first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_GOLIOTH_BASE_URL = "https://api.golioth.io"


@dataclass(frozen=True)
class Settings:
    home: Path
    """GOLIOTH_SYNC_HOME: data folder for the embedded PostgreSQL and Dagster's local files."""
    database_url: str | None
    """DATABASE_URL: any PostgreSQL 14+; unset means the embedded server in `home`."""
    dagster_database_url: str | None
    """DAGSTER_DATABASE_URL: Dagster's own storage; unset means a sibling database on the same server."""

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def get_settings() -> Settings:
    home = Path(os.environ.get("GOLIOTH_SYNC_HOME") or ".golioth-sync").expanduser().resolve()
    return Settings(
        home=home,
        database_url=os.environ.get("DATABASE_URL") or None,
        dagster_database_url=os.environ.get("DAGSTER_DATABASE_URL") or None,
    )
