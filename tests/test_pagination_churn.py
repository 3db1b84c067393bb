"""Issue 16: offset pagination under churn. Devices are created, deleted and renamed while a full
sync pages through Golioth's device list (the simulator's churn control, simulator/churn.py), and
the sync runs through Dagster, blocking checks included.

Every case: the first sync under churn succeeds; a second sync (no churn) finishes the work the
first could not see; a third makes no write at all. Throughout, no live device is deleted or
unlinked, each device deleted in Golioth is handled per the delete setting, and each device created
in Golioth is imported once.
"""

import dagster as dg
import pytest

from tests.fixtures.faults import WRITE_COUNTS, check_results, materialize, metadata

DEVICES = 350  # four pages of 100: "page 2" means pages 0 and 1 were read


def _sync(h, instance, db_url) -> dg.ExecuteInProcessResult:
    result = materialize(h, instance, db_url)
    assert result.success
    assert all(check_results(result).values()), check_results(result)
    return result


def _churn_sync(h, instance, db_url, *steps: dict, devices: int = DEVICES) -> tuple[dg.ExecuteInProcessResult, dict]:
    """Import, then one sync with the churn steps armed; returns that run and what the churn did."""
    assert h.sync().counts["created_local"] == devices
    control, project = h.project.control, h.project.project_id
    control.set_churn(project, *steps)
    first = _sync(h, instance, db_url)  # the first sync under churn succeeds
    report = control.churn(project)
    control.clear_churn(project)
    assert len(report["done"]) == len(steps), report  # every step fired during this sync
    return first, report


def _converge(h, instance, db_url, report: dict, *, allow_deletes: bool) -> None:
    """A second sync finishes the work, a third writes nothing; then the invariants."""
    _sync(h, instance, db_url)
    third = metadata(_sync(h, instance, db_url), "device_reconciliation")
    assert {k: third[k] for k in WRITE_COUNTS} == dict.fromkeys(WRITE_COUNTS, 0), third
    deleted = {gid for d in report["done"] for gid in d["deleted"]}
    created = {gid for d in report["done"] for gid in d["created"]}
    remote = h.remote()
    assert deleted.isdisjoint(remote) and created <= set(remote)
    links = h.links()
    active = links[links["sync_status"] != "unlinked"]
    # Every live Golioth device is linked exactly once; with deletes off, the links of deleted
    # ones stay, marked unlinked, and their local devices live on.
    assert active["golioth_device_id"].is_unique and active["device_id"].is_unique
    assert set(active["golioth_device_id"]) == set(remote)
    assert set(links.loc[links["sync_status"] == "unlinked", "golioth_device_id"]) == (
        set() if allow_deletes else deleted
    )
    local = h.local(include_deleted=True)
    live = local[local["deleted_at"].isna()]
    assert set(active["device_id"]) <= set(live.index)
    assert len(live) == len(remote) + (0 if allow_deletes else len(deleted))
    assert len(local) - len(live) == (len(deleted) if allow_deletes else 0)
    # Each created device imported once: one live local device with its name, the linked one.
    names = list(live["name"])
    by_gid = dict(zip(active["golioth_device_id"], active["device_id"]))
    assert all(names.count(remote[g]["name"]) == 1 and by_gid[g] in live.index for g in created)


@pytest.mark.slow
def test_deletes_only_on_pages_already_read(make_harness, instance, db_url):
    h = make_harness(devices=DEVICES, seed=61, allow_deletes=True)
    first, report = _churn_sync(h, instance, db_url, {"page": 2, "deleteRead": 20})
    inventory = metadata(first, "golioth_device_inventory")
    # The totals disagreed between pages: the listing was redone, and saw the deletes.
    assert inventory["relistings"] == 1 and inventory["api_total"] == inventory["listed"] == DEVICES - 20
    assert inventory["confirmed_gone"] == 20 and inventory["confirmed_by_get"] == 0
    _converge(h, instance, db_url, report, allow_deletes=True)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["createRead", "createEnd"])
