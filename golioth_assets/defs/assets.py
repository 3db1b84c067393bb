"""The sync as Dagster assets, one partition per organization: six assets made by ONE op.

    golioth_device_inventory ─┐
                              ├─► device_reconciliation ─► golioth_device_writes ─► local_device_writes ─► device_conflicts
    local_devices ────────────┘

`golioth_sync` is a non-subsettable multi-asset: the six steps only ever run together, in this
order, in one op (Dagster refuses a selection of some of them), so a step can never run without
the ones before it. Its body is the engine's SyncRun (engine/run.py), one call per asset, each
followed by that asset's metadata. Data still passes between the steps through our PostgreSQL
tables (golioth_inventory, sync_plan, device_conflicts), and the run's golioth_sync_log row ties
them together.

A backfill of many organizations runs over ranges of partitions (BackfillPolicy.multi_run, up to
BACKFILL_RUN_SIZE a run): the op then syncs each organization of its range as a lane of a batched
run does (defs/batch.py: sync_partition_range), each on its own partition. A run of one partition
(the launchpad, the CLI, the sensors) takes the single-organization path below.

Blocking checks: Dagster applies a blocking check at the end of the op that reports it, which here
is after every asset. So the engine refuses by itself: plan_step raises when the inventory does not
add up, after the inventory's failed checks were reported, and nothing is written.
"""

import warnings

import dagster as dg

from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs import batch
from golioth_assets.defs.config import SYNC_OP, SyncRunConfig
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.defs.steps import (
    CONFLICTS,
    GOLIOTH_WRITES,
    INVENTORY,
    LOCAL,
    LOCAL_WRITES,
    RECONCILIATION,
    sync_results,
)
from golioth_assets.engine import run as sync_run
from golioth_assets.store import org_lock

GROUP = "golioth_sync"
# How long a single-organization run waits for a batched run that holds the organization (its sync
# takes seconds to a minute) before it fails as busy and is retried.
LOCK_WAIT_SECONDS = 120
BACKFILL_RUN_SIZE = 100  # organizations per backfill run at most, as per batched run (sensors/schedule.py)

# `skippable`: a run over a range of organizations (a backfill's) reports each organization's
# materializations on its own partition and none for the range as a whole; without it Dagster would
# record one for every partition of the range, failed organizations included (defs/batch.py).
SPECS = [
    dg.AssetSpec(
        INVENTORY,
        group_name=GROUP,
        skippable=True,
        kinds={"golioth", "postgres"},
        description="Every Golioth device of the organization's project (or the devices a targeted sync "
        "names), stored in golioth_inventory with tags, blueprint and cohort by name.",
    ),
    dg.AssetSpec(
        LOCAL,
        group_name=GROUP,
        skippable=True,
        kinds={"postgres", "pandas"},
        description="The product's own device table (`devices`) for the organization, as the sync reads it.",
    ),
    dg.AssetSpec(
        RECONCILIATION,
        group_name=GROUP,
        skippable=True,
        kinds={"pandas", "postgres"},
        deps=[INVENTORY, LOCAL],
        description="The field-level three-way diff of local, Golioth and last-agreed state: the plan "
        "(sync_plan) and the conflicts it finds (device_conflicts).",
    ),
    dg.AssetSpec(
        GOLIOTH_WRITES,
        group_name=GROUP,
        skippable=True,
        kinds={"golioth"},
        deps=[RECONCILIATION],
        description="The plan's Golioth side: creates, PATCHes of changed fields, LightDB State, deletes.",
    ),
    dg.AssetSpec(
        LOCAL_WRITES,
        group_name=GROUP,
        skippable=True,
        kinds={"postgres"},
        deps=[GOLIOTH_WRITES],
        description="The plan's local side: device rows, links, base snapshots, audit entries.",
    ),
    dg.AssetSpec(
        CONFLICTS,
        group_name=GROUP,
        skippable=True,
        kinds={"postgres"},
        deps=[LOCAL_WRITES],
        description="Conflicts waiting for an operator (device_conflicts): resolve them with "
        "`golioth-sync conflicts resolve`, the resolve job, or the web console.",
    ),
]

# Each check is evaluated per organization (partitions_def): one partition's evaluation is its own,
# in a single run as in a run of many. Dagster marks a check's partitions_def as a preview feature
# and warns once per definition; the warning says nothing an operator can act on.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECKS = [
        dg.AssetCheckSpec(
            "inventory_ids_unique",
            asset=INVENTORY,
            blocking=True,
            partitions_def=organizations,
            description="Device ids and hardware ids are unique in the inventory.",
        ),
        dg.AssetCheckSpec(
            "inventory_accounts_for_total",
            asset=INVENTORY,
            blocking=True,
            partitions_def=organizations,
            description="Every device the API's `total` counts was served by the listing, once or (shifted) "
            "twice; linked devices the listing lacked were confirmed or found gone one by one.",
        ),
        dg.AssetCheckSpec(
            "no_failed_golioth_writes",
            asset=GOLIOTH_WRITES,
            partitions_def=organizations,
            description="Every planned Golioth write succeeded.",
        ),
        dg.AssetCheckSpec(
            "sync_converged",
            asset=LOCAL_WRITES,
            partitions_def=organizations,
            description="A fresh diff of a sample of the devices this run wrote finds nothing left to do "
            "but pending conflicts and writes the direction blocks.",
        ),
        dg.AssetCheckSpec(
            "unresolved_conflicts_below_share",
            asset=CONFLICTS,
            partitions_def=organizations,
            description="Pending conflicts stay below GOLIOTH_SYNC_CONFLICT_WARN_SHARE (default 1%) of the "
            "organization's devices.",
        ),
    ]


@dg.multi_asset(
    name=SYNC_OP,
    specs=SPECS,
    check_specs=CHECKS,
    can_subset=False,
    partitions_def=organizations,
    # A backfill of N organizations is ceil(N / 100) runs (per contiguous range of the selection),
    # not N run workers; each run syncs its organizations as a batched run's lane does.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=BACKFILL_RUN_SIZE),
    pool="golioth_api",
    description="One sync of one organization: the six steps, in order, in one op (or, in a backfill's "
    "run over a range of organizations, each organization of the range, on its own partition).",
)
def golioth_sync(context: dg.AssetExecutionContext, config: SyncRunConfig, store: DeviceStore, golioth: GoliothApi):
    store.require_schema()
    if context.has_partition_key_range:  # a backfill's run: many organizations, each its own partition
        yield from batch.sync_partition_range(context, config, store, golioth, LOCK_WAIT_SECONDS)
        return
    org = context.partition_key
    request = config.to_request(org, context.run.run_id, context.run.tags)
    try:
        # A batched run may be syncing this organization: wait for it (the lock's release ends the wait).
        with org_lock.organization_lock(store.engine, org, wait_seconds=LOCK_WAIT_SECONDS):
            yield from sync_results(
                sync_run.SyncRun(
                    store.engine,
                    store.service(org),
                    request,
                    open_client=golioth.client_for,
                    claim=context.run.tags.get(RunTag.claim),
                )
            )
    except org_lock.OrganizationBusy as exc:
        raise dg.Failure(description=str(exc), allow_retries=True) from exc


sync_assets = [golioth_sync]
