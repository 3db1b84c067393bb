"""Each asset's one-line summary of what its latest materialization changed (defs/metadata.py):
the pure functions over the counts, and the lines a real Dagster run records, first in each
asset's metadata (the Dagster UI lists metadata in order)."""

import re

import dagster as dg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from golioth_assets.core.vocabulary import Side
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.metadata import (
    SUMMARY,
    change_counts,
    conflicts_summary,
    golioth_writes_summary,
    inventory_summary,
    local_devices_summary,
    local_writes_summary,
    plan_summary,
)
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from tests.fixtures.changes import EXPECTED_SUMMARIES, edit_both_sides

PLAN = {
    "created_local": 12,
    "updated_local": 40,
    "deleted_local": 0,
    "observed_local": 0,
    "created_remote": 0,
    "updated_remote": 3,
    "deleted_remote": 1,
    "conflicts": 3,
    "blocked": 0,
}


def test_the_plan_reads_as_one_line():
    assert plan_summary(PLAN, dry_run=False) == "+12 / ~40 / −0 local, +0 / ~3 / −1 Golioth; 3 conflicts"
    assert plan_summary({**PLAN, "conflicts": 1, "blocked": 2, "observed_local": 5}, dry_run=True) == (
        "dry run, planned +12 / ~40 / −0 local (5 observed), +0 / ~3 / −1 Golioth; 1 conflict; 2 blocked writes"
    )
    assert plan_summary({}, dry_run=False) == "+0 / ~0 / −0 local, +0 / ~0 / −0 Golioth; 0 conflicts"


def test_writes_say_what_was_applied_and_what_failed():
    assert golioth_writes_summary({"created_remote": 1, "updated_remote": 2, "failures": 0}, dry_run=False) == (
        "+1 / ~2 / −0 Golioth"
    )
    assert golioth_writes_summary({"updated_remote": 2, "failures": 1, "skipped": 3}, dry_run=False) == (
        "+0 / ~2 / −0 Golioth; 1 failed write; 3 skipped writes"
    )
    assert golioth_writes_summary({}, dry_run=True) == "dry run: nothing written to Golioth"
    assert local_writes_summary({"updated_local": 3, "observed_local": 7}, status="partial", dry_run=False) == (
        "+0 / ~3 / −0 local, 7 observed; run partial"
    )
    assert local_writes_summary({}, status="success", dry_run=True) == "dry run: nothing written locally; run success"


def test_inventory_local_devices_and_conflicts():
    assert inventory_summary(10_000, targeted=False, requests=104, retries=0) == "10,000 devices listed; 104 requests"
    assert inventory_summary(1, targeted=True, requests=1, retries=2) == "1 device (targeted); 1 request, 2 retries"
    assert local_devices_summary(10_000, 0) == "10,000 devices"
    assert local_devices_summary(3, 2) == "3 devices, 2 soft-deleted"
    assert conflicts_summary(0, 100) == "no pending conflicts"
    assert conflicts_summary(3, 10_000) == "3 pending conflicts (0.03% of 10,000 devices)"
    assert conflicts_summary(2, 0) == "2 pending conflicts"


counts_strategy = st.integers(min_value=0, max_value=10**7)


@given(
    created=counts_strategy,
    updated=counts_strategy,
    deleted=counts_strategy,
    side=st.sampled_from([Side.local, Side.remote]),
)
def test_the_counts_can_be_read_back_from_the_line(created, updated, deleted, side):
    line = change_counts({f"created_{side}": created, f"updated_{side}": updated, f"deleted_{side}": deleted}, side)
    numbers = [int(n.replace(",", "")) for n in re.findall(r"[+~−]([\d,]+)", line)]
    assert numbers == [created, updated, deleted]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_a_run_puts_each_assets_summary_first(make_harness, instance, db_url):
    h = make_harness(devices=25)
    edit_both_sides(h)
    instance.add_dynamic_partitions(organizations.name, [h.org])
    url = db_url.render_as_string(hide_password=False)
    result = dg.materialize(
        sync_assets,
        partition_key=h.org,
        instance=instance,
        resources={"store": DeviceStore(database_url=url), "golioth": GoliothApi()},
    )
    assert result.success
    lines = {}
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        assert next(iter(metadata)) == SUMMARY, f"{event.asset_key}: summary is not the first entry"
        lines[event.asset_key.to_user_string()] = metadata[SUMMARY].value
    assert lines.keys() == EXPECTED_SUMMARIES.keys()
    for asset, expected in EXPECTED_SUMMARIES.items():
        assert lines[asset].startswith(expected), (asset, lines[asset])
