"""Syncing a product's own device table (issue 10): the two example schemas shipped under
examples/, each in a database of its own, under their shipped mapping.yaml, against the simulator
over HTTP (tests/fixtures/local_tables.py).

acme_fleet (uuid key, tenant looked up by slug, enum connectivity, tags inside jsonb, soft delete,
their own updated_at and audit triggers): import, edits on both sides under each policy, a
conflict, soft deletes, compare-and-set against their app editing mid-sync, columns outside the
mapping, a mapping that no longer fits, a table without hardware ids, and crashes at each point
of the two-database protocol.

hydro_meters (bigint identity key, constant tenant, one text serial, CHECK-constrained status with
a value map, a link column, no soft delete, no updated_at): the same ground, plus deletes that
cannot happen and how local edits are dated without an updated_at column.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from golioth_assets.engine import local_apply
from golioth_assets.engine import sync as engine_sync
from golioth_assets.engine.sync import SyncFailed, SyncRequest
from golioth_assets.store import intents
from tests.fixtures.faults import assert_no_duplicates


class Crash(BaseException):
    """The process died here: no handler recovers, no bookkeeping after it runs."""


def _pairs(h) -> list[tuple[str, str]]:
    links = h.links().sort_values("golioth_device_id")
    return list(zip(links["device_id"], links["golioth_device_id"]))


def test_import_fills_the_product_table_and_leaves_other_columns_alone(make_acme_harness):
    h = make_acme_harness(devices=6)
    before = h.outside_the_mapping()
    result = h.sync()
    assert result.status == "success", result
    rows, remote, links = h.rows(), h.remote(), h.links().set_index("device_id")["golioth_device_id"]
    assert len(rows) == 6 and set(links.index) == set(rows["id"]) and set(links) == set(remote)
    assert set(rows["device_type"]) == {"unclassified"}  # insert_defaults fill what Golioth lacks
    assert rows["notes"].isna().all()
    for device_id, row in rows.iterrows():
        device = remote[links[device_id]]
        assert row["display_name"] == device["name"]
        assert sorted(row["serial_numbers"]) == sorted(device["hardwareIds"])
        assert row["is_active"] == device.get("enabled", False)
    after = h.outside_the_mapping()
    assert {k: after[k] for k in before} == before  # other organizations' rows, byte for byte
    second = h.sync().plan
    assert second.empty, second[["field", "action", "side", "old_value", "new_value"]].to_string()  # nothing left to do


@pytest.mark.parametrize("policy", ["local_wins", "remote_wins", "newest_wins", "manual"])
def test_edits_on_both_sides_under_each_policy(make_acme_harness, policy):
    h = make_acme_harness(devices=4, conflict_policy=policy)
    assert h.sync().status == "success"
    (a, ga), (b, gb), (c, gc), _ = _pairs(h)
    h.edit_local(a, name="renamed-locally", tags=["production"], enabled=False)
    h.edit_remote(gb, name="renamed-in-golioth")
    h.edit_local(c, name="c-local")
    h.edit_remote(gc, name="c-remote")
    assert h.sync().status == "success"
    local, remote = h.local(), h.remote()
    assert remote[ga]["name"] == "renamed-locally" and remote[ga]["enabled"] is False
    assert local.loc[b, "name"] == "renamed-in-golioth"
    winner = {"local_wins": "c-local", "remote_wins": "c-remote", "newest_wins": "c-remote"}.get(policy)
    if winner is None:  # manual: both edits kept, a conflict naming the product's row
        assert (local.loc[c, "name"], remote[gc]["name"]) == ("c-local", "c-remote")
        conflict = h.conflicts()
        assert list(conflict["device_id"]) == [c] and list(conflict["field"]) == ["name"]
    else:
        assert local.loc[c, "name"] == remote[gc]["name"] == winner


def test_a_conflict_resolved_by_an_operator_reaches_both_sides(make_acme_harness):
    from golioth_assets.actions import conflicts as conflict_actions
    from golioth_assets.store import conflicts as conflict_store

    h = make_acme_harness(devices=3)
    conflict_id, device_id, gid = h.make_conflict(0, local="ours", remote="theirs")
    # Operators read the product's column names: Golioth's `name` is Acme's `display_name`.
    [listed] = conflict_actions.list_conflicts(h.engine, h.org)
    assert (listed["field"], listed["local_column"]) == ("name", "display_name")
    assert conflict_actions.get_conflict(h.engine, conflict_id)["local_column"] == "display_name"
    with h.engine.begin() as conn:
        conflict_store.resolve(conn, conflict_id, use="local", resolved_by="ops@example.com")
    assert h.sync().status == "success"
    assert h.local().loc[device_id, "name"] == h.remote()[gid]["name"] == "ours"
    assert h.conflict(conflict_id)["status"] == "applied"


def test_deletes_propagate_through_the_soft_delete_column(make_acme_harness):
    h = make_acme_harness(devices=4, allow_deletes=True)
    assert h.sync().status == "success"
    (a, ga), (b, gb), *_ = _pairs(h)
    h.delete_remote(ga)
    h.delete_local(b)
    assert h.sync().status == "success"
    rows = h.rows()
    assert not pd_isna(rows.loc[a, "deleted_at"])  # the delete in Golioth sets their column
    assert gb not in h.remote()
    assert len(rows) == 4  # soft deletes: no row is removed


def test_an_edit_by_the_product_during_the_sync_is_not_overwritten(make_acme_harness):
    h = make_acme_harness(devices=3)
    assert h.sync().status == "success"
    (a, ga), *_ = _pairs(h)
    h.edit_remote(ga, name="from-golioth")
    service, request = h.service, SyncRequest(h.org)
    client = engine_sync.open_client(service)
    try:
        log_id = engine_sync.begin(h.engine, service, request)
        scope = engine_sync.resolve_scope(h.engine, service, None)
        engine_sync.fetch_step(h.engine, service, client, scope, log_id)
        engine_sync.plan_step(h.engine, service, request, scope, log_id)
        h.edit_local(a, name="edited-by-the-app-meanwhile")  # between the plan and the write
        engine_sync.remote_step(h.engine, service, client, log_id)
        outcome = engine_sync.local_step(h.engine, service, log_id)
        engine_sync.finish(h.engine, log_id)
    finally:
        client.close()
    assert outcome.counts["skipped"] == 1
    assert h.local().loc[a, "name"] == "edited-by-the-app-meanwhile"
    h.sync()  # the next run sees both edits: a conflict (manual policy), nothing lost
    assert h.local().loc[a, "name"] == "edited-by-the-app-meanwhile"
    assert list(h.conflicts()["device_id"]) == [a]


def test_columns_outside_the_mapping_never_change_and_their_triggers_fire(make_acme_harness):
    h = make_acme_harness(devices=3)
    assert h.sync().status == "success"
    (a, ga), (b, _), _ = _pairs(h)
    h.edit_local(a, notes="keep me", device_type="gateway")
    before_rows, audits = h.rows(), h.audit_count()
    h.edit_remote(ga, name="renamed")
    assert h.sync().status == "success"
    after = h.rows()
    assert after.loc[a, "display_name"] == "renamed"
    assert (after.loc[a, "notes"], after.loc[a, "device_type"]) == ("keep me", "gateway")
    assert after.loc[a, "updated_at"] > before_rows.loc[a, "updated_at"]  # their own trigger ran
    assert h.audit_count() > audits  # and their audit trigger
    assert after.loc[b].drop(["updated_at"]).equals(before_rows.loc[b].drop(["updated_at"]))


def test_a_mapping_that_no_longer_fits_fails_before_any_write_naming_the_column(make_acme_harness):
    h = make_acme_harness(devices=3)
    assert h.sync().status == "success"
    (_, ga), *_ = _pairs(h)
    h.edit_remote(ga, name="would-be-written")
    with h.product.begin() as conn:
        conn.execute(sa.text("ALTER TABLE app.devices RENAME COLUMN display_name TO title"))
    try:
        audits = h.audit_count()
        with pytest.raises(SyncFailed, match="display_name"):
            h.sync()
        assert h.audit_count() == audits
        with h.engine.connect() as conn:
            assert not intents.pending(conn, h.service.id)
    finally:
        with h.product.begin() as conn:
            conn.execute(sa.text("ALTER TABLE app.devices RENAME COLUMN title TO display_name"))
    assert h.sync().status == "success"
    assert h.local().loc[_pairs(h)[0][0], "name"] == "would-be-written"


def test_a_run_describes_the_table_once_and_refuses_a_changed_one_at_its_start(make_acme_harness):
    """Issue 14: a Dagster sync (SyncRun, every step) reads the table's structure from the catalog
    once, not at each of its ~5 opens; a column renamed since the last sync still fails the next
    one, at its start (before any Golioth request), naming the column."""
    from golioth_assets.defs.steps import sync_results
    from golioth_assets.engine.run import SyncRun
    from golioth_assets.engine.sync import open_client
    from golioth_assets.store.local_table.table import LocalTableError

    h = make_acme_harness(devices=3)
    described: list[str] = []

    def count(conn, cursor, statement, *rest) -> None:
        if "to_regclass" in statement and "::oid" in statement:  # describe_table's first query
            described.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        results = list(sync_results(SyncRun(h.engine, h.service, SyncRequest(h.org), open_client=open_client)))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)
    assert len(results) == 6 and len(h.local()) == 3
    assert len(described) == 1

    with h.product.begin() as conn:
        conn.execute(sa.text("ALTER TABLE app.devices RENAME COLUMN display_name TO title"))
    try:
        before = h.project.stats()["total"]
        with pytest.raises(LocalTableError, match="display_name"):
            list(sync_results(SyncRun(h.engine, h.service, SyncRequest(h.org), open_client=open_client)))
        assert h.project.stats()["total"] == before  # refused before listing anything
        with h.engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT status, error FROM golioth_sync_log WHERE organization_id = :o ORDER BY id DESC"),
                {"o": h.org},
            ).first()
        assert row is not None and row.status == "failed" and "display_name" in row.error
    finally:
        with h.product.begin() as conn:
            conn.execute(sa.text("ALTER TABLE app.devices RENAME COLUMN title TO display_name"))


# -- the two-database protocol: a crash at each point ----------------------------------------------------


def _crash_after(monkeypatch, name: str) -> None:
    """The process dies right after `name` (a step of engine/local_apply.py) returns."""
    real = getattr(local_apply, name)

    def dying(*args, **kwargs):
        real(*args, **kwargs)
        raise Crash(name)

    monkeypatch.setattr(local_apply, name, dying)


def _crash_before(monkeypatch, name: str) -> None:
    def dying(*args, **kwargs):
        raise Crash(name)

    monkeypatch.setattr(local_apply, name, dying)


@pytest.mark.parametrize(
    "point",
    [
        "write_local",  # (a): writes done, nothing committed
        "_record_intent",  # (b): intent committed, the product's transaction not
        "finish",  # (c): the product's transaction committed, its bookkeeping not
    ],
)
def test_a_crash_at_each_point_of_the_protocol_converges(make_acme_harness, monkeypatch, point):
    h = make_acme_harness(devices=4)
    assert h.sync().status == "success"
    (a, ga), (b, gb), *_ = _pairs(h)
    h.edit_local(a, name="local-edit")
    h.edit_remote(gb, name="golioth-edit")
    new_gid = h.create_remote(name="new-in-golioth", hardwareIds=["hw-new-1"])["id"]
    with monkeypatch.context() as m:
        if point == "finish":
            _crash_before(m, "_finish")
        else:
            _crash_after(m, point)
        with pytest.raises(Crash):
            h.sync()
    with h.engine.connect() as conn:
        pending = intents.pending(conn, h.service.id)
    assert len(pending) == (1 if point in ("_record_intent", "finish") else 0)
    assert h.sync().status == "success"
    again = h.sync()
    assert again.status == "success" and again.plan.empty, again.plan
    rows, remote = h.rows(), h.remote()
    assert len(rows) == len(remote) == 5  # no duplicate row on either side
    assert (rows["display_name"] == "new-in-golioth").sum() == 1
    assert (h.links()["golioth_device_id"] == new_gid).sum() == 1
    assert remote[ga]["name"] == "local-edit"
    assert h.local().loc[b, "name"] == "golioth-edit"
    assert_no_duplicates(h)
    with h.engine.connect() as conn:
        assert not intents.pending(conn, h.service.id)


def test_an_intent_whose_transaction_is_still_open_holds_the_local_writes(make_acme_harness):
    h = make_acme_harness(devices=2)
    assert h.sync().status == "success"
    with h.product.connect() as their:
        open_tx = their.begin()
        txid = their.exec_driver_sql("SELECT txid_current()").scalar_one()
        with h.engine.begin() as conn:
            intents.record(conn, h.service.id, None, txid, {"created_keys": []})
        with pytest.raises(local_apply.LocalApplyPending, match="still open"):
            local_apply.recover(h.engine, h.service)
        open_tx.rollback()
    assert local_apply.recover(h.engine, h.service) == 1  # aborted now: settled
    assert h.sync().status == "success"


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


# -- hydro_meters -------------------------------------------------------------------------------------------


def test_hydro_import_fills_the_meters_of_its_utility_only(make_hydro_harness):
    h = make_hydro_harness(devices=6)
    others = {k: v for k, v in h.outside_the_mapping().items()}
    result = h.sync()
    assert result.status == "success", result
    rows, remote = h.rows(), h.remote()
    assert len(rows) == 6 and set(rows["golioth_id"]) == set(remote)  # the link column holds the ids
    assert set(rows["utility"]) == {h.org}
    for _, row in rows.iterrows():
        device = remote[row["golioth_id"]]
        assert row["label"] == device["name"]
        assert row["serial"] == device["hardwareIds"][0]
        assert row["status"] == ("active" if device.get("enabled", False) else "disabled")
        main = ((device.get("metadata") or {}).get("update") or {}).get("main")
        assert row["fw"] == (main["version"] if main else None)  # the one package the mapping names
    assert rows["installed_on"].isna().all()  # theirs, never written
    after = h.outside_the_mapping()
    assert {k: after[k] for k in others} == others  # the seed utilities' meters, byte for byte
    second = h.sync().plan
    assert second.empty, second[["field", "action", "side", "old_value", "new_value"]].to_string()


def _meters(h) -> list[tuple[str, str]]:
    """(meter id, Golioth id) pairs, from Hydro's own link column."""
    rows = h.rows().sort_values("golioth_id")
    return list(zip(rows["id"], rows["golioth_id"]))


