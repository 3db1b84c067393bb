"""The Celery deployment end to end (deploy/dagster.celery.yaml): batched rounds whose lanes run on
two Celery workers, separate processes as if on separate hosts, over the machine's RabbitMQ; one
worker is SIGKILLed while it syncs an organization.

What must hold, read from Dagster's own step records and our sync log: never two syncs of one
organization at once; never more lanes at once than the pool allows (nor than the workers can
take); the organizations the dead worker was syncing are closed as failed with the reason, not
left `running`; the next round converges, with no device duplicated and none lost on either side.
RabbitMQ down: `.ci/run` starts it; here the test skips and says so."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import psutil
import pytest
import sqlalchemy as sa
import yaml

from golioth_assets import settings
from golioth_assets.cli.runtime import DAGSTER_PG_ENV, PROJECT_ROOT
from golioth_assets.defs.batch import BATCH_JOB, batch_run_config
from golioth_assets.store import database
from tests.fixtures.database import drop_database

BROKER = os.environ.get("GOLIOTH_SYNC_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BIN = Path(sys.executable).parent
ORGS, DEVICES, LOCAL_ONLY = 8, 300, 20


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _rabbitmq_answers(), reason="RabbitMQ is not reachable on 127.0.0.1:5672 (.ci/run starts rabbitmq-server)"
    ),
]


def _wait(condition, timeout_s: float, what: str, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
    return found


class Worker:
    """A Celery worker process in its own session (its own process group), logging to a file."""

    def __init__(self, name: str, env: dict, logs: Path) -> None:
        self.log = logs / f"{name}.log"
        self.proc = subprocess.Popen(
            [str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "-Q", "dagster", "-P", "threads", "-c", "1"]
            + ["-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return " ready." in self.log.read_text()

    def session_ports(self, server_port: int) -> set[int]:
        """Local ports of the worker's connections to PostgreSQL (`server_port`): its sessions. Not
        its other connections: Linux gives one local port to connections to different servers, so
        a port of this worker's broker connection may be the other worker's session's."""
        ports = set()
        try:
            for proc in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]:
                ports |= {
                    c.laddr.port for c in proc.net_connections(kind="tcp") if c.raddr and c.raddr.port == server_port
                }
        except psutil.NoSuchProcess:
            pass
        return ports

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _syncing_ports(engine) -> set[int]:
    """Client ports of the sessions holding an organization's sync lock while that organization's
    log row is open: a sync in progress, not one starting or ending."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "JOIN golioth_sync_log r ON r.status = 'running' AND l.objid::int = hashtext(r.organization_id) "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int = hashtext('golioth-sync')"
                )
            ).scalars()
        )


def _start_round(orgs: list[str], env: dict, home: Path, n: int) -> subprocess.Popen:
    """A batched round, run by a run worker process of its own (what the daemon's launcher starts)."""
    config = home / f"round-{n}.yaml"
    config.write_text(yaml.safe_dump(batch_run_config(orgs, parallel=2)))
    return subprocess.Popen(
        [str(BIN / "dagster"), "job", "execute", "-m", "golioth_assets.definitions", "-j", BATCH_JOB, "-c", str(config)]
        + ["--tags", '{"golioth-sync/trigger": "schedule"}'],
        env=env,
        cwd=home,
        stdout=(home / f"round-{n}.log").open("w"),
        stderr=subprocess.STDOUT,
    )


def _max_overlap(intervals) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _lane_intervals(instance) -> list[tuple[float, float]]:
    """Each lane step's [start, end] from Dagster's event log, over every batched run."""
    intervals = []
    for record in instance.get_run_records(dg.RunsFilter(job_name=BATCH_JOB)):
        started: dict[str, float] = {}
        for rec in instance.get_records_for_run(record.dagster_run.run_id, limit=10_000).records:
            event = rec.event_log_entry.dagster_event
            if event is None or not event.step_key:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[event.step_key] = rec.event_log_entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                intervals.append((started.pop(event.step_key), rec.event_log_entry.timestamp))
    return intervals


@pytest.fixture
def celery_home(tmp_path, db_url, monkeypatch):
    """DAGSTER_HOME with deploy/dagster.celery.yaml on a fresh Dagster database."""
    url = db_url.set(database=f"gs_dagster_{uuid.uuid4().hex[:10]}")
    database.ensure_database_exists(url)
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "deploy" / "dagster.celery.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(DAGSTER_PG_ENV, url.render_as_string(hide_password=False))
    try:
        yield home
    finally:
        drop_database(url)


def test_a_round_on_two_celery_workers_survives_a_worker_killed_mid_sync(
    make_harness, celery_home, db_url, engine, tmp_path
):
    harnesses = [make_harness(devices=DEVICES, seed=20 + i) for i in range(ORGS)]
    for h in harnesses:  # devices only the product has: the round creates them in Golioth
        for k in range(LOCAL_ONLY):
            h.create_local(name=f"local-{k}", hardware_ids=[f"hw-{h.org}-{k}"])
    orgs = [h.org for h in harnesses]
    env = {
        **os.environ,
        "DATABASE_URL": db_url.render_as_string(hide_password=False),
        "PYTHONPATH": f"{PROJECT_ROOT / 'deploy'}{os.pathsep}{PROJECT_ROOT}",
        "GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP": "1",
        settings.EXECUTOR_ENV: "celery",
        settings.CELERY_BROKER_ENV: BROKER,
    }
    from dagster_celery.make_app import make_app

    make_app({"broker": BROKER}).control.purge()  # no task left over from an earlier session
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = [Worker(f"lane-{i}-{uuid.uuid4().hex[:6]}", env, logs) for i in range(2)]
    try:
        _wait(lambda: all(w.ready() for w in workers), 90, "both Celery workers to be ready")

        first = _start_round(orgs, env, celery_home, 1)
        # SIGKILL the worker that holds an organization's lock: it dies mid-sync.
        victim = _wait(
            lambda: next(
                (w for w in workers if w.session_ports(engine.url.port or 5432) & _syncing_ports(engine)), None
            ),
            120,
            "a worker to be syncing an organization",
            every_s=0.05,
        )
        victim.kill()
        assert first.wait(timeout=180) == 0, (celery_home / "round-1.log").read_text()[-4000:]

        survivor = next(w for w in workers if w is not victim)
        assert survivor.proc.poll() is None
        second = _start_round(orgs, env, celery_home, 2)
        assert second.wait(timeout=180) == 0, (celery_home / "round-2.log").read_text()[-4000:]
    finally:
        for w in workers:
            w.stop()

    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "SELECT organization_id, status, error, started_at, finished_at, created_remote, "
                    "created_local, updated_remote, updated_local FROM golioth_sync_log "
                    "WHERE organization_id = ANY(:orgs) ORDER BY id"
                ),
                {"orgs": orgs},
            )
            .mappings()
            .all()
        )
    # The dead worker's organizations: closed as failed with the reason, never left running.
    assert not [r for r in rows if r["status"] == "running"]
    died = [r for r in rows if r["status"] == "failed"]
    assert died and all("process died" in r["error"] for r in died)
    # Never two syncs of one organization at once (the lock), whatever the worker that ran them.
    for org in orgs:
        mine = sorted((r["started_at"], r["finished_at"]) for r in rows if r["organization_id"] == org)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(mine, mine[1:])), org
    # The last round converged: each organization's last sync succeeded with nothing left to write.
    last = {r["organization_id"]: r for r in rows}
    assert {o: last[o]["status"] for o in orgs} == dict.fromkeys(orgs, "success")
    assert all(
        last[o][k] == 0 for o in orgs for k in ("created_remote", "created_local", "updated_remote", "updated_local")
    )
    # No duplicates, no losses, on either side.
    for h in harnesses:
        remote = h.remote()
        assert len(remote) == DEVICES + LOCAL_ONLY, h.org
        hardware = [hw for d in remote.values() for hw in d.get("hardwareIds", [])]
        assert len(hardware) == len(set(hardware))
        assert len(h.local()) == DEVICES + LOCAL_ONLY
        assert len(h.links()) == DEVICES + LOCAL_ONLY
    # The limits, from Dagster's own step records: lanes at once within the pool and the workers.
    with dg.DagsterInstance.get() as instance:
        lanes = _lane_intervals(instance)
        pool = instance.get_concurrency_config().pool_config.default_pool_limit
    assert lanes and _max_overlap(lanes) <= min(pool, len(workers))