def test_creates_only_on_earlier_pages_or_after_the_last(make_harness, instance, db_url, where):
    h = make_harness(devices=DEVICES, seed=62)
    first, report = _churn_sync(h, instance, db_url, {"page": 2, where: 20})
    inventory = metadata(first, "golioth_device_inventory")
    assert inventory["relistings"] == 1 and inventory["api_total"] == inventory["listed"] == DEVICES + 20
    assert metadata(first, "device_reconciliation")["created_local"] == 20  # imported in the first sync
    _converge(h, instance, db_url, report, allow_deletes=False)


@pytest.mark.slow
@pytest.mark.parametrize("allow_deletes", [True, False])
def test_mixed_churn_with_total_unchanged_hides_devices_the_sync_confirms(
    make_harness, instance, db_url, allow_deletes
):
    """The issue's case: deletes on pages already read and as many creates after the last page,
    so `total` never changes and nothing triggers a relisting; 30 live devices are hidden."""
    h = make_harness(devices=DEVICES, seed=63, allow_deletes=allow_deletes)
    first, report = _churn_sync(h, instance, db_url, {"page": 2, "deleteRead": 30, "createEnd": 30})
    inventory = metadata(first, "golioth_device_inventory")
    assert inventory["relistings"] == 0 and inventory["api_total"] == inventory["listed"] == DEVICES
    assert (inventory["confirmed_by_get"], inventory["confirmed_gone"]) == (30, 0)  # the hidden ones
    assert inventory["devices"] == DEVICES + 30  # listed + confirmed: each once
    plan = metadata(first, "device_reconciliation")
    assert plan["deleted_local"] == plan["unlinked"] == 0  # no live device lost
    assert plan["created_local"] == 30
    _converge(h, instance, db_url, report, allow_deletes=allow_deletes)


@pytest.mark.slow
def test_renames_on_pages_already_read_move_nothing(make_harness, instance, db_url):
    """The list is in creation order (simulator/churn.py says why), so a rename moves no device
    between pages: nothing is hidden, and the next sync brings the new names in."""
    h = make_harness(devices=DEVICES, seed=64)
    first, report = _churn_sync(h, instance, db_url, {"page": 2, "renameRead": 20})
    inventory = metadata(first, "golioth_device_inventory")
    assert (inventory["listed"], inventory["duplicates_served"], inventory["confirmed_by_get"]) == (DEVICES, 0, 0)
    second = metadata(_sync(h, instance, db_url), "device_reconciliation")
    assert second["updated_local"] == 20
    renamed = set(report["done"][0]["renamed"])
    local = h.local()
    links = h.links().set_index("golioth_device_id")["device_id"]
    assert all(local.loc[links[g], "name"].endswith("-renamed") for g in renamed)
    _converge(h, instance, db_url, report, allow_deletes=False)


@pytest.mark.slow
def test_churn_during_the_relisting_itself(make_harness, instance, db_url):
    """Deletes make the first listing disagree on `total`; while the listing is redone, more
    devices are deleted and created with `total` unchanged: the relisting hides some, the GETs
    find them."""
    h = make_harness(devices=DEVICES, seed=65, allow_deletes=True)
    first, report = _churn_sync(
        h,
        instance,
        db_url,
        {"page": 2, "deleteRead": 10},
        {"listing": 2, "page": 1, "deleteRead": 30, "createEnd": 30},
    )
    inventory = metadata(first, "golioth_device_inventory")
    assert inventory["relistings"] == 1 and inventory["api_total"] == DEVICES - 10
    assert inventory["confirmed_by_get"] == 30 and inventory["confirmed_gone"] == 10
    _converge(h, instance, db_url, report, allow_deletes=True)


@pytest.mark.slow
def test_the_issues_case_1500_devices_30_deleted_and_30_created_while_page_2_is_served(make_harness, instance, db_url):
    """Exactly as reported: the run failed on its blocking check with api_total 1530, fetched 1560,
    and left its sync-log row running."""
    h = make_harness(devices=1500, seed=66, allow_deletes=True)
    first, report = _churn_sync(h, instance, db_url, {"page": 2, "deleteRead": 30, "createEnd": 30}, devices=1500)
    inventory = metadata(first, "golioth_device_inventory")
    assert (inventory["api_total"], inventory["listed"], inventory["confirmed_by_get"]) == (1500, 1500, 30)
    assert metadata(first, "local_device_writes")["status"] == "success"
    _converge(h, instance, db_url, report, allow_deletes=True)
