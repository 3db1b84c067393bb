"""Issue 7, fault 3: SIGKILL a real `golioth-sync sync` process part-way through its Golioth writes.

tests/test_sync_crash.py crashes the engine at exact points (an exception in the transport, and one
self-inflicted SIGKILL). Here the whole production path runs in a child process, as an operator
would start it: `golioth-sync sync --org …` → runtime.prepare() → a Dagster run (PostgreSQL run
storage, the project's dagster.yaml with its pools) → the sync assets. The test watches the
simulator's request counters from outside and kills the process group when a chosen number of
Golioth writes has gone through: nothing in the child knows it is about to die.

Kills in a row, with new local edits between them (some re-editing devices whose previous edit
was in flight when the process died), then one run that is left to finish. Afterwards: Golioth
holds no duplicate device, every link is one-to-one, and the latest local edit of every device is
what both sides show.

Each test runs on the built-in `devices` table and on a product's own table in a database of its
own (examples/acme_fleet). The mapped run is smaller (half the devices, two kills instead of four):
what it adds is the second database (their table, our bookkeeping, generated hardware ids stored
in their table before a create), not more kill points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from golioth_assets.store import database
from tests.fixtures.database import drop_database
from tests.fixtures.faults import (
    WRITE_METHODS,
    assert_no_duplicates,
    bulk_create_local,
    bulk_edit_local,
    successful_writes,
    sync_log_rows,
    write_requests,
)

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("golioth-sync"))
# Writes take 500 ms each in the simulator (reads stay fast). The client has at most 16 requests in
# flight, so at most 16 writes complete per 500 ms whatever the machine's speed: the apply phase
# lasts many seconds, and what completes between the watcher's look at the counters and the kill is
# a few writes (up to one batch of 16, more only if the watcher stalls for a whole latency).
WRITE_LATENCY = {"latency_ms": 500, "methods": list(WRITE_METHODS)}


@pytest.fixture(params=["builtin", "acme_fleet"])
def local_table(request) -> str:
    return request.param


@pytest.fixture
def make_any_harness(request, local_table):
    """The built-in table, or examples/acme_fleet's table in its own database."""
    return request.getfixturevalue("make_harness" if local_table == "builtin" else "make_acme_harness")


@pytest.fixture
def cli_env(db_url, tmp_path):
    """The environment `golioth-sync` runs with: our test database for the app tables, a fresh
    database for Dagster's run storage, a throwaway GOLIOTH_SYNC_HOME."""
    dagster_url = db_url.set(database=f"gs_faults_dagster_{uuid.uuid4().hex[:8]}")
    database.ensure_database_exists(dagster_url)
    env = {
        **os.environ,
        "GOLIOTH_SYNC_HOME": str(tmp_path / "home"),
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "DAGSTER_DATABASE_URL": dagster_url.render_as_string(hide_password=False),
        "COLUMNS": "200",
        "PYTHONFAULTHANDLER": "1",  # a hung child dumps its threads' stacks on SIGABRT (see run_cli)
    }
    env.pop("DAGSTER_HOME", None)
    try:
        yield env
    finally:
        drop_database(dagster_url)


