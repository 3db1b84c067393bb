"""Jobs over the sync assets. Partitions come from the assets (one per organization)."""

import dagster as dg

from golioth_assets.core.vocabulary import RunTag, SyncKind
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.config import SYNC_OP

sync_selection = dg.AssetSelection.assets(*sync_assets)

# The sync is one op (the golioth_sync multi-asset), so a run is one step: run it inside the run
# worker rather than in a process of its own (~3 s of Python imports, most of a small sync).
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
    description=f"Sync only the devices listed in ops.{SYNC_OP}.config.device_ids.",
    tags={RunTag.kind: SyncKind.targeted.value},
    executor_def=dg.in_process_executor,
)


def run_tags(organization_id: str, trigger: str, **extra: str) -> dict[str, str]:
    """Tags every sync run carries, so the run list filters by organization and trigger. The
    organization is Dagster's own partition tag (RunTag.org): set here too, so a run request says
    which organization it is for before Dagster resolves its partition. Keep `extra` to what code
    reads: each tag is one more line on every row of the run list."""
    return {RunTag.org: organization_id, RunTag.trigger: str(trigger), **extra}
