"""The sync engine end to end: the simulator over HTTP on one side, real PostgreSQL on the other."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from golioth_assets.core.vocabulary import Reason
from golioth_assets.store import conflicts as conflict_store
from golioth_assets.store import sync_log


def _first_sync(h):
    result = h.sync()
    assert result.status == "success"
    return result


def test_first_sync_imports_everything_and_second_changes_nothing(harness):
    first = harness.sync()
    assert first.counts["created_local"] == 20
    assert first.counts["fetched_remote"] == 20
    local = harness.local()
    remote = harness.remote()
    assert sorted(local["name"]) == sorted(d["name"] for d in remote.values())
    assert len(harness.links()) == 20

    second = harness.sync()
    writes = {k: v for k, v in second.counts.items() if k.startswith(("created", "updated", "deleted"))}
    assert set(writes.values()) == {0}
    assert second.plan.empty


def test_local_edits_are_pushed_and_tags_created_in_golioth(harness):
    _first_sync(harness)
    local = harness.local()
    # The simulator seeds some devices disabled: on one of those, enabled=False would push nothing.
    device_id = local[local["enabled"]].index[0]
    gid = harness.golioth_id_of(device_id)
    harness.edit_local(device_id, name="renamed-locally", tags=["brand-new-tag", "x"], enabled=False)

    result = harness.sync()
    assert result.counts["updated_remote"] == 1
    remote = harness.remote()[gid]
    assert remote["name"] == "renamed-locally"
    assert sorted(harness.tag_names()[t] for t in remote["tagIds"]) == ["brand-new-tag", "x"]
    assert remote.get("enabled", False) is False
    assert harness.sync().plan.empty


def test_remote_edits_are_pulled(harness):
    _first_sync(harness)
    # About half the seeded devices have no cohort, and clearing theirs would pull nothing.
    gid = next(g for g, d in harness.remote().items() if d.get("cohortId"))
    harness.edit_remote(gid, name="renamed-in-golioth", cohortId="")
    result = harness.sync()
    assert result.counts["updated_local"] == 1
    row = harness.local().loc[harness.device_id_of(gid)]
    assert row["name"] == "renamed-in-golioth" and pd.isna(row["cohort"])
    assert harness.sync().plan.empty


def test_desired_state_merges_key_by_key(harness):
    _first_sync(harness)
    device_id = harness.local().index[0]
    gid = harness.golioth_id_of(device_id)
    harness.put_remote_state(gid, {"led": "on", "interval": 60})
    harness.sync()
    harness.edit_local(device_id, desired_state={"led": "off", "interval": 60})
    harness.put_remote_state(gid, {"led": "on", "interval": 30})

    harness.sync()
    expected = {"led": "off", "interval": 30}
    assert harness.local().loc[device_id, "desired_state"] == expected
    assert harness.remote()[gid]["data"] == expected
    assert harness.sync().plan.empty


def test_manual_conflict_is_stored_and_the_field_left_alone(harness):
    _first_sync(harness)
    local = harness.local()
    # An enabled device, so that enabled=False is a real change for "the other field still synced".
    device_id = local[local["enabled"]].index[0]
    gid = harness.golioth_id_of(device_id)
    harness.edit_local(device_id, name="local-name", enabled=False)
    harness.edit_remote(gid, name="remote-name")

    result = harness.sync()
    assert result.counts["conflicts"] == 1
    pending = harness.conflicts()
    assert list(pending["field"]) == ["name"]
    assert pending["local_value"].item() == "local-name" and pending["remote_value"].item() == "remote-name"
    # The other field still synced; the conflicting one is untouched on both sides.
    assert harness.remote()[gid].get("enabled", False) is False
    assert harness.remote()[gid]["name"] == "remote-name"
    assert harness.local().loc[device_id, "name"] == "local-name"

    # A second run neither duplicates the conflict nor writes anything.
    again = harness.sync()
    assert len(harness.conflicts()) == 1
    assert again.counts["updated_remote"] == again.counts["updated_local"] == 0

    with harness.engine.begin() as conn:
        conflict_store.resolve(conn, int(pending["id"].item()), use="local", resolved_by="alice")
    harness.sync()
    assert harness.remote()[gid]["name"] == "local-name"
    assert harness.local().loc[device_id, "name"] == "local-name"
    resolved = harness.conflicts(status=None)
    assert list(resolved["status"]) == ["applied"] and list(resolved["resolved_by"]) == ["alice"]
    with harness.engine.connect() as conn:
        changed_by = (
            conn.execute(
                sa.text("SELECT changed_by FROM golioth_sync_log_entries WHERE device_id = :d AND side = 'remote'"),
                {"d": device_id},
            )
            .scalars()
            .all()
        )
    assert "alice" in changed_by
    assert harness.sync().plan.empty


def test_pending_conflict_is_superseded_when_sides_converge(harness):
    _first_sync(harness)
    device_id = harness.local().index[0]
    gid = harness.golioth_id_of(device_id)
    harness.edit_local(device_id, name="a")
    harness.edit_remote(gid, name="b")
    harness.sync()
    assert len(harness.conflicts()) == 1
    harness.edit_local(device_id, name="b")
    harness.sync()
    assert harness.conflicts().empty
    assert list(harness.conflicts(status="superseded")["field"]) == ["name"]


@pytest.mark.parametrize(("policy", "winner"), [("local_wins", "local-name"), ("remote_wins", "remote-name")])
def test_policies_settle_conflicts(make_harness, policy, winner):
    h = make_harness(conflict_policy=policy)
    _first_sync(h)
    device_id = h.local().index[0]
    gid = h.golioth_id_of(device_id)
    h.edit_local(device_id, name="local-name")
    h.edit_remote(gid, name="remote-name")
    h.sync()
    assert h.remote()[gid]["name"] == winner
    assert h.local().loc[device_id, "name"] == winner
    assert h.conflicts().empty
    assert h.sync().plan.empty


def test_policy_override_per_field_group(make_harness):
    h = make_harness(conflict_policy="manual", policy_overrides={"tags": "remote_wins"})
    _first_sync(h)
    device_id = h.local().index[0]
    gid = h.golioth_id_of(device_id)
    h.edit_local(device_id, tags=["agreed-tag"])
    h.sync()
    h.edit_local(device_id, name="local-name", tags=["local-tag"])
    h.edit_remote(gid, name="remote-name", tagIds=[])
    h.sync()
    assert list(h.conflicts()["field"]) == ["name"]
    assert h.local().loc[device_id, "tags"] == []


def test_import_direction_keeps_local_edits_pending(make_harness):
    h = make_harness(direction="import")
    _first_sync(h)
    device_id = h.local().index[0]
    gid = h.golioth_id_of(device_id)
    before = h.remote()[gid]["name"]
    h.edit_local(device_id, name="not-exported")
    result = h.sync()
    blocked = result.plan[result.plan["status"] == "blocked"]
    assert list(blocked["field"]) == ["name"] and list(blocked["side"]) == ["remote"]
    assert h.remote()[gid]["name"] == before
    # Still pending next time: nothing was silently dropped.
    assert list(h.sync().plan["status"]) == ["blocked"]


def test_export_direction_never_writes_locally(make_harness):
    h = make_harness(direction="export")
    first = h.sync()
    assert first.counts["created_local"] == 0
    assert (first.plan["status"] == "blocked").sum() == 20
    assert h.local().empty


def test_local_device_is_created_in_golioth_with_a_generated_hardware_id(harness):
    _first_sync(harness)
    device_id = harness.create_local(name="made-locally", tags=["fresh"])
    result = harness.sync()
    assert result.counts["created_remote"] == 1
    gid = harness.golioth_id_of(device_id)
    remote = harness.remote()[gid]
    local = harness.local().loc[device_id]
    assert remote["name"] == "made-locally"
    assert remote["hardwareIds"] == local["hardware_ids"] and local["hardware_ids"][0].startswith("gs-")
    assert [harness.tag_names()[t] for t in remote["tagIds"]] == ["fresh"]
    assert harness.sync().plan.empty


def test_deletes_off_unlinks_and_keeps_the_other_side(harness):
    _first_sync(harness)
    gid = next(iter(harness.remote()))
    device_id = harness.device_id_of(gid)
    harness.delete_remote(gid)
    result = harness.sync()
    assert result.counts["deleted_local"] == 0
    assert device_id in harness.local().index
    assert harness.links().set_index("device_id").loc[device_id, "sync_status"] == "unlinked"
    unlink = _stored_plan(harness, result.sync_log_id).query("action == 'unlink'")
    assert unlink[["device_id", "kind", "reason"]].values.tolist() == [
        [device_id, Reason.deletes_off, "deleted in Golioth; deletes are off"]
    ]
    # The unlinked local device is not re-created in Golioth.
    assert harness.sync().counts["created_remote"] == 0


def test_a_device_gone_on_both_sides_loses_its_link(harness):
    _first_sync(harness)
    gid = next(iter(harness.remote()))
    device_id = harness.device_id_of(gid)
    harness.delete_remote(gid)
    harness.delete_local(device_id)
    result = harness.sync()
    unlink = _stored_plan(harness, result.sync_log_id).query("action == 'unlink'")
    assert unlink[["device_id", "kind", "status"]].values.tolist() == [
        [device_id, Reason.gone_on_both_sides, "applied"]
    ]
    # Deleted, not kept as an "unlinked" tombstone: nothing is left on either side to guard.
    assert device_id not in set(harness.links()["device_id"])
    assert harness.sync().plan.empty


def _stored_plan(h, sync_log_id: int) -> pd.DataFrame:
    with h.engine.connect() as conn:
        return sync_log.load_plan(conn, sync_log_id)


def test_deletes_on_propagate_both_ways(make_harness):
    h = make_harness(allow_deletes=True)
    _first_sync(h)
    gids = list(h.remote())
    h.delete_remote(gids[0])
    local_victim = h.device_id_of(gids[1])
    h.delete_local(local_victim)
    result = h.sync()
    assert result.counts["deleted_local"] == 1 and result.counts["deleted_remote"] == 1
    assert gids[1] not in h.remote()
    assert h.device_id_of.__self__ is h
    assert len(h.local()) == 18
    assert h.sync().plan.empty


def test_delete_vs_modify_is_a_conflict(make_harness):
    h = make_harness(allow_deletes=True)
    _first_sync(h)
    gid = next(iter(h.remote()))
    device_id = h.device_id_of(gid)
    h.delete_remote(gid)
    h.edit_local(device_id, name="edited-after-delete")
    h.sync()
    conflicts = h.conflicts()
    assert list(conflicts["conflict_type"]) == ["delete_vs_modify"]
    assert device_id in h.local().index  # nothing deleted while the conflict is open

    with h.engine.begin() as conn:
        conflict_store.resolve(conn, int(conflicts["id"].item()), use="local", resolved_by="bob")
    h.sync()
    new_gid = h.golioth_id_of(device_id)
    assert new_gid != gid and h.remote()[new_gid]["name"] == "edited-after-delete"


def test_identity_conflict_is_never_guessed(harness):
    _first_sync(harness)
    harness.create_remote(name="twin-a", hardwareIds=["shared-a"])
    harness.create_remote(name="twin-b", hardwareIds=["shared-b"])
    local_id = harness.create_local(name="ambiguous", hardware_ids=["shared-a", "shared-b"])
    result = harness.sync()
    identity = harness.conflicts()
    assert list(identity["conflict_type"]) == ["identity"]
    assert str(identity["device_id"].item()) == local_id
    # Neither the local device nor the two Golioth devices are created or linked by guess.
    assert result.counts["created_remote"] == 0 and result.counts["created_local"] == 0
    assert local_id not in set(harness.links()["device_id"])


def test_dry_run_writes_nothing(harness):
    result = harness.sync(dry_run=True)
    assert (result.plan["action"] == "create").sum() == 20
    assert harness.local().empty
    assert harness.links().empty


def test_targeted_sync_touches_only_the_named_devices(harness):
    _first_sync(harness)
    gids = list(harness.remote())
    harness.edit_remote(gids[0], name="target")
    harness.edit_remote(gids[1], name="not-target")
    result = harness.sync(device_ids=[gids[0]])
    assert result.counts["updated_local"] == 1
    local = harness.local()
    assert local.loc[harness.device_id_of(gids[0]), "name"] == "target"
    assert local.loc[harness.device_id_of(gids[1]), "name"] != "not-target"


def test_disabled_field_group_is_not_synced(make_harness):
    h = make_harness(field_groups=["identity", "enabled", "observed"])
    _first_sync(h)
    device_id = h.local().index[0]
    gid = h.golioth_id_of(device_id)
    h.edit_local(device_id, tags=["ignored"])
    result = h.sync()
    assert result.plan.empty
    assert "tagIds" not in h.remote()[gid] or not any(
        h.tag_names().get(t) == "ignored" for t in h.remote()[gid]["tagIds"]
    )


def test_observed_fields_flow_in_and_never_conflict(harness):
    _first_sync(harness)
    gid = next(iter(harness.remote()))
    harness.project.control.device_activity(harness.project.project_id, gid, {"temp": 21}, firmware_version="9.9.9")
    harness.sync()
    row = harness.local().loc[harness.device_id_of(gid)]
    assert row["firmware_versions"].get("main") == "9.9.9"
    assert pd.notna(row["last_seen_online"])
    assert harness.conflicts().empty


def test_clearing_a_blueprint_locally_clears_it_in_golioth(harness):
    _first_sync(harness)
    local = harness.local()
    device_id = local[local["blueprint"].notna()].index[0]
    gid = harness.golioth_id_of(device_id)
    before = harness.remote()[gid]
    harness.edit_local(device_id, blueprint=None)
    harness.sync()
    after = harness.remote()[gid]
    assert "blueprintId" not in after
    assert after["name"] == before["name"] and after["hardwareIds"] == before["hardwareIds"]
    assert after.get("tagIds", []) == before.get("tagIds", [])
    assert harness.sync().plan.empty


def test_console_edit_after_the_plan_is_not_overwritten(harness):
    """Golioth has no ETag, so each update re-reads the device first: a console edit made between
    the inventory fetch and our PATCH is kept, and the next run records the conflict."""
    from golioth_assets.engine import sync as engine

    _first_sync(harness)
    device_id = harness.local().index[0]
    gid = harness.golioth_id_of(device_id)
    harness.edit_local(device_id, name="local-edit")

    db, service = harness.engine, harness.service
    request = engine.SyncRequest(harness.org)
    sync_log_id = engine.begin(db, service, request)
    with engine.open_client(service) as client:
        scope = engine.resolve_scope(db, service, None)
        engine.fetch_step(db, service, client, scope, sync_log_id)
        engine.plan_step(db, service, request, scope, sync_log_id)
        harness.edit_remote(gid, name="console-edit")  # after the read, before the write
        outcome = engine.remote_step(db, service, client, sync_log_id)
    engine.local_step(db, service, sync_log_id)
    engine.finish(db, sync_log_id)

    assert outcome.counts["skipped"] == 1 and outcome.counts["updated_remote"] == 0
    assert harness.remote()[gid]["name"] == "console-edit"
    harness.sync()
    conflict = harness.conflicts()
    assert list(conflict["field"]) == ["name"]
    assert (conflict["local_value"].item(), conflict["remote_value"].item()) == ("local-edit", "console-edit")


def test_the_fetch_hands_the_plan_the_inventory_exactly_as_stored(harness):
    """A run plans from the frame its fetch just stored (FetchResult.devices) rather than reading
    golioth_inventory back: the two must be the same frame, types included."""
    from golioth_assets.engine import sync as engine
    from golioth_assets.store import inventory

    _first_sync(harness)
    gid = next(iter(harness.remote()))
    harness.put_remote_state(gid, {"led": "on", "interval": 1.5, "n": 30})
    db, service = harness.engine, harness.service
    with engine.open_client(service) as client:
        fetched = engine.fetch_step(db, service, client, engine.resolve_scope(db, service, None))
    with db.connect() as conn:
        stored = inventory.load_inventory(conn, harness.org)
    in_memory = fetched.devices.sort_values("golioth_device_id", ignore_index=True)
    stored = stored.sort_values("golioth_device_id", ignore_index=True)[list(in_memory.columns)]
    assert len(in_memory) == 20
    pd.testing.assert_frame_equal(in_memory, stored)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "from-storage"])
def test_the_convergence_check_finds_writes_that_did_not_stick(harness, in_memory):
    """The self-check re-reads what the run wrote in Golioth and re-diffs what it wrote locally:
    an edit made on either side after the writes (as a write that did not round-trip would look)
    leaves writes to do, whether the check gets the run's fetch and plan in memory or reads them."""
    from golioth_assets.engine import convergence
    from golioth_assets.engine import sync as engine

    _first_sync(harness)
    local_ids = list(harness.local().index[:2])
    pushed, pulled = local_ids[0], harness.golioth_id_of(local_ids[1])
    harness.edit_local(pushed, name="pushed-to-golioth")
    harness.edit_remote(pulled, name="pulled-from-golioth")
    db, service = harness.engine, harness.service
    request = engine.SyncRequest(harness.org)
    sync_log_id = engine.begin(db, service, request)
    with engine.open_client(service) as client:
        scope = engine.resolve_scope(db, service, None)
        fetched = engine.fetch_step(db, service, client, scope, sync_log_id)
        engine.plan_step(db, service, request, scope, sync_log_id, fetched if in_memory else None)
        engine.remote_step(db, service, client, sync_log_id, request)
        engine.local_step(db, service, sync_log_id, request)
        handed = fetched if in_memory else None
        assert convergence.writes_left(db, service, client, sync_log_id, handed) == 0
        harness.edit_remote(harness.golioth_id_of(pushed), name="changed-again-in-golioth")
        harness.edit_local(harness.device_id_of(pulled), name="changed-again-locally")
        assert convergence.writes_left(db, service, client, sync_log_id, handed) == 2
    engine.finish(db, sync_log_id)


