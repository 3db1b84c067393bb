"""The fixed cost of the command line, as an operator meets it at the prompt (issue 12's CLI targets).

    .venv/bin/python benchmarks/cli_timings.py                # 100 devices, 5 timed runs of each command
    .venv/bin/python benchmarks/cli_timings.py --runs 9 --json /tmp/cli.json

Setup (not timed): fresh databases on the system PostgreSQL (BENCH_DATABASE_URL), the simulator in
a subprocess with 100 devices, a service, and a first sync (the engine) that imports every device;
then one untimed `golioth-sync sync` so that Dagster's storage is migrated and warm.

Timed, each command a fresh process (the `golioth-sync` console script beside this Python), wall
clock from spawn to exit:
- `golioth-sync --help`                      target <= 0.3 s
- `golioth-sync services list`               target <= 0.6 s
- `golioth-sync sync --org ORG` (no change)  target <= 2 s
- `golioth-sync sync --org ORG --device ID`  (no change, one device): Dagster's own run record,
  start_time to end_time, target <= 0.5 s; its wall time at the prompt is reported too.
The floor, measured in the same run: a bare `python -c pass` and `python -c "import click"`.
Medians of wall time are compared with the targets; beside them the CPU time (user + system) of
each command's process, which the machine's load inflates much less, and the load average.
Exits 1 on a miss.

Figures go to docs/benchmarks.md, "CLI and fixed cost".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")

from dagster_overhead import KEY, ORG, PROJECT, drop_database, setup_organization  # noqa: E402

TARGETS = {"help": 0.3, "services list": 0.6, "sync (100 devices)": 2.0, "targeted run (record)": 0.5}
CLI = str(Path(sys.executable).parent / "golioth-sync")


CPU: dict[str, list[float]] = {}  # user + system CPU seconds of each command's process: less load-bound


def _timed(argv: list[str], name: str = "") -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:])} exited {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(name, []).append(cpu)
    return seconds


def _one_device(base_url: str) -> str:
    import httpx

    page = httpx.get(f"{base_url}/v1/projects/{PROJECT}/devices", headers={"x-api-key": KEY}).json()
    return page["list"][0]["id"]


def _targeted_run_seconds(instance) -> float:
    """Start to end of the latest targeted run, as Dagster recorded it."""
    import dagster as dg

    record = instance.get_run_records(dg.RunsFilter(job_name="golioth_targeted_sync"), limit=1)[0]
    return record.end_time - record.start_time


def _measure(runs: int, device: str) -> dict[str, list[float]]:
    import dagster as dg

    commands = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "python -c 'import click' (floor)": [sys.executable, "-c", "import click"],
        "help": [CLI, "--help"],
        "services list": [CLI, "services", "list"],
        "sync (100 devices)": [CLI, "sync", "--org", ORG],
        "targeted sync (wall)": [CLI, "sync", "--org", ORG, "--device", device],
    }
    _timed(commands["sync (100 devices)"])  # untimed: Dagster storage created and warm
    figures: dict[str, list[float]] = {name: [] for name in [*commands, "targeted run (record)"]}
    with dg.DagsterInstance.get() as instance:
        for _ in range(runs):
            for name, argv in commands.items():
                figures[name].append(_timed(argv, name))
            figures["targeted run (record)"].append(_targeted_run_seconds(instance))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
    )
    args = parser.parse_args()

    env_before = dict(os.environ)
    home = Path(tempfile.mkdtemp(prefix="gs-cli-"))
    os.environ["GOLIOTH_SYNC_HOME"] = str(home)
    runtime = sim = None
    try:
        runtime, sim = setup_organization(args.devices, args.database_url)
        figures = _measure(args.runs, _one_device(sim.url))
    finally:
        if sim is not None:
            sim.stop()
        if runtime is not None:
            runtime.engine.dispose()
            for url in (runtime.app_url, runtime.dagster_url):
                drop_database(url)
        os.environ.clear()
        os.environ.update(env_before)
        shutil.rmtree(home, ignore_errors=True)
    return _report(figures, args)


def _report(figures: dict[str, list[float]], args: argparse.Namespace) -> int:
    load = os.getloadavg()
    floor = statistics.median(figures["python -c pass (floor)"])
    print(f"{args.devices} devices, {args.runs} runs each, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    missed = []
    for name, values in figures.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        verdict = "" if target is None else (f"  target {target} s " + ("ok" if median <= target else "MISSED"))
        cpu = f"cpu {statistics.median(CPU[name]):6.3f} s" if name in CPU else " " * 12
        print(f"  {name:34} median {median:6.3f} s  {cpu}  ({median / floor:5.1f}x bare python){verdict}")
        if target is not None and median > target:
            missed.append(f"{name}: {median:.3f} s > {target} s")
    if args.json:
        medians = {name: statistics.median(values) for name, values in figures.items()}
        cpu = {name: statistics.median(values) for name, values in CPU.items() if name}
        args.json.write_text(json.dumps({"load": load, "medians": medians, "cpu": cpu, "runs": figures}, indent=2))
    if missed:
        print("MISSED: " + "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
