"""The sync as a Dagster asset graph, one partition per organization.

    golioth_device_inventory ─┐
                              ├─► device_reconciliation ─► golioth_device_writes ─► local_device_writes ─► device_conflicts
    local_devices ────────────┘

Each asset is a thin call into golioth_assets.engine; data flows between them through our PostgreSQL
tables (golioth_inventory, sync_plan, device_conflicts), so steps can run in separate processes.
The run's golioth_sync_log row ties the steps of one Dagster run together.
"""

import os
import time

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs.config import SyncRunConfig
from golioth_assets.defs.metadata import PREVIEW_ROWS, counts, duration, markdown_table, preview
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.engine import sync as engine
from golioth_assets.store import sync_log, webhook_events
from golioth_assets.store.local_table.connect import open_local_table

GROUP = "golioth_sync"
CHANGE_COLUMNS = ["device_id", "golioth_device_id", "field", "action", "side", "old_value", "new_value", "status"]


def _run_row(context: dg.AssetExecutionContext, store: DeviceStore) -> dict:
    """This Dagster run's log row (opened by the inventory step, or here if it was not in the run)."""
    db = store.engine()
    with db.connect() as conn:
        row = sync_log.latest_run(conn, context.partition_key, dagster_run_id=context.run.run_id)
    if row is None:
        service = store.service(context.partition_key)
        request = engine.SyncRequest(context.partition_key, dagster_run_id=context.run.run_id, trigger="manual")
        sync_log_id = engine.begin(db, service, request)
        with db.connect() as conn:
            row = sync_log.get_run(conn, sync_log_id)
    return row


