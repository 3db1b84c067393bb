"""Issue 7, fault 7: edits on both sides while a sync applies.

The simulator slows every Golioth write down, so the apply phase of a sync lasts seconds; two
threads keep renaming devices meanwhile, one in the local table (as the product would), one in
the Golioth console. After the next sync, every edit must be accounted for: it is the final value
on both sides, or a later edit to the same field superseded it, or it sits in a recorded conflict.
Nothing is silently overwritten...

...except in one window that Golioth's API cannot close: it has no ETag or conditional PATCH. Each
update re-reads the device first and skips a field that moved, so what remains is a console edit
landing between that re-read and the PATCH of the same field. The random test classifies such losses precisely (the run had read the
device before the edit, and pushed a value for that very field) and allows only those; a
deterministic test demonstrates the window. docs/reliability.md documents it.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
import sqlalchemy as sa

from golioth_assets.engine import apply_remote
from golioth_assets.engine import sync as engine_sync
from golioth_assets.engine.sync import SyncRequest
from golioth_assets.golioth.client import GoliothClient
from tests.fixtures.faults import WRITE_COUNTS, WRITE_METHODS, assert_no_duplicates, bulk_edit_local

pytestmark = pytest.mark.slow

SLOW_WRITES = {"latency_ms": 250, "methods": list(WRITE_METHODS)}


class Editors:
    """Two threads renaming random devices, one per side, logging (time, side, device, value)."""

    def __init__(self, h, device_ids: list[str], pause: float = 0.02):
        self.h, self.device_ids, self.pause = h, device_ids, pause
        self.gid = {d: h.golioth_id_of(d) for d in device_ids}
        self.log: list[tuple[float, str, str, str]] = []
        self.stop = threading.Event()
        self.counter = itertools.count()
        self.threads = [
            threading.Thread(target=self._run, args=(side, seed)) for side, seed in (("local", 1), ("remote", 2))
        ]
        self.errors: list[BaseException] = []
        self.changed = threading.Condition()  # notified on each logged edit, an error, and the stop

    def _run(self, side: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not self.stop.is_set():
                device_id = rng.choice(self.device_ids)
                value = f"{side[0].upper()}{next(self.counter)}-{device_id[:6]}"
                if side == "local":
                    with self.h.engine.begin() as conn:
                        conn.execute(
                            sa.text("UPDATE devices SET name = :n WHERE id = :id"), {"n": value, "id": device_id}
                        )
                else:
                    self.h.edit_remote(self.gid[device_id], name=value)
                self.log.append((time.monotonic(), side, device_id, value))  # once applied
                with self.changed:
                    self.changed.notify_all()
                time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
            with self.changed:
                self.changed.notify_all()

    def __enter__(self) -> Editors:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        with self.changed:
            self.changed.notify_all()
        for t in self.threads:
            t.join(30)


def _run_sync_recording_fetch(h, monkeypatch, before_patch=None) -> tuple[threading.Thread, dict]:
    """Start a sync in a thread; record (monotonic clock) when its inventory fetch started and
    ended, and when each of its PATCHes got its answer (by Golioth device id). `before_patch(id)`,
    if given, runs in the sync's thread once an update's re-read check has passed, just before
    its PATCH is sent."""
    seen: dict = {"patched_at": {}}
    real_fetch = engine_sync.fetch_step
    real_update = GoliothClient.update_device

    def fetch_step(*args, **kwargs):
        seen.setdefault("fetch_started_at", time.monotonic())
        result = real_fetch(*args, **kwargs)
        seen.setdefault("fetched_at", time.monotonic())
        return result

    def update_device(self, device_id, body):
        seen.setdefault("patch_sent_at", time.monotonic())  # the re-read check has passed
        if before_patch is not None:
            before_patch(device_id)
        result = real_update(self, device_id, body)
        seen["patched_at"][device_id] = time.monotonic()
        return result

    monkeypatch.setattr(engine_sync, "fetch_step", fetch_step)
    monkeypatch.setattr(GoliothClient, "update_device", update_device)

    def run() -> None:
        try:
            seen["result"] = engine_sync.sync_organization(h.engine, SyncRequest(h.org))
        except BaseException as exc:  # noqa: BLE001
            seen["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, seen


def _pushed_names(h, sync_log_id: int) -> dict[str, str]:
    """device_id -> the name this run wrote to Golioth."""
    with h.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT device_id::text, new_value FROM sync_plan WHERE sync_log_id = :r AND side = 'remote' "
                "AND action = 'update' AND field = 'name' AND status = 'applied'"
            ),
            {"r": sync_log_id},
        ).all()
    return {d: v for d, v in rows}


def test_concurrent_edits_on_both_sides_during_a_sync_are_never_silently_lost(make_harness, monkeypatch):
    h = make_harness(devices=150, seed=71)
    assert h.sync().status == "success"
    ids = list(h.local().sort_index().index)
    # Pending work for the sync to apply: 120 local renames to push, 20 console renames to pull.
    bulk_edit_local(h, ids[:120], "pre")
    for d in ids[130:150]:
        h.edit_remote(h.golioth_id_of(d), name=f"pre-console-{d[:6]}")
    h.project.set_faults(**SLOW_WRITES)

    with Editors(h, ids) as editors:
        # The n-th update of Golioth waits (if need be) until the editors have made n edits since
        # the sync started: on a slow or loaded machine they might otherwise make few edits while
        # the sync applies; this way edits always spread over the whole apply phase. It waits
        # before the update's re-read, so the read-to-PATCH window stays what it is. (Once the
        # editors have stopped, updates of later syncs no longer wait.)
        started_with, updates = len(editors.log), itertools.count()
        real_update = apply_remote.RemoteWriter.update

        def keeping_pace(n: int) -> bool:
            return len(editors.log) - started_with >= n or bool(editors.errors) or editors.stop.is_set()

        def update_keeping_pace(self, *args, **kwargs):
            n = next(updates)
            with editors.changed:
                editors.changed.wait_for(lambda: keeping_pace(n), timeout=30)
            return real_update(self, *args, **kwargs)

        monkeypatch.setattr(apply_remote.RemoteWriter, "update", update_keeping_pace)
        thread, seen = _run_sync_recording_fetch(h, monkeypatch)
        thread.join(120)
    assert not editors.errors, editors.errors
    assert not thread.is_alive() and "error" not in seen, seen
    concurrent = seen["result"]
    h.project.clear_faults()
    edits = sorted(editors.log)
    assert len(edits) > 100 and {side for _, side, _, _ in edits} == {"local", "remote"}

    settle = h.sync()  # "the next sync"
    assert settle.status == "success"
    local = h.local()["name"].to_dict()
    remote_by_gid = {g: d["name"] for g, d in assert_no_duplicates(h).items()}
    remote = {d: remote_by_gid[editors.gid[d]] for d in ids}
    conflicts = h.conflicts()
    in_conflict: dict[str, set] = {}
    for _, c in conflicts.iterrows():
        assert c["field"] == "name", c
        in_conflict.setdefault(str(c["device_id"]), set()).update({c["local_value"], c["remote_value"]})

    # Both sides agree wherever no conflict is recorded.
    assert {d for d in ids if local[d] != remote[d]} <= set(in_conflict)

    pushed = _pushed_names(h, concurrent.sync_log_id)
    lost, raced = [], []
    for i, (at, side, device_id, value) in enumerate(edits):
        superseded = any(d == device_id for _, _, d, _ in edits[i + 1 :])
        final = local[device_id] == value == remote[device_id]
        if superseded or final or value in in_conflict.get(device_id, set()):
            continue
        # The known window: a console edit made after the run started reading Golioth and before
        # its PATCH of the same field answered is overwritten by that PATCH, and looks to every
        # later run like the value we pushed. (Read in time, it would have made a conflict; landed
        # after the PATCH, it would be in Golioth still, and pulled or in conflict.) A local edit
        # made meanwhile and pushed by the next run may then be what both sides show.
        patched_at = seen["patched_at"].get(editors.gid[device_id], 0.0)
        if side == "remote" and device_id in pushed and seen["fetch_started_at"] <= at <= patched_at:
            raced.append((device_id, value, pushed[device_id]))
        else:
            lost.append((side, device_id, value, local[device_id], remote[device_id]))
    assert not lost, f"edits silently overwritten: {lost[:10]}"
    print(
        f"\n{len(edits)} concurrent edits, {len(conflicts)} conflicts recorded, "
        f"{len(raced)} console edits lost in the known read-to-PATCH window: {raced[:3]}"
    )

    # And nothing is left to do but the recorded conflicts.
    after = h.sync()
    assert all(after.counts[k] == 0 for k in WRITE_COUNTS), after.counts


def test_known_limit_console_edit_between_read_and_patch_is_overwritten(make_harness, monkeypatch):
    """Golioth has no ETag: a PATCH cannot say "only if the name is still what I read". The sync
    re-reads the device just before the PATCH; a console edit landing after that re-read and before
    the PATCH is processed is lost. The edit is made exactly there: the sync's PATCH waits until
    the console edit has been answered (no race with the clock: the window is always hit).
    This test pins the window down; if it ever fails, the limit is gone: update docs/reliability.md."""
    h = make_harness(devices=5, seed=72)
    assert h.sync().status == "success"
    device_id = h.local().sort_index().index[0]
    gid = h.golioth_id_of(device_id)
    h.edit_local(device_id, name="local-edit")

    in_window: list[str] = []

    def console_edit_in_the_window(patched_gid: str) -> None:
        assert patched_gid == gid
        h.edit_remote(gid, name="console-edit-in-the-window")  # the re-read is done, the PATCH not sent
        in_window.append(h.remote()[gid]["name"])

    thread, seen = _run_sync_recording_fetch(h, monkeypatch, before_patch=console_edit_in_the_window)
    thread.join(60)
    assert not thread.is_alive() and "error" not in seen, seen
    assert seen["result"].status == "success"
    assert in_window == ["console-edit-in-the-window"]  # the edit had landed when the PATCH went out

    # Lost: both sides say "local-edit", and no conflict was recorded.
    assert h.remote()[gid]["name"] == "local-edit" == h.local().loc[device_id, "name"]
    assert h.conflicts().empty
    assert h.sync().plan.empty


@pytest.mark.parametrize("late_edit", [{"name": "local-late-edit"}, {"enabled": "flipped"}])
def test_local_edit_between_the_plan_and_the_local_write_is_kept(make_harness, late_edit):
    """Regression. Every local write of a sync is compare-and-set on the row's version, but the
    local step used to take the version it read itself, after the Golioth writes: a local edit
    made in between (the run's slow part) was silently overwritten by a pull planned before it.
    Now the versions the plan was made from are kept with the run, and the write skips."""
    h = make_harness(devices=5, seed=73)
    assert h.sync().status == "success"
    device_id = h.local().sort_index().index[0]
    if late_edit.get("enabled") == "flipped":
        # Local ids are random UUIDs, so which device comes first (and whether the simulator seeded it
        # enabled) varies by run; writing the value it already has would bump no version at all.
        late_edit = {"enabled": not bool(h.local().loc[device_id, "enabled"])}
    gid = h.golioth_id_of(device_id)
    h.edit_remote(gid, name="console-name")  # the run will pull this...

    request = SyncRequest(h.org)
    sync_log_id = engine_sync.begin(h.engine, h.service, request)
    with engine_sync.open_client(h.service) as client:
        engine_sync.fetch_step(h.engine, h.service, client, engine_sync.Scope(), sync_log_id)
        engine_sync.plan_step(h.engine, h.service, request, engine_sync.Scope(), sync_log_id)
        h.edit_local(device_id, **late_edit)  # ...but the row changes after the plan was made
        engine_sync.remote_step(h.engine, h.service, client, sync_log_id)
    outcome = engine_sync.local_step(h.engine, h.service, sync_log_id)
    engine_sync.finish(h.engine, sync_log_id)
    assert outcome.counts["skipped"] == 1 and outcome.counts["updated_local"] == 0
    for column, value in late_edit.items():
        assert h.local().loc[device_id, column] == value  # kept

    result = h.sync()
    assert result.status == "success"
    local, remote = h.local().loc[device_id], h.remote()[gid]
    if "name" in late_edit:
        # Both sides renamed it since they last agreed: a conflict for the operator, both values kept.
        [conflict] = h.conflicts().to_dict("records")
        assert (conflict["field"], conflict["local_value"], conflict["remote_value"]) == (
            "name",
            "local-late-edit",
            "console-name",
        )
        assert local["name"] == "local-late-edit" and remote["name"] == "console-name"
    else:
        # Different fields: both edits land on both sides, no conflict.
        assert h.conflicts().empty
        assert local["name"] == remote["name"] == "console-name"
        assert bool(local["enabled"]) is late_edit["enabled"] and remote.get("enabled", False) is late_edit["enabled"]
    assert all(h.sync().counts[k] == 0 for k in WRITE_COUNTS)
