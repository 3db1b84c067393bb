"""A backfill of N organizations through the real Dagster processes, as an operator launches it:
`dagster-webserver` receives the UI's GraphQL `launchPartitionBackfill` over HTTP, `dagster-daemon`
(this project's dagster.yaml: queued runs, run workers, the concurrency limits) carries it out.

    .venv/bin/python benchmarks/backfill_daemon.py --orgs 8 --devices 50

One organization's API key is wrong on purpose. Checks (exit 1 on a miss): the backfill made
ceil(N / 100) runs; each good organization has its six materializations (its own sync_log_id) and
five check evaluations on its partition and a `success` row with trigger `backfill`; the bad one a
`failed` row and no materialization; the backfill ends COMPLETED_FAILED (COMPLETED_SUCCESS with
--no-failure).
The schedule is stopped first, so it does not sync the never-synced organizations itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GOLIOTH_SYNC_ALLOW_LOOPBACK_HTTP", "1")
sys.path.insert(0, str(ROOT / "benchmarks"))

from daemon_harness import Child, add_fleet_services, drop_database, fleet_key_env, venv_bin  # noqa: E402

SIX = [
    "golioth_device_inventory",
    "local_devices",
    "device_reconciliation",
    "golioth_device_writes",
    "local_device_writes",
    "device_conflicts",
]
MUTATION = """
mutation($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def _wait(what: str, done, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}")


def _webserver_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _check(instance, engine, backfill, orgs: list[str], bad: str | None) -> list[str]:
    import dagster as dg

    problems: list[str] = []
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
    if len(runs) != -(-len(orgs) // 100):
        problems.append(f"{len(runs)} runs for {len(orgs)} organizations")
    by_partition: dict[str, dict[str, int]] = {}
    for key in SIX:
        for rec in instance.fetch_materializations(dg.AssetKey(key), limit=1000).records:
            m = rec.asset_materialization
            by_partition.setdefault(m.partition, {})[key] = by_partition.get(m.partition, {}).get(key, 0) + 1
            if key == "device_reconciliation":
                with engine.connect() as conn:
                    org = conn.execute(
                        sa.text("SELECT organization_id FROM golioth_sync_log WHERE id = :i"),
                        {"i": m.metadata["sync_log_id"].value},
                    ).scalar()
                if org != m.partition:
                    problems.append(f"{m.partition}: sync_log_id of {org}")
    checks: dict[str, int] = {}
    for run in runs:
        for rec in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
            evaluation = rec.event_log_entry.dagster_event.event_specific_data
            checks[evaluation.partition] = checks.get(evaluation.partition, 0) + 1
    with engine.connect() as conn:
        rows = {
            r.organization_id: (r.status, r.trigger)
            for r in conn.execute(sa.text("SELECT organization_id, status, trigger FROM golioth_sync_log"))
        }
    for org in orgs:
        want = ({}, 0, ("failed", "backfill")) if org == bad else (dict.fromkeys(SIX, 1), 5, ("success", "backfill"))
        got = (by_partition.get(org, {}), checks.get(org, 0), rows.get(org))
        if got != want:
            problems.append(f"{org}: materializations, checks, row = {got}, expected {want}")
    if backfill.status.value != ("COMPLETED_SUCCESS" if bad is None else "COMPLETED_FAILED"):
        problems.append(f"backfill {backfill.status.value}")
    for run in runs:
        stats = instance.get_run_stats(run.run_id)
        print(
            f"run {run.run_id[:8]} {run.status.value}: {run.tags.get('dagster/asset_partition_range_start')}"
            f" … {run.tags.get('dagster/asset_partition_range_end')}, {stats.end_time - stats.start_time:.1f} s"
            f" from start to end, {stats.start_time - run_creation(instance, run):.1f} s from creation to start"
        )
    return problems


def run_creation(instance, run) -> float:
    [record] = instance.get_run_records(filters=__import__("dagster").RunsFilter(run_ids=[run.run_id]))
    return record.create_timestamp.timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=8)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--no-failure", action="store_true", help="every organization's key is right")
    args = parser.parse_args()

    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    from golioth_assets.cli.runtime import WORKSPACE_YAML, prepare
    from golioth_assets.simulator import ProjectFleet, SimulatorServer
    from golioth_assets.store import database

    home = Path(tempfile.mkdtemp(prefix="gs-backfill-"))
    name = f"gs_backfill_{uuid.uuid4().hex[:8]}"
    os.environ["GOLIOTH_SYNC_HOME"] = str(home)
    server = database.normalize_url(args.database_url)
    os.environ["DATABASE_URL"] = server.set(database=name).render_as_string(hide_password=False)
    os.environ["DAGSTER_DATABASE_URL"] = server.set(database=f"{name}_dagster").render_as_string(hide_password=False)
    fleet = ProjectFleet(args.orgs, args.devices, project_prefix="bf-", key_prefix=f"bf-{uuid.uuid4().hex[:8]}-")
    orgs = [f"bf-{i:05d}" for i in range(args.orgs)]
    bad = None if args.no_failure else orgs[len(orgs) // 2]
    for i, org in enumerate(orgs):
        key = fleet.api_key(i) if org != bad else "not-the-key-of-this-project"
        os.environ[fleet_key_env(org)] = key

    sim = runtime = None
    children: list = []
    try:
        runtime = prepare()
        engine = runtime.engine
        sim = SimulatorServer(fleets=[fleet]).start_subprocess()
        instance = dg.DagsterInstance.get()
        add_fleet_services(engine, instance, sim.url, {org: (fleet, i) for i, org in enumerate(orgs)}, 86_400)
        logs = home / "logs"
        logs.mkdir()
        stop = Child(
            "schedule-stop",
            [venv_bin("dagster"), "schedule", "stop", "golioth_sync_schedule", "-w", str(WORKSPACE_YAML)],
            logs,
        )
        stop.proc.wait(120)
        url = f"http://127.0.0.1:{args.port}"
        children.append(
            Child("webserver", [venv_bin("dagster-webserver"), "-w", str(WORKSPACE_YAML), "-p", str(args.port)], logs)
        )
        children.append(Child("dagster-daemon", [venv_bin("dagster-daemon"), "run", "-w", str(WORKSPACE_YAML)], logs))
        _wait("the webserver", lambda: _webserver_up(url), 120)

        started = time.perf_counter()
        answer = httpx.post(
            f"{url}/graphql",
            json={
                "query": MUTATION,
                "variables": {"p": {"assetSelection": [{"path": [k]} for k in SIX], "partitionNames": orgs}},
            },
            timeout=60,
        ).json()
        launched = answer["data"]["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", answer
        backfill_id = launched["backfillId"]

        def finished():
            backfill = instance.get_backfill(backfill_id)
            return backfill if backfill.status not in (BulkActionStatus.REQUESTED,) else None

        backfill = _wait("the backfill", finished, 600)
        print(f"backfill {backfill_id}: {backfill.status.value} after {time.perf_counter() - started:.1f} s")
        for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id})):
            created, ended = run_creation(instance, run), instance.get_run_stats(run.run_id).end_time
            print(
                f"  launched → run created {created - backfill.backfill_timestamp:.1f} s,"
                f" → run ended {ended - backfill.backfill_timestamp:.1f} s,"
                f" → backfill ended {backfill.backfill_end_timestamp - backfill.backfill_timestamp:.1f} s"
            )
        problems = _check(instance, engine, backfill, orgs, bad)
        print("\n".join(problems) if problems else "all checks passed")
        instance.dispose()
        if problems:
            raise SystemExit(1)
    finally:
        for child in reversed(children):
            child.stop()
        if sim is not None:
            sim.stop()
        if runtime is not None:
            runtime.engine.dispose()
            for db in (runtime.app_url, runtime.dagster_url):
                drop_database(db)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
