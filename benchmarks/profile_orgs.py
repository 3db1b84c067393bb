"""Where a batched organization's time goes: one in-process batched run per round, no daemon.

    .venv/bin/python benchmarks/profile_orgs.py --orgs 20 --devices 1000 --rounds 2
    .venv/bin/python benchmarks/profile_orgs.py --orgs 20 --devices 1000 --profile /tmp/steady.pstat

Fresh databases on BENCH_DATABASE_URL's server, one simulator subprocess hosting the projects as a
ProjectFleet, then `golioth_batch_sync` executed in this process (`execute_in_process`: the lanes,
the locks, the Dagster events in PostgreSQL, as a run worker runs them):

1. first round: every device imported;
2. `--rounds` steady rounds, each after 1 % of every organization's devices was renamed locally
   (as many_tenants.py edits: unseen by the capture triggers);
3. a no-change round.

For each round it prints the wall time and this process's CPU time per organization, and the
simulator's CPU (its process's). The difference between a steady and the no-change round is what
the 1 % of writes costs. `--profile PATH` profiles the last steady round's CPU in every thread (yappi, installed
by hand) and writes a pstats file. A diagnostic: no target, exit 0.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")

from daemon_harness import add_fleet_services, drop_database, fleet_key_env  # noqa: E402
from many_tenants import _edit_one_percent  # noqa: E402


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    """A child process's CPU seconds so far (utime + stime from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ThreadProfiler:
    """yappi's CPU clock in every thread (the lanes' pool threads); `pip install yappi` first: it is a
    diagnostic's tool, not a dependency of the project."""

    def __init__(self) -> None:
        import yappi

        self.yappi = yappi
        yappi.set_clock_type("cpu")

    def __enter__(self) -> ThreadProfiler:
        self.yappi.clear_stats()
        self.yappi.start(builtins=False, profile_threads=True)
        return self

    def __exit__(self, *exc) -> None:
        self.yappi.stop()

    def dump(self, path: str) -> None:
        self.yappi.get_func_stats().save(path, type="pstat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=20)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="steady rounds")
    parser.add_argument("--profile", help="write a pstats file of the last steady round")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()

    import dagster as dg

    from golioth_assets.cli.runtime import prepare
    from golioth_assets.definitions import defs
    from golioth_assets.defs.batch import BATCH_JOB, batch_run_config
    from golioth_assets.simulator import ProjectFleet, SimulatorServer
    from golioth_assets.store import database

    home = Path(tempfile.mkdtemp(prefix="gs-profile-"))
    name = f"gs_profile_{uuid.uuid4().hex[:8]}"
    os.environ["GOLIOTH_SYNC_HOME"] = str(home)
    server = database.normalize_url(args.database_url)
    app_url, dagster_url = server.set(database=name), server.set(database=f"{name}_dagster")
    os.environ["DATABASE_URL"] = app_url.render_as_string(hide_password=False)
    os.environ["DAGSTER_DATABASE_URL"] = dagster_url.render_as_string(hide_password=False)
    fleet = ProjectFleet(
        args.orgs, args.devices, project_prefix="tenant-", key_prefix=f"tenant-{uuid.uuid4().hex[:8]}-"
    )
    orgs = [f"tenant-{i:05d}" for i in range(args.orgs)]
    sim = instance = None
    try:
        runtime = prepare()
        engine = runtime.engine
        sim = SimulatorServer(fleets=[fleet]).start_subprocess()
        instance = dg.DagsterInstance.get()
        for i, org in enumerate(orgs):
            os.environ[fleet_key_env(org)] = fleet.api_key(i)
        add_fleet_services(engine, instance, sim.url, {org: (fleet, i) for i, org in enumerate(orgs)}, 86_400)
        job = defs.resolve_job_def(BATCH_JOB)
        sim_pid = sim._proc.pid if sim._proc is not None else os.getpid()

        def one_round(label: str, profiler: ThreadProfiler | None = None) -> None:
            wall, cpu, sim_cpu = time.perf_counter(), _cpu_self(), _cpu_of(sim_pid)
            if profiler is not None:
                with profiler:
                    result = job.execute_in_process(run_config=batch_run_config(orgs), instance=instance)
            else:
                result = job.execute_in_process(run_config=batch_run_config(orgs), instance=instance)
            assert result.success, label
            wall, cpu = time.perf_counter() - wall, _cpu_self() - cpu
            sim_cpu = _cpu_of(sim_pid) - sim_cpu
            n = len(orgs)
            print(
                f"{label:<12} wall {1000 * wall / n:6.0f} ms/org   our CPU {1000 * cpu / n:6.0f} ms/org   "
                f"simulator CPU {1000 * sim_cpu / n:5.0f} ms/org   load {os.getloadavg()[0]:.1f}",
                flush=True,
            )

        one_round("first")
        for i in range(args.rounds):
            _edit_one_percent(engine, orgs)
            last = i == args.rounds - 1 and args.profile
            profiler = ThreadProfiler() if last else None
            one_round(f"steady {i + 1}", profiler)
            if profiler is not None:
                profiler.dump(args.profile)
                print(f"profile of the last steady round: {args.profile}")
        one_round("no change")
    finally:
        if instance is not None:
            instance.dispose()
        if sim is not None:
            sim.stop()
        drop_database(app_url)
        drop_database(dagster_url)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
