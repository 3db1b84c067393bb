"""A product's own table against the built-in one, side by side in one run: 10,000 devices.

    .venv/bin/python benchmarks/local_table.py                  # system PostgreSQL at 127.0.0.1:5432
    .venv/bin/python benchmarks/local_table.py --devices 2000

Two simulator projects seeded alike (a subprocess: no shared GIL). One organization syncs the
built-in `devices` table in golioth-sync's database; the other the shipped example product schema
(examples/acme_fleet: uuid key, tenant looked up by slug, enum connectivity, tags in jsonb, its own
triggers) under its mapping.yaml, in a database of its own. Each is timed on the same two syncs, alternating: the first (every device
imported), then a no-change one. Prints both times, the ratio and the load average; exits 1 when
the mapped table takes more than 1.5× the built-in one (the issue's target). Figures go to
docs/benchmarks.md, "Local tables".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from golioth_assets.credentials import ALLOW_LOOPBACK_HTTP_ENV  # noqa: E402
from golioth_assets.engine.sync import SyncRequest, sync_organization  # noqa: E402
from golioth_assets.simulator import ProjectSpec, SimulatorServer  # noqa: E402
from golioth_assets.store import database, migrate, services  # noqa: E402
from tests.fixtures.local_tables import load_example, mapping_with  # noqa: E402

TARGET = 1.5


def _fresh(server: str, prefix: str):
    url = database.normalize_url(server).set(database=f"{prefix}_{uuid.uuid4().hex[:8]}")
    database.ensure_database_exists(url)
    return url


def _drop(url) -> None:
    database.engine_for(url).dispose()
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


def _service(engine, org: str, project: str, base_url: str, mapping=None) -> None:
    key_env = f"GOLIOTH_BENCH_KEY_{org.upper()}"  # a GOLIOTH_ name, outside golioth-sync's own GOLIOTH_SYNC_
    os.environ[key_env] = f"{project}-key"
    with engine.begin() as conn:
        services.upsert_service(
            conn,
            services.ServiceSettings(
                organization_id=org,
                name=org,
                project_id=project,
                base_url=base_url,
                api_key_env=key_env,
                conflict_policy="remote_wins",
                local_table=mapping,
            ),
        )


def _timed(engine, org: str) -> float:
    started = time.perf_counter()
    result = sync_organization(engine, SyncRequest(org, trigger="cli"))
    assert result.status == "success", result
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    os.environ[ALLOW_LOOPBACK_HTTP_ENV] = "1"  # the simulator speaks plain http on loopback
    sim = SimulatorServer(
        projects=[
            ProjectSpec("bench-builtin", "bench-builtin-key", devices=args.devices, seed=42),
            ProjectSpec("bench-mapped", "bench-mapped-key", devices=args.devices, seed=42),
        ]
    ).start_subprocess()
    state = _fresh(args.database_url, "gs_bench_state")
    product = load_example(database.normalize_url(args.database_url), "acme_fleet")
    try:
        engine = database.engine_for(state)
        migrate.upgrade(engine)
        with sa.create_engine(product, poolclass=sa.NullPool).begin() as conn:
            conn.execute(sa.text("INSERT INTO app.organizations (slug, name) VALUES ('mapped', 'mapped')"))
        tenant = {"column": "organization_id", "lookup": {"table": "app.organizations", "where": {"slug": "mapped"}}}
        mapping = mapping_with("acme_fleet", tenant=tenant)
        os.environ[mapping.connection_env] = product.render_as_string(hide_password=False)
        _service(engine, "builtin", "bench-builtin", sim.url)
        _service(engine, "mapped", "bench-mapped", sim.url, mapping)
        times = {"builtin": [], "mapped": []}
        for _ in ("import", "no change"):
            for org in ("builtin", "mapped"):
                times[org].append(_timed(engine, org))
    finally:
        sim.stop()
        _drop(state)
        _drop(product)
    load = os.getloadavg()
    total = {org: sum(t) for org, t in times.items()}
    ratio = total["mapped"] / total["builtin"]
    print(f"devices: {args.devices:,}   load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for org in ("builtin", "mapped"):
        first, second = times[org]
        print(f"{org:>8}: import {first:6.2f} s   no-change sync {second:6.2f} s   total {total[org]:6.2f} s")
    verdict = "ok" if ratio <= TARGET else "MISS"
    print(f"ratio mapped / built-in: {ratio:.2f} (target ≤ {TARGET}) {verdict}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