def test_the_convergence_check_reads_written_devices_from_golioths_answers(harness):
    """A PATCH answers with the device as Golioth stored it: the check diffs that answer without a
    request of its own, and a field that did not round-trip (the answer differs from what was sent)
    is still found. A device whose desired state was written is re-read: a state PUT answers nothing."""
    from golioth_assets.engine import convergence
    from golioth_assets.engine import sync as engine

    _first_sync(harness)
    renamed, restated = list(harness.local().index[:2]), harness.local().index[2]
    for device_id in renamed:
        harness.edit_local(device_id, name=f"renamed-{device_id[:6]}")
    harness.edit_local(restated, desired_state={"mode": "eco"})
    db, service = harness.engine, harness.service
    request = engine.SyncRequest(harness.org)
    sync_log_id = engine.begin(db, service, request)
    with engine.open_client(service) as client:
        scope = engine.resolve_scope(db, service, None)
        fetched = engine.fetch_step(db, service, client, scope, sync_log_id)
        engine.plan_step(db, service, request, scope, sync_log_id, fetched)
        answers = engine.remote_step(db, service, client, sync_log_id, request, fetched).answers
        engine.local_step(db, service, sync_log_id, request)
        assert {harness.golioth_id_of(d) for d in renamed} <= set(answers.devices)

        before = client.stats.snapshot()
        assert convergence.writes_left(db, service, client, sync_log_id, fetched, None, answers) == 0
        assert client.stats.since(before).requests == 2  # the restated device and its state; the renamed: none

        stuck = harness.golioth_id_of(renamed[0])
        answers.devices[stuck] = answers.devices[stuck].model_copy(update={"name": "not-what-was-sent"})
        assert convergence.writes_left(db, service, client, sync_log_id, fetched, None, answers) == 1
    engine.finish(db, sync_log_id)


def test_link_status_follows_the_pending_conflicts_beside_one_that_names_no_local_device(harness):
    """A link says "conflict" while a conflict on its device is pending, and "synced" once none
    is, also while another pending conflict has no local device id (an IN list holding a NULL
    answers NULL, not false, for every id it lacks)."""
    _, device_id, _ = harness.make_conflict()

    def statuses() -> pd.Series:
        with harness.engine.begin() as conn:
            conflict_store.refresh_link_status(conn, harness.service.id)
        return harness.links().set_index("device_id")["sync_status"].astype(str)

    with harness.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO device_conflicts (organization_id, service_id, device_id, golioth_device_id, field, "
                "conflict_type) VALUES (:org, :service, NULL, 'not-linked', 'identity', 'identity')"
            ),
            {"org": harness.org, "service": harness.service.id},
        )
    status = statuses()
    assert status[device_id] == "conflict" and (status.drop(device_id) == "synced").all()
    with harness.engine.begin() as conn:
        conn.execute(sa.text("UPDATE device_conflicts SET status = 'applied' WHERE device_id = :d"), {"d": device_id})
    assert (statuses() == "synced").all()