@dg.asset(
    partitions_def=organizations,
    group_name=GROUP,
    kinds={"golioth", "postgres"},
    pool="golioth_api",
    description="Every Golioth device of the organization's project (or the devices a targeted sync "
    "names), stored in golioth_inventory with tags, blueprint and cohort by name.",
    check_specs=[
        dg.AssetCheckSpec(
            "inventory_ids_unique",
            asset="golioth_device_inventory",
            blocking=True,
            description="Device ids and hardware ids are unique in the inventory.",
        ),
        dg.AssetCheckSpec(
            "inventory_count_matches_total",
            asset="golioth_device_inventory",
            blocking=True,
            description="The number of devices fetched equals the API's `total`.",
        ),
    ],
)
def golioth_device_inventory(
    context: dg.AssetExecutionContext, config: SyncRunConfig, store: DeviceStore, golioth: GoliothApi
):
    started = time.perf_counter()
    org = context.partition_key
    db = store.migrated_engine()
    service = store.service(org)
    request = config.to_request(org, context.run.run_id, context.run.tags)
    sync_log_id = engine.begin(db, service, request)
    scope = engine.resolve_scope(db, service, request.device_ids)
    try:
        with golioth.client_for(service) as client:
            fetched = engine.fetch_step(db, service, client, scope, sync_log_id)
            stats = client.stats.as_metadata()
    except Exception as exc:
        engine.finish(db, sync_log_id, error=str(exc))
        raise

    with db.connect() as conn:
        dupes = conn.execute(
            sa.text(
                """
                SELECT (SELECT count(*) - count(DISTINCT golioth_device_id) FROM golioth_inventory WHERE organization_id = :o),
                       (SELECT count(*) - count(DISTINCT hw) FROM golioth_inventory, unnest(hardware_ids) hw WHERE organization_id = :o)
                """
            ),
            {"o": org},
        ).one()
        sample = pd.DataFrame(
            conn.execute(
                sa.text(
                    "SELECT golioth_device_id, name, hardware_ids, tags, blueprint, cohort, enabled, status "
                    "FROM golioth_inventory WHERE organization_id = :o ORDER BY name LIMIT 20"
                ),
                {"o": org},
            )
            .mappings()
            .all()
        )
    count_ok = fetched.total is None or fetched.total == fetched.fetched - len(scope.golioth_ids or [])
    yield dg.MaterializeResult(
        metadata={
            "duration_seconds": duration(started),
            "sync_log_id": dg.MetadataValue.int(sync_log_id),
            "devices": dg.MetadataValue.int(fetched.fetched),
            "api_total": dg.MetadataValue.int(fetched.total if fetched.total is not None else fetched.fetched),
            "targeted": dg.MetadataValue.bool(not scope.full),
            "missing_in_golioth": dg.MetadataValue.int(len(fetched.missing)),
            **counts(stats),
            "preview": preview(sample, ["name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "status"]),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="inventory_ids_unique",
                passed=bool(dupes[0] == 0 and dupes[1] == 0),
                metadata={"duplicate_ids": int(dupes[0]), "duplicate_hardware_ids": int(dupes[1])},
            ),
            dg.AssetCheckResult(
                check_name="inventory_count_matches_total",
                passed=bool(count_ok),
                metadata={"fetched": fetched.fetched, "api_total": fetched.total if fetched.total is not None else -1},
            ),
        ],
    )


@dg.asset(
    partitions_def=organizations,
    group_name=GROUP,
    kinds={"postgres", "pandas"},
    description="The organization's local device table (the product's own, or the built-in `devices`), "
    "as the sync reads it.",
)
def local_devices(context: dg.AssetExecutionContext, store: DeviceStore) -> dg.MaterializeResult:
    started = time.perf_counter()
    db = store.migrated_engine()
    org = context.partition_key
    # Counts and a preview only: the reconciliation loads the devices itself (from PostgreSQL, maybe
    # in another process), so loading all of them here (seconds at 100k) would be for nothing.
    side = open_local_table(db, store.service(org))
    with side.engine.connect() as conn:
        counted = side.table.count_by_state(conn)
        shown = side.table.preview(conn, PREVIEW_ROWS)
    live, soft_deleted = counted["live"], counted["deleted"]
    shown_columns = ["name", "hardware_ids", "tags", "blueprint", "cohort", "enabled", "status"]
    table = markdown_table(shown, [c for c in shown_columns if c in shown])
    if live > len(shown):
        table += f"\n\n_…and {live - len(shown)} more rows (see the table in PostgreSQL)_"
    return dg.MaterializeResult(
        metadata={
            "duration_seconds": duration(started),
            "devices": dg.MetadataValue.int(live),
            "soft_deleted": dg.MetadataValue.int(soft_deleted),
            "preview": dg.MetadataValue.md(table),
        }
    )


@dg.asset(
    partitions_def=organizations,
    group_name=GROUP,
    kinds={"pandas", "postgres"},
    deps=[golioth_device_inventory, local_devices],
    description="The field-level three-way diff of local, Golioth and last-agreed state: the plan "
    "(sync_plan) and the conflicts it finds (device_conflicts).",
)
def device_reconciliation(context: dg.AssetExecutionContext, store: DeviceStore) -> dg.MaterializeResult:
    started = time.perf_counter()
    db = store.engine()
    run = _run_row(context, store)
    service = store.service(context.partition_key)
    request = engine.request_of(run)
    scope = engine.resolve_scope(db, service, request.device_ids)
    plan = engine.plan_step(db, service, request, scope, run["id"])
    from golioth_assets.core.tables import changes_table, conflicts_table

    changes = changes_table(plan)
    visible = changes[changes["action"] != "agree"]
    return dg.MaterializeResult(
        metadata={
            "duration_seconds": duration(started),
            "sync_log_id": dg.MetadataValue.int(run["id"]),
            "dry_run": dg.MetadataValue.bool(request.dry_run),
            "direction": dg.MetadataValue.text(run["direction"]),
            **counts(plan.counts()),
            "plan_preview": preview(visible, CHANGE_COLUMNS),
            "conflicts_preview": preview(
                conflicts_table(plan),
                ["device_id", "golioth_device_id", "field", "conflict_type", "local_value", "remote_value"],
            ),
        }
    )


def _applied_preview(db, sync_log_id: int, side: str) -> dg.MarkdownMetadataValue:
    with db.connect() as conn:
        plan = sync_log.load_plan(conn, sync_log_id, side=side)
    return preview(plan[plan["action"] != "agree"], CHANGE_COLUMNS)


@dg.asset(
    partitions_def=organizations,
    group_name=GROUP,
    kinds={"golioth"},
    pool="golioth_api",
    deps=[device_reconciliation],
    description="The plan's Golioth side: creates, PATCHes of changed fields, LightDB State, deletes.",
    check_specs=[
        dg.AssetCheckSpec(
            "no_failed_golioth_writes",
            asset="golioth_device_writes",
            description="Every planned Golioth write succeeded.",
        ),
    ],
)
def golioth_device_writes(context: dg.AssetExecutionContext, store: DeviceStore, golioth: GoliothApi):
    started = time.perf_counter()
    db = store.engine()
    run = _run_row(context, store)
    service = store.service(context.partition_key)
    if engine.request_of(run).dry_run:
        yield dg.MaterializeResult(
            metadata={"dry_run": True, "written": 0, "duration_seconds": duration(started)},
            check_results=[dg.AssetCheckResult(check_name="no_failed_golioth_writes", passed=True)],
        )
        return
    with golioth.client_for(service) as client:
        try:
            outcome = engine.remote_step(db, service, client, run["id"])
        except engine.SyncFailed as exc:
            engine.finish(db, run["id"], error=str(exc))
            raise
        stats = client.stats.as_metadata()
    yield dg.MaterializeResult(
        metadata={
            "duration_seconds": duration(started),
            "sync_log_id": dg.MetadataValue.int(run["id"]),
            **counts(outcome.counts),
            **counts(stats),
            "preview": _applied_preview(db, run["id"], "remote"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_failed_golioth_writes",
                passed=outcome.counts["failures"] == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"failures": outcome.counts["failures"]},
            )
        ],
    )