@pytest.mark.parametrize("policy", ["local_wins", "remote_wins", "manual"])
def test_hydro_edits_on_both_sides_and_a_conflict(make_hydro_harness, policy):
    h = make_hydro_harness(devices=4, conflict_policy=policy)
    assert h.sync().status == "success"
    (a, ga), (b, gb), (c, gc), (d, gd) = _meters(h)
    h.edit_local(a, name="Quay 4", tags=["harbour"], enabled=False)
    h.edit_remote(gb, name="renamed-in-golioth", enabled=False)
    h.edit_local(c, name="c-hydro")
    h.edit_remote(gc, name="c-golioth")
    with h.product.begin() as conn:  # retired: another value the map reads as enabled = false
        conn.execute(sa.text("UPDATE meters SET status = 'retired' WHERE id = :id"), {"id": int(d)})
    assert h.sync().status == "success"
    rows, remote = h.rows(), h.remote()
    assert remote[ga]["name"] == "Quay 4" and remote[ga].get("enabled", False) is False
    assert [h.tag_names()[t] for t in remote[ga]["tagIds"]] == ["harbour"]
    assert (rows.loc[b, "label"], rows.loc[b, "status"]) == ("renamed-in-golioth", "disabled")
    assert remote[gd].get("enabled", False) is False and rows.loc[d, "status"] == "retired"  # kept as theirs
    winner = {"local_wins": "c-hydro", "remote_wins": "c-golioth"}.get(policy)
    if winner is None:  # manual: both edits kept, a conflict naming Hydro's meter
        assert (rows.loc[c, "label"], remote[gc]["name"]) == ("c-hydro", "c-golioth")
        conflict = h.conflicts()
        assert list(conflict["device_id"]) == [c] and list(conflict["field"]) == ["name"]
    else:
        assert rows.loc[c, "label"] == remote[gc]["name"] == winner
    assert h.sync().plan.empty


