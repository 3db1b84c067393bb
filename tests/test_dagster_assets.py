"""The Dagster layer: real runs (materialize) against the simulator and PostgreSQL."""

import dagster as dg
import pytest
import sqlalchemy as sa

from golioth_assets.defs.assets import CHECKS, golioth_sync, sync_assets
from golioth_assets.defs.config import sync_run_config
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from golioth_assets.store import database, migrate
from tests.fixtures.database import drop_database, fresh_database
from tests.fixtures.faults import check_results, metadata

SIX = [
    "golioth_device_inventory",
    "local_devices",
    "device_reconciliation",
    "golioth_device_writes",
    "local_device_writes",
    "device_conflicts",
]


def _resources(db_url) -> dict:
    url = db_url if isinstance(db_url, str) else db_url.render_as_string(hide_password=False)
    return {"store": DeviceStore(database_url=url), "golioth": GoliothApi()}


def _materialize(h, instance, db_url, run_config=None, tags=None, **kwargs):
    instance.add_dynamic_partitions(organizations.name, [h.org])
    return dg.materialize(
        sync_assets,
        partition_key=h.org,
        instance=instance,
        resources=_resources(db_url),
        run_config=run_config,
        tags=tags,
        **kwargs,
    )


def _steps(instance, run_id) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return [r.event_log_entry.step_key for r in records]


def test_full_graph_imports_and_second_run_changes_nothing(make_harness, instance, db_url):
    h = make_harness(devices=300)
    first = _materialize(h, instance, db_url)
    assert first.success
    assert len(h.local()) == 300
    assert check_results(first) == {
        "inventory_ids_unique": True,
        "inventory_accounts_for_total": True,
        "no_failed_golioth_writes": True,
        "sync_converged": True,
        "unresolved_conflicts_below_share": True,
    }
    # Six assets, materialized in the chain's order, by one step.
    assert [e.asset_key.to_user_string() for e in first.get_asset_materialization_events()] == SIX
    assert _steps(instance, first.run_id) == ["golioth_sync"]
    meta = metadata(first, "device_reconciliation")
    assert meta["created_local"] == 300
    assert "| device_id |" in meta["plan_preview"]
    assert len(meta["plan_preview"].splitlines()) <= 24  # ~20 rows + header + note
    inventory = metadata(first, "golioth_device_inventory")
    assert (inventory["api_total"], inventory["listed"], inventory["confirmed_by_get"]) == (300, 300, 0)

    second = _materialize(h, instance, db_url)
    assert second.success
    meta = metadata(second, "device_reconciliation")
    assert all(meta[k] == 0 for k in ("created_local", "updated_local", "created_remote", "updated_remote"))


def test_dry_run_from_launchpad_config_writes_nothing(make_harness, instance, db_url):
    h = make_harness(devices=10)
    result = _materialize(h, instance, db_url, run_config=sync_run_config(dry_run=True, direction="import"))
    assert result.success
    meta = metadata(result, "device_reconciliation")
    assert meta["dry_run"] is True and meta["created_local"] == 10
    assert metadata(result, "golioth_device_writes")["dry_run"] is True
    assert h.local().empty


def test_bad_api_key_fails_fast_and_logs_why(make_harness, instance, db_url, monkeypatch):
    h = make_harness(devices=5)
    monkeypatch.setenv(h.service.api_key_env, "definitely-not-the-key")
    result = _materialize(h, instance, db_url, raise_on_error=False)
    assert not result.success
    with h.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT status, error, finished_at FROM golioth_sync_log WHERE organization_id = %(o)s", {"o": h.org}
        ).one()
    assert row[0] == "failed" and "rejected the API key" in row[1] and row[2] is not None
    assert "definitely-not-the-key" not in row[1]
    assert h.local().empty


def test_a_subset_of_the_six_steps_is_refused_before_anything_runs(make_harness, instance, db_url):
    """Materializing one asset alone used to open a "manual" sync-log row and run a step out of
    order. The six are one non-subsettable multi-asset now: Dagster refuses the selection."""
    h = make_harness(devices=3)
    for selection in (["local_devices"], ["golioth_device_writes", "local_device_writes"]):
        with pytest.raises(dg.DagsterInvalidDefinitionError) as info:
            _materialize(h, instance, db_url, selection=selection)
        assert "does not support subsetting" in str(info.value.__cause__)
    with h.engine.connect() as conn:
        runs = conn.exec_driver_sql("SELECT count(*) FROM golioth_sync_log WHERE organization_id = %(o)s", {"o": h.org})
        assert runs.scalar_one() == 0
    assert instance.get_runs() == []


def test_lineage_kinds_and_checks_are_those_of_six_assets():
    graph = dg.Definitions(assets=sync_assets, resources=_resources("postgresql://unused/none")).resolve_asset_graph()
    parents = {
        key.to_user_string(): sorted(p.to_user_string() for p in graph.get(key).parent_keys)
        for key in graph.get_all_asset_keys()
    }
    assert parents == {
        "golioth_device_inventory": [],
        "local_devices": [],
        "device_reconciliation": ["golioth_device_inventory", "local_devices"],
        "golioth_device_writes": ["device_reconciliation"],
        "local_device_writes": ["golioth_device_writes"],
        "device_conflicts": ["local_device_writes"],
    }
    specs = {s.key.to_user_string(): s for s in golioth_sync.specs}
    assert specs["golioth_device_inventory"].kinds == {"golioth", "postgres"}
    assert {s.group_name for s in specs.values()} == {"golioth_sync"}
    assert not golioth_sync.can_subset and golioth_sync.op.pool == "golioth_api"
    assert {c.name for c in CHECKS if c.blocking} == {"inventory_ids_unique", "inventory_accounts_for_total"}


def test_a_run_against_an_unmigrated_database_fails_with_one_line_and_migrates_nothing(make_harness, instance, db_url):
    h = make_harness(devices=2)
    empty = fresh_database(db_url)
    try:
        result = _materialize(h, instance, empty.render_as_string(hide_password=False), raise_on_error=False)
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        line = failure.step_failure_data.user_failure_data.description
        assert line.startswith("the golioth-sync database is at schema revision none, this code needs")
        assert line.endswith("run `golioth-sync db upgrade`") and "\n" not in line
        # A run never migrates: the database is as empty as before.
        assert migrate.current_revision(database.engine_for(empty)) is None
        with database.engine_for(empty).connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one() == 0
    finally:
        database.engine_for(empty).dispose()
        drop_database(empty)


def test_the_store_names_its_database_variable_and_reads_it_when_used(db_url, monkeypatch):
    """definitions.py reads no environment at load time: the store's config holds the variable's
    name, which Dagster shows; the URL (and its password) is read when a run or tick uses it."""
    from golioth_assets.definitions import defs, store

    assert (store.database_url_env, store.database_url) == ("DATABASE_URL", None)
    assert defs.resources["store"] is store
    url = db_url.render_as_string(hide_password=False)
    monkeypatch.setenv("GS_TEST_OTHER_DATABASE_URL", url)
    other = DeviceStore(database_url_env="GS_TEST_OTHER_DATABASE_URL")
    assert other.engine.url.database == db_url.database
    assert url not in repr(other) and "GS_TEST_OTHER_DATABASE_URL" in repr(other)
