"""Dagster's storage in PostgreSQL, holding its connections (dagster.yaml, `storage: custom:`).

dagster-postgres opens a new PostgreSQL connection for every statement it runs (its engines use
NullPool, so that many short-lived instances don't pile up idle connections). A no-change sync of
100 devices made about 180 of them: most of a run's bookkeeping time (docs/benchmarks.md, "CLI and
fixed cost"). This is the same storage, switched into the pooled mode dagster-postgres already has
for the webserver (`optimize_for_webserver`: one held connection per storage, more on demand). Every
process that loads the instance gets it: the CLI, the run workers, the daemon and the webserver
(which switches it again itself), each holding at most one idle connection per storage.

Its sessions don't wait for the WAL flush of each commit (`synchronous_commit = off`): every event of
a run is one autocommitted INSERT (and more for an asset's tables), about 100 writes per run, each
of which would otherwise wait for the disk. A crash of the PostgreSQL server (not of a run) may
lose the last fraction of a second of Dagster's writes (its event log, runs and schedule storage:
run records, ticks, run keys), never corrupt them; our own database, with
the sync's state, the inbox and the outbox, keeps full durability (it is not touched here).

It also remembers the tables and columns it found: dagster-postgres asks the catalog again before
many statements whether a table or column (added by some past Dagster migration) exists, about 50
catalog queries per run. Only a "yes" is remembered: a table or column never disappears under a
running process, while one that is missing may be added by `dagster instance migrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dagster._serdes import ConfigurableClassData
from dagster_postgres import (
    DagsterPostgresStorage,
    PostgresEventLogStorage,
    PostgresRunStorage,
    PostgresScheduleStorage,
)
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy.engine import Connection, make_url

# Overflow connections, beyond the held one, for threads that query at the same time (the CLI's
# progress display beside the run, the daemon's loops); they close when released.
MAX_OVERFLOW = 10
# Reconnect an hour on, so that a server-side idle timeout never hands us a dead connection.
POOL_RECYCLE_SECONDS = 3600
NO_STATEMENT_TIMEOUT = 0  # as with dagster-postgres's own engines (the webserver sets one itself)
NO_COMMIT_WAIT = "-c synchronous_commit=off"


def without_commit_wait(postgres_url: str) -> str:
    """The URL with `synchronous_commit = off` for its sessions (libpq `options`, kept beside any
    the URL has)."""
    url = make_url(postgres_url)
    options = " ".join(filter(None, [str(url.query.get("options") or ""), NO_COMMIT_WAIT]))
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


class _SchemaMemory:
    """The tables and columns found present so far (a "no" is asked again)."""

    def __init__(self) -> None:
        self._present: set[tuple[str, ...]] = set()

    def check(self, key: tuple[str, ...], ask: Callable[[], bool]) -> bool:
        if key in self._present:
            return True
        found = ask()
        if found:
            self._present.add(key)
        return found


class SchemaMemoryEventLogStorage(PostgresEventLogStorage):
    """PostgresEventLogStorage that asks the catalog once per table or column it finds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._schema = _SchemaMemory()
        super().__init__(*args, **kwargs)

    def has_table(self, table_name: str) -> bool:
        ask = super().has_table
        return self._schema.check(("table", table_name), lambda: ask(table_name))

    def has_asset_key_col(self, column_name: str) -> bool:
        ask = super().has_asset_key_col
        return self._schema.check(("asset_keys", column_name), lambda: ask(column_name))

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        ask = super()._has_asset_key_col_on_connection
        return self._schema.check(("asset_keys", column_name), lambda: ask(conn, column_name))


class SchemaMemoryRunStorage(PostgresRunStorage):
    """PostgresRunStorage that asks the catalog once whether the runs table has its stats columns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._schema = _SchemaMemory()
        super().__init__(*args, **kwargs)

    def has_run_stats_index_cols(self) -> bool:
        return self._schema.check(("runs", "stats"), super().has_run_stats_index_cols)


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` whose storages reuse their connections and remember the schema."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ) -> None:
        # The base class builds plain storages too: told not to create tables, they never connect
        # (engines connect lazily) and stand unused; these three take their place.
        super().__init__(postgres_url, False, inst_data, token_provider)
        self.should_autocreate_tables = should_autocreate_tables
        self._pooled_run_storage = SchemaMemoryRunStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._pooled_event_log_storage = SchemaMemoryEventLogStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        self._pooled_schedule_storage = PostgresScheduleStorage(
            postgres_url, should_autocreate_tables, token_provider=token_provider
        )
        for part in (self.run_storage, self.event_log_storage, self.schedule_storage):
            part.optimize_for_webserver(
                statement_timeout=NO_STATEMENT_TIMEOUT, pool_recycle=POOL_RECYCLE_SECONDS, max_overflow=MAX_OVERFLOW
            )

    @property
    def run_storage(self) -> SchemaMemoryRunStorage:
        return self._pooled_run_storage

    @property
    def event_log_storage(self) -> SchemaMemoryEventLogStorage:
        return self._pooled_event_log_storage

    @property
    def schedule_storage(self) -> PostgresScheduleStorage:
        return self._pooled_schedule_storage

    @classmethod
    def from_config_value(  # type: ignore[override]  # dagster_postgres types it with its TypedDict
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=without_commit_wait(pg_url_from_config(config_value)),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
