"""Many tenants: N organizations of M devices each, synced in batched runs by the SCHEDULER under
the limits of this project's dagster.yaml, on one machine.

    .venv/bin/python benchmarks/many_tenants.py --orgs 100 --devices 1000
    .venv/bin/python benchmarks/many_tenants.py --orgs 1000 --devices 1000 --timeout 3600   # the issue's target
    .venv/bin/python benchmarks/many_tenants.py --orgs 200 --devices 1000 --celery-workers 2  # RabbitMQ on 5672
    .venv/bin/python benchmarks/many_tenants.py --orgs 200 --devices 1000 --celery-workers 2 --kill-worker

Everything real and in its own process, as `golioth-sync dev` runs it (without the webserver):

- a temporary GOLIOTH_SYNC_HOME; `golioth_assets.cli.runtime.prepare()` creates both databases (fresh
  ones on BENCH_DATABASE_URL's server) and DAGSTER_HOME with the project's dagster.yaml;
- one simulator subprocess hosting the N projects as a ProjectFleet (each seeded on first use,
  its own API key), plus a fleet of empty projects for the fixed-cost probe;
- N services, their partitions added;
- `dagster-daemon run` on workspace.yaml: the schedule requests batched runs (defs/batch.py, up to
  100 organizations each) of the due organizations; the queue launches each in a run worker.

Rounds. Services have a one-day interval, so nothing is due until the benchmark says so: a round
sets every interval to 60 s, waits for the tick's batched runs to be created, sets it back, and
waits until every organization has one more successful full sync. A round is timed from its first
run's creation to the last organization's sync end (the wait for the minute's tick is left out).

1. first round: every device imported (M per organization);
2. steady round: 1 % of each organization's devices renamed locally beforehand, exported;
3. fixed-cost probe: one batched run of K organizations with no devices at all; its per-organization
   share of the run (run start to end / K) is the fixed cost of an organization inside a batch,
   against the old per-run cost (a run and a run worker per organization, docs/benchmarks.md).

Checks, from Dagster's run and step records and our sync log (exit 1 on a miss):
never two syncs of one organization at once (sync log intervals, which the lock serializes; and no
two in-flight batched runs naming one organization); at most `max_concurrent_runs` runs at once
(dequeued → ended); at most the `golioth_api` pool's limit of lane steps at once; every
organization synced each round; and the targets scaled to the size run (--first-target and
--steady-target are seconds per 1,000 organizations × 1,000 devices, scaled linearly by N × M).

--kill-worker (the kill drill, kill_drill.py): in the steady round, once a Celery worker is syncing an
organization, SIGKILL its process group; the round still completes (the lane goes back to the
queue); a replacement worker starts; a recovery round runs; then the dead worker's organizations
must have been closed as failed, nothing left running, every organization's last sync a success
that wrote nothing, and Golioth (read through the simulator's API) and the local table must agree
device by device: every edit made before the drill in Golioth once, no hardware id twice.

Figures go to docs/benchmarks.md, "Many tenants, batched".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from daemon_harness import Child, add_fleet_services, clean_up, fleet_key_env, venv_bin  # noqa: E402  (process groups, the venv's binaries)
from kill_drill import KillDrill, edited_devices, how_closed, utc, verify  # noqa: E402  (--kill-worker)

POOL = "golioth_api"
DAY = 86_400
OLD_PER_ORG_S = 133 / 50  # docs/benchmarks.md: 50 × 2,000 in 133 s, one run (and run worker) per organization


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t comes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _processes_of(home: Path, exclude: set[int]) -> list:
    """Processes still running with this benchmark's GOLIOTH_SYNC_HOME in their environment."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if (
                proc.pid != os.getpid()
                and proc.pid not in exclude
                and proc.environ().get("GOLIOTH_SYNC_HOME") == str(home)
            ):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _reap(home: Path, exclude: set[int], grace_s: float = 15.0) -> list[str]:
    """Wait for this benchmark's processes to exit, then end the ones left, each by its pid."""
    import psutil

    deadline = time.time() + grace_s
    while (left := _processes_of(home, exclude)) and time.time() < deadline:
        time.sleep(0.5)
    ended = []
    for proc in left:
        try:
            ended.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        proc.kill()
    return ended


