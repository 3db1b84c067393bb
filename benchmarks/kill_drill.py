"""The kill drill of `many_tenants.py --kill-worker` (issue 14): in the steady round, once a Celery
worker is syncing an organization (it holds the organization's lock while that organization's log
row is open), SIGKILL its whole process group, as a host crash would. Then, from the database and
from the simulator's own API: the organizations it was syncing were closed as failed (how, and how
long after), none is left `running`, the next round converges (its syncs write nothing), every
edit made before the drill is in Golioth once (each edited device's name, exactly, and nowhere
else), and no device is duplicated on either side (hardware ids unique per project and per
organization, the device counts unchanged).

Not a script: many_tenants.py imports it (from benchmarks/, as daemon_harness)."""

from __future__ import annotations

import concurrent.futures as futures
import datetime as dt
import os
import signal
import time

import httpx
import psutil
import sqlalchemy as sa

WRITES = ("created_remote", "updated_remote", "deleted_remote", "created_local", "updated_local", "deleted_local")


def _syncing(engine) -> dict[int, str]:
    """Client port → organization, for the sessions holding an organization's sync lock while its
    log row is open: a sync in progress, not one starting or ending (store/org_lock.py's key)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.client_port, r.organization_id FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "JOIN golioth_sync_log r ON r.status = 'running' AND l.objid::int = hashtext(r.organization_id) "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int = hashtext('golioth-sync')"
            )
        ).all()
    return {int(port): org for port, org in rows}


def _client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of the connections of a process and its children to PostgreSQL (`server_port`):
    its sessions. Only those: Linux gives one local port to connections to different servers, so a
    port of the worker's broker connection may be another worker's session's."""
    try:
        root = psutil.Process(pid)
        return {
            c.laddr.port
            for p in [root, *root.children(recursive=True)]
            for c in p.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == server_port
        }
    except psutil.NoSuchProcess:
        return set()


class KillDrill:
    """`poll()` is called from the round's wait loop; the first time a worker is syncing an
    organization, it SIGKILLs that worker's process group and records what it was doing."""

    def __init__(self, engine, workers: list) -> None:
        self.engine, self.workers = engine, workers
        self.victim = None
        self.killed_at = 0.0
        self.orgs: list[str] = []  # the organizations the victim was syncing when it died

    def poll(self, for_s: float = 1.0) -> None:
        """Look every 50 ms for up to `for_s` (the round's loop calls it about once a second)."""
        deadline = time.time() + for_s
        while self.victim is None and time.time() < deadline:
            syncing = _syncing(self.engine)
            for worker in self.workers:
                ports = _client_ports(worker.proc.pid, self.engine.url.port or 5432)
                mine = sorted({org for port, org in syncing.items() if port in ports})
                if worker.alive() and mine:
                    self._kill(worker, mine)
                    return
            time.sleep(0.05)

    def _kill(self, worker, orgs: list[str]) -> None:
        os.killpg(worker.proc.pid, signal.SIGKILL)  # the worker and any child: a lost host
        worker.proc.wait(10)
        self.victim, self.killed_at, self.orgs = worker, time.time(), orgs
        print(f"  kill drill: SIGKILLed {worker.name} (pid {worker.proc.pid}) while it synced {orgs}", flush=True)

    def closures(self) -> list[dict]:
        """How the dead worker's organizations' sync log rows open at the kill ended: organization,
        status, error, seconds from the kill to the close (None: still open)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT organization_id, status, error, dagster_run_id, extract(epoch FROM finished_at) AS finished "
                    "FROM golioth_sync_log WHERE organization_id = ANY(:orgs) AND started_at <= to_timestamp(:t) "
                    "AND (finished_at IS NULL OR finished_at >= to_timestamp(:t)) ORDER BY id"
                ),
                {"t": self.killed_at, "orgs": self.orgs},
            ).mappings()
            return [
                {
                    "org": r["organization_id"],
                    "status": r["status"],
                    "error": r["error"],
                    "run": r["dagster_run_id"],
                    "after_s": None if r["finished"] is None else float(r["finished"]) - self.killed_at,
                }
                for r in rows
            ]


def how_closed(row: dict) -> str:
    from golioth_assets.defs.batch import ORPHANED

    if row["status"] == "failed" and row["error"] == ORPHANED:
        return "failed, by the next sync that took the organization's lock"
    if row["status"] == "failed":
        return f"failed, otherwise: {row['error']!r}"
    return f"{row['status']} (a dead worker's sync must not end so)"


def edited_devices(engine, orgs: list[str]) -> dict[tuple[str, str], str]:
    """(organization, hardware id) → name of every device renamed before the drill."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT organization_id, hardware_ids[1], name FROM devices "
                "WHERE organization_id = ANY(:orgs) AND deleted_at IS NULL AND name LIKE '%-edited'"
            ),
            {"orgs": orgs},
        ).all()
    return {(org, hw): name for org, hw, name in rows}


