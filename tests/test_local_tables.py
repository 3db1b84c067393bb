"""Syncing a product's own device table (issue 10): tests/fixtures/foreign.py's schema, in a
database of its own, against the simulator over HTTP.

Covers import, edits on both sides under each policy, a conflict, deletes with and without a
soft-delete column, compare-and-set against the product's app editing mid-sync, columns outside
the mapping, a mapping that no longer fits, and crashes at each point of the two-database protocol.
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


def test_import_fills_the_product_table_and_leaves_other_columns_alone(make_foreign_harness):
    h = make_foreign_harness(devices=6)
    result = h.sync()
    assert result.status == "success", result
    rows = h.rows()
    remote = h.remote()
    assert len(rows) == 6 and set(rows["golioth_id"]) == set(remote)
    assert set(rows["device_type"]) == {"sensor"}  # insert_defaults fill what Golioth lacks
    assert rows["notes"].isna().all()
    for _, row in rows.iterrows():
        device = remote[row["golioth_id"]]
        assert row["display_name"] == device["name"]
        assert sorted(row["serials"]) == sorted(device["hardwareIds"])
        assert row["lifecycle"] == ("active" if device["enabled"] else "suspended")
    links = h.links()
    assert set(links["device_id"]) == set(rows["id"])
    second = h.sync().plan
    assert second.empty, second[["field", "action", "side", "old_value", "new_value"]].to_string()  # nothing left to do


@pytest.mark.parametrize("policy", ["local_wins", "remote_wins", "newest_wins", "manual"])
def test_edits_on_both_sides_under_each_policy(make_foreign_harness, policy):
    h = make_foreign_harness(devices=4, conflict_policy=policy)
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


def test_a_conflict_resolved_by_an_operator_reaches_both_sides(make_foreign_harness):
    from golioth_assets.store import conflicts as conflict_store

    h = make_foreign_harness(devices=3)
    conflict_id, device_id, gid = h.make_conflict(0, local="ours", remote="theirs")
    with h.engine.begin() as conn:
        conflict_store.resolve(conn, conflict_id, use="local", resolved_by="ops@example.com")
    assert h.sync().status == "success"
    assert h.local().loc[device_id, "name"] == h.remote()[gid]["name"] == "ours"
    assert h.conflict(conflict_id)["status"] == "applied"


def test_deletes_propagate_through_the_soft_delete_column(make_foreign_harness):
    h = make_foreign_harness(devices=4, allow_deletes=True)
    assert h.sync().status == "success"
    (a, ga), (b, gb), *_ = _pairs(h)
    h.delete_remote(ga)
    h.delete_local(b)
    assert h.sync().status == "success"
    rows = h.rows()
    assert rows.loc[a, "archived_at"] is not None and not pd_isna(rows.loc[a, "archived_at"])
    assert gb not in h.remote()
    assert len(rows) == 4  # soft deletes: no row is removed


def test_without_a_soft_delete_column_nothing_is_deleted_on_either_side(make_foreign_harness):
    h = make_foreign_harness(devices=4, allow_deletes=True, soft_delete=False)
    assert h.sync().status == "success"
    (a, ga), *_ = _pairs(h)
    h.delete_remote(ga)
    result = h.sync()
    assert result.status == "success"
    assert not (result.plan["action"] == "delete").any()
    rows = h.rows()
    assert len(rows) == 4 and rows["archived_at"].isna().all()
    assert h.links().set_index("device_id").loc[a, "sync_status"] == "unlinked"


def test_an_edit_by_the_product_during_the_sync_is_not_overwritten(make_foreign_harness):
    h = make_foreign_harness(devices=3)
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


def test_columns_outside_the_mapping_never_change_and_their_triggers_fire(make_foreign_harness):
    h = make_foreign_harness(devices=3)
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


def test_a_mapping_that_no_longer_fits_fails_before_any_write_naming_the_column(make_foreign_harness):
    h = make_foreign_harness(devices=3)
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
def test_a_crash_at_each_point_of_the_protocol_converges(make_foreign_harness, monkeypatch, point):
    h = make_foreign_harness(devices=4)
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
    assert (rows["golioth_id"] == new_gid).sum() == 1
    assert remote[ga]["name"] == "local-edit"
    assert h.local().loc[b, "name"] == "golioth-edit"
    assert_no_duplicates(h)
    with h.engine.connect() as conn:
        assert not intents.pending(conn, h.service.id)


def test_an_intent_whose_transaction_is_still_open_holds_the_local_writes(make_foreign_harness):
    h = make_foreign_harness(devices=2)
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
