"""What each step of one organization's sync reports to Dagster: the six assets' keys, and
`sync_results`, the step-by-step MaterializeResults (metadata and check results) of a SyncRun.

The single-organization op (defs/assets.py) yields them as they are; a run of many organizations
(defs/batch.py: a batched run, or a backfill's run over a range of partitions) turns each one into
that organization's partition events."""

import os
import time
from collections.abc import Iterator

import dagster as dg

from golioth_assets.core.plan import CHANGE_COLUMNS
from golioth_assets.core.tables import changes_table, conflicts_table
from golioth_assets.defs.metadata import (
    conflicts_summary,
    counts,
    duration,
    golioth_writes_summary,
    inventory_summary,
    local_devices_summary,
    local_writes_summary,
    plan_summary,
    preview,
    summary,
)
from golioth_assets.engine import run as sync_run
from golioth_assets.store.conflicts import PENDING_COLUMNS
from golioth_assets.store.local_table.table import PREVIEW_COLUMNS as DEVICE_COLUMNS

# What a preview of plan rows shows: core's columns, without the bookkeeping ones, plus the status
# a write got.
PLAN_PREVIEW = [c for c in CHANGE_COLUMNS if c not in ("reason", "blocked", "conflict_id", "changed_by")] + ["status"]
PLAN_PREVIEW.insert(PLAN_PREVIEW.index("field") + 1, "local_column")  # the product table's own column
DEVICE_PREVIEW = [c for c in DEVICE_COLUMNS if c != "device_id"]

INVENTORY = dg.AssetKey("golioth_device_inventory")
LOCAL = dg.AssetKey("local_devices")
RECONCILIATION = dg.AssetKey("device_reconciliation")
GOLIOTH_WRITES = dg.AssetKey("golioth_device_writes")
LOCAL_WRITES = dg.AssetKey("local_device_writes")
CONFLICTS = dg.AssetKey("device_conflicts")


def sync_results(run: sync_run.SyncRun) -> Iterator[dg.MaterializeResult]:
    """One organization's sync, step by step: each asset's MaterializeResult (with its checks) as
    soon as its step is done. The single-organization op yields them; a batched run turns them into
    that organization's partition events (defs/batch.py)."""
    with run:
        started = time.perf_counter()
        yield _inventory(run.fetch(), started)
        started = time.perf_counter()
        yield _local_devices(run.local_devices(), started)
        started = time.perf_counter()
        yield _reconciliation(run, run.plan(), started)
        started = time.perf_counter()
        yield _golioth_writes(run, run.write_golioth(), started)
        started = time.perf_counter()
        written = run.write_local()
        left, usage = run.writes_left()
        yield _local_writes(written, left, usage, run.finish(), started)
        started = time.perf_counter()
        yield _conflicts(run.pending_conflicts(), started)


def _inventory(fetched: sync_run.Fetched, started: float) -> dg.MaterializeResult:
    count = fetched.result.count
    used = fetched.usage.stats
    line = inventory_summary(
        fetched.result.fetched, targeted=count.api_total is None, requests=used.requests, retries=used.retries
    )
    return dg.MaterializeResult(
        asset_key=INVENTORY,
        metadata={
            **summary(line),
            "duration_seconds": duration(started),
            "devices": dg.MetadataValue.int(fetched.result.fetched),
            "targeted": dg.MetadataValue.bool(count.api_total is None),
            **counts(
                {
                    "api_total": count.api_total,  # as the API reported it (a targeted sync has none)
                    "requested": count.requested,
                    "listed": count.listed,
                    "duplicates_served": count.duplicates,
                    "relistings": count.relistings,
                    "confirmed_by_get": count.confirmed,
                    "confirmed_gone": count.gone,
                }
            ),
            **counts(fetched.usage.stats.as_metadata()),
            "preview": preview(fetched.preview, DEVICE_PREVIEW),
        },
        check_results=[
            dg.AssetCheckResult(
                asset_key=INVENTORY,
                check_name="inventory_ids_unique",
                passed=count.ids_unique,
                metadata={"duplicate_ids": count.duplicate_ids, "duplicate_hardware_ids": count.duplicate_hardware_ids},
            ),
            dg.AssetCheckResult(
                asset_key=INVENTORY,
                check_name="inventory_accounts_for_total",
                passed=count.accounts_for_total,
                metadata={
                    "api_total": count.api_total if count.api_total is not None else -1,
                    "listed": count.listed,
                    "duplicates_served": count.duplicates,
                    "confirmed_by_get": count.confirmed,
                    "confirmed_gone": count.gone,
                },
            ),
        ],
    )


