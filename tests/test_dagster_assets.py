"""The Dagster layer: real runs (materialize) against the simulator and PostgreSQL."""

import dagster as dg
import pytest

from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _materialize(h, instance, db_url, run_config=None, tags=None):
    instance.add_dynamic_partitions(organizations.name, [h.org])
    return dg.materialize(
        sync_assets,
        partition_key=h.org,
        instance=instance,
        resources={
            "store": DeviceStore(database_url=db_url.render_as_string(hide_password=False)),
            "golioth": GoliothApi(),
        },
        run_config=run_config,
        tags=tags,
    )


def _check_results(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_full_graph_imports_and_second_run_changes_nothing(make_harness, instance, db_url):
    h = make_harness(devices=300)
    first = _materialize(h, instance, db_url)
    assert first.success
    assert len(h.local()) == 300
    checks = _check_results(first)
    assert checks == {
        "inventory_ids_unique": True,
        "inventory_count_matches_total": True,
        "no_failed_golioth_writes": True,
        "sync_converged": True,
        "unresolved_conflicts_below_share": True,
    }
    meta = first.asset_materializations_for_node("device_reconciliation")[0].metadata
    assert meta["created_local"].value == 300
    assert "| device_id |" in meta["plan_preview"].value
    assert len(meta["plan_preview"].value.splitlines()) <= 24  # ~20 rows + header + note

    second = _materialize(h, instance, db_url)
    assert second.success
    meta = second.asset_materializations_for_node("device_reconciliation")[0].metadata
    assert all(meta[k].value == 0 for k in ("created_local", "updated_local", "created_remote", "updated_remote"))


def test_dry_run_from_launchpad_config_writes_nothing(make_harness, instance, db_url):
    h = make_harness(devices=10)
    result = _materialize(
        h,
        instance,
        db_url,
        run_config={"ops": {"golioth_device_inventory": {"config": {"dry_run": True, "direction": "import"}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("device_reconciliation")[0].metadata
    assert meta["dry_run"].value is True and meta["created_local"].value == 10
    assert h.local().empty


def test_bad_api_key_fails_fast_and_logs_why(make_harness, instance, db_url, monkeypatch):
    h = make_harness(devices=5)
    monkeypatch.setenv(h.service.api_key_env, "definitely-not-the-key")
    result = (
        dg.materialize(
            sync_assets,
            partition_key=h.org,
            instance=instance,
            resources={
                "store": DeviceStore(database_url=db_url.render_as_string(hide_password=False)),
                "golioth": GoliothApi(),
            },
            raise_on_error=False,
        )
        if instance.add_dynamic_partitions(organizations.name, [h.org]) is None
        else None
    )
    assert not result.success
    with h.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT status, error FROM golioth_sync_log WHERE organization_id = %(o)s", {"o": h.org}
        ).one()
    assert row[0] == "failed" and "rejected the API key" in row[1]
    assert "definitely-not-the-key" not in row[1]
    assert h.local().empty
