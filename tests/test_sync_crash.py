"""Crash safety (issue 3, "Apply"): kill a sync part-way, run again, and check that it converges
with no duplicate devices in Golioth and no lost edits.

The crash is injected in the HTTP transport: the first N writes reach the simulator, then the
"process dies" (a BaseException no handler catches: nothing after it runs, no bookkeeping, no
link, no log row update). With N counted across creates, PATCHes, LightDB writes and tag
creation, a crash lands between a Golioth write and its local bookkeeping, including between a
Golioth create and the link insert. One test kills a real subprocess with SIGKILL.

Every test runs twice: on the built-in `devices` table, and on a product's own table in a database
of its own (examples/acme_fleet under its mapping), where the local step's writes and golioth-sync's
bookkeeping are two transactions in two databases (docs/reliability.md, "Two databases").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest
import sqlalchemy as sa

from golioth_assets.engine import local_apply
from golioth_assets.engine.sync import SyncRequest, open_client, sync_organization
from tests.fixtures.faults import WRITE_METHODS, assert_no_duplicates


@pytest.fixture(params=["builtin", "acme_fleet"])
def make_any_harness(request):
    """The built-in table, or examples/acme_fleet's table in its own database."""
    return request.getfixturevalue("make_harness" if request.param == "builtin" else "make_acme_harness")


class Crash(BaseException):
    """The process died here: not an Exception, so no `except Exception` handler recovers from it."""