def _remote(url: str, project: str, key: str) -> list[dict]:
    """Every device of a simulated project, through its public API (not the product's client)."""
    devices: list[dict] = []
    with httpx.Client(base_url=url, headers={"x-api-key": key}, timeout=60) as client:
        while True:
            body = client.get(
                f"/v1/projects/{project}/devices", params={"page": len(devices) // 100, "perPage": 100}
            ).raise_for_status()
            page = body.json()
            devices += page.get("list", [])
            if not page.get("list") or len(devices) >= page["total"]:
                return devices


def _local(engine, orgs: list[str]) -> dict[str, list[tuple[list[str], str]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT organization_id, hardware_ids, name FROM devices "
                "WHERE organization_id = ANY(:orgs) AND deleted_at IS NULL"
            ),
            {"orgs": orgs},
        ).all()
    found: dict[str, list[tuple[list[str], str]]] = {o: [] for o in orgs}
    for org, hardware, name in rows:
        found[org].append((list(hardware), name))
    return found


def _one_side(what: str, org: str, devices: list[tuple[list[str], str]], expected: int) -> tuple[dict, list[str]]:
    """hardware id → name of one organization's devices on one side; problems: duplicates, count."""
    problems = []
    hardware = [hw for ids, _ in devices for hw in ids]
    if len(hardware) != len(set(hardware)):
        problems.append(f"{org}: {len(hardware) - len(set(hardware))} duplicated hardware ids {what}")
    if len(devices) != expected:
        problems.append(f"{org}: {len(devices)} devices {what}, expected {expected}")
    return {hw: name for ids, name in devices for hw in ids}, problems


def verify(engine, sim_url: str, projects: dict[str, tuple[str, str]], devices: int, edited: dict) -> dict:
    """Both sides agree device by device, no duplicates, every edit in Golioth as made, nothing left
    running, every organization's last sync a success that wrote nothing."""
    orgs = list(projects)
    local = _local(engine, orgs)
    with futures.ThreadPoolExecutor(8) as pool:
        remote = dict(zip(orgs, pool.map(lambda o: _remote(sim_url, *projects[o]), orgs), strict=True))
    problems: list[str] = []
    for org in orgs:
        mine, p1 = _one_side("locally", org, local[org], devices)
        theirs, p2 = _one_side("in Golioth", org, [(d.get("hardwareIds", []), d["name"]) for d in remote[org]], devices)
        problems += p1 + p2
        if differ := sum(mine.get(hw) != name for hw, name in theirs.items()):
            problems.append(f"{org}: {differ} devices differ between Golioth and the local table")
    lost = [key for key, name in edited.items() if _name_in(remote, key) != name]
    if lost:
        problems.append(f"{len(lost)} edits not in Golioth as made, e.g. {lost[:3]}")
    problems += _last_syncs(engine, orgs)
    return {"problems": problems, "remote_devices": sum(map(len, remote.values())), "edits_checked": len(edited)}


def _name_in(remote: dict[str, list[dict]], key: tuple[str, str]) -> str | None:
    org, hw = key
    names = [d["name"] for d in remote[org] if hw in d.get("hardwareIds", [])]
    return names[0] if len(names) == 1 else f"{len(names)} devices"


def _last_syncs(engine, orgs: list[str]) -> list[str]:
    with engine.connect() as conn:
        running = conn.execute(
            sa.text("SELECT count(*) FROM golioth_sync_log WHERE status = 'running' AND organization_id = ANY(:o)"),
            {"o": orgs},
        ).scalar()
        last = conn.execute(
            sa.text(
                f"SELECT DISTINCT ON (organization_id) organization_id, status, {', '.join(WRITES)} "
                "FROM golioth_sync_log WHERE organization_id = ANY(:o) AND scope IS NULL AND NOT dry_run "
                "ORDER BY organization_id, id DESC"
            ),
            {"o": orgs},
        ).mappings()
        unconverged = [r["organization_id"] for r in last if r["status"] != "success" or any(r[k] for k in WRITES)]
    problems = [f"{running} sync log rows left running"] if running else []
    if unconverged:
        problems.append(f"{len(unconverged)} organizations' last sync failed or still wrote: {unconverged[:5]}")
    return problems


def utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%H:%M:%S UTC")