@dg.asset(
    partitions_def=organizations,
    group_name=GROUP,
    kinds={"postgres"},
    deps=[golioth_device_writes],
    description="The plan's local side: device rows, links, base snapshots, audit entries.",
    check_specs=[
        dg.AssetCheckSpec(
            "sync_converged",
            asset="local_device_writes",
            description="A fresh diff of the devices this run wrote finds nothing left to do "
            "but pending conflicts and writes the direction blocks.",
        ),
    ],
)
def local_device_writes(context: dg.AssetExecutionContext, store: DeviceStore, golioth: GoliothApi):
    started = time.perf_counter()
    db = store.engine()
    run = _run_row(context, store)
    service = store.service(context.partition_key)
    request = engine.request_of(run)
    if not request.dry_run:
        outcome = engine.local_step(db, service, run["id"])
        written = outcome.counts
    else:
        written = {}
    status = engine.finish(db, run["id"])
    claim = context.run.tags.get(RunTag.claim)
    if claim:
        with db.begin() as conn:
            webhook_events.mark_processed(conn, claim)
    left = 0 if request.dry_run else _left_to_do(db, service, run["id"], golioth)
    yield dg.MaterializeResult(
        metadata={
            "duration_seconds": duration(started),
            "sync_log_id": dg.MetadataValue.int(run["id"]),
            "status": dg.MetadataValue.text(status),
            **counts(written),
            "preview": _applied_preview(db, run["id"], "local"),
        },
        check_results=[
            dg.AssetCheckResult(check_name="sync_converged", passed=left == 0, metadata={"writes_left": left})
        ],
    )


CONVERGENCE_PER_KIND = 10  # devices re-checked per kind of write (side, action, field)
CONVERGENCE_SAMPLE = 200  # and at most this many in all