def test_hydro_has_no_soft_delete_column_so_nothing_is_ever_deleted(make_hydro_harness):
    """Deletes are on, but Hydro keeps no soft-delete column: a device deleted in Golioth is
    unlinked and its meter stays; a meter their app deletes is unlinked and the device stays."""
    h = make_hydro_harness(devices=4, allow_deletes=True)
    assert h.sync().status == "success"
    (a, ga), (b, gb), *_ = _meters(h)
    h.delete_remote(ga)
    h.delete_local(b)  # a real DELETE: their app has no other way
    result = h.sync()
    assert result.status == "success"
    assert not (result.plan["action"] == "delete").any()
    rows = h.rows()
    assert a in rows.index and len(rows) == 3  # only the meter they deleted themselves is gone
    assert gb in h.remote()  # and its Golioth device stays
    status = h.links().set_index("golioth_device_id")["sync_status"]
    assert status[ga] == "unlinked" and status[gb] == "unlinked"
    again = h.sync().plan
    assert again.empty, again[["device_id", "golioth_device_id", "action", "side"]].to_string()


def test_hydro_compare_and_set_and_untouched_columns(make_hydro_harness):
    h = make_hydro_harness(devices=3)
    assert h.sync().status == "success"
    (a, ga), (b, gb), _ = _meters(h)
    with h.product.begin() as conn:
        conn.execute(sa.text("UPDATE meters SET installed_on = DATE '2024-05-01' WHERE id = :id"), {"id": int(b)})
    before = h.outside_the_mapping()
    h.edit_remote(ga, name="from-golioth")
    h.edit_remote(gb, name="b-from-golioth")
    service, request = h.service, SyncRequest(h.org)
    client = engine_sync.open_client(service)
    try:
        log_id = engine_sync.begin(h.engine, service, request)
        scope = engine_sync.resolve_scope(h.engine, service, None)
        engine_sync.fetch_step(h.engine, service, client, scope, log_id)
        engine_sync.plan_step(h.engine, service, request, scope, log_id)
        h.edit_local(a, name="edited-by-hydro-meanwhile")  # between the plan and the write
        engine_sync.remote_step(h.engine, service, client, log_id)
        outcome = engine_sync.local_step(h.engine, service, log_id)
        engine_sync.finish(h.engine, log_id)
    finally:
        client.close()
    assert outcome.counts["skipped"] == 1 and outcome.counts["updated_local"] == 1
    rows = h.rows()
    assert rows.loc[a, "label"] == "edited-by-hydro-meanwhile" and rows.loc[b, "label"] == "b-from-golioth"
    after = h.outside_the_mapping()
    assert after == before  # installed_on, the other utilities' meters: byte for byte


