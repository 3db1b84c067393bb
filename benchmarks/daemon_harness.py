"""What the benchmarks that run the real `dagster-daemon` share: the venv's programs, child servers
stopped with their whole process group, dropping a benchmark's database, percentiles.

Used by webhook_to_local.py, local_to_golioth.py (and, through it, local_churn.py), many_tenants.py,
backfill_daemon.py and profile_orgs.py (which also share the fleet services' set-up)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent


def venv_bin(name: str) -> str:
    """A program of this Python's venv (dagster-daemon, golioth-sync)."""
    return str(Path(sys.executable).with_name(name))


def drop_database(url: sa.engine.URL) -> None:
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


class Child:
    """A server in its own session, stopped with its whole process group (code servers, run workers)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path):
        self.name = name
        self.log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def clean_up(servers: list[Any], app_url: sa.engine.URL, dagster_url: sa.engine.URL, home: Path) -> None:
    """After a run, however it ended: stop the servers (children, the simulator; None = never
    started) in reverse order of starting, drop the run's two databases, remove its home folder."""
    from golioth_assets.store import database  # the caller put the project on sys.path

    for server in reversed(servers):
        if server is not None:
            server.stop()
    database.engine_for(app_url).dispose()
    for url in (app_url, dagster_url):
        drop_database(url)
    shutil.rmtree(home, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the two nearest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def fleet_key_env(org: str) -> str:
    """The environment variable a benchmark puts a fleet organization's API key in."""
    return f"GOLIOTH_BENCH_{org.upper().replace('-', '_')}_KEY"


def add_fleet_services(
    engine, instance, sim_url: str, tenants: dict[str, tuple[Any, int]], interval_seconds: int
) -> None:
    """A service per organization of ProjectFleets (organization → (fleet, index in it)), its key
    read from fleet_key_env(org), and the organizations' partitions."""
    from golioth_assets.defs.partitions import organizations
    from golioth_assets.store import services

    with engine.begin() as conn:
        for org, (fleet, i) in tenants.items():
            services.upsert_service(
                conn,
                services.ServiceSettings(
                    organization_id=org,
                    name=f"fleet of {org}",
                    project_id=fleet.project_id(i),
                    base_url=sim_url,
                    golioth_organization_id="sim-org",
                    api_key_env=fleet_key_env(org),
                    interval_seconds=interval_seconds,
                ),
            )
    instance.add_dynamic_partitions(organizations.name, list(tenants))