def _left_to_do(db, service, sync_log_id: int, golioth: GoliothApi) -> int:
    """Diff again a sample of the devices this run wrote: up to CONVERGENCE_PER_KIND of each kind of
    write (side, action, field), so every kind is covered however large the run.

    Devices the run wrote in Golioth are re-read from it. Devices it wrote only locally are diffed
    against the inventory this very run fetched, which their writes were planned from: re-reading
    them from Golioth (a GET and a state GET each) would only cost requests. A sample, not every
    device: the check is there to catch a kind of write that does not converge (a field that
    doesn't round-trip), and failed writes have their own check."""
    with db.connect() as conn:
        plan = sync_log.load_plan(conn, sync_log_id)
    touched = plan[(plan["status"] == "applied") & plan["action"].isin(["create", "update", "delete"])]
    if touched.empty:
        return 0
    touched = touched.assign(key=touched["device_id"].where(touched["device_id"].notna(), touched["golioth_device_id"]))
    sample: dict[str, None] = {}
    for _, rows in touched.groupby(["side", "action", touched["field"].fillna("")], sort=True):
        sample.update(dict.fromkeys(sorted(set(rows["key"]))[:CONVERGENCE_PER_KIND]))
    picked = touched[touched["key"].isin(list(sample)[:CONVERGENCE_SAMPLE])]

    def ids_of(rows) -> list[str]:
        return sorted(set(rows["golioth_device_id"].dropna()) | set(rows["device_id"].dropna()))

    ids = ids_of(picked)
    request = engine.SyncRequest(service.organization_id, device_ids=ids, dry_run=True)
    scope = engine.resolve_scope(db, service, ids)
    written_in_golioth = ids_of(picked[picked["side"] == "remote"])
    if written_in_golioth:
        with golioth.client_for(service) as client:
            engine.fetch_step(db, service, client, engine.resolve_scope(db, service, written_in_golioth))
    fresh, _ = engine.build_plan(db, service, request, scope)
    return len(fresh.writes())


@dg.asset(
    partitions_def=organizations,
    group_name=GROUP,
    kinds={"postgres"},
    deps=[local_device_writes],
    description="Conflicts waiting for an operator (device_conflicts): resolve them with "
    "`golioth-sync conflicts resolve`, the resolve job, or the web console.",
    check_specs=[
        dg.AssetCheckSpec(
            "unresolved_conflicts_below_share",
            asset="device_conflicts",
            description="Pending conflicts stay below GOLIOTH_SYNC_CONFLICT_WARN_SHARE "
            "(default 1%) of the organization's devices.",
        ),
    ],
)
def device_conflicts(context: dg.AssetExecutionContext, store: DeviceStore):
    started = time.perf_counter()
    db = store.engine()
    org = context.partition_key
    with db.connect() as conn:
        pending = pd.DataFrame(
            conn.execute(
                sa.text(
                    "SELECT id, device_id::text, golioth_device_id, field, conflict_type, local_value, remote_value, "
                    "detected_at FROM device_conflicts WHERE organization_id = :o AND status = 'pending' "
                    "ORDER BY detected_at DESC"
                ),
                {"o": org},
            )
            .mappings()
            .all()
        )
        total = local_device_count(db, store.service(org))
    share_limit = float(os.environ.get("GOLIOTH_SYNC_CONFLICT_WARN_SHARE", "0.01"))
    share = len(pending) / total if total else 0.0
    yield dg.MaterializeResult(
        metadata={
            "duration_seconds": duration(started),
            "pending_conflicts": dg.MetadataValue.int(len(pending)),
            "share_of_devices": dg.MetadataValue.float(round(share, 4)),
            "preview": preview(
                pending,
                ["id", "device_id", "golioth_device_id", "field", "conflict_type", "local_value", "remote_value"],
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="unresolved_conflicts_below_share",
                passed=share <= share_limit,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"share": round(share, 4), "limit": share_limit},
            )
        ],
    )


sync_assets = [
    golioth_device_inventory,
    local_devices,
    device_reconciliation,
    golioth_device_writes,
    local_device_writes,
    device_conflicts,
]


def local_device_count(db, service) -> int:
    side = open_local_table(db, service)
    with side.engine.connect() as conn:
        return side.table.count_by_state(conn)["live"]