def _newest_wins_after_golioth_then_local_edit(h) -> tuple[str, str]:
    assert h.sync().status == "success"
    (a, ga), *_ = _meters(h)
    h.edit_remote(ga, name="golioth-first")
    h.edit_local(a, name="hydro-later")  # the newer edit
    assert h.sync().status == "success"
    return h.rows().loc[a, "label"], h.remote()[ga]["name"]


def test_hydro_without_updated_at_or_capture_golioth_wins_newest_wins(make_hydro_harness):
    h = make_hydro_harness(devices=2, conflict_policy="newest_wins")
    assert _newest_wins_after_golioth_then_local_edit(h) == ("golioth-first", "golioth-first")


def test_hydro_with_capture_newest_wins_dates_local_edits_even_once_consumed(make_hydro_harness):
    """No updated_at column: capture's per-row change times date Hydro's edits. A consumer that
    deletes the outbox's entries does not make them undated."""
    from golioth_assets.store.local_table import capture

    h = make_hydro_harness(devices=2, conflict_policy="newest_wins")
    with h.product.begin() as conn:
        capture.install_capture(conn, h.mapping)
    try:
        assert h.sync().status == "success"
        (a, ga), *_ = _meters(h)
        h.edit_remote(ga, name="golioth-first")
        h.edit_local(a, name="hydro-later")
        with h.product.begin() as conn:
            consumed = capture.pending_changes(conn, h.mapping)
            assert [c.row_key for c in consumed] == [a]
            assert capture.delete_changes(conn, [c.id for c in consumed]) == 1
        assert h.sync().status == "success"
        assert (h.rows().loc[a, "label"], h.remote()[ga]["name"]) == ("hydro-later", "hydro-later")
    finally:
        with h.product.begin() as conn:
            capture.uninstall_capture(conn, h.mapping)


def test_acme_updated_at_dates_local_edits_for_newest_wins(make_acme_harness):
    h = make_acme_harness(devices=2, conflict_policy="newest_wins")
    assert h.sync().status == "success"
    (a, ga), *_ = _pairs(h)
    h.edit_remote(ga, name="golioth-first")
    h.edit_local(a, name="acme-later")  # their trigger moves updated_at
    assert h.sync().status == "success"
    assert h.local().loc[a, "name"] == h.remote()[ga]["name"] == "acme-later"


def test_a_table_without_hardware_ids_holds_its_new_devices_back_from_golioth(make_acme_harness):
    from golioth_assets.core.vocabulary import Reason

    h = make_acme_harness(devices=2, mapping_changes={"fields": {"name": "display_name", "tags": "metadata -> 'tags'"}})
    assert h.sync().status == "success"
    new = h.create_local(name="made-in-acme", hardware_ids=["ACM-9"])
    result = h.sync()
    assert result.status == "success"
    row = result.plan[result.plan["device_id"] == new]
    assert list(zip(row["action"], row["side"], row["kind"], row["status"])) == [
        ("create", "remote", Reason.no_hardware_ids, "blocked")
    ]
    assert "made-in-acme" not in {d["name"] for d in h.remote().values()}