def run_cli(h, env: dict, tmp_path: Path, *, kill_after_writes: int | None, timeout: float = 180) -> dict:
    """`golioth-sync sync --org …` in its own process group. With kill_after_writes, SIGKILL it
    as soon as the simulator has answered that many write requests of this run. Returns once the
    simulator has answered every request the process sent (see `_drained_stats`)."""
    _drained_stats(h)  # nothing an earlier run sent can still be counted as this run's
    h.project.reset_stats()
    log = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CLI, "sync", "--org", h.org],
            env={**env, **h.cli_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        killed_at = None
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    os.kill(proc.pid, signal.SIGABRT)  # faulthandler: every thread's stack into the log
                    proc.wait(10)
                    raise AssertionError(f"the sync did not finish in {timeout}s:\n{log.read_text()[-6000:]}")
                if kill_after_writes is not None:
                    writes = write_requests(h.project.stats())
                    if writes >= kill_after_writes:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(30)
                        killed_at = writes
                        break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    stats = _drained_stats(h)
    return {
        "returncode": proc.returncode,
        "killed_at": killed_at,
        "writes": write_requests(stats),  # any status: those in flight at the kill end as 499s
        "successful_writes": successful_writes(stats),
        "output": log.read_text(),
    }


def _drained_stats(h, timeout: float = 60) -> dict:
    """The project's request stats once no request is in flight. Writes still sleeping out their
    latency when the process died are answered 499 (the simulator finds the client gone when it
    reads the body, and applies nothing) and counted then; waiting for that, instead of a fixed
    sleep, makes the counts final, and keeps them out of the next run's counts."""
    deadline = time.monotonic() + timeout
    while (stats := h.project.stats())["inFlight"]:
        assert time.monotonic() < deadline, f"requests still in flight after {timeout}s: {stats}"
        time.sleep(0.05)
    return stats


def test_sigkill_during_golioth_writes_at_several_points_then_converges(
    make_any_harness, local_table, cli_env, tmp_path
):
    mapped = local_table != "builtin"
    scale = 0.5 if mapped else 1.0  # the built-in table: 300 devices; the mapped one: 150

    def n(count: float) -> int:
        return round(count * scale)

    h = make_any_harness(devices=n(300), seed=31)
    assert h.sync().status == "success"
    ids = list(h.local().sort_index().index)
    h.project.set_faults(**WRITE_LATENCY)

    # Round 1: 260 renames (60 of them with a new tag), 30 creates (half without a hardware id,
    # which the sync generates and stores before the create), 20 console renames to pull. About
    # 300 writes in all: the four kills take about 190 of them plus what lands meanwhile, which
    # leaves round 4 plenty to die in the middle of.
    expected = bulk_edit_local(h, ids[: n(260)], "r1")
    h.set_tags_many(ids[: n(60)], ["killed-1"])
    expected.update(bulk_create_local(h, n(30), "born-r1", with_hardware_ids=False))
    pulled = {h.golioth_id_of(d): f"console-{d[:8]}" for d in ids[n(280) : n(300)]}
    for gid, name in pulled.items():
        h.edit_remote(gid, name=name)
    kill_points = [n(25)]
    killed = [run_cli(h, cli_env, tmp_path, kill_after_writes=kill_points[-1])]

    # Round 2: re-edit 50 devices of round 1 (their first edit may be half-applied), 10 more creates.
    expected.update(bulk_edit_local(h, ids[n(150) : n(200)], "r2"))
    h.set_tags_many(ids[n(40) : n(60)], ["killed-2"])
    expected.update(bulk_create_local(h, n(10), "born-r2"))
    kill_points.append(n(120))
    killed.append(run_cli(h, cli_env, tmp_path, kill_after_writes=kill_points[-1]))

    # Rounds 3 and 4: no new edits; die part-way through what is left each time. Four kills: as
    # many as the golioth_api pool has slots, each killed run holding one (see below).
    for kill_after in () if mapped else (35, 8):
        kill_points.append(kill_after)
        killed.append(run_cli(h, cli_env, tmp_path, kill_after_writes=kill_after))

    for run, kill_after in zip(killed, kill_points):
        # Killed (not finished) after that many writes: the kills really interrupted the writes.
        assert run["returncode"] == -signal.SIGKILL, run["output"][-3000:]
        assert run["killed_at"] is not None and run["killed_at"] >= kill_after, run["killed_at"]
    assert sum(run["writes"] for run in killed) >= sum(kill_points)
    runs = sync_log_rows(h)
    assert [r["status"] for r in runs[-len(killed) :]] == ["running"] * len(killed)  # nobody finished
    killed_run_ids = [r["dagster_run_id"] for r in runs[-len(killed) :]]

    # The next run is left alone: it finishes, and a run after it has nothing left to do. It must
    # not wait for ever on the pool slots the killed runs held (it did, before the CLI learned to
    # fail runs whose process is gone and free their slots).
    recovery = run_cli(h, cli_env, tmp_path, kill_after_writes=None, timeout=120)
    assert recovery["returncode"] == 0, recovery["output"][-3000:]
    assert sync_log_rows(h)[-1]["status"] == "success"
    # The dead runs are a note after this run's own output, never its first line: a script takes
    # the first run id it sees.
    output, own_run = recovery["output"], sync_log_rows(h)[-1]["dagster_run_id"]
    assert not any(r in output.strip().splitlines()[0] for r in killed_run_ids)
    assert output.index(f"Dagster run {own_run}") < output.index("the process running them is gone")
    with sa.create_engine(cli_env["DAGSTER_DATABASE_URL"], poolclass=sa.NullPool).connect() as conn:
        statuses = dict(conn.execute(sa.text("SELECT run_id, status FROM runs")).all())
        held = conn.execute(sa.text("SELECT run_id FROM concurrency_slots WHERE run_id IS NOT NULL")).scalars().all()
    assert [statuses[r] for r in killed_run_ids] == ["FAILURE"] * len(killed)
    assert held == []
    h.project.clear_faults()
    final = h.sync()
    assert final.status == "success" and final.plan.empty, final.plan
    assert h.conflicts().empty

    remote = assert_no_duplicates(h)
    assert len(remote) == n(300) + n(30) + n(10)
    local = h.local()
    links = h.links().set_index("device_id")["golioth_device_id"]
    tags = h.tag_names()
    for device_id, name in expected.items():  # the latest local edit, on both sides
        assert local.loc[device_id, "name"] == name
        assert remote[links[device_id]]["name"] == name, device_id
    for device_id in ids[: n(60)]:
        want = ["killed-2"] if device_id in ids[n(40) : n(60)] else ["killed-1"]
        assert list(local.loc[device_id, "tags"]) == want
        assert [tags[t] for t in remote[links[device_id]].get("tagIds", [])] == want
    for gid, name in pulled.items():  # the console edits arrived too
        assert remote[gid]["name"] == name
        assert local.loc[h.device_id_of(gid), "name"] == name


def test_killed_run_failed_by_dagster_then_newer_local_edits_win(make_any_harness, cli_env, tmp_path, monkeypatch):
    """After a kill, Dagster learns the run is dead (here: the next CLI command's check; in a
    deployment: run monitoring's max runtime) and the failure sensor finishes its log row as
    failed. The PATCHes that landed before the kill must still be recognised as our own writes:
    before, they read as console edits once the row was finished, and every device re-edited
    locally since became a conflict instead of getting its newer name."""
    import dagster as dg

    from golioth_assets.cli.dagster_run import fail_dead_cli_runs
    from golioth_assets.defs.resources import DeviceStore
    from sensors.failures import _record_stopped_run

    h = make_any_harness(devices=100, seed=32)
    assert h.sync().status == "success"
    ids = list(h.local().sort_index().index)
    # Slower writes than the other test: at most 16 complete per second, so from the 40th to the
    # 100th the watcher would have to stall for seconds.
    h.project.set_faults(latency_ms=1000, methods=list(WRITE_METHODS))
    bulk_edit_local(h, ids, "r1")
    killed = run_cli(h, cli_env, tmp_path, kill_after_writes=40)
    counts = {k: killed[k] for k in ("returncode", "killed_at", "writes", "successful_writes")}
    assert killed["returncode"] == -signal.SIGKILL and killed["killed_at"] >= 40 and killed["writes"] < 100, counts
    landed = [d for d in h.remote().values() if d["name"].endswith("-r1")]
    # Each answered PATCH renamed one device; those in flight at the kill renamed none.
    assert len(landed) == killed["successful_writes"]
    assert 40 <= len(landed) < 100

    monkeypatch.setenv("GOLIOTH_SYNC_DAGSTER_PG_URL", cli_env["DAGSTER_DATABASE_URL"])
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        [run_id] = fail_dead_cli_runs(instance)
        dead = instance.get_run_by_id(run_id)
        assert dead.status == dg.DagsterRunStatus.FAILURE
        # What the failure sensor does with it (sensors/failures.py), called directly: no daemon here.
        _record_stopped_run(dead, "the run worker died", DeviceStore(database_url=cli_env["DATABASE_URL"]))
    assert sync_log_rows(h)[-1]["status"] == "failed"

    expected = bulk_edit_local(h, ids, "r2")  # newer local edits on every device, landed or not
    h.project.clear_faults()
    result = h.sync()
    assert result.status == "success"
    assert h.conflicts().empty, h.conflicts()[["field", "local_value", "remote_value"]].head()
    remote, links = assert_no_duplicates(h), h.links().set_index("device_id")["golioth_device_id"]
    assert {d: remote[links[d]]["name"] for d in ids} == expected
    assert h.sync().plan.empty