def _local_devices(local: sync_run.LocalDevices, started: float) -> dg.MaterializeResult:
    table = preview(local.preview, DEVICE_PREVIEW).value
    if local.live > len(local.preview):
        table += f"\n\n_…and {local.live - len(local.preview)} more rows (see the table in PostgreSQL)_"
    return dg.MaterializeResult(
        asset_key=LOCAL,
        metadata={
            **summary(local_devices_summary(local.live, local.soft_deleted)),
            "duration_seconds": duration(started),
            "devices": dg.MetadataValue.int(local.live),
            "soft_deleted": dg.MetadataValue.int(local.soft_deleted),
            "preview": dg.MetadataValue.md(table),
        },
    )


def _reconciliation(run: sync_run.SyncRun, plan, started: float) -> dg.MaterializeResult:
    changes = changes_table(plan)
    planned = plan.counts()
    return dg.MaterializeResult(
        asset_key=RECONCILIATION,
        metadata={
            **summary(plan_summary(planned, dry_run=run.request.dry_run)),
            "duration_seconds": duration(started),
            "sync_log_id": dg.MetadataValue.int(run.sync_log_id),
            "dry_run": dg.MetadataValue.bool(run.request.dry_run),
            "direction": dg.MetadataValue.text(run.request.direction or run.service.direction),
            **counts(planned),
            "plan_preview": preview(run.with_local_columns(changes[changes["action"] != "agree"]), PLAN_PREVIEW),
            "conflicts_preview": preview(
                run.with_local_columns(conflicts_table(plan)),
                [
                    "device_id",
                    "golioth_device_id",
                    "field",
                    "local_column",
                    "conflict_type",
                    "local_value",
                    "remote_value",
                ],
            ),
        },
    )


def _golioth_writes(run: sync_run.SyncRun, writes: sync_run.GoliothWrites, started: float) -> dg.MaterializeResult:
    failures = int(writes.counts.get("failures", 0))
    return dg.MaterializeResult(
        asset_key=GOLIOTH_WRITES,
        metadata={
            **summary(golioth_writes_summary(writes.counts, dry_run=run.request.dry_run)),
            "duration_seconds": duration(started),
            "dry_run": dg.MetadataValue.bool(run.request.dry_run),
            **counts(writes.counts),
            **counts(writes.usage.stats.as_metadata()),
            "preview": preview(writes.applied, PLAN_PREVIEW),
        },
        check_results=[
            dg.AssetCheckResult(
                asset_key=GOLIOTH_WRITES,
                check_name="no_failed_golioth_writes",
                passed=failures == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"failures": failures},
            )
        ],
    )


def _local_writes(
    written: sync_run.LocalWrites, left: int, usage: sync_run.Usage, finished: sync_run.Finished, started: float
) -> dg.MaterializeResult:
    row = finished.row
    return dg.MaterializeResult(
        asset_key=LOCAL_WRITES,
        metadata={
            **summary(local_writes_summary(written.counts, status=finished.status, dry_run=bool(row["dry_run"]))),
            "duration_seconds": duration(started),
            "sync_log_id": dg.MetadataValue.int(row["id"]),
            "status": dg.MetadataValue.text(finished.status),
            **counts(written.counts),
            # The convergence check's own requests, then the run's totals (every step's, as logged).
            **counts(usage.stats.as_metadata()),
            "run_api_requests": dg.MetadataValue.int(int(row["api_requests"])),
            "run_api_retries": dg.MetadataValue.int(int(row["api_retries"])),
            "preview": preview(written.applied, PLAN_PREVIEW),
        },
        check_results=[
            dg.AssetCheckResult(
                asset_key=LOCAL_WRITES, check_name="sync_converged", passed=left == 0, metadata={"writes_left": left}
            )
        ],
    )


def _conflicts(found: sync_run.Conflicts, started: float) -> dg.MaterializeResult:
    share_limit = float(os.environ.get("GOLIOTH_SYNC_CONFLICT_WARN_SHARE", "0.01"))
    share = found.pending / found.devices if found.devices else 0.0
    return dg.MaterializeResult(
        asset_key=CONFLICTS,
        metadata={
            **summary(conflicts_summary(found.pending, found.devices)),
            "duration_seconds": duration(started),
            "pending_conflicts": dg.MetadataValue.int(found.pending),
            "share_of_devices": dg.MetadataValue.float(round(share, 4)),
            "preview": preview(found.preview, [*PENDING_COLUMNS[:4], "local_column", *PENDING_COLUMNS[4:]]),
        },
        check_results=[
            dg.AssetCheckResult(
                asset_key=CONFLICTS,
                check_name="unresolved_conflicts_below_share",
                passed=share <= share_limit,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"share": round(share, 4), "limit": share_limit},
            )
        ],
    )
