"""store/webhook_events.py against the real database: batch insert, fast path, lifecycle."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from golioth_assets.store import webhook_events as inbox
from golioth_assets.store.webhook_events import NewEvent, ObservedUpdate, fold_observed
from golioth_assets.webhooks.testing import make_webhook_service
from tests.fixtures.webhooks import make_linked_device

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def service(engine, org) -> int:
    return make_webhook_service(engine, org, signing_key_env="GOLIOTH_TEST_STORE_SECRET")


def event(service_id, org, event_id=None, *, event_type="device.updated", device="dev-1", observed=None) -> NewEvent:
    return NewEvent(
        service_id=service_id,
        organization_id=org,
        event_id=event_id or uuid.uuid4().hex,
        source="signed",
        event_type=event_type,
        golioth_device_id=device,
        payload_json=json.dumps({"type": event_type, "device_id": device}),
        observed=observed,
    )


def store(engine, events) -> list[bool]:
    with engine.begin() as conn:
        return inbox.store_events(conn, events)


def statuses(engine, service_id) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text("SELECT event_id, status FROM webhook_events WHERE service_id = :s"), {"s": service_id}
            ).all()
        )


def device_row(engine, device_id) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT * FROM devices WHERE id = :id"), {"id": device_id}).mappings().one())


# --- storing ----------------------------------------------------------------------------------


def test_store_is_idempotent_within_and_across_batches(engine, org, service):
    a, b = event(service, org, "a"), event(service, org, "b")
    assert store(engine, [a, b, event(service, org, "a")]) == [True, True, False]
    assert store(engine, [event(service, org, "b"), event(service, org, "c")]) == [False, True]
    assert sorted(statuses(engine, service)) == ["a", "b", "c"]


def test_a_rolled_back_batch_leaves_nothing(engine, org, service):
    with pytest.raises(RuntimeError), engine.begin() as conn:
        inbox.store_events(conn, [event(service, org, "x")])
        raise RuntimeError("the commit never happens")
    assert statuses(engine, service) == {}


def test_fast_path_applies_observed_fields_and_marks_events_processed(engine, org, service):
    local = make_linked_device(engine, org, service, "dev-1")
    before = device_row(engine, local)
    data = ObservedUpdate(
        at=T0,
        status="online",
        last_report=T0,
        reported={"battery": 80, "fw": {"main": "1.0"}},
        firmware={"main": "1.0.0"},
    )
    assert store(engine, [event(service, org, "d1", event_type="device.data", observed=data)]) == [True]

    after = device_row(engine, local)
    assert after["status"] == "online"
    assert after["last_report"] == T0
    assert after["reported_state"] == {"battery": 80, "fw": {"main": "1.0"}}
    assert after["firmware_versions"] == {"main": "1.0.0"}
    assert (after["version"], after["updated_at"]) == (before["version"], before["updated_at"])
    assert statuses(engine, service) == {"d1": "processed"}


def test_fast_path_never_goes_back_in_time(engine, org, service):
    local = make_linked_device(engine, org, service, "dev-1")
    newer = ObservedUpdate(
        at=T0 + timedelta(minutes=1), status="online", last_report=T0 + timedelta(minutes=1), reported={"battery": 40}
    )
    older = ObservedUpdate(at=T0, status="offline", last_seen_offline=T0, last_report=T0, reported={"battery": 90})
    store(engine, [event(service, org, "new", event_type="device.data", observed=newer)])
    store(engine, [event(service, org, "old", event_type="device.offline", observed=older)])

    row = device_row(engine, local)
    assert row["reported_state"] == {"battery": 40}
    assert row["status"] == "online"
    assert row["last_report"] == T0 + timedelta(minutes=1)
    assert row["last_seen_offline"] == T0  # a timestamp is still recorded, as the maximum


def test_one_batch_with_several_events_of_one_device(engine, org, service):
    local = make_linked_device(engine, org, service, "dev-1")
    batch = [
        event(
            service,
            org,
            "3",
            event_type="device.offline",
            observed=ObservedUpdate(
                at=T0 + timedelta(seconds=3), status="offline", last_seen_offline=T0 + timedelta(seconds=3)
            ),
        ),
        event(
            service,
            org,
            "1",
            event_type="device.data",
            observed=ObservedUpdate(
                at=T0 + timedelta(seconds=1),
                status="online",
                last_report=T0 + timedelta(seconds=1),
                reported={"a": 1, "b": 1},
            ),
        ),
        event(
            service,
            org,
            "2",
            event_type="device.data",
            observed=ObservedUpdate(
                at=T0 + timedelta(seconds=2), status="online", last_report=T0 + timedelta(seconds=2), reported={"b": 2}
            ),
        ),
    ]
    store(engine, batch)
    row = device_row(engine, local)
    assert row["status"] == "offline"
    assert row["reported_state"] == {"a": 1, "b": 2}
    assert set(statuses(engine, service).values()) == {"processed"}


def test_a_duplicate_does_not_replay_old_data(engine, org, service):
    local = make_linked_device(engine, org, service, "dev-1")
    first = event(
        service,
        org,
        "e1",
        event_type="device.data",
        observed=ObservedUpdate(at=T0, last_report=T0, reported={"battery": 90}),
    )
    store(engine, [first])
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE devices SET reported_state = '{\"battery\": 10}', last_report = NULL WHERE id = :id"),
            {"id": local},
        )
    assert store(engine, [first]) == [False]
    assert device_row(engine, local)["reported_state"] == {"battery": 10}


def test_deleted_and_unknown_devices_leave_events_pending(engine, org, service):
    deleted = make_linked_device(engine, org, service, "dev-gone")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE devices SET deleted_at = now() WHERE id = :id"), {"id": deleted})
    obs = ObservedUpdate(at=T0, status="online", last_seen_online=T0)
    store(
        engine,
        [
            event(service, org, "gone", event_type="device.online", device="dev-gone", observed=obs),
            event(service, org, "stranger", event_type="device.online", device="dev-unknown", observed=obs),
        ],
    )
    assert statuses(engine, service) == {"gone": "pending", "stranger": "pending"}
    assert device_row(engine, deleted)["status"] is None


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(6))), st.lists(st.sampled_from(["online", "offline", None]), min_size=6, max_size=6))
def test_fold_is_independent_of_arrival_order(order, kinds):
    updates = [
        (
            (1, "d"),
            ObservedUpdate(
                at=T0 + timedelta(seconds=i),
                status=kinds[i],
                reported={"k": i, f"only{i}": i},
                last_report=T0 + timedelta(seconds=i),
            ),
        )
        for i in range(6)
    ]
    folded = fold_observed([updates[i] for i in order])[(1, "d")]
    expected_status = next((k for k in reversed(kinds) if k is not None), None)
    assert folded.status == expected_status
    assert folded.reported == {"k": 5, **{f"only{i}": i for i in range(6)}}
    assert folded.last_report == T0 + timedelta(seconds=5)


# --- lifecycle --------------------------------------------------------------------------------


def _pending(engine, org, service, n, device_prefix="dev"):
    events = [event(service, org, f"e{i}", device=f"{device_prefix}-{i % 2}") for i in range(n)]
    store(engine, events)


def test_claim_groups_by_organization_and_skips_locked_rows(engine, org, service):
    _pending(engine, org, service, 5)
    with engine.connect() as first, first.begin():
        groups = inbox.claim_pending(first, limit=3, claimed_by=f"{org}/run-a", organization_id=org)
        # While run-a's claim is uncommitted, a second claimer skips its rows instead of waiting.
        with engine.begin() as second:
            other = inbox.claim_pending(second, limit=10, claimed_by=f"{org}/run-b", organization_id=org)
    assert len(groups) == 1
    group = groups[0]
    assert (group.organization_id, group.service_id, len(group.event_ids)) == (org, service, 3)
    assert group.event_ids == sorted(group.event_ids)
    assert group.golioth_device_ids == ["dev-0", "dev-1"]
    assert len(other[0].event_ids) == 2
    assert set(group.event_ids).isdisjoint(other[0].event_ids)
    # Claimed events are not claimed again.
    with engine.begin() as conn:
        assert inbox.claim_pending(conn, limit=10, claimed_by=f"{org}/run-c", organization_id=org) == []


def test_claims_can_be_renamed_and_carry_their_attempt_count(engine, org, service):
    _pending(engine, org, service, 2)
    with engine.begin() as conn:
        assert org in inbox.organizations_with_work(conn)
        inbox.claim_pending(conn, limit=1, claimed_by=f"{org}/token", organization_id=org)
        inbox.release_failed(conn, f"{org}/token", "boom")
        [group] = inbox.claim_pending(conn, limit=2, claimed_by=f"{org}/token", organization_id=org)
        assert group.attempts == 1
        assert inbox.rename_claim(conn, f"{org}/token", f"{org}/run-key") == 2
        assert inbox.mark_processed(conn, f"{org}/token") == 0
        assert inbox.mark_processed(conn, f"{org}/run-key") == 2
        assert org not in inbox.organizations_with_work(conn)


def test_mark_processed_finishes_only_the_runs_own_claims(engine, org, service):
    _pending(engine, org, service, 4)
    with engine.begin() as conn:
        inbox.claim_pending(conn, limit=3, claimed_by=f"{org}/run-a", organization_id=org)
        assert inbox.mark_processed(conn, f"{org}/run-a") == 3
        assert inbox.mark_processed(conn, f"{org}/run-a") == 0
    assert sorted(statuses(engine, service).values()) == ["pending", "processed", "processed", "processed"]


def test_failed_events_retry_then_die_and_replay_requeues_them(engine, org, service):
    _pending(engine, org, service, 2)
    for attempt in range(1, 4):
        with engine.begin() as conn:
            groups = inbox.claim_pending(conn, limit=10, claimed_by=f"{org}/run-{attempt}", organization_id=org)
            assert len(groups[0].event_ids) == 2, f"attempt {attempt} should get both events back"
            requeued, dead = inbox.release_failed(conn, f"{org}/run-{attempt}", "Golioth said 500", max_attempts=3)
        assert (requeued, dead) == ((2, 0) if attempt < 3 else (0, 2))

    with engine.connect() as conn:
        dead_rows = inbox.list_events(conn, status="dead", organization_id=org)
        assert inbox.claim_pending(conn, limit=10, claimed_by=f"{org}/run-x", organization_id=org) == []
        conn.rollback()
    assert [(r.attempts, r.last_error) for r in dead_rows] == [(3, "Golioth said 500")] * 2

    with engine.begin() as conn:
        assert inbox.replay_dead(conn, ids=[dead_rows[0].id]) == 1
        assert inbox.replay_dead(conn, organization_id=org) == 1
        assert inbox.replay_dead(conn, organization_id=org) == 0
    with engine.connect() as conn:
        assert inbox.count_by_status(conn, org)["pending"] == 2
        assert {r.attempts for r in inbox.list_events(conn, organization_id=org)} == {0}


def test_release_failed_records_a_failed_status_with_attempts(engine, org, service):
    _pending(engine, org, service, 1)
    with engine.begin() as conn:
        inbox.claim_pending(conn, limit=1, claimed_by=f"{org}/run-a", organization_id=org)
        inbox.release_failed(conn, f"{org}/run-a", "boom", max_attempts=5)
        [row] = inbox.list_events(conn, organization_id=org)
    assert (row.status, row.attempts, row.claimed_by, row.last_error) == ("failed", 1, None, "boom")


def test_stale_claims_count_as_a_failed_attempt(engine, org, service):
    _pending(engine, org, service, 1)
    with engine.begin() as conn:
        inbox.claim_pending(conn, limit=1, claimed_by=f"{org}/crashed-run", organization_id=org)
        conn.execute(
            sa.text("UPDATE webhook_events SET claimed_at = now() - interval '2 hours' WHERE organization_id = :org"),
            {"org": org},
        )
        assert inbox.release_stale_claims(conn, timedelta(hours=1)) == (1, 0)
        [row] = inbox.list_events(conn, organization_id=org)
    assert (row.status, row.attempts) == ("failed", 1)


def test_prune_deletes_only_old_processed_events(engine, org, service):
    _pending(engine, org, service, 3)
    with engine.begin() as conn:
        inbox.claim_pending(conn, limit=2, claimed_by=f"{org}/run-a", organization_id=org)
        inbox.mark_processed(conn, f"{org}/run-a")
        conn.execute(
            sa.text(
                "UPDATE webhook_events SET processed_at = now() - interval '8 days' "
                "WHERE organization_id = :org AND event_id = 'e0'"
            ),
            {"org": org},
        )
        assert inbox.prune_processed(conn, timedelta(days=7)) == 1
    assert statuses(engine, service) == {"e1": "processed", "e2": "pending"}


def test_list_filters_and_rejects_unknown_status(engine, org, service):
    _pending(engine, org, service, 3)
    with engine.connect() as conn:
        newest_first = inbox.list_events(conn, organization_id=org, limit=2, with_payload=True)
        assert [r.event_id for r in newest_first] == ["e2", "e1"]
        assert newest_first[0].payload["type"] == "device.updated"
        assert inbox.list_events(conn, status="dead", organization_id=org) == []
        with pytest.raises(ValueError):
            inbox.list_events(conn, status="exploded")


# --- the group committer ------------------------------------------------------------------------


def test_one_bad_event_does_not_sink_its_batch(engine, org, service):
    import asyncio

    from golioth_assets.webhooks.batcher import EventRejected, GroupCommitter

    good = [event(service, org, f"ok-{i}") for i in range(3)]
    orphan = event(987_654_321, org, "no-such-service")  # the foreign key refuses it
    committer = GroupCommitter(engine, writers=1, max_batch=10)

    async def submit_all():
        tasks = [asyncio.ensure_future(committer.submit(e)) for e in [good[0], orphan, *good[1:]]]
        # All four queued before the writer starts, so they form one batch: each submit queues its
        # event in its first step, so a few turns of the loop are enough.
        for _ in range(100):
            if committer.depth == len(tasks):
                break
            await asyncio.sleep(0)
        assert committer.depth == len(tasks)
        committer.start()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        outcomes = asyncio.run(submit_all())
    finally:
        committer.stop()
    assert outcomes[0] is True and outcomes[2:] == [True, True]
    assert isinstance(outcomes[1], EventRejected)
    assert sorted(statuses(engine, service)) == ["ok-0", "ok-1", "ok-2"]
