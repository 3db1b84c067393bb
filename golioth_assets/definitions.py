"""Dagster entry point: `dagster dev -m golioth_assets.definitions` or workspace.yaml."""

from __future__ import annotations

import dagster as dg

from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.batch import SyncBatch, batch_sync_job
from golioth_assets.defs.jobs import full_sync_job, targeted_sync_job
from golioth_assets.defs.resolve import resolve_conflicts_job
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from sensors.failures import sync_cancel_sensor, sync_failure_sensor
from sensors.organizations import organization_partitions_sensor
from sensors.schedule import golioth_sync_schedule
from sensors.webhooks import webhook_inbox_sensor

# The store reads the variable it names when a run or tick starts, not when this module loads:
# Dagster's config shows the name, never the URL. Unset, it is the embedded PostgreSQL in
# GOLIOTH_SYNC_HOME (what `golioth-sync env` prepares for plain `dagster` commands).
store = DeviceStore(database_url_env="DATABASE_URL")

defs = dg.Definitions(
    assets=sync_assets,
    jobs=[full_sync_job, targeted_sync_job, batch_sync_job, resolve_conflicts_job],
    schedules=[golioth_sync_schedule],
    sensors=[organization_partitions_sensor, webhook_inbox_sensor, sync_failure_sensor, sync_cancel_sensor],
    resources={"store": store, "golioth": GoliothApi(), "batch": SyncBatch()},
    # Jobs without an executor of their own (Dagster's asset job, behind the UI's *Materialize* and
    # backfills; the resolve job) are one op each: run it in the run worker, not a step subprocess.
    executor=dg.in_process_executor,
)
