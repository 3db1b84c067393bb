"""Jobs over the sync assets. Partitions come from the assets (one per organization)."""

import dagster as dg

from golioth_assets.defs.assets import sync_assets

ORG_TAG = "golioth-sync/org"

sync_selection = dg.AssetSelection.assets(*sync_assets)

full_sync_job = dg.define_asset_job(
    "golioth_full_sync",
    selection=sync_selection,
    description="Full bidirectional sync of one organization (pick its partition).",
    tags={"golioth-sync/kind": "full"},
)

targeted_sync_job = dg.define_asset_job(
    "golioth_targeted_sync",
    selection=sync_selection,
    description="Sync only the devices listed in ops.golioth_device_inventory.config.device_ids.",
    tags={"golioth-sync/kind": "targeted"},
    # A targeted sync touches a handful of devices: its six steps run in the run worker itself.
    # One process per step (the default) spent ~13 s of a ~16 s webhook run starting Python.
    executor_def=dg.in_process_executor,
)


def run_tags(organization_id: str, trigger: str, **extra: str) -> dict[str, str]:
    """Tags every sync run carries, so the run list filters by organization and trigger."""
    return {ORG_TAG: organization_id, "golioth-sync/trigger": trigger, **extra}