class CrashAfterWrites(httpx.BaseTransport):
    """Lets the first `writes` write requests through to the server, then crashes: the last one is
    applied by the server but its response is never seen; every later request fails too."""

    def __init__(self, writes: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.limit = writes
        self.sent: list[str] = []
        self.dead = False
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_write = request.method in WRITE_METHODS
        with self._lock:
            if self.dead or (is_write and len(self.sent) >= self.limit):
                self.dead = True
                raise Crash(f"crashed before {request.method} {request.url.path}")
            if is_write:
                self.sent.append(f"{request.method} {request.url.path}")
                last = len(self.sent) == self.limit
        response = self.inner.handle_request(request)
        if is_write and last:
            response.read()
            with self._lock:
                self.dead = True
            raise Crash(f"crashed after {request.method} {request.url.path} reached Golioth")
        return response

    def close(self) -> None:
        self.inner.close()


def crashed_sync(h, writes: int) -> CrashAfterWrites:
    """One sync that dies after `writes` Golioth writes."""
    transport = CrashAfterWrites(writes)
    client = open_client(h.service, transport=transport)
    try:
        with pytest.raises(Crash):
            sync_organization(h.engine, SyncRequest(h.org), client=client)
    finally:
        client.close()
    assert len(transport.sent) == writes, transport.sent
    return transport


def edit_both_sides(h) -> dict:
    """Edits and creates on both sides; returns what must survive any crash."""
    local = h.local().sort_index()
    ids = list(local.index)
    expected_local: dict[str, dict] = {}
    for i, device_id in enumerate(ids[:6]):
        columns = {"name": f"renamed-{i}", "tags": ["crash-tag", "production"] if i % 2 else ["beta"]}
        if i == 2:
            # The opposite of what the simulator seeded (some devices start disabled): a real edit.
            columns["enabled"] = not bool(local.loc[device_id, "enabled"])
        if i == 3:
            columns["desired_state"] = {"led": "blink", "interval": 5}
        h.edit_local(device_id, **columns)
        expected_local[device_id] = columns
    new_ids = {
        h.create_local(name="born-local-a", hardware_ids=["born-a"], tags=["crash-tag"]): {"name": "born-local-a"},
        h.create_local(name="born-local-b"): {"name": "born-local-b"},  # no hardware id: one is generated first
        h.create_local(name="born-local-c", hardware_ids=["born-c"], enabled=False): {
            "name": "born-local-c",
            "enabled": False,
        },
    }
    h.edit_local(next(iter(new_ids)), desired_state={"mode": "eco"})
    new_ids[next(iter(new_ids))]["desired_state"] = {"mode": "eco"}
    expected_local.update(new_ids)
    expected_remote: dict[str, dict] = {}
    for i, device_id in enumerate(ids[6:8]):
        gid = h.golioth_id_of(device_id)
        h.edit_remote(gid, name=f"golioth-renamed-{i}")
        expected_remote[gid] = {"name": f"golioth-renamed-{i}"}
    born = h.create_remote(name="born-remote", hardwareIds=["born-r"])
    expected_remote[born["id"]] = {"name": "born-remote"}
    return {"local": expected_local, "remote": expected_remote}


def assert_edits_kept(h, expected: dict) -> None:
    remote, local, tags = h.remote(), h.local(), h.tag_names()
    for device_id, columns in expected["local"].items():
        gid = h.golioth_id_of(device_id)
        for column, value in columns.items():
            assert _plain(local.loc[device_id, column]) == value, (device_id, column)
            if column == "tags":
                assert sorted(tags[t] for t in remote[gid].get("tagIds", [])) == sorted(value)
            elif column == "desired_state":
                assert remote[gid].get("data") == value
            elif column == "enabled":
                assert remote[gid].get("enabled", False) is value
            else:
                assert remote[gid][column] == value
    for gid, columns in expected["remote"].items():
        device_id = h.device_id_of(gid)
        for column, value in columns.items():
            assert local.loc[device_id, column] == remote[gid][column] == value


def _plain(value):
    """numpy scalars and arrays as plain Python values."""
    return value.tolist() if hasattr(value, "tolist") else value


@pytest.mark.parametrize("writes", [1, 2, 3, 5, 8, 13])
def test_crash_after_n_golioth_writes_then_the_next_run_converges(make_any_harness, writes):
    h = make_any_harness(devices=10, seed=5)
    assert h.sync().status == "success"
    expected = edit_both_sides(h)

    crashed_sync(h, writes)

    recovery = h.sync()
    assert recovery.status == "success", recovery.counts
    assert h.conflicts().empty, h.conflicts()[["field", "conflict_type", "local_value", "remote_value"]]
    remote = assert_no_duplicates(h)
    assert len(remote) == 10 + 3 + 1
    assert_edits_kept(h, expected)
    assert h.sync().plan.empty


def test_crash_between_golioth_create_and_link_insert_refinds_the_device(make_any_harness):
    """The create reached Golioth, the process died before it learned the id: the next run must find
    the device again by hardware id (including a generated one) instead of creating a second one."""
    h = make_any_harness(devices=2, seed=5)
    h.sync()
    generated = h.create_local(name="half-created", tags=["fresh"], enabled=False)
    h.edit_local(generated, desired_state={"k": 1})
    transport = crashed_sync(h, 2)  # POST /tags (the new tag), then POST /devices: crash
    assert transport.sent[-1].endswith("/devices")
    hw = h.local().loc[generated, "hardware_ids"]
    assert len(hw) == 1 and hw[0].startswith("gs-"), "the generated hardware id is stored before the create"
    assert generated not in set(h.links()["device_id"])  # the crash came before the link
    assert [d["hardwareIds"] for d in h.remote().values() if d["name"] == "half-created"] == [hw]

    assert h.sync().status == "success"
    remote = assert_no_duplicates(h)
    assert len(remote) == 3
    gid = h.golioth_id_of(generated)
    assert remote[gid]["hardwareIds"] == hw
    # The create's follow-ups that never ran (disable, desired state) are finished, not lost.
    assert remote[gid].get("enabled", False) is False
    assert remote[gid].get("data") == {"k": 1}
    assert h.conflicts().empty
    assert h.sync().plan.empty


def test_crash_in_the_local_step_after_golioth_writes(make_any_harness, monkeypatch):
    """Golioth got the writes, the local transaction (pulls, base snapshots, audit) never committed."""
    h = make_any_harness(devices=6, seed=5)
    h.sync()
    # Both from one sorted read: rows come back in no fixed order, so two reads could pick one device twice.
    ids = h.local().sort_index().index
    device_id = ids[0]
    gid = h.golioth_id_of(device_id)
    pulled_gid = h.golioth_id_of(ids[1])
    h.edit_local(device_id, name="pushed-before-crash")
    h.edit_remote(pulled_gid, name="pulled-before-crash")

    def crash(*args, **kwargs):
        raise Crash("died in the local step")

    with monkeypatch.context() as m:
        m.setattr(local_apply, "write_local", crash)
        with pytest.raises(Crash):
            h.sync()
    assert h.remote()[gid]["name"] == "pushed-before-crash"
    assert h.local().loc[h.device_id_of(pulled_gid), "name"] != "pulled-before-crash"  # rolled back

    result = h.sync()
    assert result.status == "success"
    # The push already happened: the next run only records the agreement, it does not push again.
    agree = result.plan[(result.plan["device_id"] == device_id) & (result.plan["field"] == "name")]
    assert agree["action"].tolist() == ["agree"]
    assert h.local().loc[h.device_id_of(pulled_gid), "name"] == "pulled-before-crash"
    assert h.conflicts().empty
    assert_no_duplicates(h)
    assert h.sync().plan.empty


def test_local_edit_made_during_a_crashed_run_is_not_lost(make_any_harness):
    h = make_any_harness(devices=4, seed=5)
    h.sync()
    device_id = h.local().index[0]
    h.edit_local(device_id, name="first-edit")
    crashed_sync(h, 1)
    h.edit_local(device_id, name="second-edit", tags=["late"])  # while "the crashed process" was down
    assert h.sync().status == "success"
    gid = h.golioth_id_of(device_id)
    assert h.remote()[gid]["name"] == h.local().loc[device_id, "name"] == "second-edit"
    assert [h.tag_names()[t] for t in h.remote()[gid]["tagIds"]] == ["late"]
    assert h.sync().plan.empty


_KILLER = textwrap.dedent(
    """
    import os, signal, sys, threading
    import httpx
    from sqlalchemy import create_engine
    from golioth_assets.engine.sync import SyncRequest, open_client, sync_organization
    from golioth_assets.store import services

    url, org, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = create_engine(url)
    lock, sent = threading.Lock(), []

    class KillAfterWrites(httpx.HTTPTransport):
        def handle_request(self, request):
            write = request.method in ("POST", "PATCH", "PUT", "DELETE")
            response = super().handle_request(request)
            if write:
                with lock:
                    sent.append(request.url.path)
                    if len(sent) >= limit:
                        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally, no atexit
            return response

    with engine.connect() as conn:
        service = services.service_for_org(conn, org)
    sync_organization(engine, SyncRequest(org), client=open_client(service, transport=KillAfterWrites()))
    print("finished without being killed")
    """
)


def test_sigkill_mid_apply_then_the_next_run_converges(make_any_harness, db_url):
    h = make_any_harness(devices=10, seed=6)
    assert h.sync().status == "success"
    expected = edit_both_sides(h)
    env = {**os.environ, h.service.api_key_env: h.project.api_key}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, db_url.render_as_string(hide_password=False), h.org, "6"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    with h.engine.connect() as conn:
        stuck = conn.execute(
            sa.text("SELECT status FROM golioth_sync_log WHERE organization_id = :o ORDER BY id DESC LIMIT 1"),
            {"o": h.org},
        ).scalar_one()
    assert stuck == "running"  # the killed run never finished its log row

    assert h.sync().status == "success"
    assert h.conflicts().empty
    assert len(assert_no_duplicates(h)) == 14
    assert_edits_kept(h, expected)
    assert h.sync().plan.empty
