"""Dagster's storage in PostgreSQL, holding its connections (dagster.yaml, `storage: custom:`).

dagster-postgres opens a new PostgreSQL connection for every statement it runs (its engines use
NullPool, so that many short-lived instances don't pile up idle connections). A no-change sync of
100 devices made about 180 of them: most of a run's bookkeeping time (docs/benchmarks.md, "CLI and
fixed cost"). This is the same storage, switched into the pooled mode dagster-postgres already has
for the webserver (`optimize_for_webserver`: one held connection per storage, more on demand). Every
process that loads the instance gets it: the CLI, the run workers, the daemon and the webserver
(which switches it again itself), each holding at most one idle connection per storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

# Overflow connections, beyond the held one, for threads that query at the same time (the CLI's
# progress display beside the run, the daemon's loops); they close when released.
MAX_OVERFLOW = 10
# Reconnect an hour on, so that a server-side idle timeout never hands us a dead connection.
POOL_RECYCLE_SECONDS = 3600
NO_STATEMENT_TIMEOUT = 0  # as with dagster-postgres's own engines (the webserver sets one itself)


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` whose run, event-log and schedule storages reuse their connections."""

    @classmethod
    def from_config_value(  # type: ignore[override]  # dagster_postgres types it with its TypedDict
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        storage = cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
        for part in (storage.run_storage, storage.event_log_storage, storage.schedule_storage):
            part.optimize_for_webserver(
                statement_timeout=NO_STATEMENT_TIMEOUT, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=MAX_OVERFLOW
            )
        return storage
