"""Jobs over the sync assets. Partitions come from the assets (one per organization)."""

import dagster as dg

from golioth_assets.core.vocabulary import RunTag, SyncKind
from golioth_assets.defs.assets import sync_assets

sync_selection = dg.AssetSelection.assets(*sync_assets)

# Both jobs run their six steps inside the run worker. The steps form a chain (nothing runs in
# parallel) and pass data through PostgreSQL, so a process per step only added start-up time: ~3 s
# of Python imports per step, most of a small sync. A multiprocess or Kubernetes executor still
# works unchanged when steps must be isolated (docs/dagster.md).
full_sync_job = dg.define_asset_job(
    "golioth_full_sync",
    selection=sync_selection,
    description="Full bidirectional sync of one organization (pick its partition).",
    tags={RunTag.kind: SyncKind.full.value},
    executor_def=dg.in_process_executor,
)

targeted_sync_job = dg.define_asset_job(
    "golioth_targeted_sync",
    selection=sync_selection,
    description="Sync only the devices listed in ops.golioth_device_inventory.config.device_ids.",
    tags={RunTag.kind: SyncKind.targeted.value},
    executor_def=dg.in_process_executor,
)


def run_tags(organization_id: str, trigger: str, **extra: str) -> dict[str, str]:
    """Tags every sync run carries, so the run list filters by organization and trigger."""
    return {RunTag.org: organization_id, RunTag.trigger: str(trigger), **extra}