def _successes(engine, orgs: list[str]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT organization_id, count(*) FROM golioth_sync_log WHERE status = 'success' AND NOT dry_run "
                "AND scope IS NULL AND organization_id = ANY(:orgs) GROUP BY organization_id"
            ),
            {"orgs": orgs},
        ).all()
    return dict(rows)


def _sync_rows(engine, orgs: list[str]) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT organization_id, status, error, extract(epoch FROM started_at) AS started, "
                    "extract(epoch FROM finished_at) AS finished FROM golioth_sync_log "
                    "WHERE organization_id = ANY(:orgs) ORDER BY id"
                ),
                {"orgs": orgs},
            ).mappings()
        ]


class Bench:
    def __init__(self, args, engine, instance, daemon, orgs, empty):
        self.args, self.engine, self.instance, self.daemon = args, engine, instance, daemon
        self.orgs, self.empty = orgs, empty
        self.load_samples: list[float] = []
        self.during = None  # called while a round waits (the kill drill)

    def _runs_since(self, since: float) -> list:
        import dagster as dg

        from golioth_assets.defs.batch import BATCH_JOB

        records = self.instance.get_run_records(dg.RunsFilter(job_name=BATCH_JOB))
        return [r for r in records if r.create_timestamp.timestamp() >= since]

    def round(self, name: str, orgs: list[str], want: int | dict[str, int]) -> dict:
        """Make `orgs` due, wait for the tick's runs, then for `want` successes of each (a number,
        or one per organization)."""
        from golioth_assets.defs.batch import batch_organizations

        wants = want if isinstance(want, dict) else dict.fromkeys(orgs, want)

        # The schedule counts an organization due 10 s after its last sync started (60 s interval,
        # 50 s of launch slack): a tick sooner after the last round would leave some for the next
        # tick, and the round would be timed across two ticks.
        while rows := _sync_rows(self.engine, orgs):
            if time.time() - max(float(r["started"]) for r in rows) >= 12:
                break
            time.sleep(0.5)
        started = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE device_services SET interval_seconds = 60 WHERE organization_id = ANY(:o)"), {"o": orgs}
            )
        # Due until a run names each of them (a tick may come too soon after an organization's
        # last sync for it to be due); then no more requests.
        while not set(orgs) <= {
            o for r in self._runs_since(started) for o in batch_organizations(r.dagster_run.run_config)
        }:
            self._check(started, name)
            time.sleep(0.5)
        with self.engine.begin() as conn:
            conn.execute(sa.text("UPDATE device_services SET interval_seconds = :d"), {"d": DAY})
        first_created = min(r.create_timestamp.timestamp() for r in self._runs_since(started))
        last_print = 0.0
        while True:
            done = {o: n for o, n in _successes(self.engine, orgs).items() if n >= wants[o]}
            if len(done) == len(orgs):
                break
            self._check(started, name)
            if time.time() - last_print >= 15:
                last_print = time.time()
                self.load_samples.append(os.getloadavg()[0])
                print(
                    f"  {name}: {time.time() - first_created:6.0f} s, {len(done)}/{len(orgs)} organizations, "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            time.sleep(1.0)
        rows = [r for r in _sync_rows(self.engine, orgs) if r["status"] == "success"]
        last_end = max(float(r["finished"]) for r in rows)
        runs = self._runs_since(started)
        return {
            "seconds": last_end - first_created,
            "runs": len(runs),
            "orgs": len(orgs),
            "per_org_s": (last_end - first_created) / len(orgs),
            "run_ids": [r.dagster_run.run_id for r in runs],
            "first_created": first_created,
        }

    def _check(self, started: float, name: str) -> None:
        if not self.daemon.alive():
            raise SystemExit("dagster-daemon exited early; see its log")
        if self.during is not None:
            self.during()
        if time.time() - started > self.args.timeout:
            raise SystemExit(f"{name} did not finish within {self.args.timeout:.0f} s")


def _edit_one_percent(engine, orgs: list[str]) -> int:
    """Rename 1 % of each organization's local devices (at least one), as the product would, but
    unseen by the capture triggers (their writer setting): otherwise the live path (the local-edit
    sensor's targeted runs) would export the edits before the round, and the round would measure a
    no-change sync."""
    from golioth_assets.store.local_table.capture import WRITER_SETTING

    with engine.begin() as conn:
        conn.execute(sa.text("SELECT set_config(:name, 'on', true)"), {"name": WRITER_SETTING})
        return conn.execute(
            sa.text(
                "UPDATE devices d SET name = d.name || '-edited' FROM ("
                "  SELECT id, row_number() OVER (PARTITION BY organization_id ORDER BY id) AS n, "
                "         count(*) OVER (PARTITION BY organization_id) AS total "
                "  FROM devices WHERE organization_id = ANY(:orgs) AND deleted_at IS NULL) s "
                "WHERE d.id = s.id AND s.n <= greatest(1, s.total / 100)"
            ),
            {"orgs": orgs},
        ).rowcount


def _limits(instance, engine, all_orgs: list[str]) -> dict:
    """The limits, from Dagster's own run and step records, and the sync log's intervals."""
    import dagster as dg

    from golioth_assets.defs.batch import BATCH_JOB, batch_organizations

    runs, lanes = [], []
    for record in instance.get_run_records(dg.RunsFilter(job_name=BATCH_JOB)):
        run = record.dagster_run
        if record.start_time is None:
            continue
        entry = {"start": record.start_time, "end": record.end_time or time.time()}
        begun: dict[str, float] = {}
        for rec in instance.get_records_for_run(run.run_id, limit=100_000).records:
            event = rec.event_log_entry.dagster_event
            if event is None:
                continue
            stamp = rec.event_log_entry.timestamp
            if event.event_type == dg.DagsterEventType.RUN_STARTING:
                entry["dequeued"] = stamp
            elif event.event_type == dg.DagsterEventType.STEP_START:
                begun[event.step_key] = stamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                lanes.append((begun.pop(event.step_key, stamp), stamp))
        entry["orgs"] = set(batch_organizations(run.run_config))
        runs.append(entry)
    # Two in-flight runs naming one organization (the schedule's exclusion).
    overlapping_runs = 0
    for i, a in enumerate(runs):
        for b in runs[i + 1 :]:
            if a["orgs"] & b["orgs"] and a["start"] < b["end"] and b["start"] < a["end"]:
                overlapping_runs += 1
    # Two syncs of one organization at once (the lock).
    by_org: dict[str, list[tuple[float, float]]] = {}
    for row in _sync_rows(engine, all_orgs):
        if row["finished"] is not None:
            by_org.setdefault(row["organization_id"], []).append((float(row["started"]), float(row["finished"])))
    overlapping_syncs = sum(_max_overlap(v) > 1 for v in by_org.values())
    return {
        "max_runs": _max_overlap([(r.get("dequeued", r["start"]), r["end"]) for r in runs]),
        "max_lanes": _max_overlap(lanes),
        "lane_steps": len(lanes),
        "overlapping_batched_runs_of_one_org": overlapping_runs,
        "orgs_synced_twice_at_once": overlapping_syncs,
    }


def _fixed_cost(instance, engine, run_ids: list[str], orgs: list[str]) -> dict:
    import dagster as dg

    deadline = time.time() + 120
    while True:
        records = instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
        if all(r.end_time is not None for r in records):
            break
        if time.time() > deadline:
            raise SystemExit("the fixed-cost probe's run did not end")
        time.sleep(0.5)
    run_s = sum(r.end_time - r.start_time for r in records)
    rows = [r for r in _sync_rows(engine, orgs) if r["status"] == "success"]
    in_sync = [float(r["finished"]) - float(r["started"]) for r in rows]
    return {
        "orgs": len(orgs),
        "runs": len(records),
        "run_s": run_s,
        "per_org_s": run_s / len(orgs),
        "sync_p50_s": statistics.median(in_sync),
    }


def run(args: argparse.Namespace) -> dict:
    import dagster as dg

    from golioth_assets.cli.runtime import WORKSPACE_YAML, prepare
    from golioth_assets.simulator import ProjectFleet, SimulatorServer
    from golioth_assets.store import database

    home = Path(tempfile.mkdtemp(prefix="gs-tenants-"))
    name = f"gs_tenants_{uuid.uuid4().hex[:8]}"
    os.environ["GOLIOTH_SYNC_HOME"] = str(home)
    if args.celery_workers and not args.dagster_yaml:
        args.dagster_yaml = ROOT / "deploy" / "dagster.celery.yaml"
    if args.dagster_yaml:
        os.environ["GOLIOTH_SYNC_DAGSTER_YAML"] = str(args.dagster_yaml.resolve())  # read by prepare()
    server = database.normalize_url(args.database_url)
    os.environ["DATABASE_URL"] = server.set(database=name).render_as_string(hide_password=False)
    os.environ["DAGSTER_DATABASE_URL"] = server.set(database=f"{name}_dagster").render_as_string(hide_password=False)
    secret = uuid.uuid4().hex[:8]
    fleet = ProjectFleet(args.orgs, args.devices, project_prefix="tenant-", key_prefix=f"tenant-{secret}-")
    probe = ProjectFleet(args.probe_orgs, 0, project_prefix="empty-", key_prefix=f"empty-{secret}-")
    tenants = {f"tenant-{i:05d}": (fleet, i) for i in range(args.orgs)}
    empties = {f"empty-{i:05d}": (probe, i) for i in range(args.probe_orgs)}
    for org, (f, i) in {**tenants, **empties}.items():
        os.environ[fleet_key_env(org)] = f.api_key(i)

    sim = daemon = runtime = None
    run_limit, pool_limit = _yaml_limits(args.dagster_yaml or ROOT / "dagster.yaml")
    result: dict = {
        "orgs": args.orgs,
        "devices_per_org": args.devices,
        "load_before": os.getloadavg(),
        "dagster_yaml": str(args.dagster_yaml or "dagster.yaml"),
        "celery_workers": args.celery_workers,
        "run_limit": run_limit,
        "pool_limit": pool_limit,
    }
    workers: list = []
    try:
        t = time.perf_counter()
        runtime = prepare()
        engine = runtime.engine
        sim = SimulatorServer(fleets=[fleet, probe]).start_subprocess()
        instance = dg.DagsterInstance.get()

        def add_services(which: dict) -> None:
            # A day's interval: due once, when never synced, and then only when a round says so.
            add_fleet_services(engine, instance, sim.url, which, DAY)

        add_services(tenants)
        print(f"setup: {args.orgs} organizations × {args.devices:,} devices in {time.perf_counter() - t:.1f} s")
        logs = home / "logs"
        logs.mkdir()
        if args.celery_workers:
            workers = _start_celery_workers(args.celery_workers, logs)
        daemon = Child("dagster-daemon", [venv_bin("dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)], logs)
        bench = Bench(args, engine, instance, daemon, list(tenants), list(empties))

        result["first"] = bench.round("first round", list(tenants), 1)
        print(f"first round: {result['first']['seconds']:.1f} s", flush=True)
        result["edited"] = _edit_one_percent(engine, list(tenants))
        if args.kill_worker:
            projects = {org: (f.project_id(i), f.api_key(i)) for org, (f, i) in tenants.items()}
            result["steady"], result["drill"] = _drill_rounds(bench, workers, logs, sim.url, projects)
        else:
            result["steady"] = bench.round("steady round", list(tenants), 2)
        print(f"steady round: {result['steady']['seconds']:.1f} s ({result['edited']} devices edited)", flush=True)
        add_services(empties)
        probe_round = bench.round("fixed-cost probe", list(empties), 1)
        result["fixed_cost"] = _fixed_cost(instance, engine, probe_round["run_ids"], list(empties))

        daemon.stop()
        for worker in workers:
            worker.stop()
        sim_pid = sim._proc.pid if sim._proc is not None else -1
        result["stragglers_ended"] = _reap(home, {sim_pid})
        result["limits"] = _limits(instance, engine, [*tenants, *empties])
        result["load_during"] = bench.load_samples
        result["load_after"] = os.getloadavg()
        result["problems"] = _problems(args, result)
        instance.dispose()
        return result
    finally:
        if runtime is not None:  # the servers start after it
            clean_up([sim, *workers, daemon], runtime.app_url, runtime.dagster_url, home)
        result["left_at_the_end"] = _reap(home, set(), grace_s=5.0)
        shutil.rmtree(home, ignore_errors=True)


def _yaml_limits(path: Path) -> tuple[int, int]:
    """max_concurrent_runs and the pools' default limit of the dagster.yaml the run uses."""
    import yaml

    concurrency = yaml.safe_load(path.read_text())["concurrency"]
    return int(concurrency["runs"]["max_concurrent_runs"]), int(concurrency["pools"]["default_limit"])


def _start_celery_workers(count: int, logs: Path) -> list:
    """`count` Celery workers, each its own process group, as on separate hosts (deploy/)."""
    from dagster_celery.make_app import make_app

    from golioth_assets import settings

    os.environ[settings.EXECUTOR_ENV] = "celery"
    os.environ.setdefault(settings.CELERY_BROKER_ENV, "amqp://guest:guest@127.0.0.1:5672//")
    os.environ["PYTHONPATH"] = f"{ROOT / 'deploy'}{os.pathsep}{ROOT}"
    make_app({"broker": os.environ[settings.CELERY_BROKER_ENV]}).control.purge()
    return _celery_workers(range(count), logs)


def _celery_workers(numbers, logs: Path) -> list:
    """Celery workers `celery-<n>` (one lane at a time each), started and ready."""
    argv = [venv_bin("celery"), "-A", "dagster_celery.app", "worker", "-Q", "dagster", "-P", "threads", "-c", "1"]
    workers = [
        Child(f"celery-{n}", [*argv, "-l", "INFO", "-n", f"bench-{n}-{uuid.uuid4().hex[:6]}@%h"], logs) for n in numbers
    ]
    deadline = time.time() + 120
    while not all(b" ready." in (logs / f"{w.name}.log").read_bytes() for w in workers):
        if time.time() > deadline or not all(w.alive() for w in workers):
            raise SystemExit(f"the Celery workers did not start; see {logs}")
        time.sleep(0.5)
    return workers


def _drill_rounds(bench: Bench, workers: list, logs: Path, sim_url: str, projects: dict) -> tuple[dict, dict]:
    """The steady round with a worker SIGKILLed mid-round (kill_drill.py), a replacement worker
    (a restarted host), one more round; then both sides checked device by device."""
    orgs = list(projects)
    edited = edited_devices(bench.engine, orgs)
    drill = KillDrill(bench.engine, workers)
    bench.during = drill.poll
    steady = bench.round("steady round, kill drill", orgs, 2)
    bench.during = None
    if drill.victim is None:
        raise SystemExit("kill drill: no worker was ever seen syncing an organization")
    load_after_round = os.getloadavg()[0]
    open_after_round = [c["org"] for c in drill.closures() if c["status"] == "running"]
    workers += _celery_workers([len(workers)], logs)
    wants = {o: n + 1 for o, n in _successes(bench.engine, orgs).items()}
    recovery = bench.round("recovery round", orgs, wants)
    checked = verify(bench.engine, sim_url, projects, bench.args.devices, edited)
    closures = drill.closures()
    closed = {c["org"] for c in closures if c["status"] == "failed"}
    problems = checked["problems"] + [f"{o}'s sync was not closed as failed" for o in drill.orgs if o not in closed]
    return steady, {
        "victim": drill.victim.name,
        "killed_at": utc(drill.killed_at),
        "killed_after_s": drill.killed_at - steady["first_created"],
        "syncing_when_killed": drill.orgs,
        "closures": closures,
        "how_closed": dict(Counter(how_closed(c) for c in closures)),
        "load_after_round": load_after_round,
        "open_after_round": open_after_round,
        "recovery": recovery,
        "load_after_recovery": os.getloadavg()[0],
        "edits_checked": checked["edits_checked"],
        "remote_devices": checked["remote_devices"],
        "problems": problems,
    }


def _problems(args, r: dict) -> list[str]:
    scale = args.orgs * args.devices / 1_000_000
    problems = []
    limits = r["limits"]
    if limits["orgs_synced_twice_at_once"]:
        problems.append(f"{limits['orgs_synced_twice_at_once']} organizations synced twice at once")
    if limits["overlapping_batched_runs_of_one_org"]:
        problems.append(
            f"{limits['overlapping_batched_runs_of_one_org']} pairs of in-flight runs share an organization"
        )
    run_limit, pool_limit = r["run_limit"], r["pool_limit"]
    if limits["max_runs"] > run_limit:
        problems.append(f"{limits['max_runs']} runs at once (limit {run_limit})")
    if limits["max_lanes"] > pool_limit:
        problems.append(f"{limits['max_lanes']} {POOL} steps at once (limit {pool_limit})")
    if r["first"]["seconds"] > args.first_target * scale:
        problems.append(f"first round {r['first']['seconds']:.0f} s > {args.first_target * scale:.0f} s")
    if "drill" not in r and r["steady"]["seconds"] > args.steady_target * scale:  # a drill's round is no steady one
        problems.append(f"steady round {r['steady']['seconds']:.0f} s > {args.steady_target * scale:.0f} s")
    if r["fixed_cost"]["per_org_s"] > args.fixed_target:
        problems.append(f"fixed cost {r['fixed_cost']['per_org_s']:.2f} s per organization > {args.fixed_target} s")
    return problems + [f"kill drill: {p}" for p in r.get("drill", {}).get("problems", [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=100)
    parser.add_argument("--devices", type=int, default=1_000, help="devices per organization")
    parser.add_argument("--probe-orgs", type=int, default=100, help="empty organizations for the fixed-cost probe")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
        help="a server to create the benchmark databases on (default: the system server)",
    )
    parser.add_argument("--dagster-yaml", type=Path, help="a variant of the project's dagster.yaml to try (knobs)")
    parser.add_argument(
        "--celery-workers",
        type=int,
        default=0,
        help="run the lanes on this many Celery workers (deploy/dagster.celery.yaml)",
    )
    parser.add_argument(
        "--kill-worker",
        action="store_true",
        help="the kill drill (needs --celery-workers >= 2): SIGKILL a worker mid steady round, then check (kill_drill.py)",
    )
    parser.add_argument("--first-target", type=float, default=600.0, help="s for 1,000 × 1,000, scaled by N × M")
    parser.add_argument("--steady-target", type=float, default=180.0, help="s for 1,000 × 1,000, scaled by N × M")
    parser.add_argument("--fixed-target", type=float, default=0.2, help="s per organization inside a batch")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one round")
    parser.add_argument("--json", metavar="PATH", help="also write every figure here")
    args = parser.parse_args()
    if args.kill_worker and args.celery_workers < 2:
        parser.error("--kill-worker needs --celery-workers 2 or more (one must survive)")
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    r = run(args)
    scale = args.orgs * args.devices / 1_000_000
    first, steady, fixed, limits = r["first"], r["steady"], r["fixed_cost"], r["limits"]
    where = f"{args.celery_workers} Celery workers" if args.celery_workers else "in the run workers"
    print(
        f"\n{r['orgs']} organizations × {r['devices_per_org']:,} devices, batched runs by the scheduler, lanes {where}:"
    )
    print(
        f"  first round:  {first['seconds']:.1f} s in {first['runs']} runs ({first['per_org_s']:.2f} s per organization; "
        f"target {args.first_target * scale:.0f} s at this size, {args.first_target:.0f} s at 1,000 × 1,000)"
    )
    print(
        f"  steady round: {steady['seconds']:.1f} s in {steady['runs']} runs, {r['edited']} devices edited "
        f"({steady['per_org_s']:.2f} s per organization; target {args.steady_target * scale:.0f} s at this size)"
    )
    print(
        f"  fixed cost: {fixed['per_org_s']:.3f} s per organization: {fixed['orgs']} empty ones in {fixed['runs']} batched "
        f"runs (run time in all {fixed['run_s']:.1f} s; each sync p50 {fixed['sync_p50_s']:.3f} s), "
        f"against {OLD_PER_ORG_S:.2f} s per organization with a run each (docs/benchmarks.md)"
    )
    print(
        f"  ratio first / steady round {first['seconds'] / steady['seconds']:.1f}; extrapolated to 1,000 × 1,000 "
        f"(linear in N × M): first {first['seconds'] / scale:.0f} s, steady {steady['seconds'] / scale:.0f} s"
    )
    print(
        f"  limits: most runs at once {limits['max_runs']} (limit {r['run_limit']}); most {POOL} lanes at once "
        f"{limits['max_lanes']} (limit {r['pool_limit']}, {limits['lane_steps']} lane steps); organizations synced twice "
        f"at once {limits['orgs_synced_twice_at_once']}; in-flight runs sharing an organization "
        f"{limits['overlapping_batched_runs_of_one_org']}"
    )
    print(
        f"  load average before {r['load_before'][0]:.2f}, during {', '.join(f'{x:.1f}' for x in r['load_during'])}, "
        f"after {r['load_after'][0]:.2f}; processes ended after the daemon stopped: {len(r['stragglers_ended'])}"
    )
    if "drill" in r:
        _print_drill(r["drill"])
    print("  " + ("OK" if not r["problems"] else "PROBLEMS: " + "; ".join(r["problems"])))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))
    if r["problems"]:
        raise SystemExit(1)


def _print_drill(d: dict) -> None:
    rec = d["recovery"]
    print(
        f"  kill drill: {d['victim']} SIGKILLed at {d['killed_at']}, {d['killed_after_s']:.1f} s into the steady round, "
        f"while it synced {len(d['syncing_when_killed'])} organizations (their rows closed "
        f"{max((c['after_s'] or 0 for c in d['closures']), default=0):.1f} s after the kill at most); load average "
        f"after the round {d['load_after_round']:.1f}"
    )
    for how, n in d["how_closed"].items():
        print(f"    {n} of their rows: {how}")
    print(f"    still running when the steady round ended: {d['open_after_round'] or 'none'}")
    print(
        f"  recovery round (replacement worker started): {rec['seconds']:.1f} s in {rec['runs']} runs, load average "
        f"{d['load_after_recovery']:.1f}; checked {d['edits_checked']} edits and {d['remote_devices']:,} Golioth devices "
        f"against the local table: {'all agree' if not d['problems'] else '; '.join(d['problems'][:5])}"
    )


if __name__ == "__main__":
    main()
