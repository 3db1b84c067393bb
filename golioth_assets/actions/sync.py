"""What a dry run found: the conflicts it would record (a dry run writes none to device_conflicts)."""

from __future__ import annotations

import pandas as pd
from sqlalchemy.engine import Engine

from golioth_assets.core.tables import conflicts_table
from golioth_assets.core.vocabulary import Action
from golioth_assets.engine import sync as engine_sync
from golioth_assets.store import history, services, sync_log
from golioth_assets.store.local_table.connect import open_local_table


def dry_run_conflicts(engine: Engine, sync_log_id: int) -> pd.DataFrame:
    """Re-plan a finished dry run from what it fetched (golioth_inventory, local devices, bases) and
    return its conflicts. Reads only; talks to no API."""
    with engine.connect() as conn:
        run = sync_log.get_run(conn, sync_log_id)
        service = services.service_for_org(conn, run["organization_id"])
    request = engine_sync.request_of(run)
    scope = engine_sync.resolve_scope(engine, service, request.device_ids)
    plan, _ = engine_sync.build_plan(engine, service, request, scope)
    found = conflicts_table(plan)
    if found.empty:
        return found
    local_ids = [str(i) for i in found["device_id"].dropna()]
    with engine.connect() as conn:
        names = history.names(
            conn, run["organization_id"], local_ids, [str(i) for i in found["golioth_device_id"].dropna()]
        )
    side = open_local_table(engine, service)  # the current local name, where the row is there
    with side.engine.connect() as conn:
        names.update(side.table.names(conn, local_ids))
    found["device_name"] = [
        names.get(str(d)) or names.get(str(g)) for d, g in zip(found["device_id"], found["golioth_device_id"])
    ]
    return with_local_columns(found, side.table.mapping)


def with_local_columns(frame: pd.DataFrame, mapping) -> pd.DataFrame:
    """`frame` with `local_column`: each row's field as the local table names it."""
    return frame.assign(local_column=[mapping.column_of(str(f)) for f in frame["field"]])


def dry_run_plan(engine: Engine, sync_log_id: int) -> pd.DataFrame:
    """A dry run's plan rows (agreements left out), with the local table's column names."""
    with engine.connect() as conn:
        plan = sync_log.load_plan(conn, sync_log_id)
        run = sync_log.get_run(conn, sync_log_id)
        mapping = services.local_mapping(conn, run["organization_id"])
    return with_local_columns(plan[plan["action"] != Action.agree], mapping)
